"""Fuzz targets: the sealed-file formats a loader reads from an untrusted registry (v1 header
and reader, manifest, CNAP, partially sealed and plain safetensors headers)."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence
from functools import cache

import pytest

from modelseal.crypto.secret import SecretBytes
from modelseal.format import cnap
from modelseal.format.detect import detect_fd
from modelseal.format.header import Header
from modelseal.format.manifest import FileEntry, Manifest
from modelseal.format.options import SealOptions
from modelseal.format.partial import read_partial_params, seal_partial, unseal_partial
from modelseal.format.reader import SealedReader, read_header
from modelseal.format.safetensors import parse_safetensors, read_safetensors_header
from tests.fuzz.harness import (
    FORMAT_VECTORS,
    HOSTILE_TEXT,
    Target,
    json_mutated,
    run,
    with_fd,
)

#: the DEK of tests/vectors/format (bytes 0x00..0x1f): the decrypting targets run as the key
#: holder, so mutations get past nothing the format does not authenticate
KEY = SecretBytes(bytes(range(32)))


@cache
def _sealed() -> tuple[bytes, ...]:
    return tuple(p.read_bytes() for p in sorted(FORMAT_VECTORS.glob("*.sealed")))


@cache
def _cnap() -> tuple[bytes, ...]:
    return tuple(p.read_bytes() for p in sorted(FORMAT_VECTORS.glob("*.enc")))


def _safetensors_bytes(
    tensors: dict[str, tuple[str, list[int], bytes]], meta: dict[str, str]
) -> bytes:
    """A safetensors file built by the format's definition (8-byte length, JSON, data)."""
    header: dict[str, object] = {"__metadata__": meta} if meta else {}
    data = b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {
            "dtype": dtype,
            "shape": shape,
            "data_offsets": [len(data), len(data) + len(raw)],
        }
        data += raw
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


@cache
def _safetensors() -> tuple[bytes, ...]:
    return (
        _safetensors_bytes(
            {
                "a.weight": ("F32", [2, 3], bytes(range(24))),
                "b.bias": ("I64", [2], bytes(16)),
                "empty": ("F16", [0, 4], b""),
                "lm_head.weight": ("F16", [40, 60], bytes(range(256)) * 18 + bytes(192)),
            },
            {"framework": "np"},
        ),
        _safetensors_bytes({"x": ("U8", [3], b"abc")}, {}),
    )


@cache
def _partial() -> tuple[bytes, ...]:
    """The safetensors seeds partially sealed with ``KEY`` (real sealing, small segments)."""
    out = []
    for plain, names in zip(_safetensors(), (["lm_head.weight", "empty"], ["x"]), strict=True):
        src, dst = os.memfd_create("plain"), os.memfd_create("sealed")
        try:
            os.write(src, plain)
            options = SealOptions(key_id="models/m/v1", segment_size=4096)
            seal_partial(src, dst, KEY, options, names=names, _salt=bytes(32))
            out.append(os.pread(dst, os.fstat(dst).st_size, 0))
        finally:
            os.close(src)
            os.close(dst)
    return tuple(out)


def _manifest_docs() -> list[object]:
    m = Manifest.build(
        key_id="models/m/v1",
        files=[
            FileEntry("config.json", 12, "ab" * 32, "cd" * 32, 120),
            FileEntry("model.safetensors", 5000, "ef" * 32, "01" * 32, 5200),
        ],
        model="m",
        version="v1",
    )
    return [json.loads(m.raw)]


def _verify_sealed(fd: int) -> None:
    reader = SealedReader(fd, KEY)
    reader.verify(workers=1)
    reader.close()


def _manifest_seeds() -> Sequence[bytes]:
    return [json.dumps(d).encode() for d in _manifest_docs()]


TARGETS = [
    Target("sealed-header", Header.parse, _sealed, max_random=300),
    Target("sealed-read-header", with_fd(read_header), _sealed),
    Target("sealed-reader", with_fd(_verify_sealed), _sealed),
    Target("detect", with_fd(detect_fd), lambda: _sealed()[:2] + _cnap() + _partial()),
    Target(
        "manifest",
        Manifest.parse,
        _manifest_seeds,
        extra=lambda: json_mutated(_manifest_docs()),
        hostile=HOSTILE_TEXT,
    ),
    Target("cnap-header", lambda b: cnap.parse_header(b, len(b)), _cnap, max_random=64),
    Target("cnap-decode", lambda b: cnap.decode(KEY, b), _cnap),
    Target(
        "safetensors-header",
        with_fd(read_safetensors_header),
        _safetensors,
        hostile=[struct.pack("<Q", len(h)) + h for h in HOSTILE_TEXT],
    ),
    Target(
        "safetensors-memory",
        parse_safetensors,
        _safetensors,
        hostile=[struct.pack("<Q", len(h)) + h for h in HOSTILE_TEXT],
    ),
    Target("partial-params", with_fd(read_partial_params), _partial),
    Target("partial-unseal", with_fd(lambda fd: unseal_partial(fd, None, KEY)), _partial),
]

pytestmark = pytest.mark.fuzz


@pytest.mark.parametrize("target", TARGETS, ids=str)
def test_fuzz(target: Target) -> None:
    run(target)
