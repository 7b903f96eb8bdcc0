"""Flattened JSON JWE (RFC 7516) exactly as Trustee's KBS emits and its Rust client reads.

Key management ``ECDH-ES+A256KW`` (P-256/P-384/P-521; Concat KDF SHA-256, empty PartyU/V
info) or ``RSA-OAEP-256``; content encryption ``A256GCM``. The protected header is emitted
in the one byte layout the Rust client re-serializes for the AAD: compact JSON with ``alg``
and ``enc`` first and every other member (``epk`` as ``{crv,kty,x,y}``) in sorted order.
Decryption uses the protected header bytes as received, so it interoperates with any layout.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from modelseal._internal.bounded import load_json
from modelseal._internal.canonical import compact_json
from modelseal._internal.encoding import b64url_decode, b64url_encode
from modelseal.crypto.jose.jwk import (
    ALG_ECDH_ES_A256KW,
    ALG_RSA_OAEP_256,
    RecipientKey,
    TeeKeyPair,
    ec_public_jwk,
    ec_public_key_from_jwk,
)
from modelseal.crypto.secret import SecretBytes
from modelseal.errors import DecryptionError, FormatError

ENC_A256GCM: Final = "A256GCM"
_CEK_LEN: Final = 32
_IV_LEN: Final = 12
_TAG_LEN: Final = 16
#: Upper bound on any JWE member we are willing to parse (resources are small keys).
MAX_MEMBER_CHARS: Final = 1 << 20
#: A protected header is a handful of short members (alg, enc, epk with two coordinates).
MAX_HEADER_BYTES: Final = 16 * 1024
JWE_MEMBERS: Final = ("protected", "encrypted_key", "iv", "ciphertext", "tag")


def protected_header_bytes(header: Mapping[str, Any]) -> bytes:
    """Compact JSON: ``alg``, ``enc`` first, then the remaining members sorted by name.

    Nested objects (``epk``) are emitted with sorted keys, which for an EC JWK gives the
    ``{crv,kty,x,y}`` order Trustee's client produces.
    """
    ordered: dict[str, Any] = {"alg": header["alg"], "enc": header["enc"]}
    for name in sorted(k for k in header if k not in ("alg", "enc")):
        value = header[name]
        ordered[name] = dict(sorted(value.items())) if isinstance(value, Mapping) else value
    return compact_json(ordered)


def _concat_kdf(z: bytes, alg: str) -> bytes:
    """RFC 7518 §4.6.2 Concat KDF for ``*+A256KW``: 256-bit KEK, empty apu/apv."""
    alg_id = alg.encode("ascii")
    other_info = (
        struct.pack(">I", len(alg_id)) + alg_id + struct.pack(">I", 0) * 2 + struct.pack(">I", 256)
    )
    return ConcatKDFHash(algorithm=hashes.SHA256(), length=32, otherinfo=other_info).derive(z)


_OAEP: Final = padding.OAEP(
    mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None
)


def encrypt(plaintext: bytes, recipient: RecipientKey) -> dict[str, str]:
    """Encrypt ``plaintext`` to ``recipient``; returns the flattened JWE JSON object."""
    cek = bytearray(os.urandom(_CEK_LEN))
    try:
        header: dict[str, Any] = {"alg": recipient.alg, "enc": ENC_A256GCM}
        if recipient.alg == ALG_ECDH_ES_A256KW and isinstance(
            recipient.key, ec.EllipticCurvePublicKey
        ):
            ephemeral = ec.generate_private_key(recipient.key.curve)
            z = ephemeral.exchange(ec.ECDH(), recipient.key)
            kek = _concat_kdf(z, recipient.alg)
            encrypted_key = aes_key_wrap(kek, bytes(cek))
            header["epk"] = ec_public_jwk(ephemeral.public_key())
        elif recipient.alg == ALG_RSA_OAEP_256 and isinstance(recipient.key, rsa.RSAPublicKey):
            encrypted_key = recipient.key.encrypt(bytes(cek), _OAEP)
        else:
            raise FormatError(f"JWE algorithm {recipient.alg!r} does not fit the recipient key")
        protected = b64url_encode(protected_header_bytes(header))
        iv = os.urandom(_IV_LEN)
        sealed = AESGCM(bytes(cek)).encrypt(iv, plaintext, protected.encode("ascii"))
    finally:
        for i in range(len(cek)):
            cek[i] = 0
    return {
        "protected": protected,
        "encrypted_key": b64url_encode(encrypted_key),
        "iv": b64url_encode(iv),
        "ciphertext": b64url_encode(sealed[:-_TAG_LEN]),
        "tag": b64url_encode(sealed[-_TAG_LEN:]),
    }


def parse_flattened(jwe: Any) -> dict[str, str]:
    """Check the shape of a flattened JWE object (string members, size-capped).

    ``aad`` is refused (Trustee never sends it); unprotected headers are checked by
    :func:`decrypt`.
    """
    if not isinstance(jwe, Mapping):
        raise FormatError("JWE must be a JSON object")
    out: dict[str, str] = {}
    for name in JWE_MEMBERS:
        value = jwe.get(name)
        if not isinstance(value, str) or len(value) > MAX_MEMBER_CHARS:
            raise FormatError(f"JWE member {name!r} missing or invalid")
        out[name] = value
    if "aad" in jwe:
        raise FormatError("JWE with additional authenticated data is not accepted")
    return out


def _unprotected_epk(jwe: Mapping[str, Any], protected: Mapping[str, Any]) -> Any:
    """``epk`` from a per-recipient/shared unprotected header (other JOSE libraries put it
    there); ``alg``/``enc`` must always be integrity-protected."""
    found: Any = None
    for name in ("unprotected", "header"):
        extra = jwe.get(name)
        if extra is None:
            continue
        if not isinstance(extra, Mapping) or set(extra) - {"epk", "kid"}:
            raise FormatError(f"JWE {name} header may only carry epk/kid")
        if set(extra) & set(protected) or (found is not None and "epk" in extra):
            raise FormatError("JWE header members must be disjoint")
        found = extra.get("epk", found)
    return found


def decrypt(jwe: Any, key_pair: TeeKeyPair) -> SecretBytes:
    """Decrypt a flattened JWE addressed to ``key_pair``.

    Malformed structure raises :class:`FormatError`; every cryptographic failure (wrong key,
    tampered header, key or ciphertext) raises the one opaque :class:`DecryptionError`.
    """
    members = parse_flattened(jwe)
    header = load_json(
        b64url_decode(members["protected"], what="JWE protected header"),
        what="JWE protected header",
        max_bytes=MAX_HEADER_BYTES,
    )
    if not isinstance(header, dict):
        raise FormatError("JWE protected header is not a JSON object")
    if header.get("enc") != ENC_A256GCM or header.get("alg") != key_pair.alg:
        raise FormatError("JWE uses an unexpected algorithm")
    if "zip" in header or "crit" in header:
        raise FormatError("JWE header members zip/crit are not supported")
    encrypted_key = b64url_decode(members["encrypted_key"], what="JWE encrypted_key")
    iv = b64url_decode(members["iv"], what="JWE iv")
    ciphertext = b64url_decode(members["ciphertext"], what="JWE ciphertext")
    tag = b64url_decode(members["tag"], what="JWE tag")
    if len(iv) != _IV_LEN or len(tag) != _TAG_LEN:
        raise FormatError("JWE iv/tag length is wrong")
    private = key_pair.private_key
    cek: bytes | None = None
    try:
        if isinstance(private, ec.EllipticCurvePrivateKey):
            epk_jwk = header["epk"] if "epk" in header else _unprotected_epk(jwe, header)
            epk = ec_public_key_from_jwk(epk_jwk, what="JWE epk")
            if epk.curve.name != private.curve.name:
                raise DecryptionError()
            kek = _concat_kdf(private.exchange(ec.ECDH(), epk), ALG_ECDH_ES_A256KW)
            cek = aes_key_unwrap(kek, encrypted_key)
        else:
            cek = private.decrypt(encrypted_key, _OAEP)
        if len(cek) != _CEK_LEN:
            raise DecryptionError()
        plaintext = AESGCM(cek).decrypt(iv, ciphertext + tag, members["protected"].encode("ascii"))
    except (InvalidTag, InvalidUnwrap, ValueError) as exc:
        raise DecryptionError() from exc
    finally:
        del cek
    secret = SecretBytes(plaintext)
    del plaintext
    return secret
