"""Registry: CPU the registry spends per 2 GiB of blob bodies, per server configuration.

One 2 GiB blob is uploaded to a real registry data directory; then each configuration
serves it from that directory on 127.0.0.1 and is asked, several times:

* **full**: one ``GET`` of the whole blob on one connection;
* **ranged**: the blob as 16 MiB ``Range`` requests over 4 parallel keep-alive
  connections, as the loader fetches (``modelseal.loader.fetch``).

The figure is the server's CPU time (user + system of its process and any children, from
``/proc``) while serving, best and median of the runs, plus the wall time of the best run.
Every body is checked for length (and the first full body for its SHA-256).

Configurations: ``modelseal registry serve`` as shipped (bodies from memory maps); the same
app under uvicorn with streamed bodies in several read sizes (16 MiB is what the registry
streams over HTTPS, 64 KiB Starlette ``FileResponse``'s chunk, 1 MiB the store's default)
and on the stdlib loop; under Granian, whose ``http.response.pathsend`` sends whole objects
from Rust (when ``granian`` is installed); and the ``sendfile(2)`` path this project had
before (a subclass of uvicorn's private protocol class), run from git history when the
checkout has it.

Usage: ``python -m bench registry_bench`` (env: ``REGISTRY_BENCH_GIB``, default 2;
``REGISTRY_BENCH_RUNS``, default 3). Granian is not a dependency; to measure it, install it
aside and put it on the path: ``pip install --target /tmp/granian granian`` then
``PYTHONPATH=/tmp/granian python -m bench registry_bench`` (the servers inherit the path
after this checkout's ``src``).
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.metadata
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.report import write_section

TITLE = "Registry: CPU per 2 GiB of blob bodies"
GIB = 1 << 30
MIB = 1 << 20
RANGE = 16 * MIB
WORKERS = 4
BLOB = "/blobs/bench/v1/model.sealed"
#: the last commit whose registry sent bodies with sendfile through a private uvicorn class
SENDFILE_COMMIT = "f910b95"
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Config:
    label: str
    #: argv after the interpreter; ``{data}`` and ``{port}`` are filled in
    argv: tuple[str, ...]
    #: PYTHONPATH entries before the repository's
    path: tuple[str, ...] = ()


def _cli(*extra: str) -> tuple[str, ...]:
    return ("-c", "from modelseal.cli import main; main()", "registry", "serve", *extra)


def _candidate(server: str, chunk: int) -> tuple[str, ...]:
    return ("-m", "bench.registry_server", server, str(chunk), "{data}", "{port}")


def _configs(old_src: Path | None) -> list[Config]:
    serve = _cli("--data-dir", "{data}", "--port", "{port}")
    configs = [
        Config("`modelseal registry serve` (uvicorn, uvloop, mapped bodies)", serve),
        Config("uvicorn, uvloop, 16 MiB reads", _candidate("uvicorn-uvloop", 16 * MIB)),
        Config("uvicorn, uvloop, 4 MiB reads", _candidate("uvicorn-uvloop", 4 * MIB)),
        Config("uvicorn, uvloop, 1 MiB reads", _candidate("uvicorn-uvloop", MIB)),
        Config("uvicorn, uvloop, 64 KiB reads", _candidate("uvicorn-uvloop", 64 << 10)),
        Config("uvicorn, asyncio loop, 16 MiB reads", _candidate("uvicorn", 16 * MIB)),
    ]
    if importlib.util.find_spec("granian") is not None:
        configs.append(
            Config(
                f"Granian {importlib.metadata.version('granian')}: whole blob by `pathsend`, "
                "ranges in 16 MiB reads",
                _candidate("granian", 16 * MIB),
            )
        )
    if old_src is not None:
        configs.append(
            Config(
                f"before: `sendfile` via a private uvicorn subclass ({SENDFILE_COMMIT})",
                serve,
                (str(old_src),),
            )
        )
    return configs


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and its descendants (all their threads), from /proc."""
    total, todo, seen = 0.0, [pid], set()
    tick = os.sysconf("SC_CLK_TCK")
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in os.listdir(f"/proc/{p}/task"):
                children = Path(f"/proc/{p}/task/{task}/children").read_text().split()
                todo += [int(c) for c in children]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def _read_body(resp: http.client.HTTPResponse, digest: Any) -> int:
    buf = memoryview(bytearray(MIB))
    n = 0
    while k := resp.readinto(buf):
        n += k
        if digest is not None:
            digest.update(buf[:k])
    return n


def _full(port: int, size: int, expect: str | None) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        conn.request("GET", BLOB)
        resp = conn.getresponse()
        digest = hashlib.sha256() if expect else None
        if resp.status != 200 or _read_body(resp, digest) != size:
            raise RuntimeError(f"full GET: status {resp.status} or short body")
        if digest is not None and digest.hexdigest() != expect:
            raise RuntimeError("full GET: wrong bytes")
    finally:
        conn.close()


def _ranged(port: int, size: int) -> None:
    local = threading.local()
    conns: list[http.client.HTTPConnection] = []

    def fetch(offset: int) -> None:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
            conns.append(conn)
        end = min(offset + RANGE, size)
        conn.request("GET", BLOB, headers={"Range": f"bytes={offset}-{end - 1}"})
        resp = conn.getresponse()
        if resp.status != 206 or _read_body(resp, None) != end - offset:
            raise RuntimeError(f"ranged GET at {offset}: status {resp.status} or short body")

    try:
        with ThreadPoolExecutor(WORKERS) as pool:
            list(pool.map(fetch, range(0, size, RANGE)))
    finally:
        for conn in conns:
            conn.close()


def _wait_healthy(proc: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                conn.close()
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server did not start")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(config: Config, data: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    argv = [a.replace("{data}", str(data)).replace("{port}", str(port)) for a in config.argv]
    inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    path = os.pathsep.join([*config.path, str(REPO / "src"), str(REPO), *inherited])
    proc = subprocess.Popen(
        [sys.executable, *argv],
        env={**os.environ, "PYTHONPATH": path},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_healthy(proc, port)
    return proc, port


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


Row = dict[str, tuple[float, float, float]]  # kind -> (best cpu, median cpu, wall of best)


def _measure(config: Config, data: Path, size: int, sha: str, runs: int) -> Row:
    proc, port = _serve(config, data)
    try:
        _full(port, size, sha)  # warm-up, and the bytes are the blob's
        kinds: dict[str, Callable[[], None]] = {
            "full": lambda: _full(port, size, None),
            "ranged": lambda: _ranged(port, size),
        }
        row: Row = {}
        for kind, run in kinds.items():
            samples: list[tuple[float, float]] = []
            for _ in range(runs):
                before, t0 = _cpu_seconds(proc.pid), time.perf_counter()
                run()
                wall = time.perf_counter() - t0
                samples.append((_cpu_seconds(proc.pid) - before, wall))
            best = min(samples)
            row[kind] = (best[0], statistics.median(s[0] for s in samples), best[1])
        return row
    finally:
        _stop(proc)


def _upload(data: Path, size: int) -> str:
    """Store a ``size``-byte blob through a real registry; its SHA-256."""
    proc, port = _serve(Config("upload", _cli("--data-dir", "{data}", "--port", "{port}")), data)
    try:
        token = (data / "upload-token").read_text().strip()
        block = os.urandom(MIB)
        digest = hashlib.sha256()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        conn.putrequest("PUT", BLOB)
        conn.putheader("Authorization", f"Bearer {token}")
        conn.putheader("Content-Length", str(size))
        conn.endheaders()
        sent = 0
        while sent < size:
            piece = block[: min(MIB, size - sent)]
            conn.send(piece)
            digest.update(piece)
            sent += len(piece)
        resp = conn.getresponse()
        if resp.status != 201:
            raise RuntimeError(f"upload: {resp.status} {resp.read()[:200]!r}")
        conn.close()
        return digest.hexdigest()
    finally:
        _stop(proc)


def _old_source(root: Path) -> Path | None:
    """``src/`` as of :data:`SENDFILE_COMMIT`, extracted from git history (None without)."""
    out = root / "sendfile-src.tar"
    try:
        subprocess.run(
            ["git", "-C", str(REPO), "archive", "-o", str(out), SENDFILE_COMMIT, "src"],
            check=True,
            capture_output=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    with tarfile.open(out) as tar:
        tar.extractall(root / "sendfile", filter="data")
    return root / "sendfile" / "src"


def _report(results: list[tuple[str, Row]], size: int, runs: int) -> str:
    scale = 2 * GIB / size
    lines = [
        f"Registry CPU (user + system, seconds) to serve 2 GiB of one blob from the page "
        f"cache on 127.0.0.1, best (median) of {runs} runs; wall time of the best run. "
        f"**full**: one `GET`; **ranged**: 16 MiB `Range` requests over {WORKERS} "
        "keep-alive connections, as the loader fetches. Measured on a shared 2-core VM "
        "(other work running), so compare rows of one table, not across tables. "
        "`python -m bench registry_bench`.",
        "",
        "| server, read size | full: CPU s | full: wall s | ranged: CPU s | ranged: wall s |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for label, row in results:
        cells = []
        for kind in ("full", "ranged"):
            best, median, wall = (v * scale for v in row[kind])
            cells += [f"{best:.2f} ({median:.2f})", f"{wall:.2f}"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    lines += [
        "",
        f"Load average at the end of the run (1/5/15 min): {load} on 2 vCPUs.",
        "",
        "Why the registry sends bodies from memory maps (and no longer uses `sendfile`), and "
        "what else was weighed: [decisions](concepts/decisions.md#registry-blob-bodies-go-"
        "out-from-memory-maps).",
    ]
    return "\n".join(lines)


def main() -> None:
    size = int(float(os.environ.get("REGISTRY_BENCH_GIB", "2")) * GIB)
    runs = int(os.environ.get("REGISTRY_BENCH_RUNS", "3"))
    root = Path(tempfile.mkdtemp(prefix="ms-registry-bench-", dir="/var/tmp"))
    try:
        data = root / "data"
        print(f"registry_bench: uploading {size / GIB:.2f} GiB")
        sha = _upload(data, size)
        results = []
        for config in _configs(_old_source(root)):
            print(f"registry_bench: {config.label}")
            results.append((config.label, _measure(config, data, size, sha, runs)))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report = _report(results, size, runs)
    write_section(TITLE, report)
    print(report)


if __name__ == "__main__":
    main()
