"""An attested TLS server identity that exists only in this process's memory.

The gateway's TLS private key is generated at start and handed to OpenSSL as a key
object (pyOpenSSL ``Context.use_privatekey``), never serialized: no PEM, no temporary
file, no memfd. (Python's ``ssl`` module can only load keys from a path, and even an
anonymous memfd path is a file descriptor other processes of the same user can open
through ``/proc``; pyOpenSSL takes the key object directly.) This class has no method
that returns the private key in any encoding.

The certificate is self-signed: a client trusts it because the attestation evidence in
one of its extensions binds the hash of its SubjectPublicKeyInfo, not because of a CA.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from modelseal.crypto.x509_pem import parse_der_certificate
from modelseal.errors import FormatError

__all__ = [
    "TlsKey",
    "certificate_der",
    "certificate_extension",
    "certificate_spki",
    "spki_hash",
    "whole_writes",
]

#: Hash algorithms a ``pubkey-hash`` may use: IANA Named Information ids -> hashlib name.
SPKI_HASHES = {1: "sha256", 7: "sha384", 8: "sha512"}


class TlsKey:
    """A fresh P-256 key living only in this object (and in the OpenSSL contexts made
    from it). ``repr`` and pickling reveal nothing."""

    __slots__ = ("_key", "spki_der")

    def __init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        #: DER SubjectPublicKeyInfo of the public key (what ``pubkey-hash`` hashes)
        self.spki_der: bytes = self._key.public_key().public_bytes(
            Encoding.DER, PublicFormat.SubjectPublicKeyInfo
        )

    def __repr__(self) -> str:
        return "TlsKey(P-256, in memory)"

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("a TLS key is never pickled")

    def certificate(
        self,
        *,
        extensions: Sequence[tuple[str, bytes]],
        not_before: float,
        not_after: float,
        common_name: str = "modelseal attested gateway",
    ) -> bytes:
        """A self-signed DER certificate for this key carrying ``extensions``
        (dotted OID, extnValue bytes; non-critical) and a random serial number."""
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(datetime.datetime.fromtimestamp(int(not_before), datetime.UTC))
            .not_valid_after(datetime.datetime.fromtimestamp(int(not_after), datetime.UTC))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        for oid, value in extensions:
            builder = builder.add_extension(
                x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value), critical=False
            )
        cert = builder.sign(self._key, hashes.SHA256())
        return cert.public_bytes(Encoding.DER)

    def server_context(self, certificate_der: bytes) -> SSL.Context:
        """A TLS 1.3-only server context serving ``certificate_der`` with this key."""
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
        ctx.use_certificate(x509.load_der_x509_certificate(certificate_der))
        ctx.use_privatekey(self._key)
        ctx.check_privatekey()
        ctx.set_options(SSL.OP_NO_TICKET)
        whole_writes(ctx)
        return ctx


#: OpenSSL's SSL_MODE_ENABLE_PARTIAL_WRITE (0x1 in every OpenSSL since 0.9.6).
_PARTIAL_WRITE = 0x1


def whole_writes(ctx: SSL.Context) -> None:
    """Let one ``send`` encrypt a whole buffer into the memory BIO: pyOpenSSL turns on
    partial writes, which return after every 16 KiB record (a Python call per record)."""
    ctx.clear_mode(_PARTIAL_WRITE)


def certificate_der(cert: x509.Certificate) -> bytes:
    """The DER encoding of a parsed certificate."""
    return cert.public_bytes(Encoding.DER)


def certificate_spki(certificate_der: bytes) -> bytes:
    """The DER SubjectPublicKeyInfo of a DER certificate; ``FormatError`` if unparsable."""
    try:
        cert = parse_der_certificate(certificate_der)
        return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise FormatError("the peer certificate or its public key does not parse") from exc


def certificate_extension(certificate_der: bytes, oid: str) -> bytes | None:
    """The extnValue of the extension ``oid`` (None if absent); ``FormatError`` if the
    certificate or its extensions do not parse."""
    try:
        cert = parse_der_certificate(certificate_der)
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(oid))
    except x509.ExtensionNotFound:
        return None
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise FormatError("the peer certificate's extensions do not parse") from exc
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise FormatError(f"extension {oid} has an unexpected type")
    return value.value


def spki_hash(spki_der: bytes, alg_id: int) -> bytes:
    """Hash of a SubjectPublicKeyInfo with the IANA-numbered algorithm ``alg_id``."""
    name = SPKI_HASHES.get(alg_id)
    if name is None:
        raise FormatError(f"pubkey-hash algorithm {alg_id} is not sha-256/384/512 (1, 7, 8)")
    return hashlib.new(name, spki_der).digest()
