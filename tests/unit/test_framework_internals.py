"""No module of the package reaches into the HTTP frameworks' internals.

uvicorn's protocol classes and the frameworks' underscore modules change shape between
releases without notice; the servers use uvicorn, Starlette and FastAPI through their
public interfaces only, so an upgrade within the pinned ranges cannot break them quietly.
"""

from __future__ import annotations

import ast
from pathlib import Path

import modelseal

FRAMEWORKS = ("uvicorn", "starlette", "fastapi")
#: public-looking modules that are internals all the same
INTERNAL = ("uvicorn.protocols",)


def _internal(module: str) -> bool:
    parts = module.split(".")
    if parts[0] not in FRAMEWORKS:
        return False
    if any(module == m or module.startswith(m + ".") for m in INTERNAL):
        return True
    return any(p.startswith("_") for p in parts[1:])


def _imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append(node.module)
            found += [f"{node.module}.{alias.name}" for alias in node.names]
    return found


def test_the_check_recognises_internals() -> None:
    assert _internal("uvicorn.protocols.http.httptools_impl")
    assert _internal("uvicorn.protocols")
    assert _internal("starlette._utils")
    assert not _internal("uvicorn")
    assert not _internal("starlette.responses.StreamingResponse")
    assert not _internal("modelseal._private")


def test_no_module_imports_framework_internals() -> None:
    root = Path(modelseal.__file__).resolve().parent
    offenders = [
        f"{path.relative_to(root.parent)}: {module}"
        for path in sorted(root.rglob("*.py"))
        for module in _imports(path)
        if _internal(module)
    ]
    assert offenders == []
