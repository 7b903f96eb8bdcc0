"""``--azure-imds-url`` / ``MODELSEAL_AZURE_IMDS_URL`` reach the Azure attester intact."""

from __future__ import annotations

from pathlib import Path

from modelseal.cli.load import _attester_settings
from modelseal.loader.settings import LoaderSettings
from modelseal.tee import registry

URL = "http://127.0.0.1:9/metadata"


def test_cli_values_keep_urls_as_text_and_paths_as_paths() -> None:
    values = _attester_settings({"azure_imds_url": URL, "mock_tdx_dir": "/tmp/ca"})
    assert values == {"azure_imds_url": URL, "mock_tdx_dir": Path("/tmp/ca")}


def test_environment_reaches_the_attester_keywords() -> None:
    settings = LoaderSettings.from_env(
        {"MODELSEAL_MODEL": "http://127.0.0.1:1/models/m", "MODELSEAL_AZURE_IMDS_URL": URL}
    )
    assert settings.tee_options == {"azure_imds_url": URL}
    values = settings.tee_options
    for kind in ("az-snp-vtpm", "az-tdx-vtpm"):
        assert registry.attester_keywords(kind, values) == {"imds_url": URL}
