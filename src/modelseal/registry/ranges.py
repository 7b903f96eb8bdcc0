"""HTTP ``Range`` / ``If-*`` header handling for blob downloads (RFC 9110 §13, §14).

Only single byte ranges are served (the loader asks for one segment run at a time); a
multi-range request gets the whole blob, which RFC 9110 allows. A malformed or unsatisfiable
range gets 416 rather than silently the whole (possibly huge) blob.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["RangeNotSatisfiable", "etag_matches", "parse_range"]

_MAX_HEADER: Final = 256
_SPEC = re.compile(r"(\d{1,19})?-(\d{1,19})?")


class RangeNotSatisfiable(Exception):
    """The Range header is malformed or selects no byte of the blob (-> 416)."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end_exclusive)`` for one satisfiable byte range, ``None`` for the whole blob.

    ``bytes=a-b``, ``bytes=a-`` and suffix ``bytes=-n`` are served; other units and multiple
    ranges mean the whole blob; anything else raises :class:`RangeNotSatisfiable`.
    """
    if header is None:
        return None
    if len(header) > _MAX_HEADER:
        raise RangeNotSatisfiable
    unit, sep, specs = header.strip().partition("=")
    if not sep:
        raise RangeNotSatisfiable
    if unit.strip().lower() != "bytes":
        return None
    parts = [p.strip() for p in specs.split(",")]
    if len(parts) != 1:
        return None
    m = _SPEC.fullmatch(parts[0])
    if m is None or (m.group(1) is None and m.group(2) is None):
        raise RangeNotSatisfiable
    first, last = m.group(1), m.group(2)
    if first is None:
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable
        return max(0, size - suffix), size
    start = int(first)
    if last is not None and int(last) < start:
        raise RangeNotSatisfiable
    if start >= size:
        raise RangeNotSatisfiable
    end = size if last is None else min(size, int(last) + 1)
    return start, end


def _tags(header: str) -> list[str]:
    return [t.strip() for t in header.split(",") if t.strip()]


def etag_matches(header: str, etag: str, *, weak: bool) -> bool:
    """Whether ``etag`` (strong, quoted) is in an ``If-Match``/``If-None-Match`` list.

    ``weak=True`` is the weak comparison of ``If-None-Match`` (``W/"x"`` matches ``"x"``);
    ``If-Match`` and ``If-Range`` need the strong one.
    """
    for tag in _tags(header):
        if tag == "*":
            return True
        if tag.startswith("W/"):
            if weak and tag[2:] == etag:
                return True
            continue
        if tag == etag:
            return True
    return False
