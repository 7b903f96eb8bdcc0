"""Regenerate the sealed-format test vectors in this directory (deterministic).

Usage: ``.venv/bin/python tests/vectors/format/make_vectors.py [OUTDIR]``

Positive v1 vectors come from the package writer with a fixed DEK and fixed salts (the
test-only ``_salt`` seam); negative vectors are byte-level edits of them, plus two files
built here by hand with the key (a last segment without the final flag, a non-final segment
with it) that only a key holder could make. CNAP vectors use a fixed IV. ``index.json``
lists every file with the expected result; tests/unit/format/test_vectors.py decodes them
and checks that this script reproduces them byte for byte.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes  # noqa: TID251 - hand-built negatives
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: TID251
from cryptography.hazmat.primitives.kdf.hkdf import HKDF  # noqa: TID251

from modelseal.crypto.secret import SecretBytes
from modelseal.format import cnap
from modelseal.format.manifest import (
    MANIFEST_NAME,
    SEALED_MANIFEST_NAME,
    FileEntry,
    Manifest,
    hidden_size,
)
from modelseal.format.options import SealOptions
from modelseal.format.v1 import SealWriter

HERE = Path(__file__).resolve().parent
KEY = bytes(range(32))
WRONG_KEY = bytes(range(1, 33))
SEG = 4096
KEY_ID = "models/vector-model/v1"


def plaintext(n: int, label: str) -> bytes:
    """Deterministic bytes: SHA-256 counter stream seeded with ``label``."""
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(f"{label}/{i}".encode()).digest()
        i += 1
    return bytes(out[:n])


def salt(label: str) -> bytes:
    return hashlib.sha256(b"salt/" + label.encode()).digest()


def seal(data: bytes, label: str, **extra: Any) -> bytes:
    import io

    out = io.BytesIO()
    path = extra.pop("path", f"{label}.bin")
    options = SealOptions(key_id=KEY_ID, segment_size=SEG).but(**extra)
    with SealWriter(
        out, SecretBytes(KEY), options, size=len(data), path=path, _salt=salt(label)
    ) as writer:
        writer.write(data)
    return out.getvalue()


def layout(blob: bytes) -> tuple[int, int]:
    """(offset of segment 0, header_len) of a v1 blob."""
    header_len = struct.unpack(">I", blob[10:14])[0]
    return 14 + header_len + 32, header_len


def with_header(blob: bytes, members: dict[str, Any] | bytes, *, version: int = 1) -> bytes:
    """Replace the header (and re-derive nothing): used for structural negatives."""
    _, header_len = layout(blob)
    raw = members if isinstance(members, bytes) else json.dumps(members).encode()
    rest = blob[14 + header_len :]
    return b"\x89MSEAL\r\n" + struct.pack(">HI", version, len(raw)) + raw + rest


def hand_sealed(data: bytes, label: str, flags: list[int]) -> bytes:
    """A v1 file built from the spec with explicit final flags per segment."""
    members = {
        "alg": "AES-256-GCM",
        "key_id": KEY_ID,
        "path": f"{label}.bin",
        "salt": base64.urlsafe_b64encode(salt(label)).rstrip(b"=").decode(),
        "segment_size": SEG,
        "size": len(data),
    }
    raw = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    pre = b"\x89MSEAL\r\n" + struct.pack(">HI", 1, len(raw))
    h = hashlib.sha256(pre + raw).digest()
    okm = HKDF(hashes.SHA256(), 64, salt(label), b"modelseal/v1/file" + h).derive(KEY)
    aead = AESGCM(okm[:32])
    out = bytearray(pre + raw + okm[32:])
    for i, flag in enumerate(flags):
        chunk = data[i * SEG : (i + 1) * SEG]
        out += aead.encrypt(i.to_bytes(11, "big") + bytes([flag]), chunk, None)
    return bytes(out)


def generate(outdir: Path) -> list[dict[str, Any]]:
    """Write every vector into ``outdir``; return the index entries."""
    entries: list[dict[str, Any]] = []

    def add(name: str, blob: bytes, result: str, comment: str, plain: bytes | None = None) -> None:
        (outdir / name).write_bytes(blob)
        entry: dict[str, Any] = {"file": name, "result": result, "comment": comment}
        if plain is not None:
            (outdir / (name + ".plain")).write_bytes(plain)
            entry["plaintext"] = name + ".plain"
            entry["plaintext_sha256"] = hashlib.sha256(plain).hexdigest()
        entries.append(entry)

    # --- positive v1 ----------------------------------------------------------------------
    sizes = {"empty": 0, "one-byte": 1, "one-segment": SEG, "multi": 3 * SEG + 5}
    good: dict[str, tuple[bytes, bytes]] = {}
    for label, n in sizes.items():
        data = plaintext(n, label)
        blob = seal(data, label)
        good[label] = (blob, data)
        add(f"v1-{label}.sealed", blob, "ok", f"{n} plaintext bytes, 4 KiB segments", data)
    data = plaintext(100, "optional")
    add(
        "v1-optional-members.sealed",
        seal(
            data,
            "optional",
            model="vector-model",
            content_type="safetensors",
            created="2026-01-01T00:00:00Z",
            path="sub/dir/optional.bin",
        ),
        "ok",
        "model, content_type, created and a nested path",
        data,
    )

    blob, _ = good["multi"]
    base, header_len = layout(blob)
    seg_len = SEG + 16
    n_bytes = len(blob)

    def flip(pos: int) -> bytes:
        b = bytearray(blob)
        b[pos] ^= 0x01
        return bytes(b)

    segs = [blob[base + i * seg_len : base + (i + 1) * seg_len] for i in range(4)]
    head = blob[:base]

    # --- negative: structure (FormatError) --------------------------------------------------
    add("neg-magic.sealed", flip(1), "FormatError", "bit flip in the magic")
    add("neg-version-2.sealed", blob[:8] + b"\x00\x02" + blob[10:], "FormatError", "version 2")
    add("neg-header-len.sealed", flip(13), "FormatError", "header_len changed")
    add(
        "neg-truncated-boundary.sealed",
        blob[: base + 3 * seg_len],
        "FormatError",
        "truncated after segment 2 (a segment boundary)",
    )
    add(
        "neg-truncated-mid.sealed",
        blob[: base + seg_len + 100],
        "FormatError",
        "truncated inside segment 1",
    )
    add(
        "neg-truncated-header.sealed",
        blob[: 14 + header_len // 2],
        "FormatError",
        "truncated inside the header",
    )
    add("neg-appended.sealed", blob + b"\x00", "FormatError", "one byte appended")
    add(
        "neg-dropped-segment.sealed",
        head + segs[0] + segs[2] + segs[3],
        "FormatError",
        "segment 1 removed",
    )
    members = json.loads(blob[14 : 14 + header_len])
    add(
        "neg-alg-chacha.sealed",
        with_header(blob, {**members, "alg": "ChaCha20-Poly1305"}),
        "FormatError",
        "reserved algorithm",
    )
    add(
        "neg-alg-unknown.sealed",
        with_header(blob, {**members, "alg": "AES-128-GCM"}),
        "FormatError",
        "unknown algorithm",
    )
    add(
        "neg-unknown-member.sealed",
        with_header(blob, {**members, "extra": 1}),
        "FormatError",
        "member not defined by v1",
    )
    add(
        "neg-missing-salt.sealed",
        with_header(blob, {k: v for k, v in members.items() if k != "salt"}),
        "FormatError",
        "required member missing",
    )
    add(
        "neg-segment-size.sealed",
        with_header(blob, {**members, "segment_size": 5000}),
        "FormatError",
        "segment_size not a power of two",
    )
    add(
        "neg-path-dotdot.sealed",
        with_header(blob, {**members, "path": "../etc/passwd"}),
        "FormatError",
        "path escapes the model",
    )
    add(
        "neg-path-absolute.sealed",
        with_header(blob, {**members, "path": "/abs"}),
        "FormatError",
        "absolute path",
    )
    raw = blob[14 : 14 + header_len]
    add(
        "neg-duplicate-member.sealed",
        with_header(blob, raw[:-1] + b',"size":1}'),
        "FormatError",
        "duplicate JSON member",
    )
    add(
        "neg-size-mismatch.sealed",
        with_header(blob, {**members, "size": 3 * SEG + 6}),
        "FormatError",
        "size disagrees with the file length",
    )

    # --- negative: authentication (DecryptionError) -----------------------------------------
    add(
        "neg-header-bit.sealed",
        with_header(blob, {**members, "key_id": KEY_ID + "x"}),
        "DecryptionError",
        "header member changed (commitment no longer matches)",
    )
    add(
        "neg-commitment-bit.sealed",
        flip(base - 1),
        "DecryptionError",
        "bit flip in the key commitment",
    )
    add(
        "neg-segment-bit.sealed",
        flip(base + seg_len + 7),
        "DecryptionError",
        "bit flip in the ciphertext of segment 1",
    )
    add(
        "neg-tag-bit.sealed",
        flip(base + seg_len - 1),
        "DecryptionError",
        "bit flip in the tag of segment 0",
    )
    add(
        "neg-last-tag-bit.sealed", flip(n_bytes - 1), "DecryptionError", "bit flip in the final tag"
    )
    add(
        "neg-swapped-segments.sealed",
        head + segs[1] + segs[0] + segs[2] + segs[3],
        "DecryptionError",
        "segments 0 and 1 swapped",
    )
    add(
        "neg-duplicated-segment.sealed",
        head + segs[0] + segs[0] + segs[2] + segs[3],
        "DecryptionError",
        "segment 0 duplicated over segment 1",
    )
    data = plaintext(2 * SEG, "flags")
    add(
        "neg-final-flag-missing.sealed",
        hand_sealed(data, "flags", [0, 0]),
        "DecryptionError",
        "made with the key: last segment sealed without the final flag",
    )
    add(
        "neg-final-flag-early.sealed",
        hand_sealed(data, "flags", [1, 1]),
        "DecryptionError",
        "made with the key: a non-final segment sealed with the final flag",
    )
    entries.append(
        {
            "file": "v1-multi.sealed",
            "result": "DecryptionError",
            "key": "wrong",
            "comment": "correct file, wrong key",
        }
    )

    # --- CNAP -------------------------------------------------------------------------------
    data = plaintext(1000, "cnap")
    good_cnap = cnap.encode(SecretBytes(KEY), data, _iv=salt("cnap")[:12])
    add("cnap-ok.enc", good_cnap, "ok", "CNAP 12-byte-header layout", data)
    add(
        "cnap-empty.enc",
        cnap.encode(SecretBytes(KEY), b"", _iv=salt("cnap0")[:12]),
        "ok",
        "CNAP, empty plaintext",
        b"",
    )
    b = bytearray(good_cnap)
    b[-1] ^= 1
    add("neg-cnap-tag.enc", bytes(b), "DecryptionError", "CNAP tag bit flip")
    add(
        "neg-cnap-iv-len.enc",
        struct.pack("<3I", 16, 16, 1016) + good_cnap[12:],
        "FormatError",
        "CNAP iv_len 16",
    )
    add(
        "neg-cnap-data-len.enc",
        struct.pack("<3I", 12, 16, 1015) + good_cnap[12:],
        "FormatError",
        "CNAP data_len disagrees with the length",
    )
    add("neg-cnap-truncated.enc", good_cnap[:-1], "FormatError", "CNAP file one byte short")
    return entries


# --- hidden names (manifest modelseal-manifest/2) ---------------------------------------------

HIDDEN_FILES = {
    "config.json": plaintext(300, "hidden/config"),
    "weights/model.safetensors": plaintext(2 * SEG + 77, "hidden/weights"),
}


def opaque(rel: str) -> str:
    """A fixed stand-in for the writer's random 128-bit name."""
    return hashlib.sha256(b"name/" + rel.encode()).digest()[:16].hex()


def hidden_model(
    outdir: Path, *, pad: bytes = b"\x00", padded: bool = True, manifest_format: str = ""
) -> dict[str, bytes]:
    """Write a hidden-names sealed model into ``outdir``; return sealed name -> bytes.

    ``pad`` (the padding byte), ``padded=False`` and ``manifest_format`` make negatives
    that only a key holder can produce: the manifest agrees with every header.
    """
    entries, blobs = [], {}
    for rel, data in HIDDEN_FILES.items():
        name = opaque(rel)
        stored = hidden_size(len(data)) if padded else len(data)
        blob = seal(data + pad * (stored - len(data)), f"hidden/{rel}", path=name)
        header_len = struct.unpack(">I", blob[10:14])[0]
        entries.append(
            FileEntry(
                path=rel,
                size=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                header_sha256=hashlib.sha256(blob[: 14 + header_len]).hexdigest(),
                sealed_size=len(blob),
                name=name,
            )
        )
        blobs[name + ".sealed"] = blob
    manifest = Manifest.build(key_id=KEY_ID, files=entries, model="vector-model", version="1")
    raw = manifest.raw
    if manifest_format:
        raw = raw.replace(b'"modelseal-manifest/2"', json.dumps(manifest_format).encode())
    blobs[SEALED_MANIFEST_NAME] = seal(
        raw, "hidden/manifest", path=MANIFEST_NAME, content_type="application/json"
    )
    outdir.mkdir(parents=True)
    for name, blob in blobs.items():
        (outdir / name).write_bytes(blob)
    return blobs


def generate_hidden(outdir: Path) -> list[dict[str, Any]]:
    """Hidden-names model directories: one good, the rest tampered (see README)."""
    entries: list[dict[str, Any]] = []
    root = outdir / "hidden-names"

    def add(name: str, result: str, comment: str) -> None:
        entries.append({"dir": name, "result": result, "comment": comment})

    good = hidden_model(root / "ok")
    for rel, data in HIDDEN_FILES.items():
        (root / "ok.plain" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "ok.plain" / rel).write_bytes(data)
    add("ok", "ok", "two files under opaque names, padded; plaintexts in ok.plain/")
    a, b = (opaque(rel) + ".sealed" for rel in HIDDEN_FILES)
    swapped = root / "neg-swapped"
    swapped.mkdir()
    for name, blob in good.items():
        (swapped / {a: b, b: a}.get(name, name)).write_bytes(blob)
    add("neg-swapped", "IntegrityError", "the two opaque blobs exchanged")
    renamed = root / "neg-renamed"
    renamed.mkdir()
    for name, blob in good.items():
        if name == a:  # the same name with its last hex digit changed
            name = name[:31] + ("0" if name[31] != "0" else "1") + ".sealed"
        (renamed / name).write_bytes(blob)
    add("neg-renamed", "IntegrityError", "an opaque name changed in its last character")
    hidden_model(root / "neg-unpadded", padded=False)
    add("neg-unpadded", "IntegrityError", "made with the key: a header size not padded")
    hidden_model(root / "neg-nonzero-padding", pad=b"\x01")
    add("neg-nonzero-padding", "IntegrityError", "made with the key: padding of 0x01 bytes")
    hidden_model(root / "neg-manifest-v1", manifest_format="modelseal-manifest/1")
    add("neg-manifest-v1", "FormatError", "made with the key: names in a manifest/1")
    index = {"format": "modelseal/v1 hidden-names model directories", "vectors": entries}
    (root / "index.json").write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")
    return entries


def main(argv: list[str]) -> int:
    outdir = Path(argv[1]) if len(argv) > 1 else HERE
    outdir.mkdir(parents=True, exist_ok=True)
    entries = generate(outdir)
    hidden = generate_hidden(outdir)
    index = {
        "format": "modelseal/v1 + cnap test vectors",
        "key_b64url_note": "keys are given in hex here",
        "key": KEY.hex(),
        "wrong_key": WRONG_KEY.hex(),
        "segment_size": SEG,
        "key_id": KEY_ID,
        "vectors": entries,
    }
    (outdir / "index.json").write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {len(entries)} file vectors and {len(hidden)} hidden-names models to {outdir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
