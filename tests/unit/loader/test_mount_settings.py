"""Settings for a sealed directory (``mount --sealed``) and for a key without a model
(``volume``), next to the loader's own rule that ``load`` needs a model."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelseal import errors
from modelseal.loader.settings import LoaderSettings


def test_sealed_dir_replaces_the_model_url(tmp_path: Path) -> None:
    s = LoaderSettings.from_options(sealed_dir=tmp_path, kbs_url="http://k")
    assert s.sealed_dir == tmp_path
    assert s.model == ""


def test_sealed_dir_and_model_exclude_each_other(tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigError) as info:
        LoaderSettings.from_env({"MODELSEAL_MODEL": "http://r/m"}, sealed_dir=tmp_path)
    assert "exclude each other" in str(info.value)


def test_sealed_dir_must_exist(tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigError):
        LoaderSettings(sealed_dir=tmp_path / "missing")


def test_a_model_is_still_required_for_load_and_mount() -> None:
    with pytest.raises(errors.ConfigError) as info:
        LoaderSettings.from_env({})
    assert "no model" in str(info.value)
    with pytest.raises(errors.ConfigError):
        LoaderSettings(model="ftp://r/m")


def test_a_volume_key_needs_no_model() -> None:
    s = LoaderSettings.for_key(kbs_url="http://k", tee="sample")
    assert s.model == ""
    assert s.kbs_url == "http://k"
