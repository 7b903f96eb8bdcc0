"""Rewrite one section of docs/benchmarks.md so each benchmark owns its own section."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def write_section(title: str, body: str) -> None:
    """Replace the body under ``## {title}`` (up to the next ``## ``) with ``body``."""
    text = DOC.read_text(encoding="utf-8")
    pattern = re.compile(rf"(^## {re.escape(title)}\n)(.*?)(?=^## |\Z)", re.S | re.M)
    replacement = f"## {title}\n\n{body.strip()}\n\n"
    if pattern.search(text):
        text = pattern.sub(lambda _m: replacement, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + replacement
    DOC.write_text(text.rstrip("\n") + "\n", encoding="utf-8")
