"""``modelseal attest`` and ``modelseal evidence verify|replay``.

``attest`` prints this machine's evidence (the JSON a KBS receives as
``primary_evidence``). ``evidence verify`` runs the same verifier a KBS runs and prints
the typed claims, or exits 4 with the reason (collateral expired, TCB out of date, debug,
chain broken, binding mismatch ...), or 2 when no collateral covers the quote's platform
(a configuration gap: the hint names ``--collateral`` / ``--pccs-url``).
``evidence replay`` prints the registers an event log replays to. The TEE kinds' options
also read ``MODELSEAL_<OPTION>`` (docs/reference/environment.md lists every variable).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from modelseal._internal.encoding import hex_decode
from modelseal.cli._tee_options import (
    attester_options,
    composite_tee_choice,
    spec_options,
    tee_choice,
    verifier_options,
)
from modelseal.errors import ConfigError, EvidenceError, FormatError
from modelseal.tee import registry
from modelseal.tee.plugin import KindConfig

__all__ = ["attest", "evidence"]

#: Evidence files larger than this are refused before parsing.
MAX_EVIDENCE_FILE = 8 * 1024 * 1024


def _hex_arg(value: str | None, what: str) -> bytes | None:
    if value is None:
        return None
    try:
        data = hex_decode(value, what=what)
    except FormatError as exc:
        raise ConfigError(f"{what} must be hex") from exc
    if len(data) > 64:
        raise ConfigError(f"{what} is longer than 64 bytes")
    return data


def _read(path: str, what: str) -> bytes:
    try:
        if path == "-":
            data = sys.stdin.buffer.read(MAX_EVIDENCE_FILE + 1)
        else:
            with open(path, "rb") as fh:
                data = fh.read(MAX_EVIDENCE_FILE + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(data) > MAX_EVIDENCE_FILE:
        raise ConfigError(f"{what} {path} is larger than {MAX_EVIDENCE_FILE} bytes")
    return data


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=False))


# ---------------------------------------------------------------------------- attest
@click.command()
@click.option(
    "--tee",
    default="auto",
    show_default=True,
    type=composite_tee_choice(registry.attestable_kinds(), "auto", device_alone=True),
    help=f"TEE kind, or auto-detect; add GPUs with '+' ({registry.COMPOSITE_EXAMPLE}).",
)
@click.option("--report-data", default=None, help="Hex bytes for the report-data field.")
@spec_options(attester_options())
@click.option(
    "--init-data",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Init-data TOML whose digest a test TEE puts into its launch field (MRCONFIGID).",
)
def attest(tee: str, report_data: str | None, init_data: Path | None, **values: Any) -> None:
    """Print this machine's attestation evidence as JSON.

    A composite ``--tee`` (a CPU TEE and device kinds, ``tdx+nvidia``) prints the RCAR
    ``tee-evidence`` shape: ``primary_evidence`` and ``additional_evidence`` (device kind
    -> evidence), every attester bound to the same ``--report-data``.
    """
    from modelseal.tee.detect import detect

    # a device kind alone prints its own evidence (``--tee nvidia``); after a CPU TEE it is
    # part of a composite
    composite = registry.COMPOSITE_SEPARATOR in tee
    primary, device_kinds = registry.split_composite(tee) if composite else (tee, ())
    kind = detect() if primary == "auto" else primary
    plugin = registry.plugin(kind)
    given = {name for name, value in values.items() if value is not None}
    own = {i.option.name for i in plugin.attester_inputs}
    if given - own or (init_data is not None and not plugin.simulates_launch):
        raise ConfigError(f"{_flags(given - own) or '--init-data'} do not apply to --tee {kind}")
    options = registry.attester_keywords(
        kind, values, init_data=init_data.read_bytes() if init_data is not None else None
    )
    data = _hex_arg(report_data, "--report-data") or bytes(64)
    attester = registry.attester_for(kind, **options)
    evidence = attester.evidence(data)
    if not device_kinds:
        _print_json(evidence)
        return
    # device attesters take no options, as in the loader
    devices = {device: registry.attester_for(device).evidence(data) for device in device_kinds}
    _print_json({"primary_evidence": evidence, "additional_evidence": devices})


def _flags(names: set[str]) -> str:
    return ", ".join("--" + name.replace("_", "-") for name in sorted(names))


# ---------------------------------------------------------------------------- evidence
@click.group()
def evidence() -> None:
    """Verify evidence or replay event logs offline, as a KBS would."""


def _verifier_config(kind: str, values: dict[str, Any]) -> KindConfig:
    """``kind``'s config from the options given; naming an opt-in kind on the command
    line is the opt-in. Before the kinds' options were shared with ``kbs serve``, one
    catch-all option (``--collateral``) carried every kind's material: for a kind with
    one material option it is still read as that option (deprecated)."""
    specs = registry.plugin(kind).config.options()
    own = {spec.name for spec in specs}
    values = {name: value for name, value in values.items() if value not in (None, False)}
    for spec in specs:
        if spec.enables and spec.type == "flag":
            values[spec.name] = True
    foreign = {name: values.pop(name) for name in list(values) if name not in own}
    material = [s for s in specs if s.type == "path" and not s.enables and s.name not in values]
    paths = {s.name: s for s in registry.options() if s.catch_all}
    if len(foreign) == 1 and len(material) == 1 and set(foreign) <= set(paths):
        ((old, value),) = foreign.items()
        new = material[0]
        click.echo(
            f"note: {paths[old].flag} for --tee {kind} is deprecated; use {new.flag}", err=True
        )
        values[new.name] = value
    elif foreign:
        raise ConfigError(f"{_flags(set(foreign))} do not apply to --tee {kind}")
    for spec in specs:
        if spec.required and values.get(spec.name) is None:
            raise ConfigError(f"{spec.flag} ({spec.help}) is required for --tee {kind}")
    registry.check_options(values)
    return registry.build_config(kind, values)


@evidence.command("verify")
@click.option(
    "--tee",
    required=True,
    type=tee_choice(registry.KINDS),
    help="TEE kind of the evidence (an unknown kind is a usage error, exit 2).",
)
@click.option("--evidence", "evidence_path", required=True, help="Evidence file ('-' = stdin).")
@spec_options(verifier_options())
@click.option("--at", "at", type=float, default=None, help="Verification time (Unix seconds).")
@click.option("--report-data", default=None, help="Expected binding (hex, zero-padded).")
@click.option(
    "--nonce",
    default=None,
    help="Expected nonce (hex): --report-data under the name device reports use for it.",
)
@click.option(
    "--init-data",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Init-data TOML the TEE claims (checked against MRCONFIGID / HOST_DATA).",
)
@click.option(
    "--tcb-status",
    "tcb_statuses",
    multiple=True,
    default=("UpToDate",),
    show_default=True,
    help="Accepted TCB statuses (repeat; 'any' accepts every status).",
)
@click.option(
    "--allow-debug",
    is_flag=True,
    help="Print a debug guest's claims instead of rejecting it (where the kind's verifier "
    "allows it; DCAP verification always rejects debug quotes).",
)
def verify_cmd(
    tee: str,
    evidence_path: str,
    at: float | None,
    report_data: str | None,
    nonce: str | None,
    init_data: Path | None,
    tcb_statuses: tuple[str, ...],
    allow_debug: bool,
    **values: Any,
) -> None:
    """Verify evidence; print typed claims as JSON, or exit 4 with the reason (2 when
    no collateral covers the quote's platform).

    The kind's options are those ``kbs serve`` takes (``--snp-certs``, ``--collateral``,
    ``--mock-tdx-root`` ...): the same verifier runs with the same configuration.
    """
    config = _verifier_config(tee, values)
    kind = registry.plugin(tee).verifier_class()
    value = kind.evidence_from_file(_read(evidence_path, "evidence"))
    if nonce is not None and report_data is not None:
        raise ConfigError("give --nonce or --report-data, not both")
    expected = _hex_arg(report_data, "--report-data") or _hex_arg(nonce, "--nonce")
    checked = expected is not None
    if expected is None:
        expected = kind.own_report_data(value)
        if expected is None:
            raise ConfigError(f"--report-data is required for --tee {tee}")
    verifier = registry.verifier_for(tee, config)
    claims = verifier.verify(
        value,
        expected_report_data=expected,
        now=time.time() if at is None else at,
        init_data=init_data.read_bytes() if init_data is not None else None,
    )
    if claims.debug and not allow_debug:
        raise EvidenceError("debug TEE: its memory is readable by the host (--allow-debug)")
    accepted = {s.lower() for s in tcb_statuses}
    status = claims.tcb_status
    if status is not None and "any" not in accepted and status.lower() not in accepted:
        advisories = ", ".join(claims.advisories) or "none"
        raise EvidenceError(
            f"TCB status {status} not accepted (accepted: "
            f"{', '.join(tcb_statuses)}; advisories: {advisories})"
        )
    out = claims.to_json()
    out["report_data_checked"] = checked
    _print_json(out)


@evidence.command("replay")
@click.option("--eventlog", required=True, help="Event log file ('-' = stdin).")
@click.option(
    "--kind",
    type=click.Choice(["auto", "ccel", "tcg2"]),
    default="auto",
    show_default=True,
    help="ccel: the confidential-computing event log (RTMRs, SHA-384); tcg2: the TCG PC "
    "Client log (PCRs, every bank in the log).",
)
def replay_cmd(eventlog: str, kind: str) -> None:
    """Print the RTMRs/PCRs an event log replays to, and the measured components."""
    from modelseal.tee.eventlog import extract_components, parse_event_log, replay_ccel, replay_tcg2
    from modelseal.tee.eventlog.tcg import ALG_NAMES, ALG_SHA384

    log = parse_event_log(_read(eventlog, "event log"))
    if kind == "auto":
        ccel_like = set(log.algorithms) == {ALG_SHA384} and all(e.index <= 4 for e in log.events)
        kind = "ccel" if ccel_like else "tcg2"
    out: dict[str, Any] = {"kind": kind, "events": len(log.events)}
    if kind == "ccel":
        rtmrs = replay_ccel(log)
        out.update({f"rtmr{i}": rtmrs[i].hex() for i in range(4)})
        out["components"] = extract_components(log, ALG_SHA384).to_json()
    else:
        banks: dict[str, dict[str, str]] = {}
        for alg in log.algorithms:
            name = ALG_NAMES.get(alg, f"0x{alg:04x}")
            try:
                pcrs = replay_tcg2(log, alg)
            except EvidenceError:
                continue  # a bank we cannot hash (e.g. SM3) is left out, not guessed
            banks[name] = {str(i): v.hex() for i, v in sorted(pcrs.items())}
        out["pcrs"] = banks
        preferred = next((a for a in (0x000B, 0x000C, 0x0004) if a in log.algorithms), None)
        if preferred is not None:
            out["components"] = extract_components(log, preferred).to_json()
    _print_json(out)
