"""The TEE kinds of this build, and every list derived from their plugin descriptions.

Each kind package exports ``PLUGIN`` (:class:`~modelseal.tee.plugin.TeePlugin`). Callers
outside ``modelseal.tee`` never name a kind: they ask here for the kinds with a property
(``kinds(tcb_checked=True)``), the options of the shared vocabulary (:func:`options`),
the config of a kind built from option values (:func:`build_config`, the one factory),
and the verifier or attester of a kind. Importing this module loads only the small
package ``__init__`` modules: attester and verifier code is imported on first use, so the
loader inside the TEE never loads verifier code.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from modelseal.errors import ConfigError, UnsupportedTee
from modelseal.tee.base import Attester, Verifier
from modelseal.tee.plugin import KindConfig, OptionSpec, TeePlugin

#: The kind packages under ``modelseal.tee``, in the order lists show them.
_PACKAGES = (
    "tdx",
    "tdx.sgx",
    "snp",
    "tpm",
    "nvidia",
    "az_snp_vtpm",
    "az_tdx_vtpm",
    "mock_tdx",
    "sample",
    "aa",
)


def _load(packages: Iterable[str]) -> dict[str, TeePlugin]:
    found: dict[str, TeePlugin] = {}
    for package in packages:
        plugin: TeePlugin = importlib.import_module(f"modelseal.tee.{package}").PLUGIN
        if plugin.name in found or plugin.config.kind != plugin.name:
            raise RuntimeError(f"TEE plugin {package}: duplicate name or mistagged config")
        found[plugin.name] = plugin
    return found


#: kind name -> plugin description (evidence relays included)
PLUGINS: Mapping[str, TeePlugin] = _load(_PACKAGES)
#: every kind on the wire (RCAR ``tee``, policies, verifiers), in display order; an
#: evidence relay (``relay``) is not one: it attests as the kind it relays
KINDS: tuple[str, ...] = tuple(name for name, p in PLUGINS.items() if not p.relay)
#: The kind that runs anywhere with no setup (unsigned evidence): what diagnostic
#: commands and the quickstart attest as unless told otherwise.
DEVELOPMENT_KIND: str = next(name for name, p in PLUGINS.items() if p.insecure)


def plugin(kind: str) -> TeePlugin:
    """The plugin of ``kind``; ``UnsupportedTee`` naming the known kinds otherwise."""
    found = PLUGINS.get(kind)
    if found is None:
        raise UnsupportedTee(f"unknown TEE kind {kind!r}; known: {', '.join(sorted(KINDS))}")
    return found


def kinds(**flags: bool) -> tuple[str, ...]:
    """The kinds on the wire whose plugin flags have the given values, e.g.
    ``kinds(insecure=True)``."""
    return tuple(
        name
        for name in KINDS
        if all(bool(getattr(PLUGINS[name], flag)) == want for flag, want in flags.items())
    )


def attestable_kinds() -> tuple[str, ...]:
    """Kinds with an attester in this build (``--tee`` choices of attesting commands)."""
    return tuple(name for name, p in PLUGINS.items() if p.attester_module is not None)


def _dedup(specs: Iterable[OptionSpec]) -> tuple[OptionSpec, ...]:
    seen: dict[str, OptionSpec] = {}
    for spec in specs:
        if seen.setdefault(spec.name, spec) != spec:
            raise RuntimeError(f"TEE option {spec.name!r} is declared two different ways")
    return tuple(seen.values())


def options() -> tuple[OptionSpec, ...]:
    """Every verifier option of every kind, once each (``kbs serve``, ``evidence verify``)."""
    return _dedup(spec for p in PLUGINS.values() for spec in p.config.options())


def attester_options() -> tuple[OptionSpec, ...]:
    """Every attester input option of every kind, once each (``load``, ``attest``, ...)."""
    return _dedup(i.option for p in PLUGINS.values() for i in p.attester_inputs)


def check_options(values: Mapping[str, Any]) -> None:
    """``ConfigError`` naming the flag for an unknown option, a missing path or a URL
    that is not http(s); unset values (None, False) pass."""
    specs = {spec.name: spec for spec in options()}
    for name, value in values.items():
        spec = specs.get(name)
        if spec is None:
            raise ConfigError(f"unknown TEE option {name!r}")
        if value is None or value is False:
            continue
        if spec.type == "path" and not Path(str(value)).exists():
            raise ConfigError(f"{spec.flag} {value} does not exist")
        if spec.type == "url" and not str(value).startswith(("https://", "http://")):
            raise ConfigError(f"{spec.flag} must be an http(s) URL")


def kinds_reading(spec: OptionSpec) -> tuple[str, ...]:
    """The kinds whose config or attester reads the option ``spec`` (for help texts)."""
    return tuple(
        name
        for name, p in PLUGINS.items()
        if spec in p.config.options() or spec in (i.option for i in p.attester_inputs)
    )


def build_config(kind: str, values: Mapping[str, Any]) -> KindConfig:
    """The one factory: ``kind``'s own config from the shared option values."""
    return plugin(kind).config.from_options(values)


def build_configs(values: Mapping[str, Any]) -> dict[str, KindConfig]:
    """Every kind's config from the same option values (what a KBS verifies with)."""
    return {name: build_config(name, values) for name in KINDS}


def evidence_kind(kind: str, attester: Attester) -> str:
    """The kind a KBS sees for ``attester``'s evidence: ``kind`` itself, or for a relay
    the kind its attester reports (``evidence_kind``), which must be a kind on the wire."""
    if not plugin(kind).relay:
        return kind
    relayed = getattr(attester, "evidence_kind", None)
    if not isinstance(relayed, str) or relayed not in KINDS:
        raise UnsupportedTee(
            f"the {kind} attester relays evidence of kind {relayed!r}, which this build "
            f"cannot verify; known: {', '.join(KINDS)}"
        )
    return relayed


def verifier_for(kind: str, config: KindConfig) -> Verifier:
    """Build the verifier of ``kind``; raises ``UnsupportedTee`` if unknown or not allowed.

    The verifier's own kind must be ``kind``: :meth:`Verifier.verify` then refuses claims
    of any other kind, so evidence is only ever accepted as the kind the session named.
    """
    found = plugin(kind)
    if config.kind != kind:
        raise UnsupportedTee(f"a {config.kind} config cannot build the {kind} verifier")
    verifier = found.verifier_class().from_config(config)
    if verifier.tee != kind:
        raise UnsupportedTee(f"the verifier registered for {kind!r} verifies {verifier.tee!r}")
    return verifier


def attester_for(kind: str, **options: Any) -> Attester:
    """Build the attester of ``kind`` (``options`` are kind-specific keywords)."""
    attester: Attester = plugin(kind).attester_class()(**options)
    return attester


def attester_keywords(
    kind: str, values: Mapping[str, Any], *, init_data: bytes | str | None = None
) -> dict[str, Any]:
    """Keywords for ``kind``'s attester from option values (``mock_tdx_dir`` -> ``ca_dir``)
    and, for an attester that simulates the launch, the init-data document."""
    found = plugin(kind)
    keywords = {
        i.keyword: values[i.option.name]
        for i in found.attester_inputs
        if values.get(i.option.name) is not None
    }
    if init_data is not None and found.simulates_launch:
        keywords["init_data"] = init_data
    return keywords


def _quote_transfer_type() -> str:
    found = next(
        (p.transfer_types[0] for p in PLUGINS.values() if p.transfer_types and not p.needs_opt_in),
        None,
    )
    if found is None:
        raise RuntimeError("no production TEE kind answers to a transfer Attestation-Type")
    return found


#: The ``Attestation-Type`` of the CNAP transfer API that a header-less request means and
#: round 1 announces: the one a production kind declares (a raw quote of that kind).
QUOTE_TRANSFER_TYPE: str = _quote_transfer_type()


def kind_for_transfer_type(header: str, configs: Mapping[str, KindConfig]) -> str:
    """The kind an ``Attestation-Type`` header names, given what the KBS is configured for.

    When several kinds answer to the same header (a TDX quote may come from a test CA),
    a kind the KBS was explicitly opted into wins over the production kind; an unknown
    header is ``UnsupportedTee``.
    """
    wanted = header.strip().upper()
    candidates = [p for p in PLUGINS.values() if wanted in p.transfer_types]
    if not candidates:
        known = sorted({t for p in PLUGINS.values() for t in p.transfer_types})
        raise UnsupportedTee(
            f"Attestation-Type {wanted[:16]!r} is not supported (only {', '.join(known)})"
        )
    for p in candidates:
        config = configs.get(p.name)
        if p.needs_opt_in and config is not None and config.enabled():
            return p.name
    for p in candidates:
        if not p.needs_opt_in:
            return p.name
    return candidates[0].name


def kinds_for_transfer_type(header: str, configs: Mapping[str, KindConfig]) -> tuple[str, ...]:
    """Every kind an ``Attestation-Type`` header may be verified as on a KBS configured
    with ``configs``: the production kinds, and opted-in kinds that are enabled (what a
    policy written for the header, like an ITA key-transfer policy, must admit)."""
    wanted = header.strip().upper()
    return tuple(
        sorted(
            p.name
            for p in PLUGINS.values()
            if wanted in p.transfer_types
            and (not p.needs_opt_in or (p.name in configs and configs[p.name].enabled()))
        )
    )


#: Joins a CPU TEE kind and device kinds in one ``--tee`` value (``tdx+nvidia``).
COMPOSITE_SEPARATOR = "+"


def _composite_example() -> str:
    devices = kinds(device=True)
    cpus = [name for name in KINDS if not PLUGINS[name].device and not PLUGINS[name].test_only]
    return COMPOSITE_SEPARATOR.join(cpus[:1] + list(devices[:1])) if devices and cpus else ""


#: A composite ``--tee`` value for help texts (a production CPU kind and a device kind).
COMPOSITE_EXAMPLE: str = _composite_example()


def split_composite(tee: str) -> tuple[str, tuple[str, ...]]:
    """``tdx+nvidia`` -> ``("tdx", ("nvidia",))``: the primary kind attests with the
    session binding, the device kinds' evidence goes along as additional evidence. The
    first kind must not be a device kind, the others must be; none may repeat."""
    primary, *devices = tee.split(COMPOSITE_SEPARATOR)
    if primary != "auto":
        plugin(primary)
    for device in devices:
        if not plugin(device).device:
            raise UnsupportedTee(
                f"{device!r} after '+' is not a device TEE kind "
                f"(device kinds: {', '.join(kinds(device=True))})"
            )
    if primary != "auto" and plugin(primary).device:
        raise UnsupportedTee(f"{primary!r} is a device TEE: name the CPU TEE first")
    if len(set(devices)) != len(devices):
        raise UnsupportedTee(f"{tee!r} names a device kind twice")
    return primary, tuple(devices)
