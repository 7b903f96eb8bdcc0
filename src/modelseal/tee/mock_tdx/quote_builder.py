"""Builds structurally real TDX quotes (v4, or v5 with a TDX 1.5 body) signed by the mock CA.

Byte layout is the one :mod:`modelseal.tee.tdx.quote` parses: header, TD report body,
then signature data = ECDSA(attestation key) over header+body, the attestation public
key, and type-6 certification data holding the QE report (signed by the PCK key, binding
SHA-256(attestation key || QE auth data)), the QE auth data and the type-5 PCK chain.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field

from modelseal.tee.mock_tdx.ca import (
    QE_ATTRIBUTES,
    QE_ISVPRODID,
    QE_ISVSVN,
    QE_MRSIGNER,
    UP_TO_DATE_TEE_TCB_SVN,
    MockTdxCA,
)
from modelseal.tee.tdx.quote import INTEL_QE_VENDOR_ID, TEE_TYPE_TDX

#: SEPT_VE_DISABLE (bit 28): required by dcap-qvl for production TDs.
TD_ATTRIBUTES = (1 << 28).to_bytes(8, "little")
TD_ATTRIBUTES_DEBUG = ((1 << 28) | 1).to_bytes(8, "little")
XFAM = bytes.fromhex("e702060000000000")
QE_AUTH_DATA = bytes(range(32))


@dataclass
class TdFields:
    """TD report body fields (48-byte registers unless noted)."""

    report_data: bytes = bytes(64)
    mr_td: bytes = bytes(48)
    rtmrs: tuple[bytes, bytes, bytes, bytes] = (bytes(48),) * 4
    mr_config_id: bytes = bytes(48)
    mr_owner: bytes = bytes(48)
    mr_owner_config: bytes = bytes(48)
    mr_seam: bytes = field(default_factory=lambda: hashlib.sha384(b"mock TDX module").digest())
    tee_tcb_svn: bytes = UP_TO_DATE_TEE_TCB_SVN
    debug: bool = False


def td_body(f: TdFields, *, v15: bool = False) -> bytes:
    for name, value, size in (
        ("report_data", f.report_data, 64),
        ("mr_td", f.mr_td, 48),
        ("mr_config_id", f.mr_config_id, 48),
        ("mr_owner", f.mr_owner, 48),
        ("mr_owner_config", f.mr_owner_config, 48),
        ("mr_seam", f.mr_seam, 48),
        ("tee_tcb_svn", f.tee_tcb_svn, 16),
    ):
        if len(value) != size:
            raise ValueError(f"{name} must be {size} bytes")
    if len(f.rtmrs) != 4 or any(len(r) != 48 for r in f.rtmrs):
        raise ValueError("rtmrs must be four 48-byte values")
    body = b"".join(
        [
            f.tee_tcb_svn,
            f.mr_seam,
            bytes(48),  # mr_signer_seam: Intel's module signer is all zeros
            bytes(8),  # seam_attributes
            TD_ATTRIBUTES_DEBUG if f.debug else TD_ATTRIBUTES,
            XFAM,
            f.mr_td,
            f.mr_config_id,
            f.mr_owner,
            f.mr_owner_config,
            *f.rtmrs,
            f.report_data,
        ]
    )
    if v15:
        body += f.tee_tcb_svn + bytes(48)  # tee_tcb_svn2, mr_service_td
    return body


def qe_report(ca: MockTdxCA) -> bytes:
    """The quoting enclave's report: identity per the QE identity, binding the AK."""
    binding = hashlib.sha256(ca.attestation_key.public_point() + QE_AUTH_DATA).digest()
    cpu_svn = bytes.fromhex(ca.platform["cpu_svn"])
    return b"".join(
        [
            cpu_svn,
            struct.pack("<I", 0),  # misc_select
            bytes(28),
            QE_ATTRIBUTES,
            hashlib.sha256(b"mock quoting enclave").digest(),  # mr_enclave
            bytes(32),
            QE_MRSIGNER,
            bytes(96),
            struct.pack("<HH", QE_ISVPRODID, QE_ISVSVN),
            bytes(60),
            binding + bytes(32),
        ]
    )


def qe_certification(ca: MockTdxCA) -> bytes:
    """Type-6 certification data: the QE report, its PCK signature, the QE auth data and
    the PCK chain. It is the same for every quote of the platform (a real QE certifies
    its attestation key once), so it is built once per CA: the load generators of the
    KBS benchmarks then pay one ECDSA signature per quote, not two."""
    if ca.qe_certification is None:
        report = qe_report(ca)
        chain = ca.pck_chain_pem()
        ca.qe_certification = (
            report
            + ca.keys["pck"].sign_raw(report)
            + struct.pack("<H", len(QE_AUTH_DATA))
            + QE_AUTH_DATA
            + struct.pack("<HI", 5, len(chain))
            + chain
        )
    return ca.qe_certification


def build_quote(ca: MockTdxCA, fields: TdFields, *, version: int = 4) -> bytes:
    """A signed TDX quote for ``fields``; ``version`` 4 (TDX 1.0 body) or 5 (TDX 1.5)."""
    if version not in (4, 5):
        raise ValueError("mock-tdx builds quote versions 4 and 5")
    header = (
        struct.pack("<HHIHH", version, 2, TEE_TYPE_TDX, 0, ca.platform["pce_svn"])
        + INTEL_QE_VENDOR_ID
        + bytes(20)
    )
    if version == 4:
        signed = header + td_body(fields)
    else:
        body = td_body(fields, v15=True)
        signed = header + struct.pack("<HI", 3, len(body)) + body
    cert6 = qe_certification(ca)
    sig_data = (
        ca.attestation_key.sign_raw(signed)
        + ca.attestation_key.public_point()
        + struct.pack("<HI", 6, len(cert6))
        + cert6
    )
    return signed + struct.pack("<I", len(sig_data)) + sig_data
