"""TEE selection and attester construction for the loader (no network)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from modelseal import errors
from modelseal.loader import attest
from modelseal.loader.settings import LoaderSettings
from modelseal.tee.mock_tdx.ca import MockTdxCA

DIGEST = "sha256:" + "ab" * 32
INIT = f'version = "0.1.0"\nalgorithm = "sha384"\n[data]\nmodel_digest = "{DIGEST}"\n'


def _settings(**kw: object) -> LoaderSettings:
    return LoaderSettings(model="http://r/models/m", **kw)  # type: ignore[arg-type]


def test_explicit_tee_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(attest, "detect", lambda: pytest.fail("must not detect"))
    assert attest.resolve_tee(_settings(tee="snp")) == "snp"


def test_auto_uses_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(attest, "detect", lambda: "tdx")
    assert attest.resolve_tee(_settings()) == "tdx"


def test_auto_without_a_tee_is_a_config_error_naming_the_choices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def none() -> str:
        raise errors.UnsupportedTee("no TEE detected")

    monkeypatch.setattr(attest, "detect", none)
    with pytest.raises(errors.ConfigError) as info:
        attest.resolve_tee(_settings())
    assert info.value.exit_code == 2
    message = str(info.value)
    assert message.startswith("no TEE detected. --tee (MODELSEAL_TEE) accepts: auto, ")
    for kind in ("tdx", "snp", "tpm", "sample", "mock-tdx"):
        assert kind in message.split("accepts: ")[1].split(", ")
    assert "sgx" not in message  # a verifier-only kind: this build cannot attest as it


def test_unknown_kind_is_unsupported() -> None:
    with pytest.raises(errors.UnsupportedTee):
        attest.build_attester("quantum", _settings(tee="quantum"), None)


def test_init_data_is_read_and_parsed(tmp_path: Path) -> None:
    path = tmp_path / "init.toml"
    path.write_text(INIT)
    init = attest.read_init_data(_settings(init_data=path))
    assert init is not None
    assert init.text == INIT
    assert init.model_digest == DIGEST
    assert attest.read_init_data(_settings()) is None
    path.write_text("not = [toml")
    with pytest.raises(errors.EvidenceError):
        attest.read_init_data(_settings(init_data=path))


def test_mock_tdx_attester_gets_ca_and_init_data(tmp_path: Path) -> None:
    ca = MockTdxCA.create(tmp_path / "ca")
    path = tmp_path / "init.toml"
    path.write_text(INIT)
    settings = _settings(tee="mock-tdx", tee_options={"mock_tdx_dir": ca.directory}, init_data=path)
    with_init = attest.build_attester("mock-tdx", settings, attest.read_init_data(settings))
    without = attest.build_attester("mock-tdx", settings, None)
    assert with_init.tee == "mock-tdx"
    # the simulated launch puts the init-data digest into MRCONFIGID
    assert with_init.measurements["mr_config_id"] != without.measurements["mr_config_id"]


def test_sample_attester() -> None:
    attester = attest.build_attester("sample", _settings(tee="sample"), None)
    assert attester.evidence(b"\x01" * 48)["svn"] == "1"
    assert "sample" in attest.INSECURE_TEES


def test_a_device_kind_alone_is_no_session_tee() -> None:
    """``MODELSEAL_TEE=nvidia`` through the SDK (no Click choice in between): a GPU only
    attests next to a CPU TEE, so this is a configuration error naming the fix."""
    with pytest.raises(errors.ConfigError) as info:
        attest.resolve_tee(_settings(tee="nvidia"))
    assert info.value.exit_code == 2
    assert "name the CPU TEE first" in str(info.value)
    assert attest.resolve_tee(_settings(tee="snp+nvidia")) == "snp+nvidia"


@pytest.mark.parametrize(
    ("kind", "named"), [("sample", "'sample'"), ("mock-tdx+nvidia", "'mock-tdx'")]
)
def test_the_insecure_warning_names_the_cpu_kind(
    kind: str, named: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The GPU next to a development CPU kind is verified as usual: the warning blames the
    CPU kind alone."""
    with caplog.at_level(logging.WARNING, logger=attest.__name__):
        attest.warn_if_insecure(kind)
    assert [r.getMessage() for r in caplog.records] == [
        f"attesting as the INSECURE {named} TEE: for development only"
    ]


def test_no_warning_for_a_production_kind(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=attest.__name__):
        attest.warn_if_insecure("tdx+nvidia")
    assert caplog.records == []
