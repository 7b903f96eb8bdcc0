"""``modelseal load``'s model, TEE, KBS and key options, reused by ``mount`` and ``volume``.

The commands share the option *objects*, so every flag, its ``MODELSEAL_*`` variable, its
help and any option a later change adds to ``load`` (a key source, an attester input) work
the same in each, with no second definition to keep in step.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click

from modelseal.cli._tee_options import attester_options
from modelseal.cli.load import load

#: ``load`` options that only describe its destination directory or its output
DESTINATION_ONLY = frozenset({"dest", "allow_disk", "file_mode", "group", "quiet"})


def share_loader_options(command: click.Command, *, exclude: Iterable[str] = ()) -> None:
    """Put ``load``'s options (less the destination's and ``exclude``) first in ``command``."""
    skip = DESTINATION_ONLY | set(exclude)
    command.params[0:0] = [p for p in load.params if p.name not in skip]


def loader_overrides(values: dict[str, Any]) -> dict[str, Any]:
    """The shared options' values as ``LoaderSettings.from_options`` values: attester inputs are
    paths, as ``load`` passes them."""
    paths = {spec.name for spec in attester_options()}
    return {
        name: Path(value) if name in paths and isinstance(value, str) else value
        for name, value in values.items()
    }
