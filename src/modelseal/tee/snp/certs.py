"""AMD certificates: pinned roots, classification by content, VCEK/VLEK extensions, chains.

Trust model: the only anchors are the ARKs shipped in ``roots/`` (public AMD KDS
certificates for Milan, Genoa and Turin, each file = ARK, ASK, ASVK). Certificates from the
evidence or from ``--snp-certs`` are untrusted input: an ARK there must equal the pinned
one, an ASK/ASVK must be signed by it, and the VCEK/VLEK by that ASK/ASVK.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.x509.oid import NameOID

from modelseal.crypto.snp_ecdsa import crl_signed_by
from modelseal.crypto.x509_pem import parse_certificates, parse_crl
from modelseal.errors import ConfigError, EvidenceError
from modelseal.tee.snp.report import Product, TcbVersion

_AMD = "1.3.6.1.4.1.3704.1."
OID_PRODUCT_NAME = _AMD + "2"
OID_BL_SPL = _AMD + "3.1"
OID_TEE_SPL = _AMD + "3.2"
OID_SNP_SPL = _AMD + "3.3"
OID_UCODE_SPL = _AMD + "3.8"
OID_FMC_SPL = _AMD + "3.9"
OID_HWID = _AMD + "4"

MAX_CERT_FILE = 1 << 20


@dataclass(frozen=True)
class AmdCert:
    """A parsed certificate with its role (ARK, ASK, ASVK, VCEK, VLEK) and product line."""

    role: str
    product: Product | None
    cert: x509.Certificate


def load_certificate(data: bytes) -> x509.Certificate:
    """Load one DER certificate (AMD's zero serial numbers tolerated); ``ValueError`` if not."""
    if b"-----BEGIN" in data:
        raise ValueError("expected a DER certificate")
    return parse_certificates(data)[0]


def load_certificates(data: bytes) -> list[x509.Certificate]:
    """DER (one) or PEM (one or more) certificates; anything else raises ``ValueError``."""
    return parse_certificates(data)


def _cn(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if len(attrs) == 1 else ""


def _product_of(cn: str) -> Product | None:
    suffix = cn.rsplit("-", 1)[-1]
    for product in Product:
        if product.value == suffix:
            return product
    return None


def classify(cert: x509.Certificate) -> AmdCert:
    """Role and product from subject/issuer names (file names never matter)."""
    try:
        # pyca parses names lazily and warns about over-long attributes: a name that only
        # breaks RFC 5280 length limits is classified (and then fails the chain), not logged
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            subject, issuer = _cn(cert.subject), _cn(cert.issuer)
    except (ValueError, TypeError) as exc:  # TypeError: an attribute of the wrong ASN.1 type
        raise EvidenceError("malformed certificate name") from exc
    if subject.startswith("ARK-"):
        return AmdCert("ARK", _product_of(subject), cert)
    if subject.startswith("SEV-VLEK-"):
        return AmdCert("ASVK", _product_of(subject), cert)
    if subject == "SEV-VCEK" or subject == "VCEK":
        return AmdCert("VCEK", _product_of(issuer), cert)
    if subject == "SEV-VLEK" or subject == "VLEK":
        return AmdCert("VLEK", _product_of(issuer), cert)
    if subject.startswith("SEV-") and _product_of(subject) is not None:
        return AmdCert("ASK", _product_of(subject), cert)
    return AmdCert("OTHER", None, cert)


@cache
def pinned(product: Product) -> dict[str, x509.Certificate]:
    """The packaged ARK, ASK and ASVK of one product line (ARK verified self-signed)."""
    data = resources.files("modelseal.tee.snp").joinpath(f"roots/{product.value.lower()}.pem")
    certs = {c.role: c.cert for c in map(classify, load_certificates(data.read_bytes()))}
    ark = certs["ARK"]
    ark.verify_directly_issued_by(ark)
    return certs


def load_crl(data: bytes) -> x509.CertificateRevocationList:
    """One CRL, DER or PEM (AMD KDS serves ``/vcek/v1/<product>/crl`` as DER)."""
    return parse_crl(data)


def load_sources(path: str | Path) -> tuple[list[AmdCert], list[x509.CertificateRevocationList]]:
    """Certificates and CRLs in a file or directory (DER or PEM; file names never matter)."""
    root = Path(path)
    if not root.exists():
        raise ConfigError(f"SNP certificates: {root} does not exist")
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    certs: list[AmdCert] = []
    crls: list[x509.CertificateRevocationList] = []
    for file in files:
        if file.stat().st_size > MAX_CERT_FILE:
            raise ConfigError(f"SNP certificates: {file} is too large to be a certificate")
        data = file.read_bytes()
        try:
            certs.extend(classify(c) for c in load_certificates(data))
            continue
        except (ValueError, EvidenceError):
            pass
        try:
            crls.append(load_crl(data))
        except ValueError as exc:
            raise ConfigError(
                f"SNP certificates: {file} is neither a DER/PEM certificate nor a CRL"
            ) from exc
    return certs, crls


def load_cert_source(path: str | Path) -> list[AmdCert]:
    """The certificates of :func:`load_sources` (CRL files are skipped)."""
    return load_sources(path)[0]


# --- AMD extensions -------------------------------------------------------------------


def _der_tlv(data: bytes) -> tuple[int, bytes]:
    """Decode one DER TLV that spans ``data`` exactly; returns (tag, contents)."""
    if len(data) < 2:
        raise EvidenceError("malformed DER in AMD certificate extension")
    tag, length, pos = data[0], data[1], 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 2 or len(data) < 2 + n:
            raise EvidenceError("malformed DER length in AMD certificate extension")
        length = int.from_bytes(data[2 : 2 + n], "big")
        pos = 2 + n
    if pos + length != len(data):
        raise EvidenceError("malformed DER in AMD certificate extension")
    return tag, data[pos:]


def _ext_raw(cert: x509.Certificate, oid: str) -> bytes | None:
    try:
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(oid))
    except x509.ExtensionNotFound:
        return None
    except ValueError as exc:  # pyca parses extensions lazily
        raise EvidenceError("malformed certificate extensions") from exc
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise EvidenceError(f"unexpected encoding of AMD extension {oid}")
    return value.value


def ext_int(cert: x509.Certificate, oid: str) -> int | None:
    """An AMD SPL extension: a DER INTEGER 0..255."""
    raw = _ext_raw(cert, oid)
    if raw is None:
        return None
    tag, body = _der_tlv(raw)
    if tag != 0x02 or not 1 <= len(body) <= 2:
        raise EvidenceError(f"AMD extension {oid} is not a small INTEGER")
    value = int.from_bytes(body, "big", signed=True)
    if not 0 <= value <= 255:
        raise EvidenceError(f"AMD extension {oid} is out of range")
    return value


def hwid(cert: x509.Certificate) -> bytes | None:
    """The hwID extension: a DER OCTET STRING, or (legacy KDS, Turin) the raw 64/8 bytes."""
    raw = _ext_raw(cert, OID_HWID)
    if raw is None:
        return None
    if raw[:1] == b"\x04" and len(raw) in (10, 66) and raw[1] == len(raw) - 2:
        return raw[2:]
    if len(raw) in (8, 64):
        return raw
    raise EvidenceError("AMD hwID extension is malformed")


def cert_tcb(cert: x509.Certificate, product: Product | None) -> TcbVersion:
    """The TCB a VCEK/VLEK was derived for (SPL extensions); all must be present."""
    values: dict[str, int] = {}
    for name, oid in (
        ("bootloader", OID_BL_SPL),
        ("tee", OID_TEE_SPL),
        ("snp", OID_SNP_SPL),
        ("microcode", OID_UCODE_SPL),
    ):
        value = ext_int(cert, oid)
        if value is None:
            raise EvidenceError(f"endorsement key certificate lacks the {name} SPL extension")
        values[name] = value
    fmc = ext_int(cert, OID_FMC_SPL)
    if product is Product.TURIN and fmc is None:
        raise EvidenceError("Turin endorsement key certificate lacks the fmc SPL extension")
    return TcbVersion(
        bootloader=values["bootloader"],
        tee=values["tee"],
        snp=values["snp"],
        microcode=values["microcode"],
        fmc=fmc if product is Product.TURIN else None,
    )


# --- chains ---------------------------------------------------------------------------


def _check_validity(cert: x509.Certificate, role: str, now: float) -> None:
    moment = datetime.fromtimestamp(now, UTC)
    if moment < cert.not_valid_before_utc:
        raise EvidenceError(f"{role} certificate is not yet valid at {moment.isoformat()}")
    if moment > cert.not_valid_after_utc:
        raise EvidenceError(f"{role} certificate expired at {cert.not_valid_after_utc.isoformat()}")


@lru_cache(maxsize=512)
def _issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    """Signature check, cached per (child, parent) pair: KBS sees the same chains repeatedly."""
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _revoked(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    crls: Sequence[x509.CertificateRevocationList],
) -> bool:
    """True if a CRL that ``issuer`` really signed lists ``cert``'s serial number.

    CRLs by other issuers, or whose signature does not verify, are ignored: they can only
    ever add revocations, so dropping a forged one never un-revokes anything.
    """
    for crl in crls:
        try:
            same_issuer = crl.issuer == issuer.subject
        except (ValueError, TypeError):  # a malformed name (pyca parses names lazily)
            same_issuer = False
        if not same_issuer:
            continue
        if not crl_signed_by(crl, issuer):
            continue
        if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
            return True
    return False


def verify_chain(
    vek: AmdCert,
    candidates: Iterable[AmdCert],
    product: Product,
    now: float,
    crls: Sequence[x509.CertificateRevocationList] = (),
) -> list[str]:
    """Verify VEK <- ASK/ASVK <- pinned ARK at ``now``; returns the chain's subject CNs.

    ``candidates`` (from evidence or configuration) may contribute an ASK/ASVK; an ARK
    among them must be the pinned ARK itself. Falls back to the packaged ASK/ASVK.
    ``crls`` (AMD KDS CRLs, signed by the ARK) revoke an ASK/ASVK, or a VEK if its CA
    published one.
    """
    anchors = pinned(product)
    ark = anchors["ARK"]
    ca_role = "ASVK" if vek.role == "VLEK" else "ASK"
    cas: list[x509.Certificate] = []
    for cand in candidates:
        if cand.role == "ARK" and cand.product is product and cand.cert != ark:
            raise EvidenceError(f"supplied ARK-{product.value} is not the pinned AMD root")
        if cand.role == ca_role and cand.product is product:
            cas.append(cand.cert)
    cas.append(anchors[ca_role])
    _check_validity(ark, "ARK", now)
    for ca in cas:
        if not _issued_by(ca, ark):
            raise EvidenceError(f"{ca_role} certificate is not signed by ARK-{product.value}")
        if _issued_by(vek.cert, ca):
            _check_validity(ca, ca_role, now)
            _check_validity(vek.cert, vek.role, now)
            if _revoked(ca, ark, crls):
                raise EvidenceError(f"{ca_role} certificate is revoked by ARK-{product.value}")
            if _revoked(vek.cert, ca, crls):
                raise EvidenceError(f"{vek.role} certificate is revoked by its {ca_role}")
            return [_cn(vek.cert.subject), _cn(ca.subject), _cn(ark.subject)]
    raise EvidenceError(
        f"{vek.role} certificate signature invalid under the {ca_role} of {product.value}"
    )


def find_vek(
    role: str, candidates: Sequence[AmdCert], chip_id: bytes, tcb: TcbVersion
) -> AmdCert | None:
    """Pick the VCEK/VLEK for this report: same role, same TCB, same hwID (VCEK)."""
    first_of_role: AmdCert | None = None
    for cand in candidates:
        if cand.role != role:
            continue
        first_of_role = first_of_role or cand
        try:
            if cert_tcb(cand.cert, cand.product).components() != tcb.components():
                continue
            if role == "VCEK":
                hw = hwid(cand.cert)
                if hw is None or chip_id[: len(hw)] != hw:
                    continue
        except EvidenceError:
            continue
        return cand
    return first_of_role
