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
