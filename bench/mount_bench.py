"""Mount: ``modelseal mount`` (decrypt on read) vs ``modelseal load`` into tmpfs.

Starts a real KBS (sample TEE) and registry on 127.0.0.1 and publishes a sealed safetensors
model (default 2 GiB, 4 MiB segments; ``bench.loader_bench`` makes and publishes it). Then,
alternating, several times:

* ``modelseal load`` into a fresh /dev/shm directory (whole process), then the last tensor
  read from the loaded file: the time to the first byte of that tensor is the whole load;
* ``modelseal mount`` of the same model (``--model``: every byte fetched from the registry
  with ranged GETs): time from spawn to the readiness marker, then the first byte of the
  last tensor (``pread`` at its offset, and ``safetensors.safe_open(...).get_tensor`` through
  ``mmap``), then the whole file read sequentially (16 MiB ``readinto``, no hashing in the
  timed pass), then every byte's SHA-256 checked against the original;
* the peak RSS (VmHWM, polled) of the mount process through all of that, and the page cache
  the kernel kept for the mount (reclaimable, unlike tmpfs).

Last, the memory-limit case: a tmpfs of half the model's size (what a Kubernetes
``emptyDir: {medium: Memory, sizeLimit}`` is) refuses ``modelseal load`` (exit 6), while the
mount serves the whole model with its RSS bounded. A cgroup ``memory.max`` below the model
size is the stricter form of that test; the report says whether this machine allowed one.

Usage: ``python -m bench mount_bench`` (env: ``MOUNT_BENCH_GIB`` model size in GiB, default
2; ``MOUNT_BENCH_RUNS`` repetitions, default 3). Needs root (tmpfs mount), /dev/fuse, fuse3.
"""

from __future__ import annotations

import compileall
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.loader_bench import GIB, SHM, WORKERS, _publish, _timed, _vm_hwm, start_stack
from bench.report import write_section

TITLE = "Mount: decrypt on read vs load into tmpfs"
READ = 16 << 20


def _last_tensor(path: Path) -> tuple[str, int]:
    """Name and absolute file offset of the tensor stored last in a safetensors file."""
    with path.open("rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    name = max(header, key=lambda k: header[k]["data_offsets"][0])
    return name, 8 + n + header[name]["data_offsets"][0]


class _RssPoll:
    """Peak VmHWM (KiB) of a process, polled every 5 ms on a thread until stopped."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _vm_hwm(self.pid))
            time.sleep(0.005)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def _resident_bytes(path: Path) -> int:
    """Bytes of ``path`` in the page cache (util-linux ``fincore``: mincore of a mapping)."""
    done = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    return int(done.stdout.strip() or 0) if done.returncode == 0 else -1


def _read_all(path: Path) -> float:
    buf = bytearray(READ)
    view = memoryview(buf)
    start = time.perf_counter()
    with path.open("rb", buffering=0) as f:
        while f.readinto(view):
            pass
    return time.perf_counter() - start


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(READ):
            h.update(chunk)
    return h.hexdigest()


def _load_run(model: dict[str, Any], env: dict[str, str]) -> dict[str, float]:
    from modelseal.quickstart.services import MODELSEAL

    dest = Path(tempfile.mkdtemp(prefix="ms-mbench-", dir=SHM))
    try:
        argv = [*MODELSEAL, "load", "--model", model["model_url"], "--dest", str(dest / "m")]
        argv += ["--tee", "sample", "--workers", str(WORKERS), "--quiet"]
        seconds, rss, _err = _timed(argv, env)
        path = dest / "m" / "model.safetensors"
        _name, offset = _last_tensor(path)
        start = time.perf_counter()
        with path.open("rb", buffering=0) as f:
            os.pread(f.fileno(), 4096, offset)
        first = seconds + time.perf_counter() - start
        return {"seconds": seconds, "first_byte": first, "rss_kib": rss}
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def _mount_run(
    model: dict[str, Any], env: dict[str, str], root: Path, *, verify: bool
) -> dict[str, Any]:
    from safetensors import safe_open

    from modelseal.quickstart.services import MODELSEAL

    work = Path(tempfile.mkdtemp(prefix="mount-", dir=root))
    mountpoint, ready = work / "mnt", work / "ready.json"
    mountpoint.mkdir()
    argv = [*MODELSEAL, "mount", "--model", model["model_url"], "--tee", "sample"]
    argv += ["--mountpoint", str(mountpoint), "--ready-file", str(ready), "--quiet"]
    argv += ["--workers", str(WORKERS)]
    spawned = time.perf_counter()
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    rss = _RssPoll(proc.pid)
    try:
        while not ready.exists():
            if proc.poll() is not None:
                err = proc.stderr.read() if proc.stderr else ""
                raise RuntimeError(f"mount exited {proc.returncode}: {err[-2000:]}")
            time.sleep(0.002)
        ready_s = time.perf_counter() - spawned
        steps = json.loads(ready.read_text())["timings"]
        path = mountpoint / "model.safetensors"
        name, offset = _last_tensor(path)  # reads the header: the first segment
        start = time.perf_counter()
        with path.open("rb", buffering=0) as f:
            os.pread(f.fileno(), 4096, offset)
        first_byte = time.perf_counter() - start
        start = time.perf_counter()
        with safe_open(path, framework="np") as st:
            tensor = st.get_tensor(name)
        tensor_s = time.perf_counter() - start
        del tensor
        sequential = _read_all(path)
        cached = _resident_bytes(path)
        stats = json.loads(os.getxattr(mountpoint, "user.modelseal.stats"))
        digest = _sha256(path) if verify else None
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=120)
        peak = rss.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"mount exited {proc.returncode} after SIGTERM: {err[-2000:]}")
    shutil.rmtree(work, ignore_errors=True)
    return {
        "ready": ready_s,
        "steps": steps,
        "first_byte": first_byte,
        "tensor": tensor_s,
        "sequential": sequential,
        "rss_kib": peak,
        "page_cache": cached,
        "stats": stats,
        "sha256_ok": digest == model["sha256"] if verify else None,
    }


def _limited_tmpfs(model: dict[str, Any], env: dict[str, str], root: Path) -> dict[str, Any]:
    """``modelseal load`` into a tmpfs of half the model's size, as an emptyDir sizeLimit."""
    from modelseal.quickstart.services import MODELSEAL

    limit = model["size"] // 2
    target = root / "limited"
    target.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={limit},mode=700", "tmpfs", str(target)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        return {"limit": limit, "skipped": mounted.stderr.strip()}
    try:
        argv = [*MODELSEAL, "load", "--model", model["model_url"], "--dest", str(target / "m")]
        argv += ["--tee", "sample", "--quiet"]
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        left = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
        return {
            "limit": limit,
            "exit": done.returncode,
            "error": done.stderr.strip().splitlines()[:1],
            "left": left,
        }
    finally:
        subprocess.run(["umount", str(target)], check=False)


def _cgroup_note() -> str:
    """Whether a cgroup v2 memory.max can be set here (the strict form of the limit test)."""
    unified = Path("/sys/fs/cgroup/cgroup.controllers")
    for candidate in (unified, Path("/sys/fs/cgroup/unified/cgroup.controllers")):
        if candidate.exists():
            controllers = candidate.read_text().split()
            if "memory" in controllers:
                return f"cgroup v2 with the memory controller at {candidate.parent}"
            return (
                f"cgroup v2 at {candidate.parent} has no memory controller "
                f"(controllers: {' '.join(controllers) or 'none'}); the memory controller "
                "is cgroup v1 and belongs to the sandbox that runs this VM, so no "
                "memory.max was set"
            )
    return "no cgroup v2 hierarchy here, so no memory.max was set"


def main() -> None:
    from modelseal.quickstart.services import child_env

    size = int(float(os.environ.get("MOUNT_BENCH_GIB", "2")) * GIB)
    runs = int(os.environ.get("MOUNT_BENCH_RUNS", "3"))
    here = Path(__file__).resolve().parent
    compileall.compile_dir(here.parent / "src" / "modelseal", quiet=1)
    compileall.compile_dir(here, quiet=1)
    root = Path(tempfile.mkdtemp(prefix="ms-mount-bench-", dir="/var/tmp"))
    # this checkout's modelseal, whatever the virtualenv has installed
    env = child_env({"PYTHONPATH": f"{here.parent / 'src'}{os.pathsep}{here.parent}"})
    stack = start_stack(root)
    kbs, registry = stack["kbs"], stack["registry"]
    try:
        print(f"mount_bench: publishing {size / GIB:.2f} GiB")
        model = _publish(stack, root, "mount-big", size)
        model["sha256"] = _plain_sha256(stack, model)
        print("mount_bench: measuring")
        loads, mounts = [], []
        for i in range(runs):
            loads.append(_load_run(model, env))
            mounts.append(_mount_run(model, env, root, verify=i == 0))
        limited = _limited_tmpfs(model, env, root)
        # the mount's peak RSS at other model sizes: it must not grow with the model
        other_rss: dict[int, float] = {}
        for gib in os.environ.get("MOUNT_BENCH_RSS_GIB", "0.25,4").split(","):
            other = int(float(gib) * GIB)
            print(f"mount_bench: peak RSS with {other / GIB:.2f} GiB")
            extra = _publish(stack, root, f"mount-{other >> 20}m", other)
            other_rss[other] = _mount_run(extra, env, root, verify=False)["rss_kib"] / 1024
    finally:
        kbs.stop()
        registry.stop()
        shutil.rmtree(root, ignore_errors=True)
    text = _report(model, loads, mounts, limited, runs, other_rss)
    write_section(TITLE, text)
    print(text)


def _plain_sha256(stack: dict[str, Any], model: dict[str, Any]) -> str:
    """SHA-256 of the published plaintext, from its plain copy in the registry."""
    from modelseal.loader.fetch import Fetcher

    h = hashlib.sha256()
    buf = bytearray(READ)
    with Fetcher() as fetcher:
        for start in range(0, model["size"], READ):
            view = memoryview(buf)[: min(READ, model["size"] - start)]
            fetcher.read_range(model["plain_url"], start, view)
            h.update(view)
    return h.hexdigest()


def _split(mounts: list[dict[str, Any]]) -> str:
    """Where the fastest run's spawn-to-ready time went."""
    run = min(mounts, key=lambda m: m["ready"])
    steps = run["steps"]
    named = ", ".join(f"{k.replace('_', ' ')} {v:.3f} s" for k, v in steps.items())
    rest = run["ready"] - sum(steps.values())
    return (
        f"{named}; the other {rest:.3f} s are interpreter start-up, imports and the FUSE "
        "mount itself"
    )


def _report(
    model: dict[str, Any],
    loads: list[dict[str, float]],
    mounts: list[dict[str, Any]],
    limited: dict[str, Any],
    runs: int,
    other_rss: dict[int, float],
) -> str:
    size = model["size"]
    gib = size / GIB

    def best(rows: list[dict[str, Any]], key: str) -> float:
        return min(r[key] for r in rows)

    def med(rows: list[dict[str, Any]], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    load_s = best(loads, "seconds")
    load_gbs = size / load_s / 1e9
    seq_s = best(mounts, "sequential")
    seq_gbs = size / seq_s / 1e9
    total_s = min(m["ready"] + m["first_byte"] + m["tensor"] + m["sequential"] for m in mounts)
    first = best(mounts, "first_byte")
    rss_mib = max(m["rss_kib"] for m in mounts) / 1024
    load_rss = max(r["rss_kib"] for r in loads) / 1024
    cache_mib = max(m["page_cache"] for m in mounts) / (1 << 20)
    stats = mounts[0]["stats"]
    ratio = seq_gbs / load_gbs
    ok = mounts[0]["sha256_ok"]
    if "skipped" in limited:
        limit_text = f"a tmpfs could not be mounted here ({limited['skipped']})."
    else:
        limit_text = (
            f"`modelseal load` into a tmpfs of {limited['limit'] / GIB:.2f} GiB exits "
            f"{limited['exit']} ({' '.join(limited['error'])}) and leaves "
            f"{limited['left']} bytes behind; the mount served the same {gib:.2f} GiB model "
            f"in every run above with a peak RSS of {rss_mib:.0f} MiB (the page cache it "
            "fills is reclaimable: the kernel drops it under memory pressure and the mount "
            "decrypts again on the next read)."
        )
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    return "\n".join(
        [
            "Command: `python -m bench mount_bench` (2 vCPU VM shared with the registry and "
            f"KBS; {WORKERS} workers, 4 MiB segments, 64 MiB segment cache, 32 MiB "
            "read-ahead, kernel read-ahead 1 MiB).",
            "",
            f"Model: one safetensors file of {gib:.2f} GiB served by `modelseal registry "
            "serve` on 127.0.0.1; the mount fetches every segment from the registry with "
            "ranged GETs (`--model`), nothing is staged locally.",
            "",
            f"| what | best of {runs} | median |",
            "| --- | ---: | ---: |",
            f"| `load` into tmpfs, whole process (s) | {load_s:.3f} | "
            f"{med(loads, 'seconds'):.3f} |",
            f"| `load`: first byte of the last tensor, from spawn (s) | "
            f"{best(loads, 'first_byte'):.3f} | {med(loads, 'first_byte'):.3f} |",
            f"| `mount`: spawn to ready marker (attestation, key, manifest, headers) (s) | "
            f"{best(mounts, 'ready'):.3f} | {med(mounts, 'ready'):.3f} |",
            f"| `mount`: first byte of the last tensor after ready, `pread` (s) | "
            f"{first:.4f} | {med(mounts, 'first_byte'):.4f} |",
            f"| `mount`: last tensor via `safe_open().get_tensor` (mmap) (s) | "
            f"{best(mounts, 'tensor'):.3f} | {med(mounts, 'tensor'):.3f} |",
            f"| `mount`: whole file, sequential 16 MiB reads (s) | {seq_s:.3f} | "
            f"{med(mounts, 'sequential'):.3f} |",
            f"| `mount`: spawn → ready → last tensor → whole file read (s) | {total_s:.3f} | |",
            "",
            f"Spawn to ready, fastest run: {_split(mounts)}.",
            "",
            f"**First byte of the last tensor: {first * 1000:.1f} ms after ready** (target "
            f"< 0.5 s: {'met' if first < 0.5 else 'MISSED'}); from spawn "
            f"{best(mounts, 'ready') + first:.2f} s against {best(loads, 'first_byte'):.2f} s "
            "for `load` (which must place the whole model first).",
            "",
            f"**Sequential read: {seq_gbs:.2f} GB/s through the mount vs {load_gbs:.2f} GB/s "
            f"for the whole `load` process = {ratio:.0%}** (target ≥ 70 %: "
            f"{'met' if ratio >= 0.7 else 'MISSED'}).",
            "",
            f"Mount counters after one run (`user.modelseal.stats`): {stats['reads']} reads "
            f"of {stats['bytes_read'] / max(1, stats['reads']) / 1024:.0f} KiB on average, "
            f"{stats['segments_fetched']} segments fetched "
            f"({stats['sealed_bytes_fetched'] / size:.3f} x the plaintext), "
            f"{stats['readahead_runs']} read-ahead runs, {stats['cache_hits']} cache hits, "
            f"{stats['cache_misses']} misses, {stats['auth_failures']} authentication "
            "failures.",
            "",
            f"Every byte read through the mount equals the original: SHA-256 "
            f"{'matches' if ok else 'DIFFERS'} (first run).",
            "",
            "| memory | mount | load |",
            "| --- | ---: | ---: |",
            f"| process peak RSS (VmHWM) | {rss_mib:.0f} MiB | {load_rss:.0f} MiB |",
            f"| plaintext outside the process | page cache {cache_mib:.0f} MiB "
            f"(reclaimable) | tmpfs {gib * 1024:.0f} MiB (not reclaimable) |",
            "",
            "| model size | mount peak RSS (whole file read once) |",
            "| --- | ---: |",
            *[
                f"| {n / GIB:.2f} GiB | {r:.0f} MiB |"
                for n, r in sorted({**other_rss, size: rss_mib}.items())
            ],
            "",
            f"Mount RSS target ≤ 256 MiB at any model size: "
            f"{'met' if max(rss_mib, *other_rss.values(), 0) <= 256 else 'MISSED'}; the mount "
            "holds the segment cache, the "
            "read-ahead in flight and per-thread request buffers, none of which grows with "
            "the model.",
            "",
            f"Memory limit below the model size: {limit_text} Strict form: {_cgroup_note()}.",
            "",
            f"Load average at the end (1/5/15 min): {load} on 2 vCPUs shared with other "
            "work; compare runs of the same invocation only.",
        ]
    )


if __name__ == "__main__":
    main()
