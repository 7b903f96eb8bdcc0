"""The model manifest: which files make up a sealed model, and the model digest.

The plaintext manifest is RFC 8785 canonical JSON; it is stored sealed as
``modelseal-manifest.json.sealed``. The model digest is ``sha256:`` + hex(SHA-256(manifest
bytes)); it is what the KBS registers with the key and what a TEE attests it will load.
Verification compares *headers* (no key needed), so a missing, extra, swapped or rolled-back
file is caught before any weight is decrypted.

Hidden names (``modelseal seal --hide-names``, manifest format ``modelseal-manifest/2``):
every file is sealed under an opaque random name, its plaintext zero-padded to
:func:`hidden_size`, so headers, blob names and blob lengths tell a registry neither the
file names nor their exact sizes; the manifest maps each name back to the path and size,
and is itself padded with spaces. Only a key holder learns the model's layout.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from modelseal._internal.canonical import canonical_json
from modelseal.errors import FormatError, IntegrityError
from modelseal.format.header import Header, check_relpath

__all__ = [
    "MANIFEST_FORMAT",
    "MANIFEST_FORMAT_HIDDEN",
    "MANIFEST_NAME",
    "MAX_MANIFEST_LEN",
    "SEALED_MANIFEST_NAME",
    "SEALED_SUFFIX",
    "FileEntry",
    "Manifest",
    "model_digest",
    "hidden_size",
    "opaque_name",
    "sealed_name",
]

MANIFEST_NAME: Final = "modelseal-manifest.json"
SEALED_SUFFIX: Final = ".sealed"
SEALED_MANIFEST_NAME: Final = MANIFEST_NAME + SEALED_SUFFIX
MANIFEST_FORMAT: Final = "modelseal-manifest/1"
#: a manifest whose files are sealed under opaque names (``name``), padded
MANIFEST_FORMAT_HIDDEN: Final = "modelseal-manifest/2"
#: smallest padded length: every small file (configs, tokenizers) looks the same
MIN_HIDDEN_SIZE: Final = 4096
#: 16 MiB of JSON is ~100k files; anything larger is refused rather than parsed.
MAX_MANIFEST_LEN: Final = 16 << 20

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_TOP: Final = frozenset({"format", "model", "version", "key_id", "files"})
_ENTRY: Final = frozenset({"path", "size", "sha256", "header_sha256", "sealed_size"})
_OPAQUE = re.compile(r"\A[0-9a-f]{32}\Z")


def hidden_size(size: int) -> int:
    """The stored (padded) length of a ``size``-byte file under hidden names.

    Padmé (Nikitin et al., "Reducing Metadata Leakage from Encrypted Files and
    Communication with PURBs", PETS 2019) of ``max(size, 4096)``: round up so that only
    the top ``floor(log2(E)) + 1`` bits of the length stay, where ``E = floor(log2 L)``.
    At most 12 % overhead; a length reveals O(log log L) bits instead of log L.
    """
    length = max(size, MIN_HIDDEN_SIZE)
    exponent = length.bit_length() - 1
    kept = exponent.bit_length()
    mask = (1 << (exponent - kept)) - 1
    return (length + mask) & ~mask


def opaque_name() -> str:
    """A fresh random name for a sealed file: 32 lower-case hex digits (128 bits)."""
    return secrets.token_hex(16)


def model_digest(manifest_bytes: bytes) -> str:
    """``"sha256:" + hex(SHA-256(plaintext manifest bytes))``."""
    return "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()


def sealed_name(path: str) -> str:
    """Relative name of the sealed file that holds ``path``."""
    return path + SEALED_SUFFIX


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise FormatError(f"manifest: duplicate member {key!r}")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise FormatError(f"manifest: non-standard JSON constant {name}")


def _nonneg_int(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise FormatError(f"manifest: {what} must be a non-negative integer")
    return value


def _opt_str(value: object, what: str) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise FormatError(f"manifest: {what} must be a non-empty string or null")
    return value


@dataclass(frozen=True)
class FileEntry:
    """One plaintext file of the model."""

    path: str
    size: int
    sha256: str
    header_sha256: str
    sealed_size: int
    #: hidden names only: the opaque name the file is sealed under (its header ``path``)
    name: str | None = None

    @property
    def header_path(self) -> str:
        """The ``path`` member of this file's sealed header."""
        return self.name if self.name is not None else self.path

    @property
    def sealed_relpath(self) -> str:
        """Relative name of the sealed file (and blob) holding this file."""
        return sealed_name(self.header_path)

    @property
    def stored_size(self) -> int:
        """The ``size`` member of this file's sealed header (padded under hidden names)."""
        return hidden_size(self.size) if self.name is not None else self.size

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": self.path,
            "size": self.size,
            "sha256": self.sha256,
            "header_sha256": self.header_sha256,
            "sealed_size": self.sealed_size,
        }
        if self.name is not None:
            out["name"] = self.name
        return out

    @classmethod
    def from_json(cls, value: object, *, hidden: bool = False) -> FileEntry:
        if not isinstance(value, dict):
            raise FormatError("manifest: each file entry must be an object")
        members = _ENTRY | {"name"} if hidden else _ENTRY
        if set(value) != members:
            raise FormatError(f"manifest: a file entry must have exactly {sorted(members)}")
        path = check_relpath(value["path"], what="manifest path")
        opaque = value.get("name")
        if hidden and not (isinstance(opaque, str) and _OPAQUE.fullmatch(opaque)):
            raise FormatError(f"manifest: name of {path!r} must be 32 lower-case hex")
        for name in ("sha256", "header_sha256"):
            if not isinstance(value[name], str) or not _HEX64.fullmatch(value[name]):
                raise FormatError(f"manifest: {name} of {path!r} must be 64 lower-case hex")
        return cls(
            path=path,
            size=_nonneg_int(value["size"], f"size of {path!r}"),
            sha256=value["sha256"],
            header_sha256=value["header_sha256"],
            sealed_size=_nonneg_int(value["sealed_size"], f"sealed_size of {path!r}"),
            name=opaque,
        )


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest. ``raw`` are the exact plaintext bytes the digest is taken over."""

    key_id: str
    files: tuple[FileEntry, ...]
    model: str | None = None
    version: str | None = None
    raw: bytes = b""

    @property
    def hidden(self) -> bool:
        """Files are sealed under opaque names (``modelseal-manifest/2``)."""
        return bool(self.files) and self.files[0].name is not None

    @classmethod
    def build(
        cls,
        *,
        key_id: str,
        files: Iterable[FileEntry],
        model: str | None = None,
        version: str | None = None,
    ) -> Manifest:
        """Make a manifest (files sorted by path) and its canonical bytes; entries with a
        ``name`` make a hidden-names manifest, padded with spaces to :func:`hidden_size`."""
        ordered = tuple(sorted(files, key=lambda e: e.path))
        hidden = any(e.name is not None for e in ordered)
        doc = {
            "format": MANIFEST_FORMAT_HIDDEN if hidden else MANIFEST_FORMAT,
            "model": model,
            "version": version,
            "key_id": key_id,
            "files": [e.to_json() for e in ordered],
        }
        raw = canonical_json(doc)
        if hidden:
            raw += b" " * (hidden_size(len(raw)) - len(raw))
        return cls.parse(raw)

    @classmethod
    def parse(cls, raw: bytes) -> Manifest:
        """Parse and validate manifest bytes (strict: unknown members are refused)."""
        if len(raw) > MAX_MANIFEST_LEN:
            raise FormatError(f"manifest is larger than {MAX_MANIFEST_LEN} bytes")
        try:
            doc = json.loads(
                raw.decode("utf-8"),
                object_pairs_hook=_no_duplicates,
                parse_constant=_reject_constant,
            )
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise FormatError("manifest is not valid UTF-8 JSON") from None
        if not isinstance(doc, dict) or set(doc) != _TOP:
            raise FormatError(f"manifest must be an object with exactly {sorted(_TOP)}")
        if doc["format"] not in (MANIFEST_FORMAT, MANIFEST_FORMAT_HIDDEN):
            raise FormatError(f"unsupported manifest format {doc['format']!r}")
        hidden = doc["format"] == MANIFEST_FORMAT_HIDDEN
        key_id = doc["key_id"]
        if not isinstance(key_id, str) or not key_id:
            raise FormatError("manifest: key_id must be a non-empty string")
        if not isinstance(doc["files"], list):
            raise FormatError("manifest: files must be a list")
        files = tuple(FileEntry.from_json(e, hidden=hidden) for e in doc["files"])
        paths = [e.path for e in files]
        if len(set(paths)) != len(paths):
            raise FormatError("manifest: a path is listed twice")
        names = [e.sealed_relpath for e in files]
        if len(set(names)) != len(names) or SEALED_MANIFEST_NAME in names:
            raise FormatError("manifest: two files are sealed under one name")
        if MANIFEST_NAME in paths:
            raise FormatError(f"manifest: {MANIFEST_NAME!r} is reserved")
        return cls(
            key_id=key_id,
            files=files,
            model=_opt_str(doc["model"], "model"),
            version=_opt_str(doc["version"], "version"),
            raw=bytes(raw),
        )

    @property
    def digest(self) -> str:
        """The model digest, ``sha256:<hex>``."""
        return model_digest(self.raw)

    @property
    def total_size(self) -> int:
        return sum(e.size for e in self.files)

    def entry(self, path: str) -> FileEntry:
        for e in self.files:
            if e.path == path:
                return e
        raise IntegrityError(f"{path}: not listed in the model manifest", paths=[path])

    def check_manifest_header(self, header: Header) -> None:
        """The sealed manifest's own header must say what this manifest says."""
        if header.path != MANIFEST_NAME:
            raise IntegrityError(
                f"{SEALED_MANIFEST_NAME}: holds {header.path!r}, not the manifest",
                paths=[SEALED_MANIFEST_NAME],
            )
        if header.key_id != self.key_id:
            raise IntegrityError(
                f"{SEALED_MANIFEST_NAME}: key_id differs from the manifest",
                paths=[SEALED_MANIFEST_NAME],
            )

    def check_file(self, sealed_relpath: str, header: Header, sealed_size: int) -> FileEntry:
        """Check one sealed file's header against its manifest entry (no key needed)."""
        if not sealed_relpath.endswith(SEALED_SUFFIX):
            raise IntegrityError(
                f"{sealed_relpath}: unexpected file (not in the model manifest)",
                paths=[sealed_relpath],
            )
        entry = next((e for e in self.files if e.sealed_relpath == sealed_relpath), None)
        if entry is None:
            raise IntegrityError(
                f"{sealed_relpath}: unexpected file (not in the model manifest)",
                paths=[sealed_relpath],
            )
        if header.path != entry.header_path:
            raise IntegrityError(
                f"{sealed_relpath}: holds the sealed data of {header.path!r} (files swapped)",
                paths=[sealed_relpath],
            )
        if header.key_id != self.key_id:
            raise IntegrityError(
                f"{sealed_relpath}: sealed under key {header.key_id!r}, manifest says "
                f"{self.key_id!r}",
                paths=[sealed_relpath],
            )
        if self.model is not None and header.model not in (None, self.model):
            raise IntegrityError(
                f"{sealed_relpath}: belongs to model {header.model!r}, not {self.model!r}",
                paths=[sealed_relpath],
            )
        if (
            header.digest_hex != entry.header_sha256
            or header.size != entry.stored_size
            or sealed_size != entry.sealed_size
        ):
            raise IntegrityError(
                f"{sealed_relpath}: does not match the model manifest "
                "(replaced, rolled back or re-sealed)",
                paths=[sealed_relpath],
            )
        return entry

    def check_names(self, names: Iterable[str]) -> None:
        """The set of sealed files present (relative paths, manifest excluded) must be
        exactly one ``<path>.sealed`` per entry; names every missing and extra file."""
        present = set(names)
        expected = {e.sealed_relpath for e in self.files}
        extra = sorted(present - expected)
        missing = sorted(expected - present)
        if extra or missing:
            parts = []
            if missing:
                parts.append("missing: " + ", ".join(missing))
            if extra:
                parts.append("not in the manifest: " + ", ".join(extra))
            raise IntegrityError(
                "sealed model does not match its manifest (" + "; ".join(parts) + ")",
                paths=[*missing, *extra],
            )

    def check_files(self, observed: Mapping[str, tuple[Header, int]]) -> dict[str, FileEntry]:
        """Check a whole sealed directory: ``observed`` maps each sealed file's relative
        path (other than the manifest) to ``(header, sealed file length)``; returns the
        manifest entry (plaintext path and size) of each.

        Missing, extra, swapped and rolled-back files raise :class:`IntegrityError` naming
        the offending files.
        """
        self.check_names(observed)
        return {name: self.check_file(name, *observed[name]) for name in sorted(observed)}
