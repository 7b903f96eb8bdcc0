"""Child memory cgroups for tests and benchmarks: run processes under a real memory limit.

:func:`memory_cgroup` creates a cgroup below this process's own memory cgroup with a
limit (cgroup v2 ``memory.max`` where the unified hierarchy carries the memory controller,
else the v1 controller's ``memory.limit_in_bytes``), runs commands inside it, reads the
peak charge and the OOM kills, and removes it afterwards, killing whatever still runs in it.

Joining is race-free: a command starts as ``sh -c 'echo $$ > cgroup.procs && exec ...'``,
so the shell moves itself into the cgroup and only then replaces itself with the command
(same pid). Every byte the command allocates, every tmpfs page it writes and every child it
forks is charged to the cgroup from its first instruction. Writing the pid after ``Popen``
returned would race with the command: what it allocated or forked before the write would
stay charged to (or run in) the parent cgroup.

A machine without a writable memory cgroup (not root, a read-only ``/sys/fs/cgroup``, a
v2 parent with processes that cannot delegate the memory controller) raises
:class:`CgroupUnavailable` with the reason: tests turn that into a skip, since it is what
the environment allows, not a failure of the code under test.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelseal._internal.procfs import memory_cgroups, read_keyed, read_number

#: moves the shell into the cgroup whose cgroup.procs is $0, then becomes the command
JOIN = 'echo $$ > "$0" && exec "$@"'


class CgroupUnavailable(RuntimeError):
    """No memory cgroup can be created here; the message says why."""


@dataclass
class MemoryCgroup:
    """A child memory cgroup this process created (and removes)."""

    path: Path
    version: int
    limit: int
    started: list[subprocess.Popen[str]] = field(default_factory=list)

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` as a command that joins this cgroup before it runs."""
        return ["sh", "-c", JOIN, str(self.path / "cgroup.procs"), *argv]

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[str]:
        """Start ``argv`` inside the cgroup (``kwargs`` as for ``subprocess.Popen``)."""
        process = subprocess.Popen(self.command(argv), text=True, **kwargs)
        self.started.append(process)
        return process

    def run(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the cgroup to completion, output captured."""
        return subprocess.run(
            self.command(argv), text=True, capture_output=True, check=False, **kwargs
        )

    def peak(self) -> int | None:
        """The most memory ever charged to the cgroup, in bytes (None if the kernel has no
        counter: cgroup v2 before Linux 5.19)."""
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        return read_number(self.path / name)

    def reset_peak(self) -> None:
        """Start the peak counter again from the current charge (v1, and v2 from Linux 6.12)."""
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        with suppress(OSError):
            (self.path / name).write_text("0\n" if self.version == 1 else "reset\n")

    def oom_kills(self) -> int:
        """Processes the OOM killer killed in this cgroup so far."""
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        found = read_keyed(self.path / name, ("oom_kill",))
        if found is None or "oom_kill" not in found:
            raise AssertionError(f"{self.path / name}: no oom_kill counter (kernel < 4.13?)")
        return found["oom_kill"]

    def pids(self) -> list[int]:
        """Processes in the cgroup now."""
        try:
            text = (self.path / "cgroup.procs").read_text()
        except OSError:
            return []
        return [int(line) for line in text.split() if line.isdigit()]

    def remove(self) -> None:
        """Kill what still runs in the cgroup (only processes this test started, by pid),
        wait for it to empty, and remove it."""
        for process in self.started:  # including any still on its way in
            if process.poll() is None:
                process.kill()
            with suppress(subprocess.TimeoutExpired):
                process.communicate(timeout=30)
        deadline = time.monotonic() + 30
        while pids := self.pids():
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.path}: processes {pids} did not die")
            for pid in pids:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        while True:
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:  # EBUSY while the last exits are accounted
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def _write(path: Path, value: str) -> None:
    with path.open("w") as f:
        f.write(value)


def _create(parent: Path, version: int, limit: int) -> MemoryCgroup:
    if version == 2:
        control = parent / "cgroup.subtree_control"
        if "memory" not in control.read_text().split():
            try:
                _write(control, "+memory")
            except OSError as exc:
                raise CgroupUnavailable(
                    f"cannot delegate the memory controller below {parent} ({exc.strerror}: "
                    "cgroup v2 refuses it while that cgroup holds processes)"
                ) from None
    path = parent / f"modelseal-test-{secrets.token_hex(4)}"
    try:
        path.mkdir()
    except OSError as exc:
        raise CgroupUnavailable(f"cannot create a cgroup in {parent}: {exc.strerror}") from None
    group = MemoryCgroup(path, version, limit)
    try:
        if version == 2:
            _write(path / "memory.max", str(limit))
            if (path / "memory.swap.max").exists():
                _write(path / "memory.swap.max", "0")
        else:
            _write(path / "memory.limit_in_bytes", str(limit))
            if (path / "memory.memsw.limit_in_bytes").exists():  # memory + swap: no swap
                _write(path / "memory.memsw.limit_in_bytes", str(limit))
    except OSError as exc:
        group.remove()
        raise CgroupUnavailable(f"cannot set a memory limit in {path}: {exc.strerror}") from None
    return group


@contextmanager
def memory_cgroup(limit: int) -> Iterator[MemoryCgroup]:
    """A fresh child memory cgroup limited to ``limit`` bytes, removed on exit.

    Raises :class:`CgroupUnavailable` when this machine does not allow one.
    """
    found = memory_cgroups()
    if not found:
        raise CgroupUnavailable(
            "no memory cgroup for this process (neither cgroup v2 with the memory "
            "controller nor the v1 memory controller is mounted)"
        )
    reasons = []
    for cgroup in found:  # v2 first
        if not os.access(cgroup.path, os.W_OK):
            reasons.append(f"{cgroup.path} is not writable (needs root or delegation)")
            continue
        try:
            group = _create(cgroup.path, cgroup.version, limit)
        except CgroupUnavailable as exc:
            reasons.append(str(exc))
            continue
        try:
            yield group
        finally:
            group.remove()
        return
    raise CgroupUnavailable("; ".join(reasons))
