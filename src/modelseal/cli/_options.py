"""Click options shared by the commands that seal (``seal`` and ``publish``)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

import click

from modelseal.format.header import DEFAULT_SEGMENT_SIZE, MAX_SEGMENT_SIZE, MIN_SEGMENT_SIZE

F = TypeVar("F", bound=Callable[..., Any])

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]?)(?:i?b)?\s*$", re.I)


class SegmentSize(click.ParamType[int]):
    """``4M``, ``4MiB``, ``1048576``: a power of two in 4 KiB..64 MiB."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            n = value
        else:
            m = _SIZE.match(str(value))
            if not m:
                self.fail(f"{value!r} is not a size like 4M or 1048576", param, ctx)
            n = int(m.group(1)) * _UNITS[m.group(2).lower()]
        if not (MIN_SEGMENT_SIZE <= n <= MAX_SEGMENT_SIZE and n & (n - 1) == 0):
            self.fail("segment size must be a power of two from 4K to 64M", param, ctx)
        return n


def sealed_format_options(f: F) -> F:
    """``--format v1|cnap`` and ``--segment-size``: one definition for every sealing command."""
    f = click.option(
        "--segment-size",
        type=SegmentSize(),
        default=DEFAULT_SEGMENT_SIZE,
        envvar="MODELSEAL_SEGMENT_SIZE",
        help="Plaintext bytes per segment: power of two, 4K..64M.  [default: 4M]",
    )(f)
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(["v1", "cnap"]),
        default="v1",
        show_default=True,
        envvar="MODELSEAL_FORMAT",
        help="v1 (segmented, random access) or the CNAP legacy whole-file layout (≤ 4 GiB).",
    )(f)


def hide_names_option(f: F) -> F:
    """``--hide-names``: one definition for ``seal`` and ``publish``."""
    return click.option(
        "--hide-names",
        is_flag=True,
        default=False,
        envvar="MODELSEAL_HIDE_NAMES",
        help="Seal each file of a model directory under an opaque random name, zero-padded, "
        "so the registry sees no file name or exact size (names live in the sealed manifest).",
    )(f)
