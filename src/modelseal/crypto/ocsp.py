"""OCSP responses from an offline bundle: is a response really signed by the issuer (or by
a responder the issuer delegated to)? Kept here because it needs ``cryptography.hazmat``."""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID


def _signed_by(response: ocsp.OCSPResponse, signer: x509.Certificate) -> bool:
    try:
        key = signer.public_key()
        algorithm = response.signature_hash_algorithm
        if algorithm is None:
            return False
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(algorithm))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(
                response.signature, response.tbs_response_bytes, padding.PKCS1v15(), algorithm
            )
        else:
            return False
    except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError):
        return False
    return True


def ocsp_signed_by_issuer(response: ocsp.OCSPResponse, issuer: x509.Certificate) -> bool:
    """True if ``issuer`` signed ``response``, or a responder certificate the response
    carries was issued by ``issuer`` for OCSP signing and signed it."""
    if _signed_by(response, issuer):
        return True
    for responder in response.certificates:
        try:
            responder.verify_directly_issued_by(issuer)
            usage = responder.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError):
            continue
        except x509.ExtensionNotFound:
            continue
        if ExtendedKeyUsageOID.OCSP_SIGNING in usage and _signed_by(response, responder):
            return True
    return False
