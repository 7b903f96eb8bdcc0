"""Only ``modelseal.tee`` names TEE kinds: everything else asks the kind registry.

A string constant equal to a registered kind name (``"sample"``, ``"mock-tdx"`` ...) in
code outside ``tee/`` is a special case that a new kind would have to find and edit; the
registry's plugin descriptions say what such code needs (insecure, TCB-checked, test-only,
options, detection). Docstrings are prose and may name kinds.
"""

from __future__ import annotations

import ast
from pathlib import Path

import modelseal
from modelseal.tee import registry

SRC = Path(modelseal.__file__).parent


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the constant nodes that are docstrings (first statement of a body)."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def kind_names_in(source: str, label: str) -> list[str]:
    """``label:line: 'kind'`` for each string constant naming a kind, docstrings excepted."""
    tree = ast.parse(source, filename=label)
    docs = _docstrings(tree)
    kinds = set(registry.KINDS)
    return [
        f"{label}:{node.lineno}: {node.value!r}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value in kinds
        and id(node) not in docs
    ]


def test_no_module_outside_tee_names_a_kind() -> None:
    offenders = [
        hit
        for path in sorted(SRC.rglob("*.py"))
        if path.relative_to(SRC).parts[0] != "tee"
        for hit in kind_names_in(path.read_text(encoding="utf-8"), str(path.relative_to(SRC)))
    ]
    assert offenders == [], "ask modelseal.tee.registry instead:\n" + "\n".join(offenders)


def test_the_check_sees_a_special_case_and_lets_prose_through() -> None:
    for kind in registry.KINDS:
        source = (
            f'"""Mentions {kind} in prose."""\n\n\n'
            f'def f(tee: str) -> bool:\n    """Is it {kind}?"""\n    return tee == {kind!r}\n'
        )
        assert kind_names_in(source, "probe.py") == [f"probe.py:6: {kind!r}"]
