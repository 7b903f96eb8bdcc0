"""Release-policy documents: strict validation, normalization, canonical digest."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelseal.policy import (
    TCB_STATUSES,
    TEE_KINDS,
    PolicyInvalid,
    ReleasePolicy,
    parse_policy,
    parse_policy_text,
)

BASE: dict[str, Any] = {"apiVersion": "modelseal/v1", "kind": "ReleasePolicy", "tee": ["tdx"]}
MRTD = "AB" * 48

FULL_YAML = f"""
apiVersion: modelseal/v1
kind: ReleasePolicy
tee: [tdx, snp]
debug: false
tcb_status: [UpToDate, SWHardeningNeeded]
measurements:
  - {{mr_td: "{MRTD}", rtmr1: "{"01" * 48}"}}
  - {{measurement: "{"cd" * 48}"}}
init_data: {{namespace: prod}}
model_digest: "sha256:{"EF" * 32}"
not_after: "2027-01-01T00:00:00Z"
"""


def test_defaults() -> None:
    p = parse_policy(BASE)
    assert p.debug is False
    assert p.tcb_status == ("UpToDate",)
    assert p.measurements is None
    assert p.init_data == {}
    assert p.to_document() == {**BASE, "debug": False, "tcb_status": ["UpToDate"], "init_data": {}}


def test_full_yaml_normalizes() -> None:
    p = parse_policy_text(FULL_YAML)
    assert p.tee == ("tdx", "snp")
    assert p.measurements is not None
    assert p.measurements[0]["mr_td"] == MRTD.lower()
    assert p.model_digest == "sha256:" + "ef" * 32
    assert p.not_after == datetime(2027, 1, 1, tzinfo=UTC)
    doc = p.to_document()
    assert doc["not_after"] == "2027-01-01T00:00:00Z"
    # the normalized document round-trips through JSON to the same policy and digest
    again = parse_policy_text(json.dumps(doc))
    assert again == p
    assert again.digest == p.digest
    assert p.digest.startswith("sha256:")
    assert len(p.digest) == 7 + 64


def test_unquoted_yaml_timestamp_and_offsets() -> None:
    text = (
        "apiVersion: modelseal/v1\nkind: ReleasePolicy\ntee: [tdx]\n"
        "not_after: 2027-01-01T02:00:00+02:00\n"
    )
    p = parse_policy_text(text)
    assert p.to_document()["not_after"] == "2027-01-01T00:00:00Z"


def test_digest_ignores_key_order_and_hex_case() -> None:
    a = parse_policy({**BASE, "measurements": [{"mr_td": MRTD, "rtmr0": "00" * 48}]})
    b = parse_policy(
        {
            "tee": ["tdx"],
            "measurements": [{"rtmr0": "00" * 48, "mr_td": MRTD.lower()}],
            "kind": "ReleasePolicy",
            "apiVersion": "modelseal/v1",
        }
    )
    assert a.digest == b.digest
    assert parse_policy({**BASE, "debug": True}).digest != a.digest


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"teee": ["tdx"]}, "unknown field"),
        ({"tee": []}, "tee"),
        ({"tee": ["tdx", "tdx"]}, "unique"),
        ({"tee": ["nitro"]}, "tee"),
        ({"tee": "tdx"}, "tee"),
        ({"debug": "false"}, "debug"),
        ({"debug": 0}, "debug"),
        ({"tcb_status": ["uptodate"]}, "tcb_status"),
        ({"tcb_status": ["Revoked"]}, "tcb_status"),
        ({"tcb_status": []}, "tcb_status"),
        ({"measurements": []}, "measurements"),
        ({"measurements": [{}]}, "empty"),
        ({"measurements": [{"mr_td": "xyz"}]}, "hex"),
        ({"measurements": [{"mr_td": "abc"}]}, "hex"),
        ({"measurements": [{"mr_td": 1234}]}, "string"),
        ({"measurements": [{"MR TD": "00"}]}, "name"),
        ({"measurements": [{"mr_td": "00", "MR_TD": "00"}]}, "twice"),
        ({"init_data": {"k": 1}}, "init_data"),
        ({"init_data": {"bad key": "v"}}, "init_data"),
        ({"model_digest": "sha256:abc"}, "model_digest"),
        ({"model_digest": "md5:" + "0" * 32}, "model_digest"),
        ({"not_after": "2027-01-01T00:00:00"}, "time zone"),
        ({"not_after": "tomorrow"}, "not_after"),
        ({"apiVersion": "modelseal/v2"}, "apiVersion"),
        ({"kind": "Policy"}, "kind"),
    ],
)
def test_invalid_documents(patch: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyInvalid, match=message):
        parse_policy({**BASE, **patch})


@pytest.mark.parametrize("missing", ["apiVersion", "kind", "tee"])
def test_required_fields(missing: str) -> None:
    doc = {k: v for k, v in BASE.items() if k != missing}
    with pytest.raises(PolicyInvalid, match=missing):
        parse_policy(doc)


@pytest.mark.parametrize(
    "text",
    [b"", b"[1, 2]", b"{not json", b"key: [unclosed", b"\xff\xfe", b"- a\n- b\n", b"42"],
)
def test_unparseable_text(text: bytes) -> None:
    with pytest.raises(PolicyInvalid):
        parse_policy_text(text)


def test_size_limit() -> None:
    with pytest.raises(PolicyInvalid, match="at most"):
        parse_policy_text(b"#" * (64 * 1024 + 1))


def test_yaml_cannot_construct_python_objects() -> None:
    with pytest.raises(PolicyInvalid):
        parse_policy_text("!!python/object/apply:os.system ['true']")


def test_frozen() -> None:
    p = parse_policy(BASE)
    with pytest.raises(ValueError, match="frozen"):
        p.debug = True  # type: ignore[misc]


hexes = st.binary(min_size=1, max_size=64).map(bytes.hex)
names = st.from_regex(r"[a-z0-9][a-z0-9_]{0,10}", fullmatch=True)
documents = st.fixed_dictionaries(
    {
        "apiVersion": st.just("modelseal/v1"),
        "kind": st.just("ReleasePolicy"),
        "tee": st.lists(st.sampled_from(TEE_KINDS), min_size=1, unique=True),
    },
    optional={
        "debug": st.booleans(),
        "tcb_status": st.lists(st.sampled_from(TCB_STATUSES), min_size=1, unique=True),
        "measurements": st.lists(
            st.dictionaries(names, hexes.map(str.upper), min_size=1, max_size=4),
            min_size=1,
            max_size=4,
        ),
        "init_data": st.dictionaries(names, st.text(max_size=20), max_size=3),
        "model_digest": st.binary(min_size=32, max_size=32).map(lambda b: "sha256:" + b.hex()),
    },
)


@settings(max_examples=50, deadline=None)
@given(documents)
def test_valid_documents_round_trip(doc: dict[str, Any]) -> None:
    p = parse_policy(doc)
    again = parse_policy(json.loads(json.dumps(p.to_document())))
    assert again == p
    assert again.canonical() == p.canonical()
    assert isinstance(p, ReleasePolicy)


@settings(max_examples=50, deadline=None)
@given(documents, st.text(min_size=1, max_size=12), st.integers() | st.text() | st.none())
def test_any_unknown_field_is_rejected(doc: dict[str, Any], name: str, value: Any) -> None:
    if name in ReleasePolicy.model_fields or name in ("apiVersion",):
        return
    with pytest.raises(PolicyInvalid):
        parse_policy({**doc, name: value})


@settings(max_examples=50, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
        max_leaves=20,
    )
)
def test_arbitrary_json_never_crashes(value: Any) -> None:
    with contextlib.suppress(PolicyInvalid):
        parse_policy_text(json.dumps(value))


@pytest.mark.parametrize(
    "when", ["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-23:59"]
)
def test_not_after_outside_the_utc_range_is_a_policy_error(when: str) -> None:
    # astimezone(UTC) overflows here; that must be a validation error, not a crash (500).
    with pytest.raises(PolicyInvalid, match="not_after"):
        parse_policy({**BASE, "not_after": when})
    with pytest.raises(PolicyInvalid, match="not_after"):
        parse_policy_text(
            f"apiVersion: modelseal/v1\nkind: ReleasePolicy\ntee: [tdx]\nnot_after: {when}\n"
        )


def test_yaml_aliases_are_refused_billion_laughs() -> None:
    # 9 levels of 9 aliases: ~387 million leaves once expanded; refused before validation.
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 9):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    lines += ["apiVersion: modelseal/v1", "kind: ReleasePolicy", "tee: *l8"]
    with pytest.raises(PolicyInvalid, match="aliases are not allowed"):
        parse_policy_text("\n".join(lines))


def test_yaml_alias_amplified_measurements_are_refused() -> None:
    # One 2,500-entry mapping aliased 1,024 times fits in 32 KiB; expanded, the validator
    # would check 2.5 million measurements (seconds of CPU per request).
    entries = "".join(f"  m{i}: ab\n" for i in range(2500))
    text = (
        "apiVersion: modelseal/v1\nkind: ReleasePolicy\ntee: [tdx]\n"
        f"x: &big\n{entries}measurements: [" + ", ".join(["*big"] * 1024) + "]\n"
    )
    assert len(text) < 64 * 1024
    with pytest.raises(PolicyInvalid, match="aliases"):
        parse_policy_text(text)


@pytest.mark.parametrize("depth", [100, 1500])
@pytest.mark.parametrize("form", ["json", "yaml"])
def test_deep_nesting_is_a_policy_error(depth: int, form: str) -> None:
    nested = "[" * depth + "]" * depth
    text = (
        f'{{"apiVersion": "modelseal/v1", "kind": "ReleasePolicy", "tee": {nested}}}'
        if form == "json"
        else f"apiVersion: modelseal/v1\nkind: ReleasePolicy\ntee: {nested}\n"
    )
    with pytest.raises(PolicyInvalid):
        parse_policy_text(text)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None)
@given(documents, st.data())
def test_any_wrong_value_at_any_level_is_a_policy_error(doc: dict[str, Any], data: Any) -> None:
    """Replace one value at any nesting level (field, list entry, map value or key) with
    arbitrary JSON: the result is a valid policy or PolicyInvalid, never another error."""
    paths: list[tuple[Any, ...]] = []

    def walk(node: Any, path: tuple[Any, ...]) -> None:
        paths.append(path)
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, (*path, k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, (*path, i))

    walk(doc, ())
    path = data.draw(st.sampled_from(paths[1:]))
    replacement = data.draw(json_values)
    mutated = json.loads(json.dumps(doc))
    parent = mutated
    for part in path[:-1]:
        parent = parent[part]
    if isinstance(parent, dict) and data.draw(st.booleans()):
        parent[data.draw(st.text(min_size=1, max_size=8))] = parent.pop(path[-1])
    else:
        parent[path[-1]] = replacement
    # The same document through the JSON parser and (after a comment line) the YAML one.
    for text in (json.dumps(mutated), "# yaml\n" + json.dumps(mutated)):
        with contextlib.suppress(PolicyInvalid):
            parse_policy_text(text)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not_after: 2027-13-45T00:00:00Z", "invalid timestamp"),
        ("not_after: 0000-01-01T00:00:00Z", "invalid timestamp"),
        ("not_after: 1767225600", "RFC 3339"),
        ("not_after: 253402300800", "RFC 3339"),
        ("not_after: 1.5e9", "RFC 3339"),
        ("not_after: true", "RFC 3339"),
        ("not_after: [2027-01-01T00:00:00Z]", "RFC 3339"),
    ],
)
def test_not_after_must_be_a_real_timestamp_with_a_zone(line: str, message: str) -> None:
    """YAML builds out-of-range timestamps without checks, and pydantic would read a
    number as seconds or milliseconds by magnitude: both are policy errors."""
    text = f"apiVersion: modelseal/v1\nkind: ReleasePolicy\ntee: [tdx]\n{line}\n"
    with pytest.raises(PolicyInvalid, match=message):
        parse_policy_text(text)
    value = line.split(": ", 1)[1]
    with pytest.raises(PolicyInvalid):
        parse_policy({**BASE, "not_after": value})  # the same value as JSON text


yaml_scalars = st.one_of(
    st.from_regex(
        r"\d{4}-\d{1,2}-\d{1,2}([Tt ]\d{1,2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})?)?",
        fullmatch=True,
    ),
    st.from_regex(r"[-+]?(\d+|\.inf|\.nan|0x[0-9a-f]+|0o[0-7]+|\d+e\d+)", fullmatch=True),
    st.sampled_from(["~", "null", "yes", "no", "on", "!!binary aGk=", "!!set {a}", "&a x", "*a"]),
    st.text(max_size=20),
)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                [
                    "tee",
                    "debug",
                    "tcb_status",
                    "measurements",
                    "init_data",
                    "model_digest",
                    "not_after",
                    "x",
                ]
            ),
            yaml_scalars,
            st.sampled_from(["{v}", "[{v}]", "{{k: {v}}}", "[{{mr_td: {v}}}]"]),
        ),
        max_size=5,
    )
)
def test_any_yaml_scalar_anywhere_is_a_policy_error_or_valid(
    lines: list[tuple[str, str, str]],
) -> None:
    """YAML's implicit typing (timestamps, octal/hex ints, booleans, tags) in any member
    never escapes as anything but PolicyInvalid."""
    text = "apiVersion: modelseal/v1\nkind: ReleasePolicy\n" + "".join(
        f"{name}: {shape.format(v=value)}\n" for name, value, shape in lines
    )
    with contextlib.suppress(PolicyInvalid):
        parse_policy_text(text)


def test_yaml_flow_nesting_is_capped_before_parsing() -> None:
    with pytest.raises(PolicyInvalid, match=r"nested too deeply \(more than 32 levels\)"):
        parse_policy_text("tee: " + "[" * 60000)
    with pytest.raises(PolicyInvalid, match=r"nested too deeply \(more than 32 levels\)"):
        parse_policy_text("tee: " + "[a, {b: " * 40)


def test_brackets_in_quoted_values_and_comments_do_not_count_as_nesting() -> None:
    text = (
        "apiVersion: modelseal/v1\nkind: ReleasePolicy\ntee: [tdx]  # " + "[" * 100 + "\n"
        f"init_data: {{a: \"{'[' * 100}\", b: '{'{' * 100}', c: 'it''s {'[' * 40}'}}\n"
    )
    assert parse_policy_text(text).init_data == {
        "a": "[" * 100,
        "b": "{" * 100,
        "c": "it's " + "[" * 40,
    }
