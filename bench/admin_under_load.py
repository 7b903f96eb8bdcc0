"""Admin write latency while 32 RCAR clients release keys nonstop.

Starts ``modelseal kbs serve --insecure-allow-sample`` (SQLite, and PostgreSQL when the
server binaries are installed), lets 32 threads run sample-TEE handshakes and releases
against it, and meanwhile puts 200 new keys (with a policy) one after another through the
admin API. Reports p50/p99/max put latency, put errors, and the releases completed during
the puts. The same driver backs tests/e2e/durability/test_admin_under_load.py, which
asserts zero errors; this module only measures.

Run: ``python -m bench admin_under_load`` (env: ADMIN_BENCH_CLIENTS, ADMIN_BENCH_PUTS,
ADMIN_BENCH_WORKERS); ``python -m bench.admin_under_load`` prints without touching
docs/benchmarks.md.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

from tests.e2e.durability.kbs_driver import KbsConfig, LoadResult, admin_under_load
from tests.pg import PgServer, bin_dir

from bench.report import write_section


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure_one(backend: str, workers: int, clients: int, puts: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="admin-bench-") as tmp:
        pg: PgServer | None = None
        url = None
        if backend == "postgresql":
            bindir = bin_dir()
            if bindir is None:
                return {}
            pg = PgServer(bindir).start()
            url = pg.create_database("admin_bench")
        try:
            result: LoadResult = admin_under_load(
                Path(tmp), clients=clients, puts=puts, config=KbsConfig(workers), database_url=url
            )
        finally:
            if pg is not None:
                pg.stop()
    ms = [1000 * s for s in result.put_seconds] or [float("nan")]
    return {
        "backend": backend,
        "workers": workers,
        "puts_ok": puts - len(result.put_errors),
        "put_errors": len(result.put_errors),
        "p50_ms": statistics.median(ms),
        "p99_ms": _percentile(ms, 0.99),
        "max_ms": max(ms),
        "releases": result.releases,
        "releases_per_s": result.releases / max(result.release_seconds, 1e-9),
        "release_failures": sum(result.release_failures.values()),
        "state_problems": len(result.problems),
    }


def measure() -> tuple[list[dict[str, object]], int, int]:
    clients = int(os.environ.get("ADMIN_BENCH_CLIENTS", "32"))
    puts = int(os.environ.get("ADMIN_BENCH_PUTS", "200"))
    workers = [int(w) for w in os.environ.get("ADMIN_BENCH_WORKERS", "1").split(",")]
    rows = [
        row
        for backend in ("sqlite", "postgresql")
        for w in workers
        if (row := measure_one(backend, w, clients, puts))
    ]
    return rows, clients, puts


def table(rows: list[dict[str, object]]) -> str:
    header = (
        "| backend | workers | puts ok | put errors | put p50 (ms) | put p99 (ms) | put max (ms) "
        "| releases during the puts | releases/s | release failures |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"
    )
    return header + "\n".join(
        f"| {r['backend']} | {r['workers']} | {r['puts_ok']} | {r['put_errors']} "
        f"| {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} | {r['releases']} "
        f"| {r['releases_per_s']:.0f} | {r['release_failures']} |"
        for r in rows
    )


def main() -> None:
    load_before = os.getloadavg()[0]
    rows, clients, puts = measure()
    load_after = os.getloadavg()[0]
    body = f"""Command: `python -m bench admin_under_load` (environment `ADMIN_BENCH_CLIENTS`,
`ADMIN_BENCH_PUTS`, `ADMIN_BENCH_WORKERS`).

`modelseal kbs serve --insecure-allow-sample` on loopback; {clients} threads in the load process
run sample-TEE RCAR handshakes (fresh TEE key each) and release two keys per handshake, nonstop,
while one admin client puts {puts} new keys (each with a policy) one after another. Latency is
per put, measured by the client. {os.cpu_count()}-CPU machine, Python
{platform.python_version()}; 1-minute load average {load_before:.1f} before, {load_after:.1f}
after.

{table(rows)}
"""
    write_section("Admin writes under release load", body)
    print(table(rows))


if __name__ == "__main__":
    rows, _, _ = measure()
    print(table(rows))
    sys.exit(0)
