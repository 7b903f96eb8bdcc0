"""Strict codecs: round trips, and malformed input is a FormatError, never a crash."""

from __future__ import annotations

import contextlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelseal._internal import canonical, encoding
from modelseal.errors import FormatError


@given(st.binary(max_size=200))
def test_b64url_round_trip(data: bytes) -> None:
    text = encoding.b64url_encode(data)
    assert "=" not in text
    assert encoding.b64url_decode(text) == data


@given(st.binary(max_size=200))
def test_b64_round_trip(data: bytes) -> None:
    assert encoding.b64_decode(encoding.b64_encode(data)) == data


@given(st.text(max_size=60))
def test_decoders_never_crash(text: str) -> None:
    for fn in (encoding.b64url_decode, encoding.b64_decode, encoding.hex_decode):
        with contextlib.suppress(FormatError):
            fn(text)


@pytest.mark.parametrize("bad", ["a", "ab+c", "a/bc", "ab$c"])
def test_b64url_rejects_other_alphabets(bad: str) -> None:
    with pytest.raises(FormatError):
        encoding.b64url_decode(bad)


def test_b64_rejects_missing_padding_and_urlsafe() -> None:
    with pytest.raises(FormatError):
        encoding.b64_decode("YWJj ZA")
    with pytest.raises(FormatError):
        encoding.b64_decode("-_-_")


@pytest.mark.parametrize("bad", ["YWJ\n", "YQ==YQ==", "Y===", "====", "=YWJ", "YW J", "YWJ\u00e9"])
def test_b64_rejects_misplaced_padding_and_whitespace(bad: str) -> None:
    with pytest.raises(FormatError):
        encoding.b64_decode(bad)


#: the standard base64 text b64_decode accepts: the alphabet, then at most two "="
_STRICT_B64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


@given(st.text(alphabet="AQw+/=\n -_\u00e9\x00", max_size=16))
def test_b64_accepts_exactly_strict_padded_text(text: str) -> None:
    try:
        encoding.b64_decode(text)
        accepted = True
    except FormatError:
        accepted = False
    assert accepted == (bool(_STRICT_B64.fullmatch(text)) and len(text) % 4 == 0)


def test_hex_accepts_prefix_and_whitespace() -> None:
    assert encoding.hex_decode(" 0xDEad\nbeef ") == b"\xde\xad\xbe\xef"
    with pytest.raises(FormatError):
        encoding.hex_decode("abc")


def test_canonical_json_matches_trustee_vector() -> None:
    # the canonicalization vector of the unit tests of Trustee's attestation service
    import hashlib

    out = canonical.canonical_json({"b": 1, "a": "test", "c": {"d": "e"}})
    assert out == b'{"a":"test","b":1,"c":{"d":"e"}}'
    assert hashlib.sha384(out).hexdigest() == (
        "e71ce8e70d814ba6639c3612ebee0ff1f76f650f8dbb5e47157e0f3f525cd22c"
        "4597480a186427c813ca941da78870c3"
    )
