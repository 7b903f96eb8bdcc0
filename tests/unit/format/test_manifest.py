"""Manifest parsing and the header-level checks (missing/extra/swapped/rolled back)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from modelseal._internal.canonical import canonical_json
from modelseal.errors import FormatError, IntegrityError
from modelseal.format.header import Header, build_header
from modelseal.format.manifest import FileEntry, Manifest, model_digest


def header(path: str, *, size: int = 10, key_id: str = "m/k/v1", salt: int = 0,
           model: str | None = "m") -> Header:  # fmt: skip
    return build_header(size=size, key_id=key_id, path=path, salt=bytes([salt]) * 32,
                        segment_size=4096, model=model)  # fmt: skip


def entry(h: Header) -> FileEntry:
    return FileEntry(path=h.path, size=h.size, sha256="0" * 64, header_sha256=h.digest_hex,
                     sealed_size=h.sealed_size)  # fmt: skip


A, B = header("a.bin"), header("dir/b.bin", size=5)
MANIFEST = Manifest.build(key_id="m/k/v1", files=[entry(B), entry(A)], model="m", version="1")


def test_build_is_canonical_and_sorted() -> None:
    doc = json.loads(MANIFEST.raw)
    assert [f["path"] for f in doc["files"]] == ["a.bin", "dir/b.bin"]
    assert MANIFEST.raw == canonical_json(doc)
    assert MANIFEST.digest == model_digest(MANIFEST.raw)
    assert MANIFEST.digest.startswith("sha256:")
    assert Manifest.parse(MANIFEST.raw) == MANIFEST
    assert MANIFEST.total_size == 15


def test_check_files_accepts_matching_headers() -> None:
    MANIFEST.check_files({"a.bin.sealed": (A, A.sealed_size),
                          "dir/b.bin.sealed": (B, B.sealed_size)})  # fmt: skip


@pytest.mark.parametrize(
    ("observed", "match"),
    [
        ({"a.bin.sealed": (A, A.sealed_size)}, r"missing: dir/b\.bin\.sealed"),
        (
            {"a.bin.sealed": (A, 0), "dir/b.bin.sealed": (B, 0), "x.sealed": (A, 0)},
            r"not in the manifest: x\.sealed",
        ),
        (
            {"a.bin.sealed": (B, B.sealed_size), "dir/b.bin.sealed": (A, A.sealed_size)},
            r"a\.bin\.sealed: holds the sealed data of 'dir/b\.bin'",
        ),
        (
            {"a.bin.sealed": (header("a.bin", salt=9), A.sealed_size),
             "dir/b.bin.sealed": (B, B.sealed_size)},
            r"a\.bin\.sealed: does not match",
        ),
        (
            {"a.bin.sealed": (A, A.sealed_size + 1), "dir/b.bin.sealed": (B, B.sealed_size)},
            r"a\.bin\.sealed: does not match",
        ),
        (
            {"a.bin.sealed": (header("a.bin", key_id="other/k/v1"), A.sealed_size),
             "dir/b.bin.sealed": (B, B.sealed_size)},
            r"sealed under key",
        ),
        (
            {"a.bin.sealed": (header("a.bin", model="evil"), A.sealed_size),
             "dir/b.bin.sealed": (B, B.sealed_size)},
            r"belongs to model 'evil'",
        ),
    ],
)  # fmt: skip
def test_check_files_rejects(observed: dict[str, tuple[Header, int]], match: str) -> None:
    with pytest.raises(IntegrityError, match=match) as info:
        MANIFEST.check_files(observed)
    assert info.value.paths


def test_manifest_header_checks() -> None:
    MANIFEST.check_manifest_header(header("modelseal-manifest.json"))
    with pytest.raises(IntegrityError):
        MANIFEST.check_manifest_header(header("a.bin"))
    with pytest.raises(IntegrityError):
        MANIFEST.check_manifest_header(header("modelseal-manifest.json", key_id="x"))


def _doc(**change: Any) -> bytes:
    doc = json.loads(MANIFEST.raw)
    doc.update(change)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        _doc(format="modelseal-manifest/2"),
        _doc(extra=1),
        _doc(key_id=""),
        _doc(files={}),
        _doc(model=5),
        _doc(files=[{"path": "../x", "size": 1, "sha256": "0" * 64, "header_sha256": "0" * 64,
                     "sealed_size": 1}]),
        _doc(files=[{"path": "x", "size": -1, "sha256": "0" * 64, "header_sha256": "0" * 64,
                     "sealed_size": 1}]),
        _doc(files=[{"path": "x", "size": 1, "sha256": "0" * 63, "header_sha256": "0" * 64,
                     "sealed_size": 1}]),
        _doc(files=[{"path": "x", "size": 1, "sha256": "0" * 64, "header_sha256": "0" * 64,
                     "sealed_size": 1, "more": 1}]),
        _doc(files=[json.loads(MANIFEST.raw)["files"][0]] * 2),
        _doc(files=[{"path": "modelseal-manifest.json", "size": 1, "sha256": "0" * 64,
                     "header_sha256": "0" * 64, "sealed_size": 1}]),
        b'{"format":"modelseal-manifest/1","format":"x"}',
    ],
)  # fmt: skip
def test_parse_rejects(raw: bytes) -> None:
    with pytest.raises(FormatError):
        Manifest.parse(raw)
