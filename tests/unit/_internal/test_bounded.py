"""The bounded parsers: exact JSON depth, caps, and documented errors for hostile input."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelseal._internal.bounded import (
    MAX_DEPTH,
    check_depth,
    check_json,
    json_depth,
    load_json,
    load_toml,
    load_yaml,
)
from modelseal.errors import FormatError


def reference_depth(value: Any) -> int:
    """Containers on the deepest path (``[]`` is 1, a scalar 0), by plain recursion."""
    if isinstance(value, dict):
        return 1 + max((reference_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((reference_depth(v) for v in value), default=0)
    return 0


# Strings full of the characters the depth scan must see through.
tricky_text = st.text(alphabet='[]{}"\\,:ab\n\u00e9\u2028', max_size=8)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | tricky_text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(tricky_text, children, max_size=4)
    ),
    max_leaves=60,
)


@settings(max_examples=400, deadline=None)
@given(json_values, st.sampled_from([0, None]))
def test_json_depth_is_exact_for_valid_json(value: Any, indent: int | None) -> None:
    text = json.dumps(value, indent=indent, ensure_ascii=False).encode()
    expected = reference_depth(value)
    assert json_depth(text) == expected
    if expected > 3:
        with pytest.raises(FormatError, match="nested too deeply"):
            check_json(text, what="doc", max_bytes=1 << 20, max_depth=3)
    else:
        assert check_json(text, what="doc", max_bytes=1 << 20, max_depth=3) == text


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        (b"1", 0),
        (b'"[[[["', 0),
        (b"[]", 1),
        (b'{"a": {"b": ["]]]]"]}}', 3),
        (b'["\\\\", ["\\"[["]]', 2),  # escaped backslash, then an escaped quote
        (b"[[],[[]],[[[]]],[]]", 4),
        (b"[" * 40 + b"]" * 40, 40),
    ],
)
def test_json_depth_examples(text: bytes, depth: int) -> None:
    assert json_depth(text) == depth


@pytest.mark.parametrize(
    "shape",
    [
        lambda d: "[" * d + "]" * d,  # a run of opening brackets
        lambda d: '{"a":' * d + "1" + "}" * d,
        lambda d: "[1," * d + "2" + "]" * d,  # never two opening brackets in a row
        lambda d: "[[]," * (d - 1) + "[]" + "]" * (d - 1),  # and a leaf beside every level
    ],
    ids=["run", "objects", "comb", "leafy-comb"],
)
@pytest.mark.parametrize("depth", [MAX_DEPTH, MAX_DEPTH + 1, 5_000, 200_000])
def test_the_cap_is_exact_at_every_shape(shape: Any, depth: int) -> None:
    text = shape(depth)
    if depth <= MAX_DEPTH:
        load_json(text, what="doc", max_bytes=1 << 22)
        return
    with pytest.raises(FormatError, match=r"^doc nested too deeply \(more than 32 levels\)$"):
        load_json(text, what="doc", max_bytes=1 << 22)


def binary_tree(height: int) -> str:
    """A full binary tree of arrays: 2**(height-1) valleys ``],[`` for the depth scan."""
    return "1" if height == 0 else f"[{binary_tree(height - 1)},{binary_tree(height - 1)}]"


def test_depth_is_exact_for_documents_with_many_valleys() -> None:
    # more than _FEW_VALLEYS valleys: leaf passes thin them out before the exact step
    core = "[" + ",".join([binary_tree(11)] * 70) + "]"
    assert json_depth(core.encode()) == 12
    assert json_depth(("[" * 20 + core + "]" * 20).encode()) == 32
    load_json("[" * 20 + core + "]" * 20, what="doc", max_bytes=1 << 20)
    with pytest.raises(FormatError, match="nested too deeply"):
        load_json("[" * 21 + core + "]" * 21, what="doc", max_bytes=1 << 20)
    # a forest of shallow trees: the first pass leaves nothing
    assert json_depth(b"[" + b",".join([b"[[1]]"] * 50_000) + b"]") == 3


def test_wide_shallow_documents_pass() -> None:
    wide = "[" + ",".join(['{"a":[[1]]}'] * 50_000) + "]"
    assert len(load_json(wide, what="doc", max_bytes=1 << 22)) == 50_000


def test_byte_cap_counts_bytes_not_characters() -> None:
    assert load_json('"' + "é" * 10 + '"', what="doc", max_bytes=22) == "é" * 10
    with pytest.raises(FormatError, match="too large"):
        load_json('"' + "é" * 10 + '"', what="doc", max_bytes=21)
    with pytest.raises(FormatError, match="too large"):
        check_json(b"[" + b" " * 100 + b"]", what="doc", max_bytes=100)


@pytest.mark.parametrize(
    "text",
    ["NaN", "[Infinity]", "[1,]", "{'a': 1}", "[1] [2]", "\xff", '{"a": 1'],
)
def test_invalid_json_is_a_format_error_without_its_content(text: str) -> None:
    with pytest.raises(FormatError) as raised:
        load_json(text, what="the body", max_bytes=1024)
    message = str(raised.value)
    assert message.startswith("the body is not valid JSON")
    assert "NaN" not in message
    assert "Infinity" not in message


def test_secret_looking_content_never_reaches_the_message() -> None:
    secret = "hunter2-" * 4
    for text in ('{"key": "' + secret + '" oops}', "[" * 100 + '"' + secret + '"'):
        with pytest.raises(FormatError) as raised:
            load_json(text, what="doc", max_bytes=1 << 16)
        assert secret not in str(raised.value)


def test_check_depth_on_decoded_values() -> None:
    check_depth({"a": [[1]]}, what="doc", max_depth=3)
    deep: Any = 1
    for _ in range(100_000):  # deeper than any recursion could walk
        deep = [deep]
    with pytest.raises(FormatError, match=r"nested too deeply \(more than 3 levels"):
        check_depth({"a": [[[1]]]}, what="doc", max_depth=3)
    with pytest.raises(FormatError, match="nested too deeply"):
        check_depth(deep, what="doc")


# --- TOML -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        "x = " + "[" * 50_000 + "]" * 50_000,  # tomllib recursion
        "x = " + "{a=" * 5_000 + "1" + "}" * 5_000,
        ".".join(["a"] * 100) + " = 1",  # dotted keys: no recursion, still deep
        "".join(f"[{'.'.join(['t'] * n)}]\n" for n in (1, 40)),  # table headers
    ],
    ids=["arrays", "inline-tables", "dotted-keys", "table-headers"],
)
def test_deep_toml_is_refused(body: str) -> None:
    with pytest.raises(FormatError, match=r"^init-data nested too deeply \(more than 16 levels\)$"):
        load_toml(body, what="init-data", max_bytes=1 << 20, max_depth=16)


def test_toml_errors_and_caps() -> None:
    assert load_toml('a = "b"\n[t]\nc = [1, [2]]', what="d", max_bytes=100) == {
        "a": "b",
        "t": {"c": [1, [2]]},
    }
    with pytest.raises(FormatError, match="too large"):
        load_toml("a = 1", what="d", max_bytes=4)
    with pytest.raises(FormatError, match=r"^d is not valid TOML \("):
        load_toml('a = "secret-value', what="d", max_bytes=100)
    with pytest.raises(FormatError, match="not UTF-8"):
        load_toml(b"a = '\xff'", what="d", max_bytes=100)


# --- YAML -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "- " * 20_000 + "x",  # block sequences, two bytes a level
        "a: " + "[" * 60_000,  # flow: refused before the scanner reads ahead
        "a: " + "[x, {b: " * 40,
        "a:\n" + "".join(" " * i + f"k{i}:\n" for i in range(1, 60)) + "   x",
    ],
    ids=["block-seq", "flow-run", "flow-mixed", "block-maps"],
)
def test_deep_yaml_is_refused(text: str) -> None:
    with pytest.raises(FormatError, match=r"nested too deeply \(more than 32 levels"):
        load_yaml(text, what="doc", max_bytes=1 << 20)


def test_yaml_aliases_are_refused() -> None:
    laughs = "a: &a [x, x, x]\nb: &b [*a, *a, *a]\nc: [*b, *b, *b]\n"
    with pytest.raises(FormatError, match="aliases are not allowed"):
        load_yaml(laughs, what="doc", max_bytes=1024)


def test_yaml_quotes_and_comments_do_not_count_as_nesting() -> None:
    text = "a: [x]  # " + "[" * 100 + "\nb: '" + "{" * 100 + '\'\nc: "\\"' + "[" * 50 + '"\n'
    text += "d: 'it''s " + "[" * 40 + "'\n"
    assert load_yaml(text, what="doc", max_bytes=1 << 16) == {
        "a": ["x"],
        "b": "{" * 100,
        "c": '"' + "[" * 50,
        "d": "it's " + "[" * 40,
    }


def test_yaml_errors_name_the_document_not_the_content() -> None:
    with pytest.raises(FormatError) as raised:
        load_yaml("a: [unclosed, secret-value", what="policy", max_bytes=1024)
    assert str(raised.value).startswith("policy is not valid YAML")
    assert "secret-value" not in str(raised.value)
    with pytest.raises(FormatError, match="invalid timestamp"):
        load_yaml("t: 2027-13-45T00:00:00Z", what="policy", max_bytes=1024)


@pytest.mark.parametrize("value", [5, 2**64, None, 1.5, ["{}"], {"a": 1}])
def test_a_document_that_is_not_text_is_a_format_error(value: object) -> None:
    # a JSON member that should hold a document (collateral's tcb_info, say) but holds a
    # number: bytes(5) would be five zero bytes, bytes(2**64) an OverflowError
    for load in (load_json, load_toml, load_yaml):
        with pytest.raises(FormatError, match="not a document"):
            load(value, what="member", max_bytes=1024)  # type: ignore[arg-type]
