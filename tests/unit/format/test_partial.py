"""Partially sealed safetensors: stock loaders read the plaintext tensors, unsealing restores
the exact original bytes, and any change anywhere is rejected."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from modelseal.crypto.secret import SecretBytes
from modelseal.errors import ConfigError, DecryptionError, Error, FormatError
from modelseal.format import partial
from modelseal.format.options import SealOptions
from modelseal.owner import sealing

KEY = SecretBytes(bytes(range(32)))
SEG = 4096


@pytest.fixture
def model(tmp_path: Path) -> Path:
    rng = np.random.default_rng(7)
    tensors = {f"model.layers.{i}.mlp.w": rng.random((40, 64), dtype=np.float32) for i in range(3)}
    tensors["lm_head.weight"] = rng.random((100, 50), dtype=np.float32)  # > 4 segments
    tensors["model.embed"] = rng.integers(0, 9, (7, 3), dtype=np.int64)
    tensors["empty"] = np.zeros((0, 4), dtype=np.float16)
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path), metadata={"framework": "np"})
    return path


def _seal(model: Path, out: Path, **kw: object) -> sealing.SealedFile:
    args = {"tensors": ["lm_head.*", "empty"], "last_layers": 1, **kw}
    options = SealOptions(key_id="models/m/v1", segment_size=SEG)
    return sealing.seal_file(model, out, KEY, options, fmt="partial", **args)  # type: ignore[arg-type]


def test_round_trip_exact_and_stock_loader(tmp_path: Path, model: Path) -> None:
    sealed = tmp_path / "sealed.safetensors"
    _seal(model, sealed)
    original, stock = load_file(str(model)), load_file(str(sealed))
    assert sorted(stock) == sorted(original)
    for name in ("model.layers.0.mlp.w", "model.layers.1.mlp.w", "model.embed"):
        assert np.array_equal(stock[name], original[name])
    for name in ("lm_head.weight", "model.layers.2.mlp.w"):
        assert not np.array_equal(stock[name], original[name])
    info = sealing.inspect(sealed)
    assert info["format"] == "modelseal-partial/1"
    assert set(info["sealed"]) == {"model.layers.2.mlp.w", "empty", "lm_head.weight"}
    assert sealing.verify(sealed, KEY).format == "partial"
    out = tmp_path / "restored.safetensors"
    result = sealing.unseal(sealed, out, KEY)
    assert result.format == "partial"
    assert out.read_bytes() == model.read_bytes()


def test_header_is_aligned_and_size_close(tmp_path: Path, model: Path) -> None:
    sealed = tmp_path / "s.safetensors"
    _seal(model, sealed)
    (n,) = struct.unpack("<Q", sealed.read_bytes()[:8])
    assert (8 + n) % 8 == 0
    assert sealed.stat().st_size - model.stat().st_size < 64 * 1024


def _flip(path: Path, pos: int) -> None:
    blob = bytearray(path.read_bytes())
    blob[pos] ^= 1
    path.write_bytes(bytes(blob))


def _tensor_offset(path: Path, name: str) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        header = partial.read_safetensors_header(fd)
        return header.data_start + header.tensor(name).start
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("where", "error"),
    [
        ("sealed tensor", DecryptionError),
        ("plaintext tensor", DecryptionError),
        ("empty sealed tensor tag", DecryptionError),
    ],
)
def test_tampered_data_rejected(
    tmp_path: Path, model: Path, where: str, error: type[Error]
) -> None:
    sealed = tmp_path / "s.safetensors"
    _seal(model, sealed)
    if where == "sealed tensor":
        _flip(sealed, _tensor_offset(sealed, "lm_head.weight") + 5000)
    elif where == "plaintext tensor":
        _flip(sealed, _tensor_offset(sealed, "model.embed") + 3)
    else:
        fd = os.open(sealed, os.O_RDONLY)
        outer, params = partial.read_partial_params(fd)
        os.close(fd)
        tags = bytearray(params.tags)
        tags[0] ^= 1
        _rewrite_params(sealed, outer, params, tags=bytes(tags))
    outdir = tmp_path / "out"
    outdir.mkdir()
    with pytest.raises(error):
        sealing.unseal(sealed, outdir / "m.safetensors", KEY)
    assert list(outdir.iterdir()) == []
    with pytest.raises(error):
        sealing.verify(sealed, KEY)


def _rewrite_params(
    path: Path, outer: partial.SafetensorsHeader, params: partial.PartialParams, **change: object
) -> None:
    import dataclasses

    new = dataclasses.replace(params, **change)  # type: ignore[arg-type]
    members = dict(outer.members)
    members["__metadata__"] = {**outer.metadata, partial.META_KEY: new.to_json()}
    raw = json.dumps(members).encode()
    data = path.read_bytes()[outer.data_start :]
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def test_outer_header_change_rejected(tmp_path: Path, model: Path) -> None:
    sealed = tmp_path / "s.safetensors"
    _seal(model, sealed)
    fd = os.open(sealed, os.O_RDONLY)
    outer, _ = partial.read_partial_params(fd)
    os.close(fd)
    members = dict(outer.members)
    members["__metadata__"] = {**outer.metadata, "framework": "evil"}
    raw = json.dumps(members).encode()
    sealed.write_bytes(struct.pack("<Q", len(raw)) + raw + sealed.read_bytes()[outer.data_start :])
    with pytest.raises(FormatError, match="differs from the sealed original"):
        sealing.verify(sealed, KEY)


def test_embedded_original_header_change_rejected(tmp_path: Path, model: Path) -> None:
    """Changing the authenticated original header (and the outer one to match) breaks the
    key commitment."""
    sealed = tmp_path / "s.safetensors"
    _seal(model, sealed)
    fd = os.open(sealed, os.O_RDONLY)
    outer, params = partial.read_partial_params(fd)
    os.close(fd)
    original = json.loads(params.header)
    original["__metadata__"]["framework"] = "evil"
    new_raw = json.dumps(original).encode()
    import dataclasses

    new = dataclasses.replace(params, header=new_raw)
    members = dict(original)
    members["__metadata__"] = {**original["__metadata__"], partial.META_KEY: new.to_json()}
    raw = json.dumps(members).encode()
    sealed.write_bytes(struct.pack("<Q", len(raw)) + raw + sealed.read_bytes()[outer.data_start :])
    with pytest.raises(DecryptionError):
        sealing.verify(sealed, KEY)


def test_wrong_key_and_bad_metadata(tmp_path: Path, model: Path) -> None:
    sealed = tmp_path / "s.safetensors"
    _seal(model, sealed)
    with pytest.raises(DecryptionError):
        sealing.verify(sealed, SecretBytes(os.urandom(32)))
    fd = os.open(sealed, os.O_RDONLY)
    outer, params = partial.read_partial_params(fd)
    os.close(fd)
    for bad in ('{"format": "modelseal-partial/2"}', "not json", json.dumps({"x": 1})):
        with pytest.raises(FormatError):
            partial.PartialParams.from_json(bad)
    _rewrite_params(sealed, outer, params, segment_size=5000)
    with pytest.raises(FormatError):
        sealing.verify(sealed, KEY)


def test_selection_errors(tmp_path: Path, model: Path) -> None:
    with pytest.raises(ConfigError, match="nothing would be sealed"):
        _seal(model, tmp_path / "a", tensors=["nope.*"], last_layers=0)
    sealed = tmp_path / "s.safetensors"
    _seal(model, sealed)
    with pytest.raises(ConfigError, match="already partially sealed"):
        _seal(sealed, tmp_path / "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "s.safetensors"]
    fd = os.open(model, os.O_RDONLY)
    try:
        header = partial.read_safetensors_header(fd)
    finally:
        os.close(fd)
    assert partial.select_tensors(header, [], last_layers=2) == [
        "model.layers.1.mlp.w", "model.layers.2.mlp.w"]  # fmt: skip


def test_not_safetensors(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(struct.pack("<Q", 5) + b'{"a":' + bytes(10))
    with pytest.raises(FormatError):
        sealing.seal_file(
            junk, tmp_path / "o", KEY, SealOptions(key_id="k"), fmt="partial", tensors=["*"]
        )
    with pytest.raises(FormatError, match="not a modelseal v1 or CNAP"):
        sealing.verify(junk, KEY)


def test_cli_partial(tmp_path: Path, model: Path) -> None:
    from modelseal import cli

    key = tmp_path / "k"
    key.write_text("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8\n")
    key.chmod(0o600)

    def run(argv: list[str]) -> int:
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        return int(info.value.code or 0)

    sealed = tmp_path / "p.safetensors"
    argv = ["seal", str(model), "-o", str(sealed), "--key", str(key), "--key-id", "m/k/v1"]
    assert run([*argv, "--seal-tensors", "lm_head.*", "--segment-size", "4K"]) == 0
    assert run([*argv, "--seal-tensors", "x", "--format", "cnap"]) == 2
    assert run(["verify", str(sealed), "--key", str(key)]) == 0
    assert run(["unseal", str(sealed), "-o", str(tmp_path / "r"), "--key", str(key)]) == 0
    assert (tmp_path / "r").read_bytes() == model.read_bytes()
