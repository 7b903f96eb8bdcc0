"""Typed claims from a verified TDX (or SGX) quote.

Measurement names (lower-case hex values) that release policies can use:

* TDX: ``mr_td``, ``rtmr0`` .. ``rtmr3``, ``mr_seam``, ``mr_signer_seam``, ``mr_config_id``,
  ``mr_owner``, ``mr_owner_config`` (+ ``mr_service_td`` for TDX 1.5 quotes), plus the
  event-log claims of :mod:`modelseal.tee.eventlog.claims` when a CCEL was sent.
* SGX: ``mr_enclave``, ``mr_signer``, ``isv_prod_id``, ``isv_svn``.

``extra`` keeps the rest for the audit log: quote version, FMSPC, PCK CA, TEE_TCB_SVN,
decoded TD attributes, XFAM, QE/platform TCB statuses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modelseal.protocol.claims import Claims
from modelseal.tee.tdx.dcap import DcapResult, PckInfo
from modelseal.tee.tdx.quote import EnclaveReport, Quote, TdReport


def td_attributes(raw: bytes) -> dict[str, Any]:
    """Decode TDATTRIBUTES (TDX module ABI: TUD byte 0, SEC bits 8..31, OTHER 32..63)."""
    value = int.from_bytes(raw, "little")
    return {
        "hex": raw.hex(),
        "debug": bool(value & (1 << 0)),
        "sept_ve_disable": bool(value & (1 << 28)),
        "pks": bool(value & (1 << 30)),
        "key_locker": bool(value & (1 << 31)),
        "perfmon": bool(value & (1 << 63)),
    }


def td_measurements(report: TdReport) -> dict[str, str]:
    out = {
        "mr_td": report.mr_td.hex(),
        "rtmr0": report.rtmr0.hex(),
        "rtmr1": report.rtmr1.hex(),
        "rtmr2": report.rtmr2.hex(),
        "rtmr3": report.rtmr3.hex(),
        "mr_seam": report.mr_seam.hex(),
        "mr_signer_seam": report.mr_signer_seam.hex(),
        "mr_config_id": report.mr_config_id.hex(),
        "mr_owner": report.mr_owner.hex(),
        "mr_owner_config": report.mr_owner_config.hex(),
    }
    if report.mr_service_td is not None:
        out["mr_service_td"] = report.mr_service_td.hex()
    return out


def sgx_measurements(report: EnclaveReport) -> dict[str, str]:
    return {
        "mr_enclave": report.mr_enclave.hex(),
        "mr_signer": report.mr_signer.hex(),
        "isv_prod_id": f"{report.isv_prod_id:04x}",
        "isv_svn": f"{report.isv_svn:04x}",
    }


def build_claims(
    tee: str,
    quote: Quote,
    result: DcapResult,
    pck: PckInfo,
    *,
    event_claims: Mapping[str, str] | None = None,
    init_data_digest: str | None = None,
    init_data: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
    runtime_events: tuple[str, ...] = (),
) -> Claims:
    common: dict[str, Any] = {
        "quote_version": quote.header.version,
        "fmspc": pck.fmspc,
        "pck_ca": pck.ca,
        "pck_cpusvn": pck.cpu_svn,
        "pck_pcesvn": pck.pce_svn,
        "qe_svn": quote.signature.qe_report.isv_svn,
        "qe_status": result.qe_status,
        "platform_status": result.platform_status,
    }
    report = quote.report
    if isinstance(report, TdReport):
        measurements = td_measurements(report)
        common.update(
            {
                "tee_tcb_svn": report.tee_tcb_svn.hex(),
                "td_attributes": td_attributes(report.td_attributes),
                "seam_attributes": report.seam_attributes.hex(),
                "xfam": report.xfam.hex(),
            }
        )
        if report.tee_tcb_svn2 is not None:
            common["tee_tcb_svn2"] = report.tee_tcb_svn2.hex()
        debug = report.debug
    else:
        measurements = sgx_measurements(report)
        common.update({"cpu_svn": report.cpu_svn.hex(), "attributes": report.attributes.hex()})
        debug = report.debug
    for name, value in (event_claims or {}).items():
        measurements.setdefault(name, value)
    common.update(extra or {})
    return Claims(
        tee=tee,
        debug=debug,
        report_data=report.report_data,
        tcb_status=result.status,
        advisories=result.advisory_ids,
        measurements=measurements,
        init_data_digest=init_data_digest,
        init_data=dict(init_data or {}),
        extra=common,
        runtime_events=runtime_events,
    )
