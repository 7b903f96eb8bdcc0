"""Instructions per full RCAR release of a ``kbs serve`` worker, counted by callgrind.

On a shared machine CPU time moves with the other jobs; the number of instructions a
release costs does not. This starts ``modelseal kbs serve`` (one worker, so the server is
the process valgrind runs; SQLite; sample TEE allowed; mock-tdx trusted through its test
root) under ``valgrind --tool=callgrind`` from a given source tree, registers a key, serves
``n`` full releases (auth + attest + resource, fresh session, TEE key and evidence each)
from 8 keep-alive clients of ``kbs_bench``'s load generator, stops the server and reads
callgrind's instruction total. Two runs of the same tree with ``SMALL`` and ``LARGE``
releases give the cost per release as the difference over ``LARGE - SMALL`` (start-up,
key registration and shut-down cancel out). ``PYTHONHASHSEED`` is fixed so both runs
build their dicts and sets alike.

Run: ``KBS_CG_TREES=/path/a/src,/path/b/src python -m bench.kbs_callgrind`` (optional env:
KBS_CG_TEE ``sample``/``mock-tdx`` (default ``sample``), KBS_CG_SMALL (24), KBS_CG_LARGE
(104)). Needs valgrind. Not part of ``make bench``: a run takes minutes.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from bench.kbs_bench import (
    CLI,
    Connection,
    Guest,
    Released,
    _free_port,
    check_released,
    guest_for,
    one_release,
    register_key,
    run_async,
)

CLIENTS = 8


async def releases(url: str, guest: Guest, n: int) -> Released:
    """``n`` full releases from ``CLIENTS`` keep-alive connections."""
    host, port = url.removeprefix("http://").split(":")
    conns = [Connection(host, int(port)) for _ in range(CLIENTS)]
    released: Released = []
    todo = iter(range(n))

    async def worker(conn: Connection) -> None:
        for _ in todo:
            await one_release(conn, guest, released)

    await asyncio.gather(*(worker(c) for c in conns))
    for conn in conns:
        conn.close()
    return released


def instructions(src: str, tee: str, n: int) -> int:
    """callgrind's instruction total of a ``kbs serve`` that served ``n`` releases."""
    from modelseal.tee.mock_tdx.ca import MockTdxCA

    env = {**os.environ, "PYTHONPATH": src, "PYTHONHASHSEED": "0"}
    with tempfile.TemporaryDirectory(prefix="kbs-cg-") as tmp:
        data_dir = Path(tmp) / "kbs"
        ca = MockTdxCA.create(Path(tmp) / "ca")
        out = Path(tmp) / "callgrind.out"
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [
            "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
            *CLI, "kbs", "serve", "--data-dir", str(data_dir), "--port", str(port),
            "--insecure-allow-sample", "--log-level", "warning", "--workers", "1",
            "--mock-tdx-root", str(ca.root_pem_path),
        ]  # fmt: skip
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 600
            while True:
                try:
                    if httpx.get(url + "/healthz", timeout=5).status_code == 200:
                        break
                except httpx.HTTPError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError("kbs serve did not start under valgrind") from None
                    time.sleep(1)
            register_key(data_dir, url, env)
            guest = guest_for(tee, ca.directory, keys=n)
            released = run_async(releases(url, guest, n))
            if len(released) != n or check_released(released):
                raise RuntimeError("a release failed or returned a wrong key")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(600)
        summary = re.search(rb"^summary:\s+(\d+)", out.read_bytes(), re.M)
        if summary is None:
            raise RuntimeError("no callgrind summary")
        return int(summary.group(1))


def main() -> None:
    trees = os.environ["KBS_CG_TREES"].split(",")
    tee = os.environ.get("KBS_CG_TEE", "sample")
    small = int(os.environ.get("KBS_CG_SMALL", "24"))
    large = int(os.environ.get("KBS_CG_LARGE", "104"))
    for src in trees:
        low, high = instructions(src, tee, small), instructions(src, tee, large)
        per = (high - low) / (large - small)
        print(
            f"{tee} {src}: {low} instructions ({small} releases), {high} ({large}); "
            f"{per / 1e6:.3f} M instructions per release",
            flush=True,
        )


if __name__ == "__main__":
    main()
