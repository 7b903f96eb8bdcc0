"""tee-pubkey parsing fails closed on every malformed or weak key."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelseal._internal.encoding import b64url_encode
from modelseal.crypto.jose.jwk import KEY_ALGS, TeeKeyPair, recipient_from_jwk
from modelseal.errors import ConfigError, FormatError


@pytest.mark.parametrize("key_alg", KEY_ALGS)
def test_public_jwk_shapes_round_trip(key_alg: str) -> None:
    keys = TeeKeyPair.generate(key_alg)
    jwk = keys.public_jwk()
    assert "d" not in jwk
    assert "p" not in jwk
    if key_alg.startswith("ECDH"):
        assert set(jwk) == {"alg", "crv", "kty", "x", "y"}
        assert jwk["alg"] == "ECDH-ES+A256KW"
        assert jwk["crv"] == "P-" + key_alg[-3:]
    else:
        assert set(jwk) == {"alg", "kty", "n", "e"}
        assert jwk["alg"] == "RSA-OAEP-256"
    assert recipient_from_jwk(jwk).alg == keys.alg


def test_unknown_key_alg() -> None:
    with pytest.raises(ConfigError):
        TeeKeyPair.generate("ECDH-ES+A128KW-P256")


def _ec() -> dict[str, str]:
    return TeeKeyPair.generate().public_jwk()


@pytest.mark.parametrize(
    "mutate",
    [
        lambda j: j.update(kty="OKP"),
        lambda j: j.update(crv="P-192"),
        lambda j: j.update(crv="secp256k1"),
        lambda j: j.update(alg="ECDH-ES"),
        lambda j: j.update(x=j["x"][:-2]),
        lambda j: j.update(y=b64url_encode(b"\x00" * 32)),  # off the curve
        lambda j: j.update(x="!!!!"),
        lambda j: j.pop("y"),
        lambda j: j.update(x=5),
    ],
)
def test_bad_ec_keys(mutate) -> None:  # type: ignore[no-untyped-def]
    jwk = _ec()
    mutate(jwk)
    with pytest.raises(FormatError):
        recipient_from_jwk(jwk)


def test_bad_rsa_keys() -> None:
    jwk = TeeKeyPair.generate("RSA-OAEP-256").public_jwk()
    with pytest.raises(FormatError):
        recipient_from_jwk({**jwk, "alg": "RSA1_5"})
    with pytest.raises(FormatError):
        recipient_from_jwk({**jwk, "n": b64url_encode(b"\xff" * 128)})  # 1024 bits
    with pytest.raises(FormatError):
        recipient_from_jwk({**jwk, "e": b64url_encode(b"\x02")})
    with pytest.raises(FormatError):
        recipient_from_jwk("not a dict")


@given(
    st.dictionaries(
        st.sampled_from(["kty", "crv", "x", "y", "n", "e", "alg"]), st.text(max_size=20)
    )
)
def test_random_jwks_never_crash(jwk: dict[str, str]) -> None:
    with contextlib.suppress(FormatError):
        recipient_from_jwk(jwk)
