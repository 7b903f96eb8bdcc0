"""Strict parser for Intel DCAP quotes: TDX v4/v5 and SGX v3 (ECDSA-P256).

We parse the quote ourselves (rather than trusting a library's lenient decoder) so every
length is checked and every malformed input becomes an :class:`EvidenceError`, and so the
claims come from the same bytes the signature covers. Layout (little-endian; Intel's "TDX
DCAP Quoting Library API" appendix on the quote format for v4/v5 and the "SGX ECDSA Quote
Library API" for v3, as Intel's Quote Verification Library and dcap-qvl read them)::

    header 48 B | body (v4: 584 B TD report; v5: u16 type + u32 size + body; v3: 384 B
    enclave report) | u32 signature-data length | signature data | optional zero padding

Signature data = ECDSA signature (64) | attestation key (64) | certification data; for v4/v5
the certification data is type 6 (QE report certification data) wrapping the QE report,
its signature, the QE authentication data and a type-5 PCK certificate chain (PEM).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from modelseal.errors import EvidenceError

#: Upper bound for a quote we are willing to parse (QGS buffers are at most a few pages).
MAX_QUOTE_SIZE = 64 * 1024

HEADER_LEN = 48
TD_REPORT10_LEN = 584
TD_REPORT15_LEN = 648
ENCLAVE_REPORT_LEN = 384
TEE_TYPE_SGX = 0x00000000
TEE_TYPE_TDX = 0x00000081
ATT_KEY_ECDSA_P256 = 2
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")

BODY_SGX = 1
BODY_TD10 = 2
BODY_TD15 = 3

CERT_PCK_CHAIN = 5
CERT_QE_REPORT = 6


class _Reader:
    """Bounds-checked cursor; running off the end is an EvidenceError, not an IndexError."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def take(self, n: int, field: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise EvidenceError(f"malformed {self.what}: truncated at {field}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u16(self, field: str) -> int:
        value: int = struct.unpack("<H", self.take(2, field))[0]
        return value

    def u32(self, field: str) -> int:
        value: int = struct.unpack("<I", self.take(4, field))[0]
        return value

    def rest(self) -> bytes:
        out = self.data[self.pos :]
        self.pos = len(self.data)
        return out


@dataclass(frozen=True)
class QuoteHeader:
    version: int
    att_key_type: int
    tee_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes


@dataclass(frozen=True)
class TdReport:
    """TD quote body (TDX 1.0 fields, plus the TDX 1.5 fields when ``tee_tcb_svn2`` is set)."""

    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmr0: bytes
    rtmr1: bytes
    rtmr2: bytes
    rtmr3: bytes
    report_data: bytes
    tee_tcb_svn2: bytes | None = None
    mr_service_td: bytes | None = None

    @property
    def rtmrs(self) -> tuple[bytes, bytes, bytes, bytes]:
        return (self.rtmr0, self.rtmr1, self.rtmr2, self.rtmr3)

    @property
    def debug(self) -> bool:
        """TDATTRIBUTES.TUD bit 0: the TD is debuggable (host can read its memory)."""
        return bool(self.td_attributes[0] & 0x01)


@dataclass(frozen=True)
class EnclaveReport:
    """SGX enclave report (quote v3 body, also the QE report inside every quote)."""

    cpu_svn: bytes
    misc_select: int
    attributes: bytes
    mr_enclave: bytes
    mr_signer: bytes
    isv_prod_id: int
    isv_svn: int
    report_data: bytes

    @property
    def debug(self) -> bool:
        """ATTRIBUTES.DEBUG (bit 1 of the flags)."""
        return bool(self.attributes[0] & 0x02)


@dataclass(frozen=True)
class SignatureData:
    ecdsa_signature: bytes
    attestation_key: bytes
    qe_report_raw: bytes
    qe_report: EnclaveReport
    qe_report_signature: bytes
    qe_auth_data: bytes
    pck_chain_pem: bytes


@dataclass(frozen=True)
class Quote:
    raw: bytes
    header: QuoteHeader
    body_type: int
    report: TdReport | EnclaveReport
    signature: SignatureData
    #: bytes covered by the attestation-key signature (header + body descriptor + body)
    signed_length: int

    @property
    def is_tdx(self) -> bool:
        return self.header.tee_type == TEE_TYPE_TDX

    @property
    def td_report(self) -> TdReport:
        if not isinstance(self.report, TdReport):
            raise EvidenceError("quote is an SGX quote, not a TDX quote")
        return self.report

    @property
    def enclave_report(self) -> EnclaveReport:
        if not isinstance(self.report, EnclaveReport):
            raise EvidenceError("quote is a TDX quote, not an SGX quote")
        return self.report


def _parse_td_report(r: _Reader, v15: bool) -> TdReport:
    f = r.take
    base = {
        "tee_tcb_svn": f(16, "tee_tcb_svn"),
        "mr_seam": f(48, "mr_seam"),
        "mr_signer_seam": f(48, "mr_signer_seam"),
        "seam_attributes": f(8, "seam_attributes"),
        "td_attributes": f(8, "td_attributes"),
        "xfam": f(8, "xfam"),
        "mr_td": f(48, "mr_td"),
        "mr_config_id": f(48, "mr_config_id"),
        "mr_owner": f(48, "mr_owner"),
        "mr_owner_config": f(48, "mr_owner_config"),
        "rtmr0": f(48, "rtmr0"),
        "rtmr1": f(48, "rtmr1"),
        "rtmr2": f(48, "rtmr2"),
        "rtmr3": f(48, "rtmr3"),
        "report_data": f(64, "report_data"),
    }
    if v15:
        return TdReport(
            **base, tee_tcb_svn2=f(16, "tee_tcb_svn2"), mr_service_td=f(48, "mr_service_td")
        )
    return TdReport(**base)


def parse_enclave_report(raw: bytes, what: str = "enclave report") -> EnclaveReport:
    """Parse a 384-byte SGX enclave report."""
    if len(raw) != ENCLAVE_REPORT_LEN:
        raise EvidenceError(f"malformed {what}: {len(raw)} bytes, expected {ENCLAVE_REPORT_LEN}")
    r = _Reader(raw, what)
    cpu_svn = r.take(16, "cpu_svn")
    misc_select = r.u32("misc_select")
    r.take(28, "reserved1")
    attributes = r.take(16, "attributes")
    mr_enclave = r.take(32, "mr_enclave")
    r.take(32, "reserved2")
    mr_signer = r.take(32, "mr_signer")
    r.take(96, "reserved3")
    isv_prod_id = r.u16("isv_prod_id")
    isv_svn = r.u16("isv_svn")
    r.take(60, "reserved4")
    report_data = r.take(64, "report_data")
    return EnclaveReport(
        cpu_svn=cpu_svn,
        misc_select=misc_select,
        attributes=attributes,
        mr_enclave=mr_enclave,
        mr_signer=mr_signer,
        isv_prod_id=isv_prod_id,
        isv_svn=isv_svn,
        report_data=report_data,
    )


def _parse_qe_certification(body: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """QE report certification data (type 6) -> (qe_report, its sig, auth data, PCK PEM)."""
    r = _Reader(body, "QE report certification data")
    qe_report = r.take(ENCLAVE_REPORT_LEN, "qe_report")
    qe_sig = r.take(64, "qe_report_signature")
    auth_len = r.u16("qe_auth_data_size")
    auth = r.take(auth_len, "qe_auth_data")
    cert_type = r.u16("certification_data_type")
    cert_size = r.u32("certification_data_size")
    if cert_type != CERT_PCK_CHAIN:
        raise EvidenceError(
            f"unsupported certification data type {cert_type} (only a PCK certificate chain, "
            "type 5, can be verified offline)"
        )
    chain = r.take(cert_size, "pck_certificate_chain")
    if r.pos != len(body):
        raise EvidenceError("malformed quote: certification data size mismatch")
    return qe_report, qe_sig, auth, chain


def _parse_signature_data(raw: bytes, version: int) -> SignatureData:
    r = _Reader(raw, "quote signature data")
    sig = r.take(64, "ecdsa_signature")
    ak = r.take(64, "attestation_key")
    if version == 3:
        qe_report = r.take(ENCLAVE_REPORT_LEN, "qe_report")
        qe_sig = r.take(64, "qe_report_signature")
        auth = r.take(r.u16("qe_auth_data_size"), "qe_auth_data")
        cert_type = r.u16("certification_data_type")
        cert_size = r.u32("certification_data_size")
        if cert_type != CERT_PCK_CHAIN:
            raise EvidenceError(
                f"unsupported certification data type {cert_type} (need a PCK chain, type 5)"
            )
        chain = r.take(cert_size, "pck_certificate_chain")
    else:
        cert_type = r.u16("certification_data_type")
        cert_size = r.u32("certification_data_size")
        if cert_type != CERT_QE_REPORT:
            raise EvidenceError(
                f"unsupported certification data type {cert_type} (expected 6, QE report)"
            )
        qe_report, qe_sig, auth, chain = _parse_qe_certification(
            r.take(cert_size, "qe_report_certification_data")
        )
    if r.pos != len(raw):
        raise EvidenceError("malformed quote: signature data size mismatch")
    if b"-----BEGIN CERTIFICATE-----" not in chain:
        raise EvidenceError("malformed quote: PCK certificate chain is not PEM")
    return SignatureData(
        ecdsa_signature=sig,
        attestation_key=ak,
        qe_report_raw=qe_report,
        qe_report=parse_enclave_report(qe_report, "QE report"),
        qe_report_signature=qe_sig,
        qe_auth_data=auth,
        pck_chain_pem=chain,
    )


def parse_quote(raw: bytes) -> Quote:
    """Parse a DCAP quote strictly; any inconsistency raises :class:`EvidenceError`.

    Bytes after the signature data are not covered by any signature and are ignored, as
    Intel's QVL, dcap-qvl and go-tdx-guest do (quote-generation buffers are often
    page-padded, e.g. 8000-byte quotes); ``Quote.raw`` excludes them.
    """
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise EvidenceError("quote must be bytes")
    raw = bytes(raw)
    if len(raw) > MAX_QUOTE_SIZE:
        raise EvidenceError(f"quote too large ({len(raw)} bytes > {MAX_QUOTE_SIZE})")
    r = _Reader(raw, "quote")
    version = r.u16("version")
    att_key_type = r.u16("attestation_key_type")
    tee_type = r.u32("tee_type")
    header = QuoteHeader(
        version=version,
        att_key_type=att_key_type,
        tee_type=tee_type,
        qe_svn=r.u16("qe_svn"),
        pce_svn=r.u16("pce_svn"),
        qe_vendor_id=r.take(16, "qe_vendor_id"),
        user_data=r.take(20, "user_data"),
    )
    if att_key_type != ATT_KEY_ECDSA_P256:
        raise EvidenceError(f"unsupported attestation key type {att_key_type}")
    report: TdReport | EnclaveReport
    if version == 3:
        if tee_type != TEE_TYPE_SGX:
            raise EvidenceError("quote v3 must be an SGX quote")
        body_type = BODY_SGX
        report = parse_enclave_report(r.take(ENCLAVE_REPORT_LEN, "report body"), "report body")
    elif version == 4:
        if tee_type == TEE_TYPE_TDX:
            body_type = BODY_TD10
            report = _parse_td_report(r, v15=False)
        elif tee_type == TEE_TYPE_SGX:
            body_type = BODY_SGX
            report = parse_enclave_report(r.take(ENCLAVE_REPORT_LEN, "report body"))
        else:
            raise EvidenceError(f"unsupported TEE type 0x{tee_type:x}")
    elif version == 5:
        body_type = r.u16("body_type")
        body_size = r.u32("body_size")
        expected = {BODY_SGX: ENCLAVE_REPORT_LEN, BODY_TD10: TD_REPORT10_LEN}.get(body_type)
        if body_type == BODY_TD15:
            expected = TD_REPORT15_LEN
        if expected is None:
            raise EvidenceError(f"unsupported quote v5 body type {body_type}")
        if body_size != expected:
            raise EvidenceError(f"quote v5 body size {body_size} != {expected}")
        if (body_type == BODY_SGX) != (tee_type == TEE_TYPE_SGX) or tee_type not in (
            TEE_TYPE_SGX,
            TEE_TYPE_TDX,
        ):
            raise EvidenceError("quote v5 body type does not match the TEE type")
        body = _Reader(r.take(body_size, "report body"), "report body")
        if body_type == BODY_SGX:
            report = parse_enclave_report(body.rest())
        else:
            report = _parse_td_report(body, v15=body_type == BODY_TD15)
    else:
        raise EvidenceError(f"unsupported quote version {version}")
    signed_length = r.pos
    sig_len = r.u32("signature_data_length")
    signature = _parse_signature_data(r.take(sig_len, "signature data"), version)
    r.rest()  # unsigned trailer: ignored, see the docstring
    return Quote(
        raw=raw[: signed_length + 4 + sig_len],
        header=header,
        body_type=body_type,
        report=report,
        signature=signature,
        signed_length=signed_length,
    )


def verdict_template(quote: Quote) -> bytes | None:
    """The quote's bytes without REPORTDATA and without the attestation key's signature.

    Two quotes with the same template come from the same TD or enclave on the same
    platform, QE and TCB, and differ only in the data they report; DCAP's verdict on the
    certification data (the QE report, its PCK signature, the chain, the TCB level) is the
    same for both, and each one's own signature is checked on its own. None when the
    layout is not the one this function knows (the caller then verifies in full).
    """
    body_start = HEADER_LEN + (6 if quote.header.version == 5 else 0)
    at = body_start + (320 if quote.body_type == BODY_SGX else 520)
    sig_at = quote.signed_length + 4
    raw = quote.raw
    if (
        raw[at : at + 64] != quote.report.report_data
        or raw[sig_at : sig_at + 64] != quote.signature.ecdsa_signature
    ):
        return None
    return raw[:at] + raw[at + 64 : sig_at] + raw[sig_at + 64 :]
