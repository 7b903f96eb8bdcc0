"""SDK memory handling: memfd-backed files, zeroing on close, shard merging rules."""

from __future__ import annotations

import os

import numpy as np
import pytest
from safetensors.numpy import save

from modelseal import errors
from modelseal.loader.sdk import DecryptedModel, safetensors_views
from modelseal.loader.targets import MemFile


def _model(files: dict[str, bytes]) -> DecryptedModel:
    mems = {}
    for path, data in files.items():
        mem = MemFile(path, len(data))
        os.pwrite(mem.fd, data, 0)
        mem.map()
        mems[path] = mem
    return DecryptedModel("m", "v1", None, "sample", None, _files=mems)


def test_views_and_zeroing_on_close() -> None:
    model = _model({"a.bin": b"secret weights", "empty": b""})
    assert bytes(model["a.bin"]) == b"secret weights"
    assert bytes(model["empty"]) == b""
    assert len(model) == 2
    assert model.bytes == 14
    view = model["a.bin"]
    model.close()
    assert bytes(view) == bytes(14)  # plaintext zeroed even though a view survived
    model.close()  # idempotent


def test_tensors_merge_shards_and_refuse_duplicates() -> None:
    a = save({"x": np.arange(3, dtype=np.float32)})
    b = save({"y": np.ones((2, 2), dtype=np.int8)})
    with _model({"s1.safetensors": a, "s2.safetensors": b, "cfg.json": b"{}"}) as model:
        tensors = model.tensors()
        assert set(tensors) == {"x", "y"}
        assert model.tensors("s2.safetensors")["y"].shape == (2, 2)
    with (
        _model({"s1.safetensors": a, "s2.safetensors": a}) as model,
        pytest.raises(errors.FormatError, match="two shards"),
    ):
        model.tensors()
    with _model({"cfg.json": b"{}"}) as model, pytest.raises(errors.ConfigError):
        model.tensors()


def test_unknown_framework() -> None:
    blob = bytearray(save({"x": np.zeros(1, dtype=np.float32)}))
    with pytest.raises(errors.ConfigError):
        safetensors_views(memoryview(blob), framework="jax")  # type: ignore[arg-type]
