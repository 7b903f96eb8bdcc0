"""The directory tree of a mounted model, built from the authenticated manifest alone.

Every name the mount shows comes from the manifest (whose paths the format layer already
validated: relative, no ``..``, no empty segment), so a registry cannot add, hide or rename
a file: it can only serve sealed bytes, which are authenticated on read.
"""

from __future__ import annotations

import stat
from collections.abc import Sequence
from dataclasses import dataclass, field

from modelseal.errors import FormatError

__all__ = ["Node", "Tree"]


@dataclass
class Node:
    """A directory (``file`` is None) or a plaintext file (``file`` indexes the store)."""

    name: str
    file: int | None = None
    size: int = 0
    children: dict[str, Node] = field(default_factory=dict)

    @property
    def is_dir(self) -> bool:
        return self.file is None


class Tree:
    """Path lookup over the manifest's files; ``files`` are ``(path, size)`` in store order."""

    def __init__(self, files: Sequence[tuple[str, int]]) -> None:
        self.root = Node("")
        self.directories = 1
        for index, (path, size) in enumerate(files):
            parts = path.split("/")
            node = self.root
            for part in parts[:-1]:
                child = node.children.get(part)
                if child is None:
                    child = node.children[part] = Node(part)
                    self.directories += 1
                elif not child.is_dir:
                    raise FormatError(f"manifest: {path!r}: a parent directory is also a file")
                node = child
            if parts[-1] in node.children:
                raise FormatError(f"manifest: {path!r} is also a directory")
            node.children[parts[-1]] = Node(parts[-1], file=index, size=size)

    def lookup(self, path: str) -> Node | None:
        """The node at an absolute mount path (``/`` or ``/a/b``), or None."""
        node = self.root
        for part in path.strip("/").split("/"):
            if not part:
                continue
            if not node.is_dir:
                return None
            child = node.children.get(part)
            if child is None:
                return None
            node = child
        return node

    @staticmethod
    def mode(node: Node) -> int:
        """Read-only for everyone the kernel lets through (``default_permissions`` checks)."""
        return (stat.S_IFDIR | 0o555) if node.is_dir else (stat.S_IFREG | 0o444)
