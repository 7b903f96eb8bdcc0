"""The table of environment variables in docs/reference/environment.md, built from the
command line itself.

Every ``MODELSEAL_*`` variable is the ``envvar=`` of a Click option, so walking the command
tree lists them all with the flag each one stands for; the variables the library consults
itself come from :data:`modelseal._internal.environment.CONSULTED`. A test compares the
page with :func:`render`, so a new option cannot ship undocumented. Regenerate with
``python -m modelseal.cli._envdoc docs/reference/environment.md``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import click

from modelseal._internal import environment
from modelseal.cli._tee_options import RetiredOption

BEGIN = "<!-- BEGIN GENERATED: python -m modelseal.cli._envdoc -->"
END = "<!-- END GENERATED -->"


@dataclass(frozen=True, order=True)
class Use:
    """One variable as one command reads it."""

    variable: str
    command: str
    flag: str
    meaning: str


def _commands(
    group: click.Command, path: str, ctx: click.Context
) -> list[tuple[str, click.Command]]:
    found = [(path, group)]
    if isinstance(group, click.Group):
        for name in group.list_commands(ctx):
            sub = group.get_command(ctx, name)
            if sub is not None:
                found += _commands(sub, f"{path} {name}", click.Context(sub, parent=ctx))
    return found


def _meaning(option: click.Option) -> str:
    if isinstance(option, RetiredOption):
        return f"retired: use `{option.replacement_envvar or option.replacement}` (a note says so)"
    text = " ".join((option.help or "").split())
    text = text.split("  [")[0].split(" [default")[0]
    return text.replace("|", "\\|")


def uses() -> list[Use]:
    """Every (variable, command) pair of the command line, sorted."""
    from modelseal.cli import cli

    found: list[Use] = []
    for path, command in _commands(cli, "modelseal", click.Context(cli)):
        for param in command.params:
            if not isinstance(param, click.Option) or not param.envvar:
                continue
            names = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar)
            flag = max(param.opts, key=len)
            found += [
                Use(var, path.removeprefix("modelseal "), flag, _meaning(param)) for var in names
            ]
    return sorted(found)


def _row(variable: str, group: list[Use]) -> str:
    flags = ", ".join(f"`{f}`" for f in sorted({u.flag for u in group}))
    commands = ", ".join(f"`{u.command}`" for u in group)
    by_meaning: dict[str, list[str]] = {}
    for u in group:
        by_meaning.setdefault(u.meaning, []).append(f"`{u.command}`")
    if len(by_meaning) == 1:
        meaning = next(iter(by_meaning))
    else:
        meaning = "<br>".join(f"{', '.join(cmds)}: {text}" for text, cmds in by_meaning.items())
    return f"| `{variable}` | {flags} | {commands} | {meaning} |"


def render() -> str:
    """The generated part of docs/reference/environment.md."""
    by_variable: dict[str, list[Use]] = {}
    for use in uses():
        by_variable.setdefault(use.variable, []).append(use)
    lines = [
        BEGIN,
        "",
        "| variable | flag | commands | meaning |",
        "| --- | --- | --- | --- |",
    ]
    lines += [_row(variable, group) for variable, group in by_variable.items()]
    lines += [
        "",
        "Read by the library itself (a precedence defined elsewhere, or an internal hand-off):",
        "",
        "| variable | why |",
        "| --- | --- |",
    ]
    lines += [f"| `{name}` | {why} |" for name, why in sorted(environment.CONSULTED.items())]
    lines += ["", END]
    return "\n".join(lines) + "\n"


def splice(page: str) -> str:
    """``page`` with its generated block replaced by :func:`render`."""
    head, _, rest = page.partition(BEGIN)
    _, _, tail = rest.partition(END + "\n")
    return head + render() + tail


def main(argv: list[str]) -> int:
    for name in argv:
        path = Path(name)
        path.write_text(splice(path.read_text(encoding="utf-8")), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
