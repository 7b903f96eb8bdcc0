"""docs/reference/environment.md lists exactly the variables the command line reads."""

from __future__ import annotations

from pathlib import Path

from modelseal._internal import environment
from modelseal.cli import _envdoc
from modelseal.loader.settings import ENV_VARS

PAGE = Path(__file__).resolve().parents[3] / "docs" / "reference" / "environment.md"


def test_the_page_matches_the_command_line() -> None:
    page = PAGE.read_text(encoding="utf-8")
    assert _envdoc.splice(page) == page, (
        "docs/reference/environment.md is stale: "
        "python -m modelseal.cli._envdoc docs/reference/environment.md"
    )


def test_every_variable_and_retired_spelling_is_listed() -> None:
    rendered = _envdoc.render()
    variables = {use.variable for use in _envdoc.uses()}
    assert set(ENV_VARS) <= variables  # what LoaderSettings.from_env reads is on the page
    assert {"MODELSEAL_KBS", "MODELSEAL_KBS_CACERT", "MODELSEAL_CA"} <= variables
    assert "retired: use `MODELSEAL_KBS_URL`" in rendered
    for name in environment.CONSULTED:
        assert f"| `{name}` |" in rendered
    # every row names a command that reads it
    assert all(use.command for use in _envdoc.uses())


def test_splice_replaces_only_the_generated_block() -> None:
    page = f"intro\n\n{_envdoc.BEGIN}\nold rows\n{_envdoc.END}\n\nafter\n"
    spliced = _envdoc.splice(page)
    assert spliced.startswith("intro\n\n")
    assert spliced.endswith("\nafter\n")
    assert "old rows" not in spliced
    assert "`MODELSEAL_KBS_URL`" in spliced
