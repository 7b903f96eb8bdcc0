"""``modelseal attest`` and ``modelseal evidence verify|replay`` (DESIGN section 10).

``attest`` prints this machine's evidence (the JSON a KBS receives as
``primary_evidence``). ``evidence verify`` runs the same verifier a KBS runs and prints
the typed claims, or exits 4 with the reason (collateral expired, TCB out of date, debug,
chain broken, binding mismatch ...). ``evidence replay`` prints the registers an event
log replays to. Every flag also reads ``MODELSEAL_<FLAG>``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from modelseal._internal.encoding import hex_decode
from modelseal.errors import ConfigError, EvidenceError, FormatError

__all__ = ["attest", "evidence"]

#: Evidence files larger than this are refused before parsing.
MAX_EVIDENCE_FILE = 8 * 1024 * 1024
DCAP_KINDS = ("tdx", "sgx", "mock-tdx")
#: Kinds ``evidence verify`` knows (the verifiers of :mod:`modelseal.tee.registry`).
VERIFY_KINDS = ("tdx", "sgx", "snp", "tpm", "mock-tdx", "sample")


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
@click.option("--tee", default="auto", show_default=True, help="TEE kind, or auto-detect.")
@click.option("--report-data", default=None, help="Hex bytes for the report-data field.")
@click.option(
    "--mock-tdx-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="mock-tdx: test CA directory (created on demand).",
)
@click.option(
    "--init-data",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="mock-tdx: init-data TOML whose digest becomes MRCONFIGID.",
)
def attest(
    tee: str, report_data: str | None, mock_tdx_dir: Path | None, init_data: Path | None
) -> None:
    """Print this machine's attestation evidence as JSON."""
    from modelseal.tee import registry
    from modelseal.tee.detect import detect

    kind = detect() if tee == "auto" else tee
    options: dict[str, Any] = {}
    if kind == "mock-tdx":
        if mock_tdx_dir is not None:
            options["ca_dir"] = str(mock_tdx_dir)
        if init_data is not None:
            options["init_data"] = init_data.read_bytes()
    elif mock_tdx_dir is not None or init_data is not None:
        raise ConfigError("--mock-tdx-dir and --init-data apply to --tee mock-tdx only")
    data = _hex_arg(report_data, "--report-data") or bytes(64)
    attester = registry.attester_for(kind, **options)
    _print_json(attester.evidence(data))


# ---------------------------------------------------------------------------- evidence
@click.group()
def evidence() -> None:
    """Verify evidence or replay event logs offline, as a KBS would."""


def _evidence_value(kind: str, raw: bytes) -> Any:
    """JSON when the file is JSON; binary/hex quotes and SNP reports otherwise."""
    text = raw.strip()
    if text[:1] == b"{":
        try:
            return json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise EvidenceError("evidence file is not valid JSON") from exc
    if kind in DCAP_KINDS:
        return raw  # the TDX/SGX decoder takes binary or hex quotes itself
    if kind == "snp":
        from modelseal.tee.snp.evidence import build_evidence

        try:
            report = hex_decode(text.decode("ascii"), what="SNP report")
        except (UnicodeDecodeError, FormatError):
            report = raw
        return build_evidence(report)
    raise EvidenceError(f"{kind} evidence must be the JSON document a KBS receives")


def _own_report_data(kind: str, value: Any) -> bytes | None:
    """The evidence's own report data, when --report-data was not given (no binding check)."""
    if kind in DCAP_KINDS:
        from modelseal.tee.tdx.evidence import decode_evidence
        from modelseal.tee.tdx.quote import parse_quote

        return parse_quote(decode_evidence(value).quote).report.report_data
    if kind == "snp":
        from modelseal.tee.snp.evidence import report_bytes_from_json
        from modelseal.tee.snp.report import parse_report

        if isinstance(value, dict):
            return parse_report(report_bytes_from_json(value.get("attestation_report"))).report_data
    return None


def _verifier_config(kind: str, collateral: str | None, **kw: Any) -> Any:
    from modelseal.tee.base import VerifierConfig

    if kind == "snp":
        return VerifierConfig(snp_certs=collateral, **kw)
    if kind == "tpm":
        return VerifierConfig(tpm_trusted_aks=collateral, **kw)
    return VerifierConfig(collateral=collateral, **kw)


@evidence.command("verify")
@click.option(
    "--tee",
    required=True,
    type=click.Choice(VERIFY_KINDS),
    help="TEE kind of the evidence (an unknown kind is a usage error, exit 2).",
)
@click.option("--evidence", "evidence_path", required=True, help="Evidence file ('-' = stdin).")
@click.option(
    "--collateral",
    type=click.Path(exists=True),
    default=None,
    help="TDX/SGX: dcap-qvl collateral file or directory; SNP: VCEK/VLEK + ASK/ARK; "
    "TPM: trusted AK keys/certificates.",
)
@click.option("--at", "at", type=float, default=None, help="Verification time (Unix seconds).")
@click.option("--report-data", default=None, help="Expected binding (hex, zero-padded).")
@click.option(
    "--init-data",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Init-data TOML the TEE claims (checked against MRCONFIGID / HOST_DATA).",
)
@click.option(
    "--mock-tdx-root",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="TEST ONLY: trust this mock-tdx root CA (PEM).",
)
@click.option("--pccs-url", default=None, help="TDX/SGX: PCS/PCCS URL for missing collateral.")
@click.option("--cache-dir", default=None, help="Collateral download cache directory.")
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
    help="Print a debug guest's claims instead of rejecting it (SNP; DCAP verification "
    "always rejects debug TDX/SGX quotes).",
)
def verify_cmd(
    tee: str,
    evidence_path: str,
    collateral: str | None,
    at: float | None,
    report_data: str | None,
    init_data: Path | None,
    mock_tdx_root: str | None,
    pccs_url: str | None,
    cache_dir: str | None,
    tcb_statuses: tuple[str, ...],
    allow_debug: bool,
) -> None:
    """Verify evidence; print typed claims as JSON, or exit 4 with the reason."""
    from modelseal.tee import registry

    if tee == "tpm" and collateral is None:
        raise ConfigError("--collateral (the trusted AK keys or certificates) is required for tpm")
    value = _evidence_value(tee, _read(evidence_path, "evidence"))
    expected = _hex_arg(report_data, "--report-data")
    checked = expected is not None
    if expected is None:
        expected = _own_report_data(tee, value)
        if expected is None:
            raise ConfigError(f"--report-data is required for --tee {tee}")
    config = _verifier_config(
        tee,
        collateral,
        allow_sample=tee == "sample",
        pccs_url=pccs_url,
        cache_dir=cache_dir,
        mock_tdx_root=mock_tdx_root,
    )
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
    help="ccel: TDX RTMRs (SHA-384); tcg2: TPM PCRs, every bank in the log.",
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
