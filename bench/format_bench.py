"""Sealed format throughput: seal / unseal vs ``cp`` and a one-shot AES-GCM decrypt.

``python -m bench format_bench`` (or ``make bench``) runs this matrix:
1 GiB and 4 GiB files, 1 and 2 workers, segment sizes 1/4/16 MiB, destination on disk and
in tmpfs (/dev/shm). Every seal/unseal runs in a child process that reports its wall time
and its own peak RSS (``VmHWM``); ``cp`` of the plaintext to the same destination runs
interleaved in the same loop so both see the same machine load. Big files are deleted as
soon as they are done.

Environment: ``MODELSEAL_BENCH_SIZES`` (GiB, default ``1,4``), ``MODELSEAL_BENCH_REPS``
(repetitions for 1 GiB cells, default 3; 4 GiB cells run once), ``MODELSEAL_BENCH_DIR``
(disk directory, default /var/tmp), ``MODELSEAL_BENCH_QUICK=1`` (64 MiB, prints only).
"""

from __future__ import annotations

import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GIB = 1 << 30
MIB = 1 << 20
SEGMENTS = (1 * MIB, 4 * MIB, 16 * MIB)
WORKERS = (1, 2)
TITLE = "Sealed format: seal / unseal throughput"
CMD = "make bench  # = .venv/bin/python -m bench format_bench"


@dataclass
class Cell:
    """All repetitions of one measurement."""

    times: list[float] = field(default_factory=list)
    rss_kib: list[int] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def add(self, seconds: float, cpu: float, rss_kib: int = 0) -> None:
        self.times.append(seconds)
        self.cpu.append(cpu)
        if rss_kib:
            self.rss_kib.append(rss_kib)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def best(self) -> float:
        return min(self.times)

    @property
    def rss_mib(self) -> float:
        return max(self.rss_kib) / 1024 if self.rss_kib else 0.0


def _child(argv: list[str]) -> int:
    """Run one seal/unseal in this (child) process and print its wall time."""
    from modelseal.owner.keys import read_key_file
    from modelseal.owner.sealing import SealOptions, seal_file, unseal_file

    op, src, dst, key, seg, workers = argv
    dek = read_key_file(key)
    cpu0 = _cpu(resource.RUSAGE_SELF)
    start = time.perf_counter()
    if op == "seal":
        options = SealOptions(key_id="bench/model/v1", segment_size=int(seg), workers=int(workers))
        seal_file(src, dst, dek, options, overwrite=True)
    else:
        unseal_file(src, dst, dek, workers=int(workers), overwrite=True)
    elapsed = time.perf_counter() - start
    hwm = 0
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    print(f"{elapsed:.6f} {hwm} {_cpu(resource.RUSAGE_SELF) - cpu0:.6f}")
    return 0


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _run_child(*args: str) -> tuple[float, int, float]:
    """(wall seconds, peak RSS KiB, CPU seconds) of one child run."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.format_bench", "--child", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    out = proc.stdout.read()
    proc.stdout.close()
    proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"child {args[0]} failed: {out.strip()}")
    seconds, hwm_kib, cpu = out.strip().splitlines()[-1].split()
    return float(seconds), int(hwm_kib), float(cpu)


def _cp(src: Path, dst: Path) -> tuple[float, float]:
    """(wall, CPU) seconds of ``cp src dst``."""
    cpu0 = _cpu(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(["cp", str(src), str(dst)], check=True)
    return time.perf_counter() - start, _cpu(resource.RUSAGE_CHILDREN) - cpu0


def _make_plaintext(path: Path, size: int) -> None:
    """Incompressible bytes, fast: one random 64 MiB block, each copy made unique."""
    block = bytearray(os.urandom(64 * MIB))
    with open(path, "wb") as f:
        written = 0
        counter = 0
        while written < size:
            block[:8] = counter.to_bytes(8, "big")
            n = min(len(block), size - written)
            f.write(memoryview(block)[:n])
            written += n
            counter += 1


def _warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(64 * MIB):
            pass


def _one_shot_decrypt(size: int) -> float:
    """AES-256-GCM one-shot decrypt of ``size`` bytes in memory (cryptography's AESGCM)."""
    from modelseal.crypto.aead import AesGcm
    from modelseal.crypto.secret import SecretBytes

    best = float("inf")
    with AesGcm(SecretBytes(os.urandom(32))) as aead:
        sealed = aead.encrypt(bytes(12), bytes(size))
        for _ in range(3):
            start = time.perf_counter()
            aead.decrypt(bytes(12), sealed)
            best = min(best, time.perf_counter() - start)
        del sealed
    return best


def _gbps(size: int, seconds: float) -> str:
    return f"{size / seconds / 1e9:.2f}"


def run(sizes: list[int], reps_small: int, disk_dir: Path) -> str:
    from modelseal.owner.keys import generate_key, write_key_file

    work = Path(tempfile.mkdtemp(prefix="modelseal-bench-", dir=disk_dir))
    shm = Path(tempfile.mkdtemp(prefix="modelseal-bench-", dir="/dev/shm"))
    dests = {"disk": work, "tmpfs": shm}
    key = work / "bench.key"
    write_key_file(key, generate_key())
    rows: list[str] = []
    cp_cells: dict[tuple[int, str], Cell] = {}
    cells: dict[tuple[int, str, int, int, str], Cell] = {}
    load_before = os.getloadavg()
    try:
        for size in sizes:
            reps = reps_small if size <= GIB else 1
            plain = work / f"plain-{size}"
            _make_plaintext(plain, size)
            for seg in SEGMENTS:
                sealed = work / f"sealed-{size}-{seg}"
                for _rep in range(reps):
                    for workers in WORKERS:
                        for dname, ddir in dests.items():
                            _warm(plain)
                            out = ddir / "sealed-out"
                            t, rss, cpu = _run_child("seal", str(plain), str(out), str(key),
                                                     str(seg), str(workers))  # fmt: skip
                            cell = cells.setdefault((size, "seal", seg, workers, dname), Cell())
                            cell.add(t, cpu, rss)
                            if dname == "disk" and not sealed.exists():
                                os.replace(out, sealed)
                            else:
                                out.unlink()
                    for workers in WORKERS:
                        for dname, ddir in dests.items():
                            _warm(sealed)
                            out = ddir / "plain-out"
                            t, rss, cpu = _run_child("unseal", str(sealed), str(out),
                                                     str(key), str(seg), str(workers))  # fmt: skip
                            cell = cells.setdefault((size, "unseal", seg, workers, dname), Cell())
                            cell.add(t, cpu, rss)
                            out.unlink()
                            _warm(plain)
                            cp_out = ddir / "cp-out"
                            cp_cells.setdefault((size, dname), Cell()).add(*_cp(plain, cp_out))
                            cp_out.unlink()
                sealed.unlink()
            plain.unlink()
        one_shot = _one_shot_decrypt(min(sizes[0], GIB))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(shm, ignore_errors=True)
    load_after = os.getloadavg()

    def label(n: int) -> str:
        return f"{n // GIB} GiB" if n >= GIB else f"{n // MIB} MiB"

    rows.append(
        "| size | op | segment | workers | destination | best s | median s | GB/s (best)"
        " | × cp (median) | × cp (best) | CPU s (median) | CPU × cp | peak RSS MiB |"
    )
    rows.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (size, op, seg, workers, dname), cell in cells.items():
        cp = cp_cells[(size, dname)]
        rows.append(
            f"| {label(size)} | {op} | {seg // MIB} MiB | {workers} | {dname} | {cell.best:.3f}"
            f" | {cell.median:.3f} | {_gbps(size, cell.best)} | {cell.median / cp.median:.2f}"
            f" | {cell.best / cp.best:.2f} | {cell.cpu_median:.3f}"
            f" | {cell.cpu_median / cp.cpu_median:.2f} | {cell.rss_mib:.0f} |"
        )
    for (size, dname), cp in cp_cells.items():
        rows.append(
            f"| {label(size)} | `cp` plaintext | – | 1 | {dname} | {cp.best:.3f} | {cp.median:.3f}"
            f" | {_gbps(size, cp.best)} | 1.00 | 1.00 | {cp.cpu_median:.3f} | 1.00 | – |"
        )
    first = min(sizes[0], GIB)
    rows.append(
        f"| {label(first)} | one-shot `AESGCM.decrypt` in memory | – | 1 | – | {one_shot:.3f} |"
        f" – | {_gbps(first, one_shot)} | – | – | – | – | – |"
    )

    summary: list[str] = []
    if GIB in sizes:
        for seg in SEGMENTS:
            cell = cells[(GIB, "unseal", seg, 2, "tmpfs")]
            cp = cp_cells[(GIB, "tmpfs")]
            summary.append(
                f"- 1 GiB unseal, 2 workers, {seg // MIB} MiB segments, into tmpfs: "
                f"median {cell.median:.3f} s = **{cell.median / cp.median:.2f}× `cp`** "
                f"(median {cp.median:.3f} s); best {cell.best:.3f} s = "
                f"{cell.best / cp.best:.2f}× `cp` best {cp.best:.3f} s (target ≤ 1.15×); "
                f"CPU {cell.cpu_median:.3f} s = {cell.cpu_median / cp.cpu_median:.2f}× `cp`."
            )
    big = [c for (size, op, *_), c in cells.items() if op == "unseal" and size >= 4 * GIB]
    if big:
        summary.append(
            f"- 4 GiB unseal peak RSS (largest over all cells): "
            f"**{max(c.rss_mib for c in big):.0f} MiB** (target < 256 MiB)."
        )
    env = (
        f"{platform.machine()}, {os.cpu_count()} vCPU, Python {platform.python_version()}, "
        f"load average before/after: {load_before[0]:.1f} / {load_after[0]:.1f}"
    )
    reps_note = f"{reps_small} repetition(s) per 1 GiB cell, 1 per 4 GiB cell"
    return "\n".join(
        [
            f"Command: `{CMD}` (sizes `MODELSEAL_BENCH_SIZES`, default 1,4 GiB). {env}; "
            f"{reps_note}. Source files are in the page cache (read once before every run); "
            "disk destination = /var/tmp on the root block device, no fsync (like `cp`); "
            "tmpfs = /dev/shm. Each seal/unseal is a child process timed from inside "
            "(interpreter start excluded); peak RSS = the child's `VmHWM`. `cp` runs "
            "interleaved with the unseal runs of each cell. Unseal `pread`s each sealed segment "
            "into a per-worker buffer, decrypts it in place and `pwrite`s authenticated "
            "plaintext into a temporary file renamed at the end (no mmap: a sealed file "
            "truncated under a mapping would kill the reader with SIGBUS).",
            "",
            *summary,
            "",
            "How to read this: the wall-clock ratios depend on how much of the 2 vCPUs the run "
            "gets; this machine is shared with other jobs (see the load average), and under "
            "contention the wall ratio approaches the *CPU* ratio. `CPU × cp` is the "
            "load-independent cost: unseal does the same two copies as `cp` (page cache → "
            "user, user → tmpfs) plus AES-GCM. With 2 workers "
            "the AES of one segment runs while the other worker's `pwrite` holds the tmpfs "
            "inode lock, so on two otherwise idle cores the wall time can drop to about the "
            "write time alone; one worker cannot beat `cp`. Peak RSS is one segment buffer "
            "per worker plus the interpreter, independent of the file size.",
            "",
            *rows,
        ]
    )


def main() -> None:
    quick = os.environ.get("MODELSEAL_BENCH_QUICK") == "1"
    if quick:
        sizes = [64 * MIB]
    else:
        sizes = [int(x) * GIB for x in os.environ.get("MODELSEAL_BENCH_SIZES", "1,4").split(",")]
    reps = int(os.environ.get("MODELSEAL_BENCH_REPS", "1" if quick else "3"))
    disk = Path(os.environ.get("MODELSEAL_BENCH_DIR", "/var/tmp"))
    md = run(sizes, reps, disk)
    print(md)
    if not quick:
        from bench.report import write_section

        write_section(TITLE, md)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        raise SystemExit(_child(sys.argv[2:]))
    main()
