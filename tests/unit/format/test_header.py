"""Header parsing: every rule of docs/reference/format.md section 2 (property tests too)."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelseal._internal.canonical import canonical_json
from modelseal.errors import FormatError
from modelseal.format.header import (
    MAGIC,
    MAX_HEADER_LEN,
    PREAMBLE_LEN,
    Header,
    build_header,
    check_relpath,
    parse_preamble,
)

GOOD: dict[str, Any] = {
    "alg": "AES-256-GCM",
    "segment_size": 4096,
    "size": 10,
    "salt": "A" * 43,
    "key_id": "models/m/v1",
    "path": "w.bin",
}


def blob(members: Any = None, raw: bytes | None = None, version: int = 1) -> bytes:
    body = raw if raw is not None else json.dumps(GOOD if members is None else members).encode()
    return MAGIC + struct.pack(">HI", version, len(body)) + body


def test_good_header_parses_and_digest_covers_preamble() -> None:
    h = Header.parse(blob())
    assert (h.alg, h.segment_size, h.size, h.key_id, h.path) == (
        "AES-256-GCM", 4096, 10, "models/m/v1", "w.bin")  # fmt: skip
    assert h.salt == bytes(32)
    import hashlib

    assert h.digest == hashlib.sha256(blob()).digest()
    assert h.header_len == len(blob()) - PREAMBLE_LEN
    assert h.preamble == blob()[:PREAMBLE_LEN]
    # json.dumps puts spaces after separators: not canonical, and the bytes are not kept
    with pytest.raises(FormatError, match="not canonical"):
        _ = h.raw
    canonical = blob(raw=canonical_json(GOOD))
    again = Header.parse(canonical)
    assert again.preamble + again.raw == canonical


def test_parsed_header_keeps_no_header_bytes() -> None:
    """A header padded to 1 MiB leaves only its fields behind (a loader holds one per file)."""
    padded = json.dumps(GOOD).encode() + b" " * (MAX_HEADER_LEN - 200)
    h = Header.parse(blob(raw=padded))
    assert h.header_len == len(padded)
    assert h.to_json() == {**GOOD, "salt": "A" * 43}
    assert not hasattr(h, "__dict__")  # slots: no hidden per-instance storage
    assert all(
        not isinstance(getattr(h, name), bytes) or len(getattr(h, name)) <= 32
        for name in h.__slots__
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"alg": "ChaCha20-Poly1305"}, "reserved"),
        ({"alg": "AES-128-GCM"}, "unknown algorithm"),
        ({"alg": 1}, "unknown algorithm"),
        ({"segment_size": 2048}, "power of two"),
        ({"segment_size": 128 << 20}, "power of two"),
        ({"segment_size": 4097}, "power of two"),
        ({"segment_size": True}, "integer"),
        ({"segment_size": 4096.0}, "integer"),
        ({"size": -1}, "size out of range"),
        ({"size": 1 << 62}, "size out of range"),
        ({"size": "10"}, "integer"),
        ({"salt": "A" * 42}, "salt"),
        ({"salt": "A" * 43 + "="}, "salt"),
        ({"salt": "+" * 43}, "base64url"),
        ({"salt": 5}, "salt"),
        ({"key_id": ""}, "key_id"),
        ({"key_id": "a\nb"}, "key_id"),
        ({"path": "../x"}, "'..'"),
        ({"path": "a/../x"}, "'..'"),
        ({"path": "/abs"}, "absolute"),
        ({"path": "a//b"}, "empty"),
        ({"path": "a/"}, "empty"),
        ({"path": "./a"}, "'.'"),
        ({"path": "a\\b"}, "backslash"),
        ({"path": "a\x00"}, "control"),
        ({"path": ""}, "non-empty"),
        ({"model": 3}, "model"),
        ({"extra": 1}, "unknown member"),
    ],
)
def test_invalid_members(change: dict[str, Any], message: str) -> None:
    with pytest.raises(FormatError, match=message):
        Header.parse(blob({**GOOD, **change}))


@pytest.mark.parametrize("name", ["alg", "segment_size", "size", "salt", "key_id", "path"])
def test_missing_required(name: str) -> None:
    with pytest.raises(FormatError, match="lacks required"):
        Header.parse(blob({k: v for k, v in GOOD.items() if k != name}))


@pytest.mark.parametrize(
    "raw",
    [b"[]", b"null", b"{", b"\xff\xfe", b'{"size": NaN}', b'{"a":1,"a":2}', b"[" * 5000],
)
def test_malformed_json(raw: bytes) -> None:
    with pytest.raises(FormatError):
        Header.parse(blob(raw=raw))


def test_preamble_rules() -> None:
    assert parse_preamble(blob()) == len(json.dumps(GOOD))
    with pytest.raises(FormatError, match="magic"):
        parse_preamble(b"\x89MSEAL\r\x00" + blob()[8:])
    with pytest.raises(FormatError, match="version 2"):
        parse_preamble(blob(version=2))
    with pytest.raises(FormatError, match="too short"):
        parse_preamble(MAGIC)
    with pytest.raises(FormatError, match="header length"):
        parse_preamble(MAGIC + struct.pack(">HI", 1, MAX_HEADER_LEN + 1))
    with pytest.raises(FormatError, match="ends inside"):
        Header.parse(blob()[:-1])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_header_bytes_never_crash(raw: bytes) -> None:
    with pytest.raises(FormatError):  # random bytes are never a complete valid header
        Header.parse(blob(raw=raw))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_arbitrary_preamble_never_crashes(data: bytes) -> None:
    with pytest.raises(FormatError):
        Header.parse(data)


@settings(max_examples=100, deadline=None)
@given(
    size=st.integers(0, 1 << 40),
    seg_exp=st.integers(12, 26),
    path=st.from_regex(r"[a-z0-9_]{1,8}(/[a-z0-9_.-]{1,8}){0,3}", fullmatch=True),
)
def test_build_parse_round_trip(size: int, seg_exp: int, path: str) -> None:
    if any(p in (".", "..") for p in path.split("/")):
        return
    h = build_header(size=size, key_id="k", path=path, salt=bytes(32), segment_size=1 << seg_exp)
    again = Header.parse(h.preamble + h.raw)
    assert (again.size, again.segment_size, again.path, again.digest) == (
        size, 1 << seg_exp, path, h.digest)  # fmt: skip
    n = again.segment_count
    assert again.sealed_size == 14 + len(h.raw) + 32 + size + 16 * n
    assert sum(again.segment_plain_len(i) for i in (0, n - 1)) <= size + (1 << seg_exp)


def test_check_relpath_accepts_unicode_and_nesting() -> None:
    assert check_relpath("models/ünï/ᚠ.bin") == "models/ünï/ᚠ.bin"
    assert check_relpath("a..b/.hidden") == "a..b/.hidden"
