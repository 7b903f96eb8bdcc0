"""Range / conditional header parsing (RFC 9110)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelseal.registry.ranges import RangeNotSatisfiable, etag_matches, parse_range


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 10, None),
        ("bytes=0-0", 10, (0, 1)),
        ("bytes=0-9", 10, (0, 10)),
        ("bytes=2-", 10, (2, 10)),
        ("bytes=3-100", 10, (3, 10)),
        ("bytes=-3", 10, (7, 10)),
        ("bytes=-100", 10, (0, 10)),
        ("bytes=9-9", 10, (9, 10)),
        ("Bytes = 1-2", 10, (1, 3)),
        ("bytes= 1-2 ", 10, (1, 3)),
        ("items=0-1", 10, None),
        ("bytes=0-1,3-4", 10, None),
    ],
)
def test_parse_range(header: str | None, size: int, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(
    ("header", "size"),
    [
        ("bytes=10-", 10),
        ("bytes=10-20", 10),
        ("bytes=-0", 10),
        ("bytes=-1", 0),
        ("bytes=0-0", 0),
        ("bytes=5-4", 10),
        ("bytes=abc", 10),
        ("bytes=-", 10),
        ("bytes=+1-2", 10),
        ("bytes=1-2-3", 10),
        ("bytes", 10),
        ("bytes=" + "9" * 30 + "-", 10),
        ("bytes=0-" + "1" * 300, 10),
    ],
)
def test_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, size)


@given(st.text(max_size=60), st.integers(min_value=0, max_value=1 << 40))
def test_parse_never_crashes_and_stays_in_bounds(header: str, size: int) -> None:
    try:
        span = parse_range(header, size)
    except RangeNotSatisfiable:
        return
    if span is not None:
        start, end = span
        assert 0 <= start < end <= size


def test_etag_matching() -> None:
    tag = '"abc"'
    assert etag_matches('"abc"', tag, weak=False)
    assert etag_matches('"x", "abc"', tag, weak=False)
    assert etag_matches("*", tag, weak=False)
    assert not etag_matches('W/"abc"', tag, weak=False)
    assert etag_matches('W/"abc"', tag, weak=True)
    assert not etag_matches('"abd"', tag, weak=True)
