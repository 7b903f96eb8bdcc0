"""``modelseal load``'s model, TEE, KBS and key options, reused by ``mount`` and ``volume``.

The commands share the option *objects*, so every flag, its ``MODELSEAL_*`` variable, its
help and any option a later change adds to ``load`` (a key source, an attester input) work
the same in each, with no second definition to keep in step.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import click

from modelseal.cli._tee_options import attester_options
from modelseal.cli.load import load

#: ``load`` options that only describe its destination directory or its output
DESTINATION_ONLY = frozenset({"dest", "allow_disk", "file_mode", "group", "quiet"})


def share_loader_options(
    command: click.Command,
    *,
    exclude: Iterable[str] = (),
    help_texts: Mapping[str, str] | None = None,
) -> None:
    """Put ``load``'s options (less the destination's and ``exclude``) first in ``command``.

    ``help_texts`` rewords the help of options whose meaning differs in ``command`` (what
    "the load" does is not what a mount or a volume does): those options are copies with
    only their help changed, so flag, variable, type and default stay ``load``'s."""
    skip = DESTINATION_ONLY | set(exclude)
    texts = dict(help_texts or {})
    shared: list[click.Parameter] = []
    for param in load.params:
        if param.name in skip:
            continue
        if param.name in texts and isinstance(param, click.Option):
            param = copy.copy(param)
            param.help = texts.pop(param.name)
        shared.append(param)
    if texts:
        raise RuntimeError(f"help for options {sorted(texts)} that {command.name} does not share")
    command.params[0:0] = shared


def loader_overrides(values: dict[str, Any]) -> dict[str, Any]:
    """The shared options' values as ``LoaderSettings.from_options`` values: attester inputs are
    paths, as ``load`` passes them."""
    paths = {spec.name for spec in attester_options()}
    return {
        name: Path(value) if name in paths and isinstance(value, str) else value
        for name, value in values.items()
    }
