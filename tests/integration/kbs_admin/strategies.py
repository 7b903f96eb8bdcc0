"""Hypothesis strategies shared by the KBS HTTP robustness tests."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

#: Any JSON value, small: what a confused or hostile client may put in any member.
json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
    max_leaves=12,
)


def bodies(members: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[bytes]:
    """Request bodies: JSON objects from ``members``, any JSON value, or raw bytes."""
    import json

    return (
        members.map(json.dumps).map(str.encode)
        | json_values.map(json.dumps).map(str.encode)
        | st.binary(max_size=300)
    )
