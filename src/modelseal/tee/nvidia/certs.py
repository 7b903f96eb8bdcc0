"""Certificate chains of NVIDIA evidence: the GPU's device chain and the RIM signing chain.

Both are verified with ``cryptography``'s X.509 path validation up to a root pinned in
this package (``roots/device_root.pem``: NVIDIA Device Identity CA; ``roots/rim_root.pem``:
NVIDIA CoRIM signing Root CA), at the verification time given. A chain sent with the
evidence contributes intermediates only: a root it carries must be the pinned root itself.
Revocation comes from an offline bundle of CRLs and OCSP responses; either counts only
when the certificate's issuer (or, for OCSP, a responder it delegated to) signed it.
"""

from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from itertools import pairwise
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.x509 import ocsp, verification

from modelseal.crypto.ocsp import ocsp_signed_by_issuer
from modelseal.crypto.snp_ecdsa import crl_signed_by, is_p384_key, verify_report_signature
from modelseal.crypto.x509_pem import parse_certificates, parse_crl
from modelseal.errors import ConfigError, EvidenceError

#: TCG DICE TcbInfo extension; its last 48 bytes are the firmware ID (FWID) of the GSP FMC.
DICE_TCB_INFO: Final = x509.ObjectIdentifier("2.23.133.5.4.1")
FWID_SIZE: Final = 48
#: A chain longer than this is refused before any signature is checked.
MAX_CHAIN: Final = 8
#: Revocation bundle files larger than this are refused.
MAX_BUNDLE_FILE: Final = 4 * 1024 * 1024
MAX_BUNDLE_FILES: Final = 256


@cache
def pinned(name: str) -> x509.Certificate:
    """A packaged root (``device_root`` or ``rim_root``), checked to be self-signed."""
    data = resources.files("modelseal.tee.nvidia").joinpath(f"roots/{name}.pem").read_bytes()
    root = parse_certificates(data)[0]
    root.verify_directly_issued_by(root)
    return root


def load_chain(data: bytes, what: str) -> list[x509.Certificate]:
    """A PEM chain (leaf first) from untrusted bytes; ``EvidenceError`` when malformed."""
    if data.count(b"-----BEGIN") > MAX_CHAIN:
        raise EvidenceError(f"{what} has more than {MAX_CHAIN} certificates")
    try:
        return parsed_names(parse_certificates(data))
    except ValueError as exc:
        raise EvidenceError(f"{what} is not a PEM certificate chain") from exc


def parsed_names(chain: list[x509.Certificate]) -> list[x509.Certificate]:
    """``chain`` with every subject and issuer name parsed now, once: pyca parses names on
    first access, where a malformed attribute is a ``TypeError`` (a BIT STRING under
    another OID) or a ``UserWarning`` (a country name of the wrong length). Parsed here,
    the first is a ``ValueError`` and the second is silenced, as for vendor roots."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for cert in chain:
                _ = (cert.subject, cert.issuer)
    except TypeError as exc:
        raise ValueError(f"malformed certificate name: {exc}") from None
    return chain


@dataclass(frozen=True)
class Revocation:
    """CRLs and OCSP responses read from an offline bundle (file or directory)."""

    crls: tuple[x509.CertificateRevocationList, ...] = ()
    responses: tuple[ocsp.OCSPResponse, ...] = ()

    @classmethod
    def load(cls, path: str | Path) -> Revocation:
        root = Path(path)
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        if len(files) > MAX_BUNDLE_FILES:
            raise ConfigError(f"revocation bundle {root} has more than {MAX_BUNDLE_FILES} files")
        crls, responses = [], []
        for file in files:
            if file.stat().st_size > MAX_BUNDLE_FILE:
                raise ConfigError(f"revocation bundle: {file} is too large to be a CRL")
            data = file.read_bytes()
            try:
                crls.append(parse_crl(data))
                continue
            except ValueError:
                pass
            try:
                response = ocsp.load_der_ocsp_response(data)
            except ValueError as exc:
                raise ConfigError(
                    f"revocation bundle: {file} is neither a CRL nor an OCSP response"
                ) from exc
            if response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL:
                responses.append(response)
        return cls(tuple(crls), tuple(responses))

    def check(self, chain: Sequence[x509.Certificate], what: str, now: float) -> None:
        """``EvidenceError`` if a CRL its issuer signed, current at ``now``, lists a
        certificate of the (verified, leaf-first) chain."""
        when = dt.datetime.fromtimestamp(now, dt.UTC)
        for cert, issuer in pairwise(chain):
            for crl in self.crls:
                try:
                    if crl.issuer != issuer.subject or not crl_signed_by(crl, issuer):
                        continue
                except (ValueError, TypeError):  # a malformed name (pyca parses lazily)
                    continue
                upcoming = crl.next_update_utc
                if upcoming is not None and upcoming <= when:
                    raise EvidenceError(
                        f"the CRL of {common_name(issuer)} for the {what} expired at "
                        f"{upcoming.isoformat()}; refresh the revocation bundle"
                    )
                if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
                    raise EvidenceError(f"{what} certificate {common_name(cert)} is revoked")
            if self._ocsp_revoked(cert, issuer):
                raise EvidenceError(f"{what} certificate {common_name(cert)} is revoked (OCSP)")

    def _ocsp_revoked(self, cert: x509.Certificate, issuer: x509.Certificate) -> bool:
        """True if an OCSP response the issuer (or its delegated responder) signed says
        ``cert`` is revoked. Revocation is final, so a response past its next update still
        counts; "good" answers only ever fail to revoke. Certificate ids are matched by
        serial and SHA-1 issuer key hash (the hash OCSP uses in practice)."""
        key_hash = x509.SubjectKeyIdentifier.from_public_key(issuer.public_key()).digest
        for response in self.responses:
            try:
                singles = list(response.responses)
            except ValueError:
                continue
            for single in singles:
                if (
                    single.serial_number == cert.serial_number
                    and single.issuer_key_hash == key_hash
                    and single.certificate_status is ocsp.OCSPCertStatus.REVOKED
                    and ocsp_signed_by_issuer(response, issuer)
                ):
                    return True
        return False


def common_name(cert: x509.Certificate) -> str:
    """The subject CN (for messages and claims), else the whole subject."""
    try:
        names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    except (ValueError, TypeError):
        return "?"
    return str(names[0].value) if names else cert.subject.rfc4514_string()


def verify_chain(
    chain: Sequence[x509.Certificate],
    root: x509.Certificate,
    *,
    now: float,
    what: str,
    extra_intermediates: Iterable[x509.Certificate] = (),
) -> list[x509.Certificate]:
    """Path-validate ``chain[0]`` to ``root`` at ``now``; returns the verified chain
    (leaf first, root last). A certificate in ``chain`` that claims to be self-signed
    must be ``root``."""
    if not chain:
        raise EvidenceError(f"{what} is empty")
    if len(chain) > MAX_CHAIN:
        raise EvidenceError(f"{what} has more than {MAX_CHAIN} certificates")
    leaf, rest = chain[0], [*chain[1:], *extra_intermediates]
    for cert in rest:
        if cert.subject == cert.issuer and cert != root:
            raise EvidenceError(
                f"{what} ends at {common_name(cert)}, not the pinned root {common_name(root)}"
            )
    builder = (
        verification.PolicyBuilder()
        .store(verification.Store([root]))
        .time(dt.datetime.fromtimestamp(now, dt.UTC))
        .max_chain_depth(MAX_CHAIN)
        .extension_policies(
            ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
            ee_policy=verification.ExtensionPolicy.permit_all(),
        )
    )
    try:
        verified = builder.build_client_verifier().verify(leaf, rest)
    except verification.VerificationError as exc:
        raise EvidenceError(
            f"{what} does not chain to the pinned root {common_name(root)} at the "
            f"verification time ({str(exc)[:160]})"
        ) from None
    except (ValueError, TypeError) as exc:
        raise EvidenceError(f"{what} has a malformed certificate ({str(exc)[:120]})") from None
    return list(verified.chain)


def verify_links(
    chain: Sequence[x509.Certificate], root: x509.Certificate, *, now: float, what: str
) -> list[x509.Certificate]:
    """Link-by-link validation of ``chain`` (leaf first) to ``root`` at ``now``.

    For NVIDIA's RIM signing chains, whose certificates encode validity dates before 2050
    as GeneralizedTime: RFC 5280 requires UTCTime there, and ``cryptography``'s path
    validation refuses them. Each certificate must be directly issued (signature checked)
    by the next, valid at ``now``, every issuer a CA allowed to sign certificates, and the
    chain must end at ``root`` (appended when the chain stops just below it).
    """
    if not chain or len(chain) > MAX_CHAIN:
        raise EvidenceError(f"{what} is empty or longer than {MAX_CHAIN} certificates")
    links = list(chain)
    if links[-1] != root:
        links.append(root)
    when = dt.datetime.fromtimestamp(now, dt.UTC)
    for cert, issuer in pairwise(links):
        if cert.subject == cert.issuer:
            raise EvidenceError(
                f"{what} ends at {common_name(cert)}, not the pinned root {common_name(root)}"
            )
        try:
            cert.verify_directly_issued_by(issuer)
            constraints = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value
            usage = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            raise EvidenceError(
                f"{what}: {common_name(cert)} is not signed by {common_name(issuer)}"
            ) from None
        except x509.ExtensionNotFound:
            raise EvidenceError(
                f"{what}: {common_name(issuer)} is not a certificate authority"
            ) from None
        if not constraints.ca or not usage.key_cert_sign:
            raise EvidenceError(f"{what}: {common_name(issuer)} is not a certificate authority")
    for cert in links:
        if not cert.not_valid_before_utc <= when <= cert.not_valid_after_utc:
            raise EvidenceError(
                f"{what} does not chain to the pinned root {common_name(root)} at the verification "
                f"time: {common_name(cert)} is valid {cert.not_valid_before_utc.date()} .. "
                f"{cert.not_valid_after_utc.date()}"
            )
    return links


def fwid(cert: x509.Certificate) -> bytes:
    """The FWID the GPU's leaf certificate binds (the last 48 bytes of its DICE TcbInfo
    extension, whose value ends with that OCTET STRING)."""
    try:
        ext = cert.extensions.get_extension_for_oid(DICE_TCB_INFO)
    except x509.ExtensionNotFound:
        raise EvidenceError(
            "the GPU signing certificate has no FWID (DICE TcbInfo extension): the chain "
            "must start with the certificate that signed the report"
        ) from None
    value = ext.value
    raw = value.value if isinstance(value, x509.UnrecognizedExtension) else b""
    if len(raw) < FWID_SIZE + 2 or raw[-FWID_SIZE - 2 : -FWID_SIZE] != bytes([0x04, FWID_SIZE]):
        raise EvidenceError("the GPU signing certificate's DICE TcbInfo has no 48-byte FWID")
    return bytes(raw[-FWID_SIZE:])


def verify_signature(cert: x509.Certificate, message: bytes, signature: bytes) -> None:
    """ECDSA P-384 / SHA-384 over ``message``; ``signature`` is r || s, big-endian."""
    if not is_p384_key(cert):
        raise EvidenceError("the GPU signing certificate's key is not ECDSA P-384")
    half = len(signature) // 2
    if len(signature) != 96 or not verify_report_signature(
        cert, message, signature[:half][::-1], signature[half:][::-1]
    ):
        raise EvidenceError("NVIDIA report signature is invalid under the GPU signing certificate")
