"""The repository stands alone: no file points at a document that is not in it.

Comments, docstrings and docs once cited the notes the project was planned from (a design
document, reference studies, the numbered tasks it was built in) by relative paths outside
the repository or by names only their authors knew. A reader of a fresh clone has none of
them, so each such pointer must name a public source (an upstream repository and file, a
specification) or an in-repository document instead.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: where pointers could appear: the code, its tests, benches, deployment and documentation
TREES = ("src", "tests", "bench", "deploy", "docs", "README.md", "Makefile", "pyproject.toml")
#: pointers to documents outside the repository, and names of the planning notes
FORBIDDEN = re.compile(
    r"\.\./shared\b|shared/(?:reference|vectors)\b|\bDESIGN(?:\.md| §)|\bCONTRACTS\b"
    r"|\b(?:cnap-ccnp|trustee|deps|peers|aesthetics)\.md\b|\bseed \d{3}\b"
    r"|\b[Ss]eam \d\b|\b[Ii]ssue #?\d+\b"
)
SUFFIXES = {".py", ".md", ".toml", ".yaml", ".yml", ".txt", ".cfg", ".sh", ".rst", ""}


def _tracked_text_files() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "-z", "--", *TREES],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    names = [n for n in out.decode().split("\0") if n]
    return [ROOT / n for n in names if Path(n).suffix in SUFFIXES and (ROOT / n).is_file()]


def test_no_pointer_leaves_the_repository() -> None:
    files = _tracked_text_files()
    assert len(files) > 200  # the walk found the tree
    found = []
    for path in files:
        if path == Path(__file__).resolve():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if FORBIDDEN.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}")
    assert not found, "pointers to documents outside the repository:\n" + "\n".join(found)
