"""Typed SNP claims: what policies see after a report is verified.

``measurements`` (lower hex) hold everything a release policy may pin exactly:
``measurement``, ``host_data``, ``family_id``, ``image_id``, ``id_key_digest``,
``author_key_digest``, ``chip_id``, ``guest_svn``, ``vmpl``, ``policy`` (16 hex digits),
``migrate_ma`` (``01`` when a migration agent may export the guest) and the reported TCB
SPLs as ``tcb_<component>`` two-digit hex.
``extra`` keeps structured facts (policy flags, TCBs, platform info) for the audit log.

TCB status rule (documented in docs/reference/evidence-snp-tpm.md): the VCEK/VLEK SPL
extensions must EQUAL ``reported_tcb`` (else the report is rejected). The status is
``UpToDate`` when ``reported_tcb`` is not below ``committed_tcb`` in any component, i.e.
the report is signed by the key version of the firmware the platform has committed to;
otherwise ``OutOfDate`` (the host asked for an older, possibly compromised, key version).
"""

from __future__ import annotations

from typing import Any

from modelseal.protocol.claims import Claims
from modelseal.tee.snp.report import AttestationReport, FirmwareVersion, TcbVersion

UP_TO_DATE = "UpToDate"
OUT_OF_DATE = "OutOfDate"


def tcb_status(report: AttestationReport) -> str:
    """``UpToDate`` iff reported_tcb >= committed_tcb component-wise (see module doc)."""
    return UP_TO_DATE if report.reported_tcb.at_least(report.committed_tcb) else OUT_OF_DATE


def _fw(version: FirmwareVersion) -> str:
    return f"{version.major}.{version.minor}.{version.build}"


def _tcb_json(tcb: TcbVersion) -> dict[str, Any]:
    return {**tcb.components(), "raw": tcb.raw.hex()}


def build_claims(
    report: AttestationReport,
    *,
    signer: str,
    chain: list[str],
    init_data_digest: str | None = None,
    init_data: dict[str, str] | None = None,
) -> Claims:
    """Claims for a report whose signature, chain, TCB and binding were already checked."""
    measurements = {
        "measurement": report.measurement.hex(),
        "host_data": report.host_data.hex(),
        "family_id": report.family_id.hex(),
        "image_id": report.image_id.hex(),
        "id_key_digest": report.id_key_digest.hex(),
        "author_key_digest": report.author_key_digest.hex(),
        "chip_id": report.chip_id.hex(),
        "guest_svn": f"{report.guest_svn:08x}",
        "vmpl": f"{report.vmpl:02x}",
        "policy": f"{report.policy:016x}",
        "migrate_ma": "01" if report.policy_migrate_ma else "00",
    }
    for name, value in report.reported_tcb.components().items():
        measurements[f"tcb_{name}"] = f"{value:02x}"
    abi_major, abi_minor = report.policy_abi
    extra: dict[str, Any] = {
        "version": report.version,
        "product": report.product.value if report.product else None,
        "signing_key": signer,
        "chain": chain,
        "guest_svn": report.guest_svn,
        "vmpl": report.vmpl,
        "policy": {
            "raw": report.policy,
            "abi_major": abi_major,
            "abi_minor": abi_minor,
            "smt_allowed": report.policy_smt,
            "migrate_ma": report.policy_migrate_ma,
            "debug_allowed": report.policy_debug,
            "single_socket": report.policy_single_socket,
        },
        "platform_info": report.platform_info,
        "flags": report.flags,
        "report_id": report.report_id.hex(),
        "report_id_ma": report.report_id_ma.hex(),
        "current_tcb": _tcb_json(report.current_tcb),
        "reported_tcb": _tcb_json(report.reported_tcb),
        "committed_tcb": _tcb_json(report.committed_tcb),
        "launch_tcb": _tcb_json(report.launch_tcb),
        "current_version": _fw(report.current_version),
        "committed_version": _fw(report.committed_version),
        "cpuid": None
        if report.cpuid_fam_id is None
        else [report.cpuid_fam_id, report.cpuid_mod_id, report.cpuid_step],
    }
    if report.launch_mit_vector is not None:
        extra["launch_mit_vector"] = report.launch_mit_vector
        extra["current_mit_vector"] = report.current_mit_vector
    return Claims(
        tee="snp",
        debug=report.policy_debug,
        report_data=report.report_data,
        tcb_status=tcb_status(report),
        measurements=measurements,
        init_data_digest=init_data_digest,
        init_data=init_data or {},
        extra=extra,
    )
