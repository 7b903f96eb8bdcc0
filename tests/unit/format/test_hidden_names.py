"""Hidden names (``modelseal-manifest/2``): what a registry sees, round trips, tampering.

A model sealed with ``hide_names`` keeps the v1 file format; only the header ``path`` (an
opaque random name), the header ``size`` (padded) and the manifest (which maps both back)
differ. Tamper tests change full-length values in their last byte.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from modelseal._internal.canonical import canonical_json
from modelseal.crypto.secret import SecretBytes
from modelseal.errors import ConfigError, FormatError, IntegrityError
from modelseal.format.header import Header, build_header
from modelseal.format.manifest import (
    MANIFEST_FORMAT,
    MANIFEST_FORMAT_HIDDEN,
    SEALED_MANIFEST_NAME,
    FileEntry,
    Manifest,
    hidden_size,
    sealed_name,
)
from modelseal.format.options import SealOptions
from modelseal.format.v1 import read_header
from modelseal.owner import sealing

KEY = SecretBytes(bytes(range(32)))
SEG = 4096
OPTIONS = SealOptions(key_id="models/h/v1", model="h", segment_size=SEG, hide_names=True)
FILES = {
    "weights.safetensors": os.urandom(3 * SEG + 123),
    "conf/config.json": b'{"layers": 2}',
    "empty.bin": b"",
    "exact.bin": os.urandom(2 * SEG),
}
_OPAQUE = re.compile(r"[0-9a-f]{32}\.sealed")


@pytest.fixture
def model(tmp_path: Path) -> Path:
    root = tmp_path / "model"
    for rel, data in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


@pytest.fixture
def sealed(tmp_path: Path, model: Path) -> Path:
    sealing.seal_directory(model, tmp_path / "sealed", KEY, OPTIONS, version="1")
    return tmp_path / "sealed"


def _headers(directory: Path) -> dict[str, Header]:
    out = {}
    for path in directory.iterdir():
        if path.name != SEALED_MANIFEST_NAME:
            with path.open("rb") as fh:
                out[path.name] = read_header(fh.fileno())[0]
    return out


def test_hidden_size_is_padme_of_at_least_4k() -> None:
    assert [hidden_size(n) for n in (0, 1, 4095, 4096, 4097, 5000)] == [4096] * 4 + [4352, 5120]
    assert hidden_size(1 << 30) == 1 << 30
    assert hidden_size((1 << 30) + 1) == (1 << 30) + (1 << 25)
    for n in (4096, 10_000, 123_456, 7_777_777, 10**9 + 7, 3 * 2**40 + 5):
        padded = hidden_size(n)
        assert n <= padded <= n * 1.12
        assert hidden_size(padded) == padded  # a padded length is its own bucket


def test_the_directory_names_and_headers_tell_nothing(sealed: Path) -> None:
    names = sorted(p.name for p in sealed.iterdir())
    assert SEALED_MANIFEST_NAME in names
    others = [n for n in names if n != SEALED_MANIFEST_NAME]
    assert len(others) == len(FILES)
    assert all(_OPAQUE.fullmatch(n) for n in others), others
    sizes = {len(data) for data in FILES.values()}
    for name, header in _headers(sealed).items():
        text = json.dumps(header.to_json())
        assert not [rel for rel in FILES for part in rel.split("/") if part in text]
        assert header.path + ".sealed" == name
        assert header.size == hidden_size(header.size)  # a bucket, not a file length
        if header.size not in {hidden_size(n) for n in sizes}:
            raise AssertionError(f"{name}: unexpected stored size {header.size}")
        assert header.content_type is None
    # the exact 8 KiB file is the only one whose stored size is its own size
    stored = sorted(h.size for h in _headers(sealed).values())
    assert stored == sorted(hidden_size(len(d)) for d in FILES.values())


def test_round_trip_verify_and_manifest(tmp_path: Path, sealed: Path) -> None:
    manifest = sealing.open_manifest(sealed, KEY)
    assert manifest.hidden
    assert json.loads(manifest.raw)["format"] == MANIFEST_FORMAT_HIDDEN
    assert len(manifest.raw) == hidden_size(len(manifest.raw))
    assert manifest.raw.rstrip(b" ") == canonical_json(json.loads(manifest.raw))
    assert {e.path: e.size for e in manifest.files} == {k: len(v) for k, v in FILES.items()}
    checked = sealing.verify(sealed, KEY)
    assert checked.model_digest == manifest.digest
    out = sealing.unseal(sealed, tmp_path / "plain", KEY)
    assert out.model_digest == manifest.digest
    for rel, data in FILES.items():
        assert (tmp_path / "plain" / rel).read_bytes() == data


def test_without_the_option_nothing_changes(tmp_path: Path, model: Path) -> None:
    result = sealing.seal_directory(
        model, tmp_path / "plain-names", KEY, SealOptions(key_id="models/h/v1", segment_size=SEG)
    )
    assert json.loads(result.manifest.raw)["format"] == MANIFEST_FORMAT
    assert result.manifest.raw == canonical_json(json.loads(result.manifest.raw))
    assert sorted(result.sealed_paths()[1:]) == sorted(sealed_name(rel) for rel in FILES)


def test_a_single_file_has_no_manifest_to_hide_its_name_in(tmp_path: Path, model: Path) -> None:
    with pytest.raises(ConfigError, match="model directory"):
        sealing.seal(model / "empty.bin", tmp_path / "x.sealed", KEY, OPTIONS)


def _by_path(sealed: Path) -> dict[str, str]:
    manifest = sealing.open_manifest(sealed, KEY)
    return {e.path: e.sealed_relpath for e in manifest.files}


def test_swapped_files_are_caught(sealed: Path) -> None:
    names = _by_path(sealed)
    a, b = sealed / names["weights.safetensors"], sealed / names["exact.bin"]
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)
    with pytest.raises(IntegrityError, match="swapped"):
        sealing.verify(sealed, KEY)


def test_a_name_differing_in_its_last_character_is_caught(sealed: Path) -> None:
    name = _by_path(sealed)["weights.safetensors"]
    stem = name.removesuffix(".sealed")
    other = stem[:-1] + ("0" if stem[-1] != "0" else "1") + ".sealed"
    (sealed / name).rename(sealed / other)
    with pytest.raises(IntegrityError) as info:
        sealing.verify(sealed, KEY)
    assert name in str(info.value)
    assert other in str(info.value)


def test_a_header_path_differing_in_its_last_byte_is_caught(sealed: Path) -> None:
    """The registry rewrites one header's opaque name (same length, last byte changed):
    the header digest no longer matches the manifest, before anything is decrypted."""
    name = _by_path(sealed)["conf/config.json"]
    blob = bytearray((sealed / name).read_bytes())
    stem = name.removesuffix(".sealed").encode()
    at = blob.index(stem) + len(stem) - 1
    blob[at] = ord("0") if blob[at] != ord("0") else ord("1")
    (sealed / name).write_bytes(bytes(blob))
    with pytest.raises(IntegrityError, match="swapped"):
        sealing.verify(sealed, KEY)


def test_a_header_size_differing_in_its_last_digit_is_caught(sealed: Path) -> None:
    """Claiming a different stored size (same number of digits) changes the layout: the
    blob length no longer matches, or the header digest does not."""
    name = _by_path(sealed)["weights.safetensors"]
    blob = bytearray((sealed / name).read_bytes())
    size = str(hidden_size(len(FILES["weights.safetensors"]))).encode()
    at = blob.index(b'"size":' + size) + len(b'"size":') + len(size) - 1
    blob[at] = ord("0") if blob[at] != ord("0") else ord("1")
    (sealed / name).write_bytes(bytes(blob))
    with pytest.raises(IntegrityError):
        sealing.verify(sealed, KEY)


def _entry(path: str, size: int, name: str | None) -> FileEntry:
    h = build_header(size=hidden_size(size) if name else size, key_id="k/k/k",
                     path=name or path, salt=bytes(32), segment_size=SEG)  # fmt: skip
    return FileEntry(path=path, size=size, sha256="0" * 64, header_sha256=h.digest_hex,
                     sealed_size=h.sealed_size, name=name)  # fmt: skip


def test_manifest_v2_parsing_is_strict() -> None:
    good = Manifest.build(key_id="k/k/k", files=[_entry("a.bin", 10, "ab" * 16)])
    doc = json.loads(good.raw)
    assert Manifest.parse(good.raw) == good
    for bad_name in ("AB" * 16, "ab" * 15 + "a", "ab" * 16 + "a", "a.bin", "", None):
        doc["files"][0]["name"] = bad_name
        with pytest.raises(FormatError):
            Manifest.parse(canonical_json(doc))
    del doc["files"][0]["name"]
    with pytest.raises(FormatError, match="exactly"):
        Manifest.parse(canonical_json(doc))  # a v2 entry without a name
    v1 = json.loads(Manifest.build(key_id="k/k/k", files=[_entry("a.bin", 10, None)]).raw)
    v1["files"][0]["name"] = "ab" * 16
    with pytest.raises(FormatError, match="exactly"):
        Manifest.parse(canonical_json(v1))  # names only exist in v2
    twice = Manifest.build(
        key_id="k/k/k", files=[_entry("a.bin", 1, "cd" * 16), _entry("b.bin", 2, "ab" * 16)]
    )
    doc = json.loads(twice.raw)
    doc["files"][1]["name"] = doc["files"][0]["name"]
    with pytest.raises(FormatError, match="one name"):
        Manifest.parse(canonical_json(doc))


def test_check_file_maps_opaque_names_to_paths() -> None:
    entry = _entry("dir/w.bin", 5000, "ef" * 16)
    manifest = Manifest.build(key_id="k/k/k", files=[entry])
    header = build_header(size=hidden_size(5000), key_id="k/k/k", path="ef" * 16,
                          salt=bytes(32), segment_size=SEG)  # fmt: skip
    found = manifest.check_files({"ef" * 16 + ".sealed": (header, header.sealed_size)})
    assert found["ef" * 16 + ".sealed"].path == "dir/w.bin"
    # the unpadded size in the header is not what the manifest pins
    short = build_header(size=5000, key_id="k/k/k", path="ef" * 16, salt=bytes(32),
                         segment_size=SEG)  # fmt: skip
    with pytest.raises(IntegrityError):
        manifest.check_file("ef" * 16 + ".sealed", short, short.sealed_size)
    with pytest.raises(IntegrityError, match=r"not in the manifest: dir/w\.bin\.sealed"):
        manifest.check_names(["dir/w.bin.sealed"])
