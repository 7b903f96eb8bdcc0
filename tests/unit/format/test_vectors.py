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
from modelseal.owner.sealing import unseal_file
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
    produced = sorted(p.name for p in tmp_path.iterdir())
    committed = sorted(
        p.name
        for p in VECTORS.iterdir()
        if p.name not in ("make_vectors.py", "README.md", "__pycache__")
    )
    assert produced == committed
    for name in produced:
        assert (tmp_path / name).read_bytes() == (VECTORS / name).read_bytes(), name
