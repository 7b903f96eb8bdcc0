"""Thin, typed wrapper around ``dcap-qvl`` (Intel DCAP quote verification, offline).

dcap-qvl checks, against one collateral set: the root CA against the root CRL; TCB info
and QE identity signatures, issuer chains and validity windows; the PCK chain up to the
trusted root with CRLs (no unknown revocation status allowed); the QE report signature
(PCK key) and that it binds the attestation key; the quote signature (attestation key);
the platform TCB level (CPUSVN/PCESVN/TEE_TCB_SVN, TDX module identity) and the QE TCB;
and the TD/enclave attributes (debug rejected, SEPT_VE_DISABLE required, no service TD).

Its errors are plain ``ValueError`` strings; :func:`classify` turns them into one-line
operator reasons (collateral expired, chain broken, TCB not supported, debug ...).
"""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from modelseal.crypto.x509_pem import cert_pem, parse_certificates, parse_crl
from modelseal.errors import ConfigError, EvidenceError

try:
    import dcap_qvl
except ModuleNotFoundError as exc:  # pragma: no cover - exercised only without the extra
    raise ConfigError("TDX/SGX verification needs dcap-qvl: pip install 'modelseal[tdx]'") from exc


@dataclass(frozen=True)
class DcapResult:
    """What dcap-qvl established beyond the quote bytes themselves."""

    status: str
    advisory_ids: tuple[str, ...]
    qe_status: str
    platform_status: str
    ppid: str


@dataclass(frozen=True)
class PckInfo:
    """Facts from the PCK leaf certificate's Intel SGX extension."""

    fmspc: str
    ca: str
    cpu_svn: str
    pce_svn: int
    ppid: str


#: (substring of dcap-qvl's message, category shown to operators) — first match wins.
#: Validity-window failures are first put in words by ``_window`` (which names the item
#: and its dates); their rows here cover texts it does not recognise.
_CATEGORIES: tuple[tuple[str, str], ...] = (
    ("CrlExpired", "collateral expired (a CRL is past its nextUpdate)"),
    ("CertExpired", "collateral expired (a certificate is outside its validity)"),
    ("CertNotValidYet", "collateral not yet valid (a certificate is not valid yet)"),
    ("CrlNotValidYet", "collateral not yet valid (a CRL is not valid yet)"),
    ("TCBInfo expired", "collateral expired (TCB info is past its nextUpdate)"),
    ("QE Identity expired", "collateral expired (QE identity is past its nextUpdate)"),
    ("issue date is in the future", "collateral not yet valid (issued after the check time)"),
    ("Collateral expired", "collateral expired"),
    ("CertRevoked", "certificate revoked (PCK or intermediate listed in a CRL)"),
    ("Revoked", "TCB revoked"),
    ("Debug mode is enabled", "debug TEE (attributes allow the host to read its memory)"),
    ("No matching TCB level", "TCB level not supported by the collateral"),
    ("TCB status is invalid", "TCB status not acceptable"),
    ("ISV enclave report signature is invalid", "quote signature invalid"),
    ("Signature is invalid for qe_report", "QE report signature invalid (PCK key)"),
    ("QE report hash mismatch", "QE report does not bind the attestation key"),
    ("Signature is invalid for tcb_info", "TCB info signature invalid"),
    ("Signature is invalid for qe_identity", "QE identity signature invalid"),
    ("Fmspc mismatch", "collateral is for another platform (FMSPC mismatch)"),
    (
        "InvalidCrlSignatureForPublicKey",
        "certificate chain broken (CRL not signed by the trusted CA)",
    ),
    ("UnknownIssuer", "certificate chain broken (not issued by the trusted root)"),
    ("InvalidSignatureForPublicKey", "certificate chain broken (bad certificate signature)"),
    ("UnknownRevocationStatus", "certificate chain broken (no CRL covers a certificate)"),
    ("certificate chain", "certificate chain broken"),
    ("Failed to load root ca", "trusted root CA unusable"),
    ("Failed to decode", "malformed quote or collateral"),
    ("Unsupported", "unsupported quote or collateral"),
    ("QE ", "QE identity mismatch"),
    ("TDX module", "TDX module identity mismatch"),
    ("SEPT_VE_DISABLE", "TD attributes not acceptable (SEPT_VE_DISABLE off)"),
    ("Reserved bits", "TD attributes not acceptable (reserved bits set)"),
    ("MR service TD", "TD has a service TD binding, which is not accepted"),
)


#: What to do about collateral outside its validity window (said in every such message:
#: the KBS log line carries only the message, not the CLI hint).
FRESHNESS_HINT = (
    "fetch fresher collateral (--pccs-url or a newer bundle) or, for recorded evidence, "
    "verify at the time it was made with --at UNIX_SECONDS"
)

#: What to do when the chain does not reach the trusted root.
_ROOT_HINT = (
    "the quote and its collateral must chain to the trusted root CA "
    "(Intel's production root unless another is configured)"
)

#: A Rust ``Debug`` struct dump in dcap-qvl's text: ``Name { field: value, ... }``.
_RUST_STRUCT = re.compile(r"(\w+) \{ ([^{}]*) \}")
_UNIX_TIME = re.compile(r"UnixTime\((\d+)\)")
_MAX_TIME = 253402300799  # 9999-12-31T23:59:59Z: later values are shown as numbers


def _iso(seconds: float) -> str:
    if not 0 <= seconds <= _MAX_TIME:
        return str(int(seconds))
    return datetime.fromtimestamp(int(seconds), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _plain(text: str) -> str:
    """dcap-qvl's text without Rust debug syntax: times in ISO 8601, structs as words."""
    text = _UNIX_TIME.sub(lambda m: _iso(int(m.group(1))), text)
    for _ in range(8):  # nested structs, innermost first; bounded
        text, n = _RUST_STRUCT.subn(
            lambda m: f"{m.group(1)} ({m.group(2).replace(': ', ' ')})", text
        )
        if not n:
            break
    return text.replace("{", "(").replace("}", ")")


def _struct_times(message: str, variant: str) -> dict[str, int]:
    """The ``UnixTime`` fields of ``variant { ... }`` in ``message``."""
    match = re.search(re.escape(variant) + r" \{ ([^{}]*) \}", message)
    fields: dict[str, int] = {}
    for part in match.group(1).split(", ") if match else ():
        name, _, value = part.partition(": ")
        number = _UNIX_TIME.fullmatch(value.strip())
        if number:
            fields[name.strip()] = int(number.group(1))
    return fields


def _crl_name(collateral: Any, next_update: int) -> str:
    """Which CRL of the collateral has this nextUpdate ("a CRL" when none or unknown)."""
    from cryptography import x509

    for attr, name in (("root_ca_crl", "root CA CRL"), ("pck_crl", "PCK CRL")):
        raw = getattr(collateral, attr, None)
        try:
            crl = x509.load_der_x509_crl(bytes(raw)) if raw else None
            stamp = crl.next_update_utc if crl is not None else None
        except (ValueError, TypeError):
            continue
        if stamp is not None and int(stamp.timestamp()) == next_update:
            return f"the {name}"
    return "a CRL"


def _signed_time(collateral: Any, attr: str, key: str) -> str | None:
    """``issueDate``/``nextUpdate`` of the collateral's TCB info or QE identity JSON."""
    raw = getattr(collateral, attr, None)
    try:
        value = json.loads(raw)[key] if isinstance(raw, str) and len(raw) < 1 << 20 else None
    except (ValueError, KeyError, TypeError, RecursionError):
        return None
    return value if isinstance(value, str) and len(value) <= 40 else None


def _window(message: str, now: float | None, collateral: Any) -> str | None:
    """A sentence for collateral outside its validity window, else None."""
    at = _iso(now) if now is not None else None

    def when(time: int | None) -> str:
        shown = _iso(time) if time is not None else at
        return f" (verification time {shown})" if shown else ""

    if "CrlExpired" in message:
        times = _struct_times(message, "CrlExpired")
        nxt = times.get("next_update")
        what = _crl_name(collateral, nxt) if nxt is not None else "a CRL"
        since = f" at {_iso(nxt)}" if nxt is not None else ""
        return f"collateral expired: {what} expired{since}{when(times.get('time'))}"
    if "CertExpired" in message:
        times = _struct_times(message, "CertExpired")
        end = times.get("not_after")
        since = f" at {_iso(end)}" if end is not None else ""
        return (
            f"collateral expired: a certificate in the chain expired{since}"
            f"{when(times.get('time'))}"
        )
    if "CertNotValidYet" in message:
        times = _struct_times(message, "CertNotValidYet")
        start = times.get("not_before")
        since = f" from {_iso(start)}" if start is not None else " later"
        return (
            f"collateral not yet valid: a certificate in the chain is valid only{since}"
            f"{when(times.get('time'))}"
        )
    for needle, attr, name in (
        ("TCBInfo", "tcb_info", "TCB info"),
        ("QE Identity", "qe_identity", "QE identity"),
    ):
        if f"{needle} expired" in message:
            stamp = _signed_time(collateral, attr, "nextUpdate")
            since = f" at {stamp}" if stamp else ""
            return f"collateral expired: the {name} expired{since}{when(None)}"
        if f"{needle} issue date is in the future" in message:
            stamp = _signed_time(collateral, attr, "issueDate")
            since = f" at {stamp}" if stamp else ""
            return (
                f"collateral not yet valid: the {name} was issued{since}, after the "
                f"verification time{f' {at}' if at else ''}"
            )
    return None


def classify(message: str, *, now: float | None = None, collateral: Any = None) -> str:
    """One plain operator sentence for a dcap-qvl error: what failed, and what to do.

    ``now`` (the verification time) and ``collateral`` (the dcap-qvl collateral object)
    let validity-window failures name the CRL / TCB info / QE identity and its dates.
    """
    window = _window(message, now, collateral)
    if window is not None:
        return f"{window}; {FRESHNESS_HINT}"
    detail = " ".join(
        part.strip() for part in message.replace("Verification failed:", "").splitlines()
    )
    detail = _plain(" ".join(detail.split())).replace(" Caused by: ", ", caused by ")
    for needle, category in _CATEGORIES:
        if needle in message:
            if category.startswith(("certificate chain broken", "trusted root")):
                return f"{category}: {detail}; {_ROOT_HINT}"
            if category.startswith(("collateral expired", "collateral not yet valid")):
                return f"{category}: {detail}; {FRESHNESS_HINT}"
            return f"{category}: {detail}"
    return f"quote verification failed: {detail}"


class _Status(msgspec.Struct):
    status: str = ""


class _VerifiedReport(msgspec.Struct):
    """The members of dcap-qvl's report JSON the claims use; its large ``report`` member
    (the quote body again, already parsed by us) is skipped, not decoded."""

    status: str
    advisory_ids: list[str] = msgspec.field(default_factory=list)
    ppid: str = ""
    qe_status: _Status = msgspec.field(default_factory=_Status)
    platform_status: _Status = msgspec.field(default_factory=_Status)


_REPORT_DECODER = msgspec.json.Decoder(_VerifiedReport)


def load_collateral(text: str) -> Any:
    """Parse dcap-qvl ``QuoteCollateralV3`` JSON; malformed input -> EvidenceError."""
    try:
        return dcap_qvl.QuoteCollateralV3.from_json(text)
    except (ValueError, TypeError) as exc:
        raise EvidenceError(f"malformed collateral: {exc}") from exc


def verify(
    raw_quote: bytes, collateral: Any, now: float, *, root_ca_der: bytes | None = None
) -> DcapResult:
    """Run the full DCAP verification; any failure -> EvidenceError with a category."""
    # NaN and infinity would fail int() and then the error text's date formatting: a
    # traceback instead of an EvidenceError, and no window comparison holds for NaN.
    if not math.isfinite(now) or now < 0:
        raise EvidenceError("verification time must be a finite, non-negative number")
    try:
        if root_ca_der is None:
            report = dcap_qvl.verify(raw_quote, collateral, int(now))
        else:
            report = dcap_qvl.verify_with_root_ca(raw_quote, collateral, root_ca_der, int(now))
        text = report.to_json()
    except (ValueError, TypeError, OverflowError) as exc:
        raise EvidenceError(classify(str(exc), now=now, collateral=collateral)) from exc
    try:
        doc = _REPORT_DECODER.decode(text)
    except msgspec.ValidationError as exc:  # dcap-qvl's own output: never expected
        raise EvidenceError(f"unexpected dcap-qvl report: {exc}") from None
    return DcapResult(
        status=doc.status,
        advisory_ids=tuple(doc.advisory_ids),
        qe_status=doc.qe_status.status,
        platform_status=doc.platform_status.status,
        ppid=doc.ppid,
    )


def pck_info(pck_chain_pem: bytes) -> PckInfo:
    """FMSPC, CA type and SVNs from the PCK leaf (used to pick collateral)."""
    try:
        ext = dcap_qvl.parse_pck_extension_from_pem(pck_chain_pem)
        leaf_issuer = _leaf_issuer_cn(pck_chain_pem)
    except (ValueError, TypeError) as exc:
        raise EvidenceError(f"malformed PCK certificate: {classify(str(exc))}") from exc
    ca = "processor" if "Processor" in leaf_issuer else "platform"
    return PckInfo(
        fmspc=bytes(ext.fmspc).hex(),
        ca=ca,
        cpu_svn=bytes(ext.cpu_svn).hex(),
        pce_svn=int(ext.pce_svn),
        ppid=bytes(ext.ppid).hex(),
    )


def _linked_chain(pem: bytes | str, what: str) -> list[Any]:
    """Certificates of a PEM chain, each signed by the next and the last self-signed."""
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm

    data = pem.encode() if isinstance(pem, str) else pem
    try:
        certs = parse_certificates(data) if b"-----BEGIN" in data else []
    except ValueError as exc:
        raise EvidenceError(f"certificate chain broken: malformed {what}") from exc
    if not certs:
        raise EvidenceError(f"certificate chain broken: malformed {what}")
    try:
        for child, parent in itertools.pairwise(certs):
            child.verify_directly_issued_by(parent)
        certs[-1].verify_directly_issued_by(certs[-1])
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm) as exc:
        raise EvidenceError(f"certificate chain broken: the {what} does not link up") from exc
    return certs


def check_embedded_chain(pem: bytes, root_ca_der: bytes | None = None) -> Any:
    """The quote's PCK chain must be internally consistent, including its root copy.

    dcap-qvl anchors at its configured root and ignores the copy of the root the quote
    carries; we also refuse a quote whose embedded chain does not link up (each
    certificate signed by the next, the last self-signed and, when known, equal to the
    trusted root) or is not in canonical PEM, so no byte of the quote is left
    unauthenticated. Returns the root.
    """
    from cryptography import x509

    certs = _linked_chain(pem, "PCK chain in the quote")
    # The PEM text itself is covered by no signature: require the canonical encoding
    # (what every quoting enclave emits, optionally NUL-terminated) so no byte is free.
    canonical = b"".join(cert_pem(c) for c in certs)
    if pem not in (canonical, canonical + b"\x00"):
        raise EvidenceError("malformed quote: PCK chain is not canonical PEM")
    if root_ca_der is not None and certs[-1] != x509.load_der_x509_certificate(root_ca_der):
        raise EvidenceError("certificate chain broken: not issued by the trusted root")
    return certs[-1]


def check_collateral_chains(text: str, root: Any) -> None:
    """Authenticate the collateral parts dcap-qvl does not read itself.

    dcap-qvl verifies CRLs with the certificates it validates and never looks at
    ``pck_crl_issuer_chain`` or at the root copies at the end of each issuer chain; we
    require every chain to link up to the same root as the quote, and the PCK CRL to be
    signed by the first certificate of its issuer chain.
    """

    try:
        doc = json.loads(text)
        pck_crl = parse_crl(bytes.fromhex(doc["pck_crl"]))
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise EvidenceError("malformed collateral: PCK CRL") from exc
    for key in ("pck_crl_issuer_chain", "tcb_info_issuer_chain", "qe_identity_issuer_chain"):
        certs = _linked_chain(str(doc.get(key, "")), key.replace("_", " "))
        if certs[-1] != root:
            raise EvidenceError(
                f"certificate chain broken: the collateral's {key.replace('_', ' ')} ends at "
                f"another root than the quote's PCK chain; {_ROOT_HINT}"
            )
        if key == "pck_crl_issuer_chain":
            issuer = certs[0]
            try:
                valid = pck_crl.issuer == issuer.subject and pck_crl.is_signature_valid(
                    issuer.public_key()
                )
            except (ValueError, TypeError):
                valid = False
            if not valid:
                raise EvidenceError("collateral: PCK CRL is not signed by its issuer chain")


def _leaf_issuer_cn(pem: bytes) -> str:
    from cryptography.x509.oid import NameOID

    try:
        leaf = parse_certificates(pem)[0] if b"-----BEGIN" in pem else None
    except ValueError:
        leaf = None
    if leaf is None:
        raise EvidenceError("malformed PCK certificate chain")
    names = leaf.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""
