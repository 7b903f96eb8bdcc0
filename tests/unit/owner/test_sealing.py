"""Owner sealing library: directory layout, atomic outputs, source rules, inspect."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from modelseal.crypto.secret import SecretBytes
from modelseal.errors import ConfigError, DecryptionError, IntegrityError, NotFound
from modelseal.format.manifest import SEALED_MANIFEST_NAME
from modelseal.format.options import SealOptions
from modelseal.owner import sealing

KEY = SecretBytes(bytes(range(32)))
SEG = 4096


@pytest.fixture
def model(tmp_path: Path) -> Path:
    root = tmp_path / "model"
    (root / "d" / "e").mkdir(parents=True)
    (root / "w.safetensors").write_bytes(os.urandom(3 * SEG + 1))
    (root / "d" / "e" / "x.json").write_bytes(b"{}")
    return root


def test_seal_directory_result_and_manifest(tmp_path: Path, model: Path) -> None:
    result = sealing.seal_directory(
        model,
        tmp_path / "s",
        KEY,
        SealOptions(key_id="models/m/v1", model="m", segment_size=SEG),
        version="2",
    )
    assert result.sealed_paths() == [SEALED_MANIFEST_NAME, "d/e/x.json.sealed",
                                     "w.safetensors.sealed"]  # fmt: skip
    assert [(f.path, f.size) for f in result.files] == [("d/e/x.json", 2),
                                                       ("w.safetensors", 3 * SEG + 1)]  # fmt: skip
    for f in result.files:
        assert (tmp_path / "s" / (f.path + ".sealed")).stat().st_size == f.sealed_size
    opened = sealing.open_manifest(tmp_path / "s", KEY)
    assert opened.digest == result.model_digest
    assert (opened.model, opened.version, opened.key_id) == ("m", "2", "models/m/v1")
    info = sealing.inspect(tmp_path / "s")
    assert info["manifest"]["header"]["content_type"] == "application/json"
    assert sealing.progress_total(tmp_path / "s", sealed=True) == 3 * SEG + 3
    assert sealing.progress_total(model, sealed=False) == 3 * SEG + 3


def test_unsealed_modes_and_progress(tmp_path: Path, model: Path) -> None:
    sealing.seal_directory(model, tmp_path / "s", KEY, SealOptions(key_id="k", segment_size=SEG))
    seen: list[int] = []
    sealing.unseal(tmp_path / "s", tmp_path / "o", KEY, progress=seen.append)
    assert sum(seen) == 3 * SEG + 3
    assert stat.S_IMODE((tmp_path / "o").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "o" / "w.safetensors").stat().st_mode) == 0o600


def test_symlinked_file_followed_symlinked_dir_refused(tmp_path: Path, model: Path) -> None:
    (model / "link.bin").symlink_to(model / "w.safetensors")
    r = sealing.seal_directory(
        model, tmp_path / "s", KEY, SealOptions(key_id="k", segment_size=SEG)
    )
    assert "link.bin" in [f.path for f in r.files]
    (model / "dirlink").symlink_to(model / "d")
    with pytest.raises(ConfigError, match="symlinked directory"):
        sealing.seal_directory(
            model, tmp_path / "s2", KEY, SealOptions(key_id="k", segment_size=SEG)
        )
    assert not (tmp_path / "s2").exists()


def test_reserved_name_and_empty_dir(tmp_path: Path, model: Path) -> None:
    (model / "modelseal-manifest.json").write_text("{}")
    with pytest.raises(ConfigError, match="reserved"):
        sealing.seal_directory(model, tmp_path / "s", KEY, SealOptions(key_id="k"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no files"):
        sealing.seal_directory(tmp_path / "empty", tmp_path / "s", KEY, SealOptions(key_id="k"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "model"]


def test_seal_file_into_directory_and_cnap_refuses_dirs(tmp_path: Path, model: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    r = sealing.seal(model / "w.safetensors", out, KEY, SealOptions(key_id="k", segment_size=SEG))
    assert r.path == out / "w.safetensors.sealed"  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="single files"):
        sealing.seal(model, tmp_path / "c", KEY, SealOptions(key_id="k"), fmt="cnap")
    with pytest.raises(NotFound):
        sealing.seal(tmp_path / "absent", tmp_path / "c", KEY, SealOptions(key_id="k"))


def test_failed_unseal_removes_temp_dir_and_keeps_old_dst(tmp_path: Path, model: Path) -> None:
    sealing.seal_directory(model, tmp_path / "s", KEY, SealOptions(key_id="k", segment_size=SEG))
    sealing.unseal(tmp_path / "s", tmp_path / "o", KEY)
    marker = (tmp_path / "o" / "w.safetensors").read_bytes()
    victim = tmp_path / "s" / "w.safetensors.sealed"
    blob = bytearray(victim.read_bytes())
    blob[-1] ^= 1
    victim.write_bytes(bytes(blob))
    with pytest.raises(DecryptionError):
        sealing.unseal(tmp_path / "s", tmp_path / "o", KEY, overwrite=True)
    assert (tmp_path / "o" / "w.safetensors").read_bytes() == marker
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "o", "s"]


def test_inspect_single_and_cnap(tmp_path: Path, model: Path) -> None:
    src = model / "w.safetensors"
    sealing.seal_file(
        src,
        tmp_path / "a.sealed",
        KEY,
        SealOptions(key_id="k/a/b", segment_size=SEG, content_type="safetensors"),
    )
    info = sealing.inspect(tmp_path / "a.sealed")
    assert info["header"]["content_type"] == "safetensors"
    assert info["segments"] == 4
    json.dumps(info)
    sealing.seal_file(src, tmp_path / "a.enc", KEY, SealOptions(key_id=None), fmt="cnap")
    assert sealing.inspect(tmp_path / "a.enc")["size"] == 3 * SEG + 1


def test_directory_failures_name_the_file_and_stay_opaque(tmp_path: Path, model: Path) -> None:
    """Library callers (publish, loaders) get the sealed file's name in the message, the
    same opaque DecryptionError type, and nothing at the destination."""
    sealing.seal_directory(model, tmp_path / "s", KEY, SealOptions(key_id="k", segment_size=SEG))
    target = tmp_path / "s" / "w.safetensors.sealed"
    blob = bytearray(target.read_bytes())
    blob[-50] ^= 1
    target.write_bytes(blob)
    for call in (
        lambda: sealing.unseal(tmp_path / "s", tmp_path / "o", KEY),
        lambda: sealing.verify(tmp_path / "s", KEY),
    ):
        with pytest.raises(DecryptionError) as info:
            call()
        assert str(info.value) == "w.safetensors.sealed: authentication failed"
    assert not (tmp_path / "o").exists()
    os.truncate(target, 100)
    with pytest.raises(IntegrityError) as bad:
        sealing.verify(tmp_path / "s", KEY)
    assert bad.value.paths == ("w.safetensors.sealed",)
