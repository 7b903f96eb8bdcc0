"""JWE: every variant decrypts with jwcrypto (independent oracle) and with our own code."""

from __future__ import annotations

import base64
import json

import pytest
from jwcrypto import jwe as jw_jwe
from jwcrypto import jwk as jw_jwk

from modelseal.crypto.jose.jwe import decrypt, encrypt, protected_header_bytes
from modelseal.crypto.jose.jwk import KEY_ALGS, TeeKeyPair, recipient_from_jwk
from modelseal.errors import DecryptionError, FormatError

PLAINTEXT = bytes(range(32))


def _b64d(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def _jwcrypto_private(keys: TeeKeyPair) -> jw_jwk.JWK:
    return jw_jwk.JWK.from_pyca(keys.private_key)


@pytest.fixture(scope="module", params=KEY_ALGS)
def keys(request: pytest.FixtureRequest) -> TeeKeyPair:
    return TeeKeyPair.generate(request.param)


def test_jwcrypto_decrypts_our_jwe(keys: TeeKeyPair) -> None:
    out = encrypt(PLAINTEXT, recipient_from_jwk(keys.public_jwk()))
    token = jw_jwe.JWE()
    token.deserialize(json.dumps(out), key=_jwcrypto_private(keys))
    assert token.payload == PLAINTEXT


def test_we_decrypt_our_jwe(keys: TeeKeyPair) -> None:
    out = encrypt(PLAINTEXT, recipient_from_jwk(keys.public_jwk()))
    assert decrypt(out, keys).reveal() == PLAINTEXT


def test_we_decrypt_jwcrypto_jwe(keys: TeeKeyPair) -> None:
    """Interop in the other direction (jwcrypto puts its header in its own layout)."""
    pub = jw_jwk.JWK(**keys.public_jwk())
    token = jw_jwe.JWE(
        PLAINTEXT, protected=json.dumps({"alg": keys.alg, "enc": "A256GCM"}), recipient=pub
    )
    flattened = json.loads(token.serialize())
    assert decrypt(flattened, keys).reveal() == PLAINTEXT


def test_protected_header_layout(keys: TeeKeyPair) -> None:
    out = encrypt(PLAINTEXT, recipient_from_jwk(keys.public_jwk()))
    assert set(out) == {"protected", "encrypted_key", "iv", "ciphertext", "tag"}
    raw = _b64d(out["protected"])
    header = json.loads(raw)
    assert raw == protected_header_bytes(header)
    assert b" " not in raw
    if keys.alg == "ECDH-ES+A256KW":
        crv = keys.public_jwk()["crv"]
        assert raw.startswith(
            b'{"alg":"ECDH-ES+A256KW","enc":"A256GCM","epk":{"crv":"'
            + crv.encode()
            + b'","kty":"EC","x":"'
        )
        assert list(header["epk"]) == ["crv", "kty", "x", "y"]
        assert len(_b64d(out["encrypted_key"])) == 40
    else:
        assert raw == b'{"alg":"RSA-OAEP-256","enc":"A256GCM"}'
    assert len(_b64d(out["iv"])) == 12
    assert len(_b64d(out["tag"])) == 16


def test_header_order_rule() -> None:
    header = {
        "zz": 1,
        "epk": {"y": "Y", "x": "X", "kty": "EC", "crv": "P-256"},
        "enc": "E",
        "alg": "A",
    }
    assert protected_header_bytes(header) == (
        b'{"alg":"A","enc":"E","epk":{"crv":"P-256","kty":"EC","x":"X","y":"Y"},"zz":1}'
    )


@pytest.mark.parametrize("member", ["protected", "encrypted_key", "iv", "ciphertext", "tag"])
def test_tampering_is_one_opaque_error(keys: TeeKeyPair, member: str) -> None:
    out = encrypt(PLAINTEXT, recipient_from_jwk(keys.public_jwk()))
    raw = bytearray(_b64d(out[member]))
    if member == "protected":
        header = json.loads(raw)
        header["kid"] = "x"  # still valid JSON, different AAD
        raw = bytearray(json.dumps(header).encode())
    else:
        raw[len(raw) // 2] ^= 1
    out[member] = base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
    with pytest.raises((DecryptionError, FormatError)) as info:
        decrypt(out, keys)
    if member != "iv":
        assert info.type is DecryptionError


def test_wrong_key_fails(keys: TeeKeyPair) -> None:
    out = encrypt(PLAINTEXT, recipient_from_jwk(keys.public_jwk()))
    other = TeeKeyPair.generate(keys.key_alg)
    with pytest.raises(DecryptionError):
        decrypt(out, other)


def test_alg_mismatch_and_shape_errors() -> None:
    ec_keys = TeeKeyPair.generate()
    rsa_out = encrypt(
        PLAINTEXT, recipient_from_jwk(TeeKeyPair.generate("RSA-OAEP-256").public_jwk())
    )
    with pytest.raises(FormatError):
        decrypt(rsa_out, ec_keys)
    with pytest.raises(FormatError):
        decrypt({"protected": "e30"}, ec_keys)
    with pytest.raises(FormatError):
        decrypt([], ec_keys)
    out = encrypt(PLAINTEXT, recipient_from_jwk(ec_keys.public_jwk()))
    with pytest.raises(FormatError):
        decrypt({**out, "aad": "AA"}, ec_keys)
    with pytest.raises(FormatError):
        decrypt({**out, "protected": "bm90IGpzb24"}, ec_keys)


def test_epk_on_another_curve_fails() -> None:
    p256 = TeeKeyPair.generate("ECDH-ES+A256KW-P256")
    p384 = TeeKeyPair.generate("ECDH-ES+A256KW-P384")
    out = encrypt(PLAINTEXT, recipient_from_jwk(p384.public_jwk()))
    with pytest.raises(DecryptionError):
        decrypt(out, p256)


def test_closed_key_pair_cannot_decrypt() -> None:
    keys = TeeKeyPair.generate()
    out = encrypt(PLAINTEXT, recipient_from_jwk(keys.public_jwk()))
    keys.close()
    assert "redacted" in repr(keys)
    with pytest.raises(Exception, match="closed"):
        decrypt(out, keys)
