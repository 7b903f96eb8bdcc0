"""RSA-OAEP SWK wrapping for ITA/CNAP transfer: key encodings, sizes, opaque unwrap errors."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelseal.crypto.cnap_wrap import MIN_RSA_BITS, WorkloadKey, WorkloadKeyPair, new_swk
from modelseal.errors import DecryptionError, FormatError

PAIR = WorkloadKeyPair(3072)


def test_spki_and_ita_encodings_parse_to_the_same_key() -> None:
    spki = PAIR.public.spki_der()
    ita = PAIR.public.ita_bytes()
    assert spki[0] == 0x30
    assert ita[:4] == (65537).to_bytes(4, "little")
    assert len(ita) == 4 + 384
    a, b = WorkloadKey.from_user_data(spki), WorkloadKey.from_user_data(ita)
    assert a.spki_der() == b.spki_der() == spki
    assert a.bits == 3072


def test_wrap_unwrap() -> None:
    swk = new_swk()
    assert len(swk) == 32
    wrapped = WorkloadKey.from_user_data(PAIR.public.spki_der()).wrap(swk)
    assert len(wrapped) == 384
    assert swk.reveal() not in wrapped
    assert PAIR.unwrap(wrapped) == swk
    assert PAIR.public.wrap(swk) != wrapped  # OAEP is randomized


def test_unwrap_failures_are_opaque() -> None:
    wrapped = bytearray(PAIR.public.wrap(new_swk()))
    wrapped[10] ^= 1
    with pytest.raises(DecryptionError) as exc:
        PAIR.unwrap(bytes(wrapped))
    assert str(exc.value) == "authentication failed"
    with pytest.raises(DecryptionError):
        PAIR.unwrap(b"short")


def test_small_keys_refused() -> None:
    modulus = (int.from_bytes(os.urandom(256), "big") | (1 << 2047) | 1).to_bytes(256, "big")
    with pytest.raises(FormatError, match=str(MIN_RSA_BITS)):
        WorkloadKey.from_user_data((65537).to_bytes(4, "little") + modulus)
    with pytest.raises(FormatError):
        WorkloadKeyPair(2048)


def test_bad_exponent_refused() -> None:
    ita = bytearray(PAIR.public.ita_bytes())
    ita[:4] = (65536).to_bytes(4, "little")
    with pytest.raises(FormatError, match="RSA key"):
        WorkloadKey.from_user_data(bytes(ita))


#: A P-256 SubjectPublicKeyInfo (DER): valid SPKI, but not an RSA key.
EC_SPKI = bytes.fromhex(
    "3059301306072a8648ce3d020106082a8648ce3d0301070342000460ad5bad29566d6ca804239afd5c4633"
    "112d814e2aa9a12fb50d6104258eae983db753c3e853b4b520d54664fb055f1e01f7678fc0280a2741621c"
    "1d6e90ef13"
)


def test_non_rsa_spki_refused() -> None:
    with pytest.raises(FormatError, match="not RSA"):
        WorkloadKey.from_user_data(EC_SPKI)


def test_spki_with_an_unknown_algorithm_refused() -> None:
    """rsaEncryption's OID changed to 1.2.840.113549.1.1.99 (same length): cryptography raises
    UnsupportedAlgorithm, which escaped the documented FormatError (found by fuzzing)."""
    spki = PAIR.public.spki_der()
    rsa_oid = bytes.fromhex("2a864886f70d010101")
    assert spki.count(rsa_oid) == 1
    with pytest.raises(FormatError):
        WorkloadKey.from_user_data(spki.replace(rsa_oid, rsa_oid[:-1] + b"\x63"))


def test_repr_hides_private_key() -> None:
    assert "redacted" in repr(PAIR)


@settings(deadline=None, max_examples=200)
@given(st.binary(max_size=600))
def test_random_user_data_never_crashes(data: bytes) -> None:
    try:
        key = WorkloadKey.from_user_data(data)
    except FormatError:
        return
    assert key.bits >= MIN_RSA_BITS


@settings(deadline=None)
@given(st.binary(min_size=1, max_size=5000))
def test_oversized_or_truncated_spki(data: bytes) -> None:
    spki = PAIR.public.spki_der()
    for candidate in (spki[: len(data) % len(spki)], spki + data):
        with pytest.raises(FormatError):
            WorkloadKey.from_user_data(candidate)


def test_ita_encoding_of_a_modulus_that_is_not_whole_bytes() -> None:
    # A 3073-bit modulus needs 385 bytes; ita_bytes used to size it as bits // 8 (384).
    modulus = int.from_bytes(os.urandom(385), "big") >> 7 | (1 << 3072) | 1
    user_data = (65537).to_bytes(4, "little") + modulus.to_bytes(385, "big")
    key = WorkloadKey.from_user_data(user_data)
    assert key.bits == 3073
    assert key.ita_bytes() == user_data
    assert WorkloadKey.from_user_data(key.spki_der()).ita_bytes() == user_data
