"""Loader settings from flags and MODELSEAL_* variables, validated strictly."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelseal import errors
from modelseal.loader.settings import DEFAULT_DEST, LoaderSettings

DIGEST = "sha256:" + "ab" * 32


def test_env_contract(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("pem")
    s = LoaderSettings.from_env(
        {
            "MODELSEAL_MODEL": "http://r/models/m",
            "MODELSEAL_KBS_URL": "https://kbs:8080",
            "MODELSEAL_DEST": "/dev/shm/m",
            "MODELSEAL_TEE": "tdx",
            "MODELSEAL_KBS_CA": str(ca),
            "MODELSEAL_ALLOW_DISK": "true",
            "MODELSEAL_WORKERS": "3",
            "MODELSEAL_MODEL_DIGEST": DIGEST,
        }
    )
    assert s.model == "http://r/models/m"
    assert s.kbs_url == "https://kbs:8080"
    assert s.dest == Path("/dev/shm/m")
    assert s.tee == "tdx"
    assert s.kbs_verify == str(ca)
    assert s.registry_verify is True
    assert s.allow_disk is True
    assert s.workers == 3
    assert s.model_digest == DIGEST


def test_defaults_and_overrides() -> None:
    s = LoaderSettings.from_env({"MODELSEAL_MODEL": "http://r/m"}, workers=2, kbs_url=None)
    assert s.dest == DEFAULT_DEST
    assert s.tee == "auto"
    assert s.allow_disk is False
    assert s.workers == 2
    assert s.kbs_url is None
    assert s.timeout == 30.0
    assert (
        LoaderSettings.from_env(
            {"MODELSEAL_MODEL": "http://r/m", "MODELSEAL_TIMEOUT": "2.5"}
        ).timeout
        == 2.5
    )


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"MODELSEAL_MODEL": "file:///etc/passwd"},
        {"MODELSEAL_MODEL": "http://r/m", "MODELSEAL_ALLOW_DISK": "maybe"},
        {"MODELSEAL_MODEL": "http://r/m", "MODELSEAL_WORKERS": "many"},
        {"MODELSEAL_MODEL": "http://r/m", "MODELSEAL_WORKERS": "0"},
        {"MODELSEAL_MODEL": "http://r/m", "MODELSEAL_MODEL_DIGEST": "sha256:XYZ"},
        {"MODELSEAL_MODEL": "http://r/m", "MODELSEAL_KBS_URL": "kbs:8080"},
        {"MODELSEAL_MODEL": "http://r/m", "MODELSEAL_KBS_CA": "/nonexistent/ca.pem"},
        {"MODELSEAL_MODEL": "http://r/m", "MODELSEAL_TIMEOUT": "soon"},
        {"MODELSEAL_MODEL": "http://r/m", "MODELSEAL_TIMEOUT": "0"},
        {"MODELSEAL_MODEL": "http://r/m", "MODELSEAL_TIMEOUT": "-1"},
        {"MODELSEAL_MODEL": "http://r/m", "MODELSEAL_TIMEOUT": "inf"},
        {"MODELSEAL_MODEL": "http://r/m", "MODELSEAL_TIMEOUT": "nan"},
    ],
)
def test_bad_settings_are_config_errors(env: dict[str, str]) -> None:
    with pytest.raises(errors.ConfigError) as info:
        LoaderSettings.from_env(env)
    assert info.value.exit_code == 2


def test_with_overrides_revalidates() -> None:
    s = LoaderSettings(model="http://r/m")
    assert s.with_overrides(workers=8).workers == 8
    with pytest.raises(errors.ConfigError):
        s.with_overrides(workers=1000)


def test_from_env_reads_the_process_environment_like_the_cli(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """SDK users get the loader container's configuration from the same variables."""
    monkeypatch.setenv("MODELSEAL_MODEL", "http://r/models/m")
    monkeypatch.setenv("MODELSEAL_WORKERS", "5")
    monkeypatch.setenv("MODELSEAL_MOCK_TDX_DIR", str(tmp_path))
    s = LoaderSettings.from_env(timeout=3.0)
    assert (s.model, s.workers, s.tee_options["mock_tdx_dir"], s.timeout) == (
        "http://r/models/m",
        5,
        tmp_path,
        3.0,
    )


def test_load_options_read_exactly_the_settings_variables() -> None:
    """``modelseal load`` (Click ``envvar=``) and ``LoaderSettings.from_env`` read one set of
    variables: a new option or field without the other fails here."""
    from modelseal.cli.load import load
    from modelseal.loader.settings import ENV_VARS

    cli_vars = {p.envvar for p in load.params if isinstance(p.envvar, str)}
    assert cli_vars == set(ENV_VARS)
    assert not [p.name for p in load.params if isinstance(p.envvar, list | tuple)]


def test_kind_options_travel_in_tee_options_by_their_declared_names(tmp_path: Path) -> None:
    """A kind's attester input is no settings field: the settings take it by its option
    name (as the CLI and ``from_env`` pass it) into ``tee_options``, typed by its spec."""
    s = LoaderSettings.from_options(
        model="http://r/models/m", mock_tdx_dir=str(tmp_path), aa_url="http://127.0.0.1:1"
    )
    assert dict(s.tee_options) == {"mock_tdx_dir": tmp_path, "aa_url": "http://127.0.0.1:1"}
    again = s.with_overrides(aa_url="http://127.0.0.1:2", workers=2)
    assert again.tee_options["aa_url"] == "http://127.0.0.1:2"
    assert again.tee_options["mock_tdx_dir"] == tmp_path
    with pytest.raises(TypeError):
        s.tee_options["aa_url"] = "http://evil"  # type: ignore[index]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"no_such_option": "x"}, "unknown option 'no_such_option'"),
        ({"aa_url": "ftp://127.0.0.1"}, "--aa-url: not an http"),
        ({"azure_imds_url": "169.254.169.254"}, "--azure-imds-url: not an http"),
        ({"mock_tdx_dir": 7}, "--mock-tdx-dir: expected text or a path"),
    ],
)
def test_tee_options_are_checked_against_the_kinds_declarations(
    options: dict[str, object], message: str
) -> None:
    with pytest.raises(errors.ConfigError, match=message) as info:
        LoaderSettings(model="http://r/models/m", tee_options=options)  # type: ignore[arg-type]
    assert info.value.exit_code == 2
