"""An independent v1 reader and writer written from docs/reference/format.md only.

It deliberately imports nothing from modelseal.format: it is the second implementation the
package is checked against (both directions). Keep it at most 60 lines of code.
"""
# ruff: noqa: TID251 - an independent implementation uses the primitives directly

import base64
import hashlib
import hmac
import json
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAGIC = b"\x89MSEAL\r\n"


def _keys(dek: bytes, pre_and_header: bytes, salt: bytes) -> tuple[bytes, bytes]:
    h = hashlib.sha256(pre_and_header).digest()
    okm = HKDF(hashes.SHA256(), 64, salt, b"modelseal/v1/file" + h).derive(dek)
    return okm[:32], okm[32:]


def _nonce(i: int, n: int) -> bytes:
    return i.to_bytes(11, "big") + (b"\x01" if i == n - 1 else b"\x00")


def _b64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def read(blob: bytes, dek: bytes) -> tuple[dict, bytes]:  # type: ignore[type-arg]
    """Decrypt a whole v1 file; raises ValueError (structure) or InvalidTag (auth)."""
    if blob[:8] != MAGIC or struct.unpack(">H", blob[8:10])[0] != 1:
        raise ValueError("bad magic or version")
    hlen = struct.unpack(">I", blob[10:14])[0]
    if hlen > 1 << 20:
        raise ValueError("header too long")
    header = json.loads(blob[14 : 14 + hlen])
    if header["alg"] != "AES-256-GCM":
        raise ValueError("unknown alg")
    seg, size = header["segment_size"], header["size"]
    n = max(1, -(-size // seg))
    base = 14 + hlen + 32
    if len(blob) != base + size + 16 * n:
        raise ValueError("length mismatch")
    key, commit = _keys(dek, blob[: 14 + hlen], _b64u(header["salt"]))
    if not hmac.compare_digest(commit, blob[14 + hlen : base]):
        raise ValueError("key commitment mismatch")
    aead, out = AESGCM(key), bytearray()
    for i in range(n):
        start = base + i * (seg + 16)
        length = min(size, (i + 1) * seg) - i * seg + 16
        out += aead.decrypt(_nonce(i, n), blob[start : start + length], None)
    return header, bytes(out)


def write(data: bytes, dek: bytes, salt: bytes, seg: int, key_id: str, path: str) -> bytes:
    """Seal ``data`` as v1 (header serialized with Python's json, not JCS: still valid)."""
    salt_text = base64.urlsafe_b64encode(salt).rstrip(b"=").decode()
    header = {"alg": "AES-256-GCM", "segment_size": seg, "size": len(data), "salt": salt_text,
              "key_id": key_id, "path": path}  # fmt: skip
    raw = json.dumps(header).encode()
    pre = MAGIC + struct.pack(">HI", 1, len(raw))
    key, commit = _keys(dek, pre + raw, salt)
    n = max(1, -(-len(data) // seg))
    aead = AESGCM(key)
    segments = (aead.encrypt(_nonce(i, n), data[i * seg : (i + 1) * seg], None) for i in range(n))
    return pre + raw + commit + b"".join(segments)
