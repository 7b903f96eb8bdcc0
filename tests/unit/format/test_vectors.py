"""Decode every committed vector, and check make_vectors.py reproduces them exactly."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag

from modelseal import errors
from modelseal.crypto.secret import SecretBytes
from modelseal.format import cnap
from modelseal.format.v1 import SealedReader
from modelseal.owner.sealing import unseal_directory, unseal_file, verify
from tests.unit.format import independent_v1

VECTORS = Path(__file__).resolve().parents[2] / "vectors" / "format"
INDEX = json.loads((VECTORS / "index.json").read_text())
KEY = bytes.fromhex(INDEX["key"])
WRONG = bytes.fromhex(INDEX["wrong_key"])


def _key(entry: dict[str, Any]) -> bytes:
    return WRONG if entry.get("key") == "wrong" else KEY


def _id(entry: dict[str, Any]) -> str:
    return entry["file"] + ("+wrong-key" if entry.get("key") == "wrong" else "")


@pytest.mark.parametrize("entry", INDEX["vectors"], ids=_id)
def test_vector_with_package(entry: dict[str, Any], tmp_path: Path) -> None:
    path = VECTORS / entry["file"]
    blob = path.read_bytes()
    key = SecretBytes(_key(entry))
    if entry["file"].endswith(".enc"):
        if entry["result"] == "ok":
            plain = cnap.decode(key, blob)
        else:
            with pytest.raises(getattr(errors, entry["result"])):
                cnap.decode(key, blob)
    elif entry["result"] == "ok":
        with SealedReader.open(path, key) as reader:
            plain = bytes(reader.read_range(0, reader.size))
    else:
        with (
            pytest.raises(getattr(errors, entry["result"])),
            SealedReader.open(path, key) as reader,
        ):
            reader.verify(workers=2)
    # the owner path (format detection, temp file, rename) agrees and leaves nothing behind
    out = tmp_path / "out" / "plain"
    out.parent.mkdir()
    if entry["result"] == "ok":
        unseal_file(path, out, key)
        assert out.read_bytes() == plain == (VECTORS / entry["plaintext"]).read_bytes()
        assert hashlib.sha256(plain).hexdigest() == entry["plaintext_sha256"]
    else:
        with pytest.raises(errors.Error) as info:
            unseal_file(path, out, key)
        assert info.value.exit_code == 5
        assert os.listdir(out.parent) == []


V1 = [e for e in INDEX["vectors"] if e["file"].endswith(".sealed")]


@pytest.mark.parametrize("entry", V1, ids=_id)
def test_vector_with_independent_reader(entry: dict[str, Any]) -> None:
    blob = (VECTORS / entry["file"]).read_bytes()
    if entry["result"] == "ok":
        _, plain = independent_v1.read(blob, _key(entry))
        assert plain == (VECTORS / entry["plaintext"]).read_bytes()
    else:
        with pytest.raises((ValueError, KeyError, InvalidTag)):
            independent_v1.read(blob, _key(entry))


def test_generator_reproduces_vectors(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("make_vectors", VECTORS / "make_vectors.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["make_vectors", str(tmp_path)]) == 0
    produced = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    committed = sorted(
        str(p.relative_to(VECTORS))
        for p in VECTORS.rglob("*")
        if p.is_file()
        and p.name not in ("make_vectors.py", "README.md")
        and "__pycache__" not in p.parts
    )
    assert produced == committed
    for name in produced:
        assert (tmp_path / name).read_bytes() == (VECTORS / name).read_bytes(), name


HIDDEN = VECTORS / "hidden-names"
HIDDEN_INDEX = json.loads((HIDDEN / "index.json").read_text())


@pytest.mark.parametrize("entry", HIDDEN_INDEX["vectors"], ids=lambda e: e["dir"])
def test_hidden_names_vector_with_package(entry: dict[str, Any], tmp_path: Path) -> None:
    source = HIDDEN / entry["dir"]
    key = SecretBytes(KEY)
    if entry["result"] == "ok":
        verify(source, key)
        unseal_directory(source, tmp_path / "out", key)
        plain = HIDDEN / "ok.plain"
        expected = {
            str(p.relative_to(plain)): p.read_bytes() for p in plain.rglob("*") if p.is_file()
        }
        got = {
            str(p.relative_to(tmp_path / "out")): p.read_bytes()
            for p in (tmp_path / "out").rglob("*")
            if p.is_file()
        }
        assert got == expected
        return
    for run in (lambda: verify(source, key), lambda: unseal_directory(source, tmp_path / "o", key)):
        with pytest.raises(getattr(errors, entry["result"])):
            run()
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("entry", HIDDEN_INDEX["vectors"], ids=lambda e: e["dir"])
def test_hidden_names_vector_with_independent_reader(entry: dict[str, Any]) -> None:
    """The normative rules of docs/reference/format.md (hidden names), applied by hand."""
    source = HIDDEN / entry["dir"]
    try:
        _, raw = independent_v1.read((source / "modelseal-manifest.json.sealed").read_bytes(), KEY)
        manifest = json.loads(raw)
        assert manifest["format"] == "modelseal-manifest/2", "names need manifest format 2"
        present = {p.name for p in source.iterdir()} - {"modelseal-manifest.json.sealed"}
        assert present == {f["name"] + ".sealed" for f in manifest["files"]}, "name set"
        out = {}
        for f in manifest["files"]:
            blob = (source / (f["name"] + ".sealed")).read_bytes()
            header, plain = independent_v1.read(blob, KEY)
            hlen = int.from_bytes(blob[10:14], "big")
            assert hashlib.sha256(blob[: 14 + hlen]).hexdigest() == f["header_sha256"], "swap"
            assert header["path"] == f["name"], "swap"
            assert header["size"] == _padme(f["size"]), "padded size"
            assert plain[f["size"] :] == bytes(header["size"] - f["size"]), "zero padding"
            assert hashlib.sha256(plain[: f["size"]]).hexdigest() == f["sha256"]
            out[f["path"]] = plain[: f["size"]]
    except AssertionError:
        assert entry["result"] != "ok"
        return
    assert entry["result"] == "ok"
    assert out == {
        str(p.relative_to(HIDDEN / "ok.plain")): p.read_bytes()
        for p in (HIDDEN / "ok.plain").rglob("*")
        if p.is_file()
    }


def _padme(size: int) -> int:
    """Padmé of max(size, 4096), written from the format reference."""
    length = max(size, 4096)
    e = length.bit_length() - 1  # floor(log2 L)
    s = e.bit_length()  # floor(log2 E) + 1
    mask = (1 << (e - s)) - 1
    return (length + mask) & ~mask
