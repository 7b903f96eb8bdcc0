"""Which files make up a model directory, plaintext or sealed.

Symlinks to files are followed (Hugging Face cache snapshots are symlinks into a blob
store, and the owner chose the source); symlinked directories and special files are
refused, because following them can loop or pull in a whole foreign tree. Empty
directories carry no weights and are not recorded.
"""

from __future__ import annotations

import os
from pathlib import Path

from modelseal.errors import ConfigError, FormatError
from modelseal.format.header import check_relpath
from modelseal.format.manifest import MANIFEST_NAME, SEALED_MANIFEST_NAME

__all__ = ["model_files", "sealed_names"]


def model_files(src: Path) -> list[tuple[str, Path]]:
    """Regular files under ``src`` (symlinks to files are followed), sorted, as
    (POSIX relative path, absolute path)."""
    found: list[tuple[str, Path]] = []
    for root, dirs, files in os.walk(src, followlinks=False):
        base = Path(root)
        for d in sorted(dirs):
            if (base / d).is_symlink():
                raise ConfigError(f"{base / d} is a symlinked directory; copy it into place")
        dirs.sort()
        for name in sorted(files):
            full = base / name
            rel = full.relative_to(src).as_posix()
            if not full.is_file():
                raise ConfigError(f"{full} is not a regular file (or a dangling symlink)")
            try:
                check_relpath(rel, what="file name")
            except FormatError as exc:
                shown = os.fsencode(full).decode("utf-8", "backslashreplace")
                raise ConfigError(
                    f"cannot seal {shown}: {exc}; rename it (sealed names are UTF-8 relative paths)"
                ) from None
            if rel == MANIFEST_NAME:
                raise ConfigError(f"{full}: the name {MANIFEST_NAME} is reserved by modelseal")
            found.append((rel, full))
    if not found:
        raise ConfigError(f"{src} contains no files to seal")
    return found


def sealed_names(src: Path) -> list[str]:
    """Relative paths of everything in a sealed directory except the manifest (symlinked
    directories included, so that the manifest check reports them as extra)."""
    names: list[str] = []
    for root, dirs, files in os.walk(src, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            rel = (Path(root) / name).relative_to(src).as_posix()
            if rel != SEALED_MANIFEST_NAME:
                names.append(rel)
        names.extend(
            (Path(root) / d).relative_to(src).as_posix()
            for d in dirs
            if (Path(root) / d).is_symlink()
        )
    return names
