"""The canonical_json fast path is byte-identical to the rfc8785 reference implementation."""

from __future__ import annotations

import json
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from modelseal._internal.canonical import canonical_json, compact_json

_SAFE = 2**53 - 1

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
    | st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x7F))
    | st.text(alphabet=st.characters(min_codepoint=0xD000, max_codepoint=0x10FFFF))
)
_keys = st.text(max_size=8) | st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=8
)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(_keys, inner, max_size=5),
    max_leaves=30,
)


def _reference(value: Any) -> bytes | type[BaseException]:
    try:
        return rfc8785.dumps(value)
    except Exception as exc:  # the reference's own error type is the expected outcome
        return type(exc)


def _ours(value: Any) -> bytes | type[BaseException]:
    try:
        return canonical_json(value)
    except Exception as exc:
        return type(exc)


@settings(max_examples=300)
@given(_json)
def test_identical_to_rfc8785(value: Any) -> None:
    assert _ours(value) == _reference(value)


@given(
    st.text(),
    st.dictionaries(
        st.sampled_from(["kty", "crv", "x", "y", "alg", "n", "e"]), st.text(), max_size=7
    ),
    st.text(),
)
def test_binding_shape_identical(nonce: str, jwk: dict[str, str], ae: str) -> None:
    value = {"additional-evidence": ae, "nonce": nonce, "tee-pubkey": jwk}
    assert canonical_json(value) == rfc8785.dumps(value)


@pytest.mark.parametrize(
    "value",
    [
        {"\u00e9": 1, "e": 2, "\U0001f600": 3, "\uff61": 4},  # UTF-16 key order differs
        {"a": "\ud800"},  # lone surrogate
        {"a": 1.5, "b": -0.0, "c": 1e21},
        {"a": _SAFE, "b": -_SAFE},
        {"a": _SAFE + 1},
        ("t", 1),
        {"ctl": '\x00\x1f\x7f\u2028"\\\b\f\n\r\t'},
        [True, False, None, [], {}],
    ],
)
def test_edge_cases(value: Any) -> None:
    assert _ours(value) == _reference(value)


def _json_module(value: Any) -> bytes | type[BaseException]:
    try:
        return json.dumps(
            value, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode()
    except Exception as exc:
        return type(exc)


def _compact(value: Any) -> bytes | type[BaseException]:
    try:
        return compact_json(value)
    except Exception as exc:
        return type(exc)


@settings(max_examples=300)
@given(_json)
def test_compact_json_is_the_json_modules_output(value: Any) -> None:
    """msgspec on plain values, json otherwise: the same bytes (or error) as json.dumps."""
    assert _compact(value) == _json_module(value)


@pytest.mark.parametrize(
    "value",
    [
        {"a": float("nan")},
        {"a": [float("inf")]},
        {"a": "\ud800"},
        {"ctl": '\x00\x1f\x7f\u2028"\\\b\f\n\r\t', "\u00e9": "\U0001f600"},
        {"b": 1, "a": [True, None, {"z": -_SAFE}]},
    ],
)
def test_compact_json_edge_cases(value: Any) -> None:
    assert _compact(value) == _json_module(value)
    assert compact_json({"b": 1, "a": 2}) == b'{"b":1,"a":2}'  # insertion order kept
