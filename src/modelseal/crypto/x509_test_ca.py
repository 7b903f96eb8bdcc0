"""ECDSA P-256 keys, X.509 certificates and CRLs for test certificate authorities.

Used by the ``mock-tdx`` TEE to mint an Intel-DCAP-shaped PKI (root → PCK CA → PCK leaf,
root → TCB signing) whose quotes and collateral pass the real dcap-qvl verifier when its
test root is configured explicitly. Kept generic: nothing here knows about TDX.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from modelseal.crypto.x509_pem import cert_der, cert_pem, load_certificate, pem_to_der
from modelseal.errors import ConfigError

__all__ = [
    "P256Key",
    "P384Key",
    "cert_der",
    "cert_pem",
    "issue_certificate",
    "issue_crl",
    "issue_ocsp_response",
    "load_certificate",
    "pem_to_der",
]


class P256Key:
    """An ECDSA P-256 private key that signs with raw ``r || s`` (32 + 32 bytes)."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(key.curve, ec.SECP256R1):
            raise ConfigError("expected a P-256 key")
        self._key = key

    @classmethod
    def generate(cls) -> P256Key:
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def from_pem(cls, pem: bytes) -> P256Key:
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError("not a PEM private key") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError("expected an EC private key")
        return cls(key)

    def private_pem(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def write(self, path: Path) -> None:
        """Write the private key PEM with mode 0600 from the start (no umask window)."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(self.private_pem())
        os.chmod(path, 0o600)

    def public_point(self) -> bytes:
        """Uncompressed point without the 0x04 prefix: ``x || y`` (64 bytes, DCAP style)."""
        raw = self._key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return raw[1:]

    def sign_raw(self, data: bytes) -> bytes:
        """ECDSA-SHA256 signature as fixed-size ``r || s``."""
        r, s = decode_dss_signature(self._key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._key.public_key()

    @property
    def private_key(self) -> ec.EllipticCurvePrivateKey:
        return self._key


class P384Key(P256Key):
    """An ECDSA P-384 key signing SHA-384 with raw ``r || s`` (48 + 48 bytes), as an SPDM
    responder (a test GPU) signs its measurement reports."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(key.curve, ec.SECP384R1):
            raise ConfigError("expected a P-384 key")
        self._key = key

    @classmethod
    def generate(cls) -> P384Key:
        return cls(ec.generate_private_key(ec.SECP384R1()))

    def sign_raw(self, data: bytes) -> bytes:
        """ECDSA-SHA384 signature as fixed-size ``r || s``."""
        r, s = decode_dss_signature(self._key.sign(data, ec.ECDSA(hashes.SHA384())))
        return r.to_bytes(48, "big") + s.to_bytes(48, "big")


def _name(common_name: str, org: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        ]
    )


def issue_certificate(
    *,
    subject_cn: str,
    subject_key: P256Key,
    issuer_key: P256Key,
    issuer_cert: x509.Certificate | None,
    serial: int,
    not_before: dt.datetime,
    not_after: dt.datetime,
    ca: bool,
    path_length: int | None = None,
    organization: str = "modelseal test CA",
    extra_extensions: Sequence[tuple[str, bytes]] = (),
    crl_url: str | None = None,
) -> x509.Certificate:
    """A v3 certificate (self-signed when ``issuer_cert`` is None), signed ECDSA-SHA256.

    ``extra_extensions`` are (dotted OID, DER value) pairs added as non-critical
    extensions (e.g. Intel's SGX extension in a PCK certificate); ``crl_url`` adds a CRL
    distribution point.
    """
    subject = _name(subject_cn, organization)
    issuer = issuer_cert.subject if issuer_cert is not None else subject
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(subject_key.public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(subject_key.public_key), critical=False
        )
    )
    signer_pub = issuer_key.public_key
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_pub), critical=False
    )
    if crl_url is not None:
        point = x509.DistributionPoint(
            full_name=[x509.UniformResourceIdentifier(crl_url)],
            relative_name=None,
            reasons=None,
            crl_issuer=None,
        )
        builder = builder.add_extension(x509.CRLDistributionPoints([point]), critical=False)
    for oid, der in extra_extensions:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), der), critical=False
        )
    return builder.sign(issuer_key.private_key, hashes.SHA256())


def issue_crl(
    *,
    issuer_key: P256Key,
    issuer_cert: x509.Certificate,
    revoked_serials: Iterable[int],
    this_update: dt.datetime,
    next_update: dt.datetime,
    number: int = 1,
) -> bytes:
    """A DER CRL signed by ``issuer_key`` listing ``revoked_serials``."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer_cert.subject)
        .last_update(this_update)
        .next_update(next_update)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key),
            critical=False,
        )
    )
    for serial in revoked_serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(this_update)
            .build()
        )
    crl = builder.sign(issuer_key.private_key, hashes.SHA256())
    return crl.public_bytes(serialization.Encoding.DER)


def issue_ocsp_response(
    *,
    issuer_key: P256Key,
    issuer_cert: x509.Certificate,
    cert: x509.Certificate,
    revoked: bool,
    this_update: dt.datetime,
    next_update: dt.datetime,
) -> bytes:
    """A DER OCSP response by the issuer itself: ``cert`` good or revoked (SHA-1 cert id)."""
    from cryptography.x509 import ocsp

    builder = ocsp.OCSPResponseBuilder().add_response(
        cert=cert,
        issuer=issuer_cert,
        algorithm=hashes.SHA1(),  # noqa: S303 - the OCSP CertID hash every responder uses
        cert_status=ocsp.OCSPCertStatus.REVOKED if revoked else ocsp.OCSPCertStatus.GOOD,
        this_update=this_update,
        next_update=next_update,
        revocation_time=this_update if revoked else None,
        revocation_reason=x509.ReasonFlags.key_compromise if revoked else None,
    )
    builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, issuer_cert)
    response = builder.sign(issuer_key.private_key, hashes.SHA256())
    return response.public_bytes(serialization.Encoding.DER)
