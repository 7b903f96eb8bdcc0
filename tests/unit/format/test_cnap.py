"""CNAP 12-byte-header layout: encode/decode, streaming, header checks, 4 GiB limit, detection."""

from __future__ import annotations

import io
import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelseal.crypto.secret import SecretBytes
from modelseal.errors import DecryptionError, FormatError
from modelseal.format import cnap
from modelseal.format.detect import detect_prefix
from modelseal.format.header import MAGIC

KEY = SecretBytes(bytes(range(32)))


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=10_000))
def test_encode_decode_and_streaming_agree(data: bytes) -> None:
    iv = b"\x05" * 12
    blob = cnap.encode(KEY, data, _iv=iv)
    assert struct.unpack("<3I", blob[:12]) == (12, 16, len(data) + 16)
    assert blob[12:24] == iv
    assert cnap.decode(KEY, blob) == data
    out = io.BytesIO()
    cnap.encrypt_stream(io.BytesIO(data), out, KEY, size=len(data), _iv=iv)
    assert out.getvalue() == blob
    plain = io.BytesIO()
    header = cnap.decrypt_stream(io.BytesIO(blob), plain, KEY, total_len=len(blob))
    assert plain.getvalue() == data
    assert header.plaintext_len == len(data)


def test_wrong_key_and_tamper() -> None:
    blob = bytearray(cnap.encode(KEY, b"wrapped dek bytes"))
    with pytest.raises(DecryptionError):
        cnap.decode(SecretBytes(os.urandom(32)), blob)
    blob[30] ^= 1
    with pytest.raises(DecryptionError):
        cnap.decode(KEY, blob)
    with pytest.raises(DecryptionError):
        cnap.decrypt_stream(io.BytesIO(bytes(blob)), io.BytesIO(), KEY, total_len=len(blob))


@pytest.mark.parametrize(
    ("header", "total", "match"),
    [
        ((16, 16, 32), 60, "iv_len 16"),
        ((12, 12, 28), 52, "tag_len 12"),
        ((12, 16, 17), 40, "data_len 17"),
        ((12, 16, 16), 39, "too short"),
    ],
)
def test_header_checks(header: tuple[int, int, int], total: int, match: str) -> None:
    with pytest.raises(FormatError, match=match):
        cnap.parse_header(struct.pack("<3I", *header), total)
    assert not cnap.looks_like_cnap(struct.pack("<3I", *header), total)


def test_four_gib_limit_is_refused_clearly() -> None:
    too_big = 12 + 12 + (1 << 32)
    with pytest.raises(FormatError, match="4 GiB"):
        cnap.parse_header(struct.pack("<3I", 12, 16, 0xFFFFFFFF), too_big)
    with pytest.raises(FormatError, match="4 GiB"):
        detect_prefix(struct.pack("<3I", 12, 16, 0xFFFFFFFF), too_big)
    with pytest.raises(FormatError, match="--format v1"):
        cnap.encrypt_stream(io.BytesIO(), io.BytesIO(), KEY, size=cnap.MAX_PLAINTEXT + 1)


def test_stream_size_mismatch() -> None:
    with pytest.raises(FormatError, match="ended"):
        cnap.encrypt_stream(io.BytesIO(b"abc"), io.BytesIO(), KEY, size=4)
    with pytest.raises(FormatError, match="longer"):
        cnap.encrypt_stream(io.BytesIO(b"abcde"), io.BytesIO(), KEY, size=4)


def test_detection() -> None:
    blob = cnap.encode(KEY, b"x" * 100)
    assert detect_prefix(blob[:16], len(blob)) == "cnap"
    assert detect_prefix(MAGIC + b"\x00\x01", 1000) == "v1"
    with pytest.raises(FormatError, match="not a modelseal v1 or CNAP"):
        detect_prefix(b"PK\x03\x04" + bytes(12), 1000)
    with pytest.raises(FormatError, match="data_len"):
        detect_prefix(blob[:16], len(blob) + 1)
