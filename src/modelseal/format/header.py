"""Sealed format v1: preamble, header JSON and the byte layout that follows from it.

Everything here works without a key: the registry, ``modelseal inspect`` and the loader parse
headers and compute segment offsets before (or without) holding the DEK. The normative text
is docs/reference/format.md; the numbers below are its limits.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from modelseal._internal.canonical import canonical_json
from modelseal._internal.encoding import b64url_decode, b64url_encode
from modelseal.errors import FormatError

__all__ = [
    "ALG_AES_256_GCM",
    "COMMIT_LEN",
    "DEFAULT_SEGMENT_SIZE",
    "MAGIC",
    "MAX_HEADER_LEN",
    "MAX_MODEL_HEADER_BYTES",
    "MAX_SEGMENT_SIZE",
    "MAX_SIZE",
    "MIN_SEGMENT_SIZE",
    "PREAMBLE_LEN",
    "SALT_LEN",
    "TAG_LEN",
    "VERSION",
    "Header",
    "build_header",
    "check_relpath",
    "parse_preamble",
    "sealed_size",
    "segment_count",
]

MAGIC: Final = b"\x89MSEAL\r\n"
VERSION: Final = 1
PREAMBLE_LEN: Final = 14
COMMIT_LEN: Final = 32
TAG_LEN: Final = 16
SALT_LEN: Final = 32
MAX_HEADER_LEN: Final = 1 << 20
#: Sum of ``header_len`` over every sealed file of one model (manifest included) that a
#: reader of whole models accepts. Writers emit ~300-byte headers, so this is ~100,000
#: files (the most model info may list); a registry padding each header towards 1 MiB
#: hits it after ~32 files instead of making the loader download a gigabyte of headers.
MAX_MODEL_HEADER_BYTES: Final = 32 << 20
MIN_SEGMENT_SIZE: Final = 4 << 10
MAX_SEGMENT_SIZE: Final = 64 << 20
DEFAULT_SEGMENT_SIZE: Final = 4 << 20
#: Largest plaintext a v1 file may declare (far above any model file; keeps arithmetic sane).
MAX_SIZE: Final = (1 << 62) - 1
ALG_AES_256_GCM: Final = "AES-256-GCM"
#: Reserved by the format reference; recognised, but not implemented by this reader.
RESERVED_ALGS: Final = frozenset({"ChaCha20-Poly1305"})

_MAX_TEXT = 1024
_MAX_PATH = 4096
_REQUIRED: Final = ("alg", "segment_size", "size", "salt", "key_id", "path")
_OPTIONAL: Final = ("model", "content_type", "created")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PREAMBLE = struct.Struct(">8sHI")


def parse_preamble(data: bytes | bytearray | memoryview) -> int:
    """Check magic and version of the first 14 bytes; return ``header_len``."""
    if len(data) < PREAMBLE_LEN:
        raise FormatError("file is too short to be a sealed file")
    magic, version, header_len = _PREAMBLE.unpack_from(data, 0)
    if magic != MAGIC:
        raise FormatError("not a modelseal sealed file (bad magic)")
    if version != VERSION:
        raise FormatError(f"unsupported sealed format version {version} (this reader knows 1)")
    if not 2 <= header_len <= MAX_HEADER_LEN:
        raise FormatError(f"header length {header_len} outside 2..{MAX_HEADER_LEN}")
    return int(header_len)


def check_relpath(path: object, *, what: str = "path") -> str:
    """Validate a model-relative path: POSIX, relative, no ``..``/``.``/empty components."""
    if not isinstance(path, str) or not path:
        raise FormatError(f"{what} must be a non-empty string")
    if len(path.encode("utf-8", "surrogatepass")) > _MAX_PATH:
        raise FormatError(f"{what} is longer than {_MAX_PATH} bytes")
    if _CONTROL.search(path) or "\\" in path:
        raise FormatError(f"{what} {path!r} contains a control character or backslash")
    if path.startswith("/"):
        raise FormatError(f"{what} {path!r} is absolute")
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise FormatError(f"{what} {path!r} has an empty, '.' or '..' component")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise FormatError(f"{what} is not valid UTF-8") from None
    return path


def segment_count(size: int, segment_size: int) -> int:
    """``n = max(1, ceil(size / segment_size))``."""
    return max(1, -(-size // segment_size))


def sealed_size(size: int, segment_size: int, header_len: int) -> int:
    """Total sealed file length: ``14 + header_len + 32 + size + 16 n``."""
    n = segment_count(size, segment_size)
    return PREAMBLE_LEN + header_len + COMMIT_LEN + size + TAG_LEN * n


def _reject_constant(name: str) -> Any:
    raise FormatError(f"header: non-standard JSON constant {name}")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise FormatError(f"header: duplicate member {key!r}")
        out[key] = value
    return out


def _text(members: Mapping[str, Any], name: str, *, required: bool) -> str | None:
    value = members.get(name)
    if value is None and not required and name not in members:
        return None
    if not isinstance(value, str) or not value:
        raise FormatError(f"header: {name!r} must be a non-empty string")
    if len(value) > _MAX_TEXT or _CONTROL.search(value):
        raise FormatError(f"header: {name!r} is too long or has control characters")
    return value


def _int(members: Mapping[str, Any], name: str) -> int:
    value = members[name]
    if not isinstance(value, int) or isinstance(value, bool):
        raise FormatError(f"header: {name!r} must be an integer")
    return value


@dataclass(frozen=True, eq=False, slots=True)
class Header:
    """A parsed, validated v1 header plus the layout it implies.

    The header bytes themselves are not kept: ``digest`` (``H = SHA-256(preamble ‖
    header)``) is what authenticates them (it enters the file key's HKDF info, and the
    manifest lists it as ``header_sha256``), ``header_len`` fixes the layout, and the
    validated members below are everything a reader uses. A loader holds one Header per
    file before anything is authenticated; keeping up to 1 MiB of (possibly whitespace-
    padded) bytes for each would let a hostile registry grow its memory with the file
    count. :attr:`raw` re-encodes the members for writers, whose headers are canonical.
    """

    digest: bytes
    header_len: int
    alg: str
    segment_size: int
    size: int
    salt: bytes
    key_id: str
    path: str
    model: str | None = None
    content_type: str | None = None
    created: str | None = None

    # --- parsing -------------------------------------------------------------------------
    @classmethod
    def parse(cls, prefix: bytes | bytearray | memoryview) -> Header:
        """Parse the preamble and header from the first ``14 + header_len`` (or more) bytes."""
        header_len = parse_preamble(prefix)
        end = PREAMBLE_LEN + header_len
        if len(prefix) < end:
            raise FormatError("file ends inside the header")
        view = memoryview(prefix)[:end]
        try:
            return cls._from_raw(hashlib.sha256(view).digest(), view[PREAMBLE_LEN:])
        finally:
            view.release()

    @classmethod
    def _from_raw(cls, digest: bytes, raw: bytes | memoryview) -> Header:
        try:
            text = str(raw, "utf-8")
        except UnicodeDecodeError:
            raise FormatError("header is not valid UTF-8") from None
        try:
            members = json.loads(
                text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant
            )
        except (ValueError, RecursionError):
            raise FormatError("header is not valid JSON") from None
        del text
        if not isinstance(members, dict):
            raise FormatError("header must be a JSON object")
        missing = [name for name in _REQUIRED if name not in members]
        if missing:
            raise FormatError(f"header lacks required member(s): {', '.join(missing)}")
        unknown = sorted(set(members) - set(_REQUIRED) - set(_OPTIONAL))
        if unknown:
            raise FormatError(f"header has unknown member(s): {', '.join(unknown)}")
        alg = members["alg"]
        if alg in RESERVED_ALGS:
            raise FormatError(f"algorithm {alg!r} is reserved and not supported by this reader")
        if alg != ALG_AES_256_GCM:
            raise FormatError(f"unknown algorithm {alg!r}")
        segment_size = _int(members, "segment_size")
        if not (
            MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE
            and segment_size & (segment_size - 1) == 0
        ):
            raise FormatError("header: segment_size must be a power of two in 4 KiB..64 MiB")
        size = _int(members, "size")
        if not 0 <= size <= MAX_SIZE:
            raise FormatError("header: size out of range")
        salt_text = members["salt"]
        if not isinstance(salt_text, str):
            raise FormatError("header: 'salt' must be a base64url string")
        salt = b64url_decode(salt_text, what="header salt")
        if len(salt) != SALT_LEN or b64url_encode(salt) != salt_text:
            raise FormatError(f"header: salt must be {SALT_LEN} bytes, unpadded base64url")
        key_id = _text(members, "key_id", required=True)
        path = check_relpath(members["path"], what="header path")
        assert key_id is not None
        return cls(
            digest=digest,
            header_len=len(raw),
            alg=ALG_AES_256_GCM,
            segment_size=segment_size,
            size=size,
            salt=salt,
            key_id=key_id,
            path=path,
            model=_text(members, "model", required=False),
            content_type=_text(members, "content_type", required=False),
            created=_text(members, "created", required=False),
        )

    @property
    def raw(self) -> bytes:
        """The header bytes, re-encoded from the members (RFC 8785, as writers emit them).

        Raises :class:`FormatError` for a header that was not stored canonically (its
        exact bytes were not kept, and no other encoding has this header's digest).
        """
        raw = canonical_json(self.to_json())
        if (
            len(raw) != self.header_len
            or hashlib.sha256(_PREAMBLE.pack(MAGIC, VERSION, len(raw)) + raw).digest()
            != self.digest
        ):
            raise FormatError("header bytes are not canonical JSON and were not kept")
        return raw

    # --- layout --------------------------------------------------------------------------
    @property
    def preamble(self) -> bytes:
        return _PREAMBLE.pack(MAGIC, VERSION, self.header_len)

    @property
    def prefix_len(self) -> int:
        """Bytes before the commitment: ``14 + header_len``."""
        return PREAMBLE_LEN + self.header_len

    @property
    def data_offset(self) -> int:
        """Offset of segment 0: ``14 + header_len + 32``."""
        return PREAMBLE_LEN + self.header_len + COMMIT_LEN

    @property
    def segment_count(self) -> int:
        return segment_count(self.size, self.segment_size)

    @property
    def sealed_size(self) -> int:
        return sealed_size(self.size, self.segment_size, self.header_len)

    @property
    def digest_hex(self) -> str:
        return self.digest.hex()

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.segment_count:
            raise IndexError(f"segment {index} out of range 0..{self.segment_count - 1}")

    def segment_offset(self, index: int) -> int:
        """File offset of segment ``index`` (ciphertext ‖ tag)."""
        self._check_index(index)
        return self.data_offset + index * (self.segment_size + TAG_LEN)

    def segment_plain_len(self, index: int) -> int:
        """Plaintext bytes in segment ``index``."""
        self._check_index(index)
        return min(self.size, (index + 1) * self.segment_size) - index * self.segment_size

    def segment_sealed_len(self, index: int) -> int:
        """Stored bytes of segment ``index``: plaintext length + 16."""
        return self.segment_plain_len(index) + TAG_LEN

    def segments_for_range(self, offset: int, length: int) -> range:
        """Indices of the segments holding plaintext ``[offset, offset + length)``."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(f"range {offset}+{length} outside the plaintext size {self.size}")
        if length == 0:
            return range(0)
        return range(offset // self.segment_size, (offset + length - 1) // self.segment_size + 1)

    def to_json(self) -> dict[str, Any]:
        """The header members (for ``modelseal inspect``): every member a valid header can
        hold is a field here, so this is exactly the stored object."""
        members: dict[str, Any] = {
            "alg": self.alg,
            "segment_size": self.segment_size,
            "size": self.size,
            "salt": b64url_encode(self.salt),
            "key_id": self.key_id,
            "path": self.path,
        }
        for name, value in (
            ("model", self.model),
            ("content_type", self.content_type),
            ("created", self.created),
        ):
            if value is not None:
                members[name] = value
        return members


def build_header(
    *,
    size: int,
    key_id: str,
    path: str,
    salt: bytes,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
    model: str | None = None,
    content_type: str | None = None,
    created: str | None = None,
) -> Header:
    """Serialize a header (RFC 8785 canonical JSON) and parse it back, so every writer
    output passes exactly the checks a reader applies."""
    members: dict[str, Any] = {
        "alg": ALG_AES_256_GCM,
        "segment_size": segment_size,
        "size": size,
        "salt": b64url_encode(salt),
        "key_id": key_id,
        "path": path,
    }
    for name, value in (("model", model), ("content_type", content_type), ("created", created)):
        if value is not None:
            members[name] = value
    raw = canonical_json(members)
    if len(raw) > MAX_HEADER_LEN:
        raise FormatError("header would exceed 1 MiB")
    preamble = _PREAMBLE.pack(MAGIC, VERSION, len(raw))
    return Header._from_raw(hashlib.sha256(preamble + raw).digest(), raw)
