"""Run every benchmark module (each rewrites its own section of docs/benchmarks.md).

Usage: ``python -m bench [name ...]`` with names from BENCHES.
"""

from __future__ import annotations

import importlib
import sys

BENCHES = [
    "format_bench",
    "kbs_bench",
    "loader_bench",
    "evidence_bench",
    "admin_under_load",
    "bounded_bench",
    "registry_bench",
    "jose_bench",
    "nvidia_bench",
    "ratls_bench",
    "replicas_bench",
    "mount_bench",
    "observe_bench",
]


def main() -> int:
    only = sys.argv[1:]
    for name in BENCHES:
        if only and name not in only:
            continue
        try:
            module = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"bench.{name}":
                print(f"bench: {name} not present, skipped")
                continue
            raise
        module.main()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
