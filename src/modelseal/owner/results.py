"""What the owner operations return (and what ``publish`` uploads and registers)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from modelseal.format.header import Header
from modelseal.format.manifest import SEALED_MANIFEST_NAME, FileEntry, Manifest

__all__ = ["CNAP_SUFFIX", "SealFormat", "SealedFile", "SealedModel", "UnsealResult"]

SealFormat = Literal["v1", "cnap", "partial"]
#: File name suffix of a CNAP sealed file (the CNAP tools' convention).
CNAP_SUFFIX = ".enc"


@dataclass(frozen=True)
class SealedFile:
    """One sealed (or unsealed) single file."""

    path: Path
    format: SealFormat
    size: int
    sealed_size: int
    header: Header | None = None


@dataclass(frozen=True)
class SealedModel:
    """A sealed model directory: what publish uploads and registers."""

    directory: Path
    manifest: Manifest
    model_digest: str

    @property
    def files(self) -> tuple[FileEntry, ...]:
        return self.manifest.files

    def sealed_paths(self) -> list[str]:
        """Relative paths of every sealed file, manifest included."""
        return [SEALED_MANIFEST_NAME, *(e.sealed_relpath for e in self.manifest.files)]


@dataclass(frozen=True)
class UnsealResult:
    """What unseal or verify produced: where, which format, how many files and bytes."""

    path: Path
    format: SealFormat
    files: int
    size: int
    model_digest: str | None = None
