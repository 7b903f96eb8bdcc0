"""The environment is read one way: Click options (``envvar=``) for the command line,
``LoaderSettings.from_env`` for the SDK, both through ``modelseal._internal.environment``.

A module that reads ``os.environ`` (or ``os.getenv`` ...) itself is a second, undocumented
configuration channel: a variable that changes the library's behaviour without appearing in
any ``--help`` or in docs/reference/environment.md. Only the helper module may touch it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import modelseal

SRC = Path(modelseal.__file__).parent
ALLOWED = {Path("_internal/environment.py")}
_NAMES = {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"}


def environment_reads_in(source: str, label: str) -> list[str]:
    """``label:line: what`` for each use of the process environment outside the helper."""
    tree = ast.parse(source, filename=label)
    hits = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in _NAMES
            and isinstance(node.value, ast.Name)
            and node.value.id in {"os", "posix"}
        ):
            hits.append(f"{label}:{node.lineno}: {node.value.id}.{node.attr}")
        elif isinstance(node, ast.ImportFrom) and node.module in {"os", "posix"}:
            hits += [
                f"{label}:{node.lineno}: from {node.module} import {alias.name}"
                for alias in node.names
                if alias.name in _NAMES or alias.name == "*"
            ]
    return hits


def test_only_the_environment_module_reads_the_environment() -> None:
    offenders = [
        hit
        for path in sorted(SRC.rglob("*.py"))
        if path.relative_to(SRC) not in ALLOWED
        for hit in environment_reads_in(path.read_text(encoding="utf-8"), str(path))
    ]
    assert offenders == [], (
        "take the value as a parameter (the CLI reads MODELSEAL_* through Click's envvar=); "
        "a variable with a precedence defined elsewhere goes through "
        "modelseal._internal.environment:\n" + "\n".join(offenders)
    )


def test_the_check_sees_every_spelling() -> None:
    source = (
        "import os\nfrom os import getenv, environ as e\n"
        "a = os.environ.get('X')\nb = os.getenv('X')\nos.putenv('X', '1')\n"
        "c = dict(os.environ)\n"
    )
    hits = environment_reads_in(source, "m.py")
    assert len(hits) == 6, hits
    assert environment_reads_in("import os\nx = os.path.join('a', 'b')\n", "m.py") == []


def test_the_allowed_module_exists_and_lists_what_it_consults() -> None:
    from modelseal._internal import environment

    for allowed in ALLOWED:
        assert (SRC / allowed).is_file()
    assert "MODELSEAL_MOCK_TDX_DIR" not in environment.CONSULTED
    with pytest.raises(KeyError, match="explicitly"):
        environment.variable("MODELSEAL_MOCK_TDX_DIR")
