"""Loader: a sealed safetensors model vs the same plaintext downloaded, into tmpfs.

Starts a real KBS (sample TEE, insecure dev mode) and a real registry on 127.0.0.1,
publishes a sealed safetensors model (default 2 GiB, 4 MiB segments) and uploads the same
plaintext as a plain blob of the same registry. Then, alternating, several times:

* ``modelseal load`` (subprocess) into a fresh /dev/shm directory: attest, key release,
  manifest, parallel ranged download + decryption, placement, receipt;
* the same plaintext downloaded into /dev/shm with the loader's own HTTP code (parallel
  ranged GETs, same workers, ``pwrite``; no decryption; ``bench/plain_download.py``) in a
  subprocess, and with ``curl`` (one stream) when installed.

Reports wall times (best of N), the ratio sealed/plaintext against the FASTER baseline,
and the loader's peak RSS (``ru_maxrss`` of the subprocess from ``wait4``) for two model
sizes, so "regardless of model size" is measured rather than assumed.

Usage: ``python -m bench loader_bench`` (env: ``LOADER_BENCH_GIB`` = model size in GiB,
default 2; ``LOADER_BENCH_RUNS`` = repetitions, default 5). Bytecode is compiled first, as
an installed package has it.
"""

from __future__ import annotations

import compileall
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.registry_bench import _cpu_seconds
from bench.report import write_section

TITLE = "Loader: sealed model vs plaintext download"
GIB = 1 << 30
TENSOR = 64 << 20
WORKERS = 4
SHM = Path("/dev/shm")


def make_safetensors(path: Path, size: int) -> None:
    """A safetensors file of ``size`` bytes of F32 tensors (random bytes), streamed."""
    import numpy as np

    count = max(1, size // TENSOR)
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    for i in range(count):
        header[f"layers.{i}.weight"] = {
            "dtype": "F32",
            "shape": [TENSOR // 4 // 4096, 4096],
            "data_offsets": [i * TENSOR, (i + 1) * TENSOR],
        }
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    rng = np.random.default_rng(1)
    with path.open("wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        for _ in range(count):
            f.write(rng.bytes(TENSOR))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(16 << 20):
            h.update(chunk)
    return h.hexdigest()


def _vm_hwm(pid: int) -> int:
    """``VmHWM`` (peak resident set, KiB) of a live process, 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return 0
    return 0


@dataclass(frozen=True)
class Timed:
    """One child process run: wall seconds, peak RSS, stderr, and CPU on both sides."""

    seconds: float
    #: peak resident set (VmHWM, KiB)
    peak: int
    err: str
    #: the child's user + system CPU seconds (from ``wait4``)
    cpu: float
    #: the servers' (registry, KBS) user + system CPU seconds during the run
    server_cpu: float


def _timed(argv: list[str], env: dict[str, str], servers: list[int]) -> Timed:
    """Run ``argv`` to the end, charging the CPU the ``servers`` pids spend meanwhile.

    ``ru_maxrss`` from ``wait4`` is useless here: it includes the pages of the forked copy
    of this (large) benchmark process before ``exec``. VmHWM is polled every 5 ms instead;
    it only grows, so the last reading before exit is the peak up to that moment.
    """
    servers_before = sum(_cpu_seconds(p) for p in servers)
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    peak = 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        peak = max(peak, _vm_hwm(proc.pid))
        time.sleep(0.005)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    server_cpu = sum(_cpu_seconds(p) for p in servers) - servers_before
    err = proc.stderr.read() if proc.stderr else ""
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[:4]} failed ({proc.returncode}): {err[-2000:]}")
    return Timed(elapsed, peak, err, usage.ru_utime + usage.ru_stime, server_cpu)


def _publish(stack: dict[str, Any], root: Path, model_id: str, size: int) -> dict[str, Any]:
    from modelseal.owner.kbs_admin import KbsAdminClient
    from modelseal.owner.publish import PublishRequest, publish
    from modelseal.owner.registry_client import RegistryClient

    src = root / f"src-{model_id}"
    src.mkdir()
    plain = src / "model.safetensors"
    make_safetensors(plain, size)
    request = PublishRequest(
        source=src,
        registry_url=stack["registry"].url,
        kbs_url=stack["kbs"].url,
        model_id=model_id,
        version="v1",
        registry_token=stack["upload"],
        policy={"apiVersion": "modelseal/v1", "kind": "ReleasePolicy", "tee": ["sample"]},
        staging_dir=root / f"staging-{model_id}",
        workers=2,
    )
    with KbsAdminClient(stack["kbs"].url, stack["admin"]) as admin:
        info = publish(request, admin).model
    with RegistryClient(stack["registry"].url, stack["upload"]) as client:
        client.upload_blob(
            f"{model_id}-plain", "v1", "model.safetensors", plain, sha256=_sha256(plain)
        )
    plain_size = plain.stat().st_size
    plain.unlink()
    shutil.rmtree(root / f"staging-{model_id}", ignore_errors=True)
    return {
        "size": plain_size,
        "sealed": sum(f.sealed_size for f in info.files),
        "model_url": f"{stack['registry'].url}/models/{model_id}",
        "plain_url": f"{stack['registry'].url}/blobs/{model_id}-plain/v1/model.safetensors",
    }


def _measure(
    model: dict[str, Any], runs: int, env: dict[str, str], servers: list[int]
) -> dict[str, Any]:
    from modelseal.quickstart.services import MODELSEAL

    loader: list[Timed] = []
    plain: list[Timed] = []
    curl: list[Timed] = []
    inner, startup = [], []
    for _ in range(runs):
        dest = Path(tempfile.mkdtemp(prefix="ms-bench-", dir=SHM))
        try:
            argv = [*MODELSEAL, "load", "--model", model["model_url"], "--dest", str(dest / "m")]
            argv += ["--tee", "sample", "--workers", str(WORKERS), "--quiet"]
            spawned = time.time()
            loader.append(_timed(argv, env, servers))
            receipt = json.loads((dest / "m" / ".modelseal" / "receipt.json").read_text())
            steps = {k: v for k, v in receipt["timings"].items() if k != "total"}
            inner.append(steps)
            # receipt["loaded_at"] is when load_model started: all before is start-up
            startup.append(max(0.0, receipt["loaded_at"] - spawned))
        finally:
            shutil.rmtree(dest, ignore_errors=True)
        dest = Path(tempfile.mkdtemp(prefix="ms-bench-", dir=SHM))
        try:
            argv = [sys.executable, "-m", "bench.plain_download", model["plain_url"]]
            argv += [str(dest / "p"), str(WORKERS)]
            plain.append(_timed(argv, env, servers))
        finally:
            shutil.rmtree(dest, ignore_errors=True)
        if shutil.which("curl"):
            dest = Path(tempfile.mkdtemp(prefix="ms-bench-", dir=SHM))
            try:
                argv = ["curl", "-sf", "-o", str(dest / "p"), model["plain_url"]]
                curl.append(_timed(argv, env, servers))
            finally:
                shutil.rmtree(dest, ignore_errors=True)
    return {
        "loader": [t.seconds for t in loader],
        "plain": [t.seconds for t in plain],
        "curl": [t.seconds for t in curl],
        "rss": [t.peak for t in loader],
        "cpu": {"loader": loader, "plain": plain, "curl": curl},
        "inner": inner,
        "startup": startup,
    }


def start_stack(root: Path) -> dict[str, Any]:
    """A KBS and a registry on 127.0.0.1 (data under ``root``), healthy, with an admin and an
    upload token: what ``_publish`` needs. The caller stops ``kbs`` and ``registry``."""
    from modelseal.kbs.admin_auth import load_admin_credential, mint_admin_token
    from modelseal.quickstart.services import kbs_service, registry_service

    kbs = kbs_service(root / "kbs", root)
    registry = registry_service(root / "registry", root)
    try:
        for s in (kbs, registry):
            s.spawn()
        kbs.wait_healthy(60)
        registry.wait_healthy(60)
    except BaseException:
        kbs.stop()
        registry.stop()
        raise
    credential = load_admin_credential(root / "kbs")
    return {
        "kbs": kbs,
        "registry": registry,
        "admin": mint_admin_token(credential, ttl=7200, now=time.time()),
        "upload": (root / "registry" / "upload-token").read_text().strip(),
    }


def main() -> None:
    from modelseal.quickstart.services import child_env

    size = int(float(os.environ.get("LOADER_BENCH_GIB", "2")) * GIB)
    runs = int(os.environ.get("LOADER_BENCH_RUNS", "5"))
    small = 256 << 20
    here = Path(__file__).resolve().parent
    # measured as deployed: bytecode compiled once (as pip does), not on every start
    compileall.compile_dir(here.parent / "src" / "modelseal", quiet=1)
    compileall.compile_dir(here, quiet=1)
    root = Path(tempfile.mkdtemp(prefix="ms-loader-bench-", dir="/var/tmp"))
    # this checkout's package first, also when another checkout is installed in the venv
    repo = Path(__file__).resolve().parent.parent
    env = child_env({"PYTHONPATH": os.pathsep.join([str(repo / "src"), str(repo)])})
    stack = start_stack(root)
    kbs, registry = stack["kbs"], stack["registry"]
    try:
        print(f"loader_bench: publishing {size / GIB:.2f} GiB and {small >> 20} MiB models")
        big = _publish(stack, root, "bench-big", size)
        little = _publish(stack, root, "bench-small", small)
        print("loader_bench: measuring")
        servers = [s.process.pid for s in (kbs, registry) if s.process is not None]
        big_r = _measure(big, runs, env, servers)
        small_r = _measure(little, max(1, runs - 1), env, servers)
    finally:
        kbs.stop()
        registry.stop()
        shutil.rmtree(root, ignore_errors=True)
    write_section(TITLE, _report(big, big_r, little, small_r, runs))
    print(_report(big, big_r, little, small_r, runs))


def _report(
    big: dict[str, Any],
    r: dict[str, Any],
    little: dict[str, Any],
    s: dict[str, Any],
    runs: int,
) -> str:
    best_loader = min(r["loader"])
    best_plain = min(r["plain"])
    best_curl = min(r["curl"]) if r["curl"] else None
    baseline = min(best_plain, best_curl) if best_curl is not None else best_plain
    ratio = best_loader / baseline
    gib = big["size"] / GIB
    fastest = min(range(len(r["loader"])), key=lambda i: r["loader"][i])
    inner = r["inner"][fastest]
    startup = r["startup"][fastest]
    exit_time = r["loader"][fastest] - sum(inner.values()) - startup
    rows = [
        f"| what | best of {runs} (s) | median (s) | GB/s |",
        "| --- | ---: | ---: | ---: |",
        _row("`modelseal load` sealed → tmpfs (whole process)", r["loader"], big["size"]),
        _row("plaintext, loader's HTTP code, no decryption", r["plain"], big["size"]),
    ]
    if r["curl"]:
        rows.append(_row("plaintext, `curl` one stream", r["curl"], big["size"]))
    steps = ", ".join(f"{k} {v:.3f} s" for k, v in inner.items())
    cpu_rows = [
        "| what | client CPU s (median) | registry + KBS CPU s (median) | sum |",
        "| --- | ---: | ---: | ---: |",
    ]
    for key, name in (
        ("loader", "`modelseal load` sealed → tmpfs"),
        ("plain", "plaintext, loader's HTTP code"),
        ("curl", "plaintext, `curl` one stream"),
    ):
        if r["cpu"][key]:
            client = statistics.median(t.cpu for t in r["cpu"][key])
            server = statistics.median(t.server_cpu for t in r["cpu"][key])
            cpu_rows.append(f"| {name} | {client:.2f} | {server:.2f} | {client + server:.2f} |")
    rss_big = max(r["rss"]) / 1024
    rss_small = max(s["rss"]) / 1024
    verdict = "meets" if ratio <= 1.15 else "misses"
    own_ratio = best_loader / best_plain
    baselines = [r["plain"], *([r["curl"]] if r["curl"] else [])]
    median_ratio = statistics.median(r["loader"]) / min(statistics.median(b) for b in baselines)
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    return "\n".join(
        [
            "Command: `python -m bench loader_bench` (2 vCPU VM shared with the registry and "
            f"KBS processes; {WORKERS} loader workers, 4 MiB segments, Python "
            f"{sys.version.split()[0]}).",
            "",
            f"Model: one safetensors file of {gib:.2f} GiB ({big['sealed']} bytes sealed), "
            "served by `modelseal registry serve` (local blobs) on 127.0.0.1; the same "
            "plaintext is uploaded to the same registry as a plain blob. Every run writes "
            "into a fresh /dev/shm directory.",
            "",
            *rows,
            "",
            f"**Ratio sealed / fastest plaintext download: {ratio:.3f}** (target ≤ 1.15: "
            f"{verdict}). The loader's time includes Python start-up, model info, RCAR "
            "attestation and key release, manifest and header checks, placement and "
            "receipt.",
            "",
            f"Ratio of the medians (same baselines): {median_ratio:.3f}; the loader uses both "
            "cores, so it suffers more than the baselines when the VM's host takes cycles "
            "away, which widens its spread of times.",
            "",
            f"Against the same parallel HTTP code without decryption: {own_ratio:.3f}. "
            f"Load average at the end of the run (1/5/15 min): {load} on 2 vCPUs; the "
            "registry, the loader and every other process share those cores, so the loader's "
            "extra CPU (AES-GCM, ~0.2 s/GiB/core) shows up directly in wall time on a busy "
            "machine.",
            "",
            "CPU time (user + system) of each side, which depends less than wall time on how "
            "busy the machine is (though contention inflates it too) (client: the process, "
            "from `wait4`; servers: from `/proc`, during that process's run):",
            "",
            *cpu_rows,
            "",
            f"Loader steps (fastest run): {steps}.",
            "",
            f"Where the loader's {best_loader:.2f} s go (fastest run): "
            f"{startup:.2f} s from process start to the first step (interpreter start-up, "
            "imports of click, httpx, cryptography and the msgspec wire models), "
            f"{exit_time:.2f} s outside the timed steps (HTTP client set-up, pipeline threads, "
            "receipt, exit), "
            f"{sum(inner.values()) - inner.get('download_decrypt', 0.0):.2f} s model info + "
            f"attestation + manifest + placement, {inner.get('download_decrypt', 0.0):.2f} s "
            f"download + decryption (vs {best_plain:.2f} s for the whole plaintext download "
            "process with the same HTTP code"
            + (f", {best_curl:.2f} s for curl)." if best_curl is not None else ").")
            + " Every process here competes for the same 2 vCPUs with the registry (and with "
            "whatever else runs on the VM: this VM reports up to 50 % steal time), so numbers "
            "move by tens of percent between runs; compare runs of the same invocation only.",
            "",
            "Kept while optimising (each measured here): the registry sends blob bodies from "
            "memory maps of the objects (its CPU per 2 GiB: the registry section); the loader "
            "reads no CA store for plain-HTTP endpoints (~0.15 s), checks the filesystem with "
            "`statfs` instead of `ctypes.util.find_library` (two `ldconfig -p` children), "
            "imports no pydantic (its wire models are msgspec: ~0.2 s), starts the ciphertext "
            "downloads before the key is released (attestation and the manifest overlap "
            "them) and writes each authenticated 16 MiB run with one `pwritev`; "
            "`http.client` `readinto` straight "
            "into 4 x 16 MiB buffers; `gc.freeze()` after the imports. Tried and dropped "
            "(neutral or slower in the loaded pipeline, though some won alone): `fallocate` "
            "of each run before writing it, of the whole file during start-up on the idle "
            "core, a lock so writers into one file take turns, decrypting into an mmap of the "
            "target, streaming GCM in 256 KiB pieces, 4/8/32 MiB requests (16 MiB is "
            "fastest), 3/6 workers, httpx streaming for the bulk data.",
            "",
            "| model size | loader peak RSS (VmHWM) |",
            "| --- | ---: |",
            f"| {little['size'] / (1 << 20):.0f} MiB | {rss_small:.1f} MiB |",
            f"| {gib:.2f} GiB | {rss_big:.1f} MiB |",
            "",
            "Target ≤ 256 MiB regardless of model size: "
            + ("met" if max(rss_big, rss_small) <= 256 else "MISSED")
            + ". Decrypted pages live in tmpfs (shared memory, not the loader's RSS); the "
            f"loader holds {WORKERS} reusable buffers of ~16 MiB.",
        ]
    )


def _row(name: str, values: list[float], size: int) -> str:
    best = min(values)
    return f"| {name} | {best:.3f} | {statistics.median(values):.3f} | {size / best / 1e9:.2f} |"


if __name__ == "__main__":
    main()
