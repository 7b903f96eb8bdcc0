"""Run every benchmark module listed in BENCHES (each writes its own section)."""

from __future__ import annotations

import importlib
import sys

BENCHES: list[str] = []


def main() -> int:
    only = sys.argv[1:]
    for name in BENCHES:
        if only and name not in only:
            continue
        importlib.import_module(f"bench.{name}").main()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
