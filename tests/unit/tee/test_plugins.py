"""Every list of TEE kinds is derived from the kind packages' plugin descriptions."""

from __future__ import annotations

import dataclasses
import importlib

import click
import pytest

from modelseal.errors import UnsupportedTee
from modelseal.loader.settings import LoaderSettings
from modelseal.policy import TCB_CHECKED_TEES, TEE_KINDS
from modelseal.tee import registry
from modelseal.tee.mock_tdx import MockTdxConfig
from modelseal.tee.plugin import KindConfig, TeePlugin
from modelseal.tee.sample import SampleConfig
from modelseal.tee.tdx.config import TdxConfig


@pytest.mark.parametrize("kind", registry.KINDS)
def test_each_kind_package_describes_itself(kind: str) -> None:
    found = registry.plugin(kind)
    assert found.verifier_module is not None
    package = found.verifier_module.rsplit(".", 1)[0]
    assert importlib.import_module(package).PLUGIN is found
    assert isinstance(found, TeePlugin)
    assert found.config.kind == kind
    assert issubclass(found.config, KindConfig)
    assert found.verifier_class().tee == kind
    if found.attester_module is not None:
        assert found.attester_class().tee == kind
    # a kind whose evidence proves nothing must need an opt-in and be test-only
    if found.insecure:
        assert found.needs_opt_in
        assert found.test_only
    # test-only kinds are never detected
    if found.test_only:
        assert found.detection is None


def test_lists_derive_from_the_plugins() -> None:
    assert set(TEE_KINDS) == {k for k in registry.KINDS if not registry.plugin(k).device}
    assert {k for k in registry.KINDS if registry.plugin(k).tcb_checked} == TCB_CHECKED_TEES
    assert registry.kinds(insecure=True) == (registry.DEVELOPMENT_KIND,)
    wire = {k for k in registry.attestable_kinds() if not registry.plugin(k).relay}
    assert wire < set(registry.KINDS)


def test_relays_are_attesters_but_never_kinds_on_the_wire() -> None:
    relays = [name for name, p in registry.PLUGINS.items() if p.relay]
    assert relays
    for name in relays:
        found = registry.plugin(name)
        assert name in registry.attestable_kinds()
        assert name not in registry.KINDS
        assert name not in TEE_KINDS
        assert name not in registry.build_configs({})
        assert found.verifier_module is None
        assert not found.transfer_types
        with pytest.raises(UnsupportedTee, match="relays"):
            found.verifier_class()


def test_options_are_one_vocabulary() -> None:
    specs = registry.options() + registry.attester_options()
    names = [spec.name for spec in specs]
    assert len(names) == len(set(names))
    for spec in specs:
        assert spec.flag == "--" + spec.name.replace("_", "-")
        assert spec.envvar == "MODELSEAL_" + spec.name.upper()
    # every attester option reaches the loader through ``tee_options``, by the same name
    # and the same variable, and is never a settings field of its own
    fields = {f.name for f in dataclasses.fields(LoaderSettings)}
    for spec in registry.attester_options():
        assert spec.name not in fields
        value = "http://127.0.0.1:9" if spec.type == "url" else "/ca"
        settings = LoaderSettings.from_env({"MODELSEAL_MODEL": "http://r/m", spec.envvar: value})
        assert str(settings.tee_option(spec)) == value


def test_the_factory_gives_each_kind_only_its_own_fields() -> None:
    values = {
        "collateral": "bundle",
        "pccs_url": "https://pccs.example",
        "mock_tdx_root": "root.pem",
        "snp_certs": "certs",
    }
    configs = registry.build_configs(values)
    assert configs["tdx"] == TdxConfig(collateral="bundle", pccs_url="https://pccs.example")
    assert configs["mock-tdx"] == MockTdxConfig(root="root.pem", collateral="bundle")
    assert configs["sample"] == SampleConfig()
    assert not configs["sample"].enabled()
    assert configs["mock-tdx"].enabled()
    assert configs["sample"].opt_in_flags() == ("--insecure-allow-sample",)
    with pytest.raises(UnsupportedTee, match="cannot build"):
        registry.verifier_for("tdx", configs["snp"])


def test_transfer_type_prefers_an_opted_in_kind() -> None:
    plain = registry.build_configs({})
    mock = registry.build_configs({"mock_tdx_root": "root.pem"})
    assert registry.kind_for_transfer_type("TDX", plain) == "tdx"
    assert registry.kind_for_transfer_type(" tdx ", mock) == "mock-tdx"
    assert registry.kind_for_transfer_type("MOCK-TDX", plain) == "mock-tdx"
    with pytest.raises(UnsupportedTee, match="not supported"):
        registry.kind_for_transfer_type("SEV-SNP", mock)


def test_attester_keywords_come_from_options() -> None:
    values = {"mock_tdx_dir": "/ca"}
    assert registry.attester_keywords("mock-tdx", values, init_data="x") == {
        "ca_dir": "/ca",
        "init_data": "x",
    }
    # a kind without such inputs, and without a simulated launch, gets none of them
    assert registry.attester_keywords("sample", values, init_data="x") == {}


@pytest.mark.parametrize(
    ("module", "command", "extra"),
    [
        ("modelseal.cli.evidence", "verify_cmd", ()),
        ("modelseal.cli.evidence", "attest", ("auto",)),
        ("modelseal.cli.kbs_serve", "get", ()),
        ("modelseal.cli.load", "load", ("auto",)),
    ],
)
def test_cli_choices_and_options_come_from_the_registry(
    module: str, command: str, extra: tuple[str, ...]
) -> None:
    cmd: click.Command = getattr(importlib.import_module(module), command)
    params = {p.name: p for p in cmd.params}
    tee = params["tee"]
    assert isinstance(tee.type, click.Choice)
    kinds = list(registry.KINDS if command == "verify_cmd" else registry.attestable_kinds())
    if command in ("get", "load"):  # a session: a device kind only after a CPU kind's '+'
        kinds = [k for k in kinds if not registry.plugin(k).device]
    assert list(tee.type.choices) == [*extra, *kinds]
    specs = registry.options() if command == "verify_cmd" else registry.attester_options()
    for spec in specs:
        assert spec.flag in params[spec.name].opts  # type: ignore[union-attr]


def test_kbs_serve_takes_every_verifier_option() -> None:
    from modelseal.cli.kbs_serve import serve

    flags = {opt for p in serve.params for opt in p.opts}
    assert {spec.flag for spec in registry.options()} <= flags


def test_help_names_the_kinds_reading_an_option() -> None:
    by_name = {spec.name: spec for spec in registry.options() + registry.attester_options()}
    assert registry.kinds_reading(by_name["collateral"]) == (
        "tdx",
        "sgx",
        "nvidia",
        "az-tdx-vtpm",
        "mock-tdx",
    )
    assert registry.kinds_reading(by_name["snp_certs"]) == ("snp", "az-snp-vtpm")
    assert registry.kinds_reading(by_name["mock_tdx_dir"]) == ("mock-tdx",)
