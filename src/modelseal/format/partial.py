"""Partially sealed safetensors (docs/reference/format.md; Enkrypt-style selective protection).

Only the tensors chosen by name are encrypted, in place and with the same byte length, so the
file stays a valid safetensors file: stock ``safetensors`` loads its plaintext tensors (the
sealed ones read as noise). The original header is kept, byte for byte, inside
``__metadata__["modelseal.partial"]`` together with the key id, salt, GCM tags, a key
commitment and a MAC, so unsealing restores the original file exactly and detects any change
to the header, the sealed tensors (GCM) or the plaintext tensors (MAC). Normative text:
docs/reference/format.md section 8. The safetensors container itself is parsed in
:mod:`modelseal.format.safetensors` (re-exported here).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from modelseal._internal.canonical import canonical_json
from modelseal._internal.encoding import b64url_decode, b64url_encode
from modelseal.crypto.aead import AesGcm, wipe
from modelseal.crypto.kdf import hkdf_sha256
from modelseal.crypto.secret import SecretBytes
from modelseal.errors import ConfigError, DecryptionError, FormatError
from modelseal.format.header import (
    MAX_SEGMENT_SIZE,
    MIN_SEGMENT_SIZE,
    SALT_LEN,
    TAG_LEN,
)
from modelseal.format.options import SealOptions
from modelseal.format.safetensors import (
    SafetensorsHeader,
    TensorInfo,
    is_nonnegative_int,
    no_duplicate_members,
    pread_exact,
    read_safetensors_header,
    select_tensors,
)

__all__ = [
    "FORMAT_ID",
    "META_KEY",
    "PartialParams",
    "SafetensorsHeader",
    "TensorInfo",
    "is_partially_sealed",
    "read_partial_params",
    "read_safetensors_header",
    "seal_partial",
    "select_tensors",
    "unseal_partial",
]

META_KEY: Final = "modelseal.partial"
FORMAT_ID: Final = "modelseal-partial/1"
INFO: Final = b"modelseal/partial/1"
_CHUNK = 4 << 20
_PARAMS: Final = frozenset(
    {
        "format",
        "alg",
        "key_id",
        "salt",
        "segment_size",
        "header",
        "sealed",
        "tags",
        "commit",
        "mac",
        "plain_sha256",
    }
)

#: Receives (absolute offset, bytes) of output; a no-op for verification.
Sink = Callable[[int, memoryview], None]
Progress = Callable[[int], None]


@dataclass(frozen=True)
class PartialParams:
    """The ``modelseal.partial`` metadata entry."""

    key_id: str
    salt: bytes
    segment_size: int
    header: bytes  # the original safetensors JSON header, byte for byte
    sealed: tuple[str, ...]
    tags: bytes
    commit: bytes
    mac: bytes
    plain_sha256: bytes

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT_ID,
                "alg": "AES-256-GCM",
                "key_id": self.key_id,
                "salt": b64url_encode(self.salt),
                "segment_size": self.segment_size,
                "header": b64url_encode(self.header),
                "sealed": list(self.sealed),
                "tags": b64url_encode(self.tags),
                "commit": b64url_encode(self.commit),
                "mac": b64url_encode(self.mac),
                "plain_sha256": self.plain_sha256.hex(),
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> PartialParams:
        try:
            doc = json.loads(text, object_pairs_hook=no_duplicate_members)
        except (ValueError, RecursionError):
            raise FormatError(f"{META_KEY} is not valid JSON") from None
        if not isinstance(doc, dict) or set(doc) != _PARAMS:
            raise FormatError(f"{META_KEY} must have exactly {sorted(_PARAMS)}")
        if doc["format"] != FORMAT_ID:
            raise FormatError(f"unsupported partial sealing format {doc['format']!r}")
        if doc["alg"] != "AES-256-GCM":
            raise FormatError(f"unknown algorithm {doc['alg']!r}")
        seg = doc["segment_size"]
        in_range = is_nonnegative_int(seg) and MIN_SEGMENT_SIZE <= seg <= MAX_SEGMENT_SIZE
        if not (in_range and seg & (seg - 1) == 0):
            raise FormatError("segment_size must be a power of two in 4 KiB..64 MiB")
        sealed = doc["sealed"]
        if (
            not isinstance(sealed, list)
            or not sealed
            or not all(isinstance(s, str) for s in sealed)
        ):
            raise FormatError("sealed must be a non-empty list of tensor names")
        if not isinstance(doc["key_id"], str) or not doc["key_id"]:
            raise FormatError("key_id must be a non-empty string")
        fields = {}
        for name in ("salt", "header", "tags", "commit", "mac"):
            if not isinstance(doc[name], str):
                raise FormatError(f"{name} must be a base64url string")
            fields[name] = b64url_decode(doc[name], what=name)
        plain = doc["plain_sha256"]
        if not isinstance(plain, str) or not re.fullmatch(r"[0-9a-f]{64}", plain):
            raise FormatError("plain_sha256 must be 64 hex digits")
        if (
            len(fields["salt"]) != SALT_LEN
            or len(fields["commit"]) != 32
            or len(fields["mac"]) != 32
        ):
            raise FormatError("salt, commit and mac must be 32 bytes")
        return cls(
            key_id=doc["key_id"],
            salt=fields["salt"],
            segment_size=seg,
            header=fields["header"],
            sealed=tuple(sealed),
            tags=fields["tags"],
            commit=fields["commit"],
            mac=fields["mac"],
            plain_sha256=bytes.fromhex(plain),
        )


def _segments(length: int, seg: int) -> int:
    return max(1, -(-length // seg))


def _nonce(tensor_index: int, segment: int, last: bool) -> bytes:
    return (
        tensor_index.to_bytes(5, "big")
        + segment.to_bytes(6, "big")
        + (b"\x01" if last else b"\x00")
    )


def _derive(
    dek: SecretBytes, salt: bytes, original: bytes, key_id: str, seg: int, sealed: Sequence[str]
) -> tuple[AesGcm, bytes, bytes]:
    """K ‖ C ‖ M = HKDF(DEK, salt, INFO ‖ SHA-256(original header) ‖ SHA-256(JCS(params)))."""
    if len(dek) != 32:
        raise ConfigError("a model key (DEK) must be 32 bytes")
    bound = canonical_json({"key_id": key_id, "segment_size": seg, "sealed": list(sealed)})
    info = INFO + hashlib.sha256(original).digest() + hashlib.sha256(bound).digest()
    okm = hkdf_sha256(dek, salt=salt, info=info, length=96)
    try:
        raw = okm.reveal()
        with SecretBytes(raw[:32]) as k:
            return AesGcm(k), raw[32:64], raw[64:]
    finally:
        okm.wipe()


def _mac(key: bytes, plain_sha256: bytes, tags: bytes) -> bytes:
    return hmac.new(key, b"modelseal/partial/1/mac" + plain_sha256 + tags, "sha256").digest()


def _outer_header(original: SafetensorsHeader, params: PartialParams) -> bytes:
    members = dict(original.members)
    meta = dict(original.metadata)
    meta[META_KEY] = params.to_json()
    members["__metadata__"] = meta
    raw = json.dumps(members, separators=(",", ":")).encode("utf-8")
    return raw + b" " * (-(8 + len(raw)) % 8)  # keep the data buffer 8-byte aligned


def _copy(
    fd: int,
    start: int,
    length: int,
    sink: Sink,
    dst_offset: int,
    hasher: Any,
    progress: Progress | None,
    buf: bytearray,
) -> None:
    view = memoryview(buf)
    done = 0
    while done < length:
        n = os.preadv(fd, [view[: min(len(view), length - done)]], start + done)
        if n == 0:
            raise FormatError("file ended early")
        hasher.update(view[:n])
        sink(dst_offset + done, view[:n])
        done += n
        if progress is not None:
            progress(n)


def _pwrite_sink(fd: int) -> Sink:
    def write(offset: int, data: memoryview) -> None:
        done = 0
        while done < len(data):
            done += os.pwrite(fd, data[done:], offset + done)

    return write


def seal_partial(
    src_fd: int,
    dst_fd: int,
    dek: SecretBytes,
    options: SealOptions,
    *,
    names: Iterable[str],
    _salt: bytes | None = None,
) -> PartialParams:
    """Write a partially sealed copy of the safetensors file ``src_fd`` to ``dst_fd``.

    The output header's length is fixed before any data is written (tags and MAC have fixed
    encoded sizes), the data is streamed once, then the final header is written in place.
    Of ``options`` it uses the key id, segment size and progress.
    """
    key_id = options.require_key_id()
    segment_size = options.segment_size
    progress = options.progress
    original = read_safetensors_header(src_fd)
    if META_KEY in original.metadata:
        raise ConfigError("this safetensors file is already partially sealed")
    chosen = set(names)
    sealed = [t for t in original.tensors if t.name in chosen]
    if len(sealed) != len(chosen):
        missing = sorted(chosen - {t.name for t in sealed})
        raise ConfigError(f"no tensor named {missing[0]!r}")
    if not sealed:
        raise ConfigError("no tensor selected; nothing would be sealed")
    salt = secrets.token_bytes(SALT_LEN) if _salt is None else _salt
    order = tuple(t.name for t in sealed)
    original_raw = struct.pack("<Q", len(original.raw)) + original.raw
    aead, commit, mac_key = _derive(dek, salt, original_raw, key_id, segment_size, order)
    n_tags = sum(_segments(t.end - t.start, segment_size) for t in sealed)
    params = PartialParams(
        key_id,
        salt,
        segment_size,
        original.raw,
        order,
        bytes(16 * n_tags),
        commit,
        bytes(32),
        bytes(32),
    )
    placeholder = _outer_header(original, params)
    data_start = 8 + len(placeholder)
    sink = _pwrite_sink(dst_fd)
    plain_hash = hashlib.sha256()
    tags = bytearray()
    buf = bytearray(max(_CHUNK, segment_size + TAG_LEN))
    try:
        index = {name: i for i, name in enumerate(order)}
        for t in original.tensors:
            src = original.data_start + t.start
            dst = data_start + t.start
            length = t.end - t.start
            if t.name not in index:
                _copy(src_fd, src, length, sink, dst, plain_hash, progress, buf)
                continue
            view = memoryview(buf)
            n_seg = _segments(length, segment_size)
            for k in range(n_seg):
                off = k * segment_size
                n = min(segment_size, length - off)
                got = 0
                while got < n:
                    r = os.preadv(src_fd, [view[got:n]], src + off + got)
                    if r == 0:
                        raise FormatError("file ended early")
                    got += r
                aead.encrypt_into(
                    _nonce(index[t.name], k, k == n_seg - 1), view[:n], view[: n + TAG_LEN]
                )
                sink(dst + off, view[:n])
                tags += view[n : n + TAG_LEN]
                if progress is not None:
                    progress(n)
    finally:
        wipe(buf)
        aead.close()
    final = PartialParams(
        key_id,
        salt,
        segment_size,
        original.raw,
        order,
        bytes(tags),
        commit,
        _mac(mac_key, plain_hash.digest(), bytes(tags)),
        plain_hash.digest(),
    )
    outer = _outer_header(original, final)
    if len(outer) != len(placeholder):  # pragma: no cover - fixed-size encodings
        raise FormatError("internal error: partial header length changed")
    sink(0, memoryview(struct.pack("<Q", len(outer)) + outer))
    os.ftruncate(dst_fd, data_start + original.data_len)
    return final


def read_partial_params(fd: int) -> tuple[SafetensorsHeader, PartialParams]:
    """Header and ``modelseal.partial`` parameters of a partially sealed file (no key)."""
    outer = read_safetensors_header(fd)
    text = outer.metadata.get(META_KEY)
    if text is None:
        raise FormatError("not a partially sealed safetensors file")
    return outer, PartialParams.from_json(text)


def is_partially_sealed(fd: int) -> bool:
    try:
        read_partial_params(fd)
    except FormatError:
        return False
    return True


def unseal_partial(
    src_fd: int,
    dst_fd: int | None,
    dek: SecretBytes,
    *,
    progress: Progress | None = None,
) -> PartialParams:
    """Restore the original safetensors bytes into ``dst_fd`` (``None``: verify only).

    Everything is checked: the outer header must equal the authenticated original plus our
    metadata entry, the key commitment must match (wrong key ⇒ :class:`DecryptionError`
    before anything is decrypted), every sealed segment's GCM tag, and the MAC over the
    plaintext tensors. ``dst_fd`` receives plaintext before the final MAC check: callers
    write to a temporary file and delete it on failure.
    """
    outer, params = read_partial_params(src_fd)
    original = SafetensorsHeader.parse(params.header, 8 + len(params.header) + outer.data_len)
    expected_members = dict(original.members)
    meta = dict(original.metadata)
    meta[META_KEY] = outer.metadata[META_KEY]
    expected_members["__metadata__"] = meta
    if outer.members != expected_members:
        raise FormatError("safetensors header differs from the sealed original (tampered)")
    if META_KEY in original.metadata:
        raise FormatError("nested partial sealing is not supported")
    index = {name: i for i, name in enumerate(params.sealed)}
    sealed = [t for t in original.tensors if t.name in index]
    if [t.name for t in sealed] != list(params.sealed):
        raise FormatError("sealed tensor list does not match the header")
    n_tags = sum(_segments(t.end - t.start, params.segment_size) for t in sealed)
    if len(params.tags) != 16 * n_tags:
        raise FormatError("wrong number of GCM tags")
    original_raw = struct.pack("<Q", len(original.raw)) + original.raw
    aead, commit, mac_key = _derive(
        dek, params.salt, original_raw, params.key_id, params.segment_size, params.sealed
    )
    if not hmac.compare_digest(commit, params.commit):
        aead.close()
        raise DecryptionError()

    def discard(_offset: int, _data: memoryview) -> None:
        return None

    sink = discard if dst_fd is None else _pwrite_sink(dst_fd)
    sink(0, memoryview(original_raw))
    plain_hash = hashlib.sha256()
    seg = params.segment_size
    buf = bytearray(max(_CHUNK, seg + TAG_LEN))
    tag_pos = 0
    try:
        for t in original.tensors:
            src = outer.data_start + t.start
            dst = original.data_start + t.start
            length = t.end - t.start
            if t.name not in index:
                _copy(src_fd, src, length, sink, dst, plain_hash, progress, buf)
                continue
            view = memoryview(buf)
            n_seg = _segments(length, seg)
            for k in range(n_seg):
                off = k * seg
                n = min(seg, length - off)
                data = pread_exact(src_fd, n, src + off) if n else b""
                view[:n] = data
                view[n : n + TAG_LEN] = params.tags[tag_pos : tag_pos + TAG_LEN]
                tag_pos += TAG_LEN
                aead.decrypt_into(
                    _nonce(index[t.name], k, k == n_seg - 1), view[: n + TAG_LEN], view[:n]
                )
                sink(dst + off, view[:n])
                if progress is not None:
                    progress(n)
    finally:
        wipe(buf)
        aead.close()
    digest = plain_hash.digest()
    if not hmac.compare_digest(digest, params.plain_sha256) or not hmac.compare_digest(
        _mac(mac_key, digest, params.tags), params.mac
    ):
        raise DecryptionError()
    if dst_fd is not None:
        os.ftruncate(dst_fd, original.data_start + original.data_len)
    return params
