"""Server CPU per full RCAR release of two source trees, in interleaved A/B runs.

Wall-clock releases/s on a shared machine moves by tens of percent from one run to the next;
the KBS's CPU time per release moves much less, and interleaving the two trees (A B, B A, A
B, ...) spreads whatever the other jobs do over both. Each run starts ``modelseal kbs
serve`` (one worker unless told otherwise, SQLite) from one tree (``PYTHONPATH``), registers
a key, warms up, then drives full releases (auth + attest + resource, fresh session, key and
evidence each) from ``KBS_AB_CLIENTS`` keep-alive clients for ``KBS_AB_SECONDS`` and divides
the server process tree's user + system CPU by the releases served. Every released key is
decrypted and checked after the window (``kbs_bench``'s load generator).

Run: ``KBS_AB_A=/path/a/src KBS_AB_B=/path/b/src python -m bench.kbs_ab`` (optional env:
KBS_AB_PAIRS (default 5), KBS_AB_SECONDS (default 6), KBS_AB_CLIENTS (default 32),
KBS_AB_WORKERS (default 1), KBS_AB_TEE (``sample`` or ``mock-tdx``, default ``sample``)).
Not part of ``make bench``: it compares trees, it does not describe one.
"""

from __future__ import annotations

import os
import statistics
import tempfile
from pathlib import Path

from bench.kbs_bench import (
    guest_for,
    process_tree_cpu,
    register_key,
    run_async,
    run_level,
    start_server,
)


def one_run(
    src: str, tee: str, clients: int, seconds: float, workers: int = 1
) -> tuple[float, float]:
    """(server CPU ms per release, releases/s) of one run of the tree at ``src``."""
    from modelseal.tee.mock_tdx.ca import MockTdxCA

    env = {**os.environ, "PYTHONPATH": src}
    with tempfile.TemporaryDirectory(prefix="kbs-ab-") as tmp:
        data_dir = Path(tmp) / "kbs"
        ca = MockTdxCA.create(Path(tmp) / "ca")
        proc, url = start_server(
            data_dir, workers, "--mock-tdx-root", str(ca.root_pem_path), env=env
        )
        try:
            register_key(data_dir, url, env)
            guest = guest_for(tee, ca.directory, keys=256)
            run_async(run_level(url, guest, clients, 1.0))  # warm-up: caches, memos
            cpu0 = process_tree_cpu(proc.pid)
            result = run_async(run_level(url, guest, clients, seconds))
            cpu1 = process_tree_cpu(proc.pid)
        finally:
            proc.terminate()
            proc.wait(10)
    if result["errors"]:
        raise RuntimeError(f"{src}: {result['errors']:.0f} failed releases")
    used = sum(cpu1[p] - cpu0.get(p, 0.0) for p in cpu1)
    return 1000 * used / max(1.0, result["releases"]), result["rate"]


def main() -> None:
    trees = {"A": os.environ["KBS_AB_A"], "B": os.environ["KBS_AB_B"]}
    pairs = int(os.environ.get("KBS_AB_PAIRS", "5"))
    seconds = float(os.environ.get("KBS_AB_SECONDS", "6"))
    clients = int(os.environ.get("KBS_AB_CLIENTS", "32"))
    tee = os.environ.get("KBS_AB_TEE", "sample")
    workers = int(os.environ.get("KBS_AB_WORKERS", "1"))
    cpu: dict[str, list[float]] = {"A": [], "B": []}
    rate: dict[str, list[float]] = {"A": [], "B": []}
    for i in range(pairs):
        for name in ("A", "B") if i % 2 == 0 else ("B", "A"):
            ms, per_s = one_run(trees[name], tee, clients, seconds, workers)
            cpu[name].append(ms)
            rate[name].append(per_s)
            print(f"pair {i + 1} {name}: {ms:.3f} ms server CPU/release, {per_s:.0f} releases/s")
    ratios = [b / a for a, b in zip(cpu["A"], cpu["B"], strict=True)]
    print(
        f"\n{tee}, {clients} clients, {workers} worker(s), {seconds:.0f} s per run, "
        f"{pairs} interleaved pairs"
    )
    for name in ("A", "B"):
        print(
            f"{name} ({trees[name]}): server CPU/release median {statistics.median(cpu[name]):.3f}"
            f" ms (min {min(cpu[name]):.3f}, max {max(cpu[name]):.3f}); releases/s median "
            f"{statistics.median(rate[name]):.0f} (min {min(rate[name]):.0f}, "
            f"max {max(rate[name]):.0f})"
        )
    print(
        f"B/A per pair: {', '.join(f'{r:.3f}' for r in ratios)}; median "
        f"{statistics.median(ratios):.3f}"
    )


if __name__ == "__main__":
    main()
