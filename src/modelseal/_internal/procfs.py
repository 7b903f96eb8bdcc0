"""Bounded reads of what the kernel says about this process: its mounts and its memory cgroup.

The one place that probes ``/proc/self`` and ``/sys/fs/cgroup``. Every read is bounded and
every value is parsed strictly; a file that is missing, oversized or not in the kernel's
format means "not known", never an exception, so a caller can only be less strict than it
would be with the answer, never crash for lack of it.

Memory cgroups matter to the loader because the pages of a tmpfs, a ramfs or a
``memfd`` are charged to the memory cgroup of the process that writes them and cannot be
reclaimed (there is no swap in a TEE worth the name), while file-backed page cache is
charged too but reclaimed under pressure. A load that does not fit under the cgroup's limit
is killed by the kernel's OOM killer part-way; :func:`memory_limit` lets it refuse up front.
Both hierarchies are read: cgroup v2 (``memory.max``, ``memory.current``) and the cgroup v1
memory controller (``memory.limit_in_bytes``, ``memory.usage_in_bytes``), each found through
``/proc/self/cgroup`` and the cgroup mount's root in ``/proc/self/mountinfo`` (a container
sees its own cgroup as the root of the mount, with or without a cgroup namespace).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "MOUNTINFO_LIMIT",
    "UNLIMITED",
    "CgroupDir",
    "MemoryLimit",
    "MountEntry",
    "memory_cgroups",
    "memory_limit",
    "parse_mount_entries",
    "read_bounded",
    "read_keyed",
    "read_number",
    "unescape",
]

#: the largest /proc/self/mountinfo read (a host with 10,000 mounts has ~1.5 MB)
MOUNTINFO_LIMIT = 16 << 20
#: the largest /proc/self/cgroup or memory.stat read (a few KiB on any kernel)
_SMALL_LIMIT = 64 << 10
#: a limit at or above this means "no limit" (cgroup v1 reports PAGE_COUNTER_MAX pages, ~2**63)
UNLIMITED = 1 << 62
#: cgroup levels walked from this process's cgroup up to the mount root
_MAX_DEPTH = 64
_NUMBER = re.compile(r"[0-9]{1,20}")
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def read_bounded(path: Path, limit: int) -> str | None:
    """The text of ``path`` if it can be read and holds at most ``limit`` bytes, else None."""
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except (OSError, ValueError):  # ValueError: a NUL in the path
        return None
    if len(data) > limit:
        return None
    return data.decode("utf-8", errors="replace")


def unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal ``\\ooo``."""
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


@dataclass(frozen=True)
class MountEntry:
    """One line of ``/proc/<pid>/mountinfo`` (the fields modelseal uses)."""

    #: the directory of the filesystem mounted here (a cgroup's path for a cgroup mount)
    root: str
    mount_point: str
    fs_type: str
    super_options: tuple[str, ...]


def parse_mount_entries(text: str) -> list[MountEntry]:
    """Every well-formed line of a mountinfo file, in mount order; malformed lines skipped."""
    mounts: list[MountEntry] = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        rest = right.split()
        if len(fields) < 5 or not rest:
            continue
        options = tuple(rest[2].split(",")) if len(rest) > 2 else ()
        mounts.append(MountEntry(unescape(fields[3]), unescape(fields[4]), rest[0], options))
    return mounts


@dataclass(frozen=True)
class CgroupDir:
    """This process's cgroup in one hierarchy that carries the memory controller."""

    version: int
    #: the cgroup's directory
    path: Path
    #: where that hierarchy is mounted (the top of what this process can see)
    mount_point: Path


def _process_cgroups(text: str) -> tuple[str | None, str | None]:
    """The cgroup v2 path and the v1 memory controller's path in ``/proc/self/cgroup``."""
    unified: str | None = None
    memory: str | None = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3 or not parts[2].startswith("/"):
            continue
        if parts[0] == "0" and parts[1] == "":
            unified = parts[2]
        elif "memory" in parts[1].split(","):
            memory = parts[2]
    return unified, memory


def _inside(root: Path, mount: MountEntry, cgroup: str) -> Path | None:
    """The directory of ``cgroup`` under ``mount``, if the mount shows it."""
    if ".." in cgroup.split("/") or ".." in mount.mount_point.split("/"):
        return None
    top = mount.root.rstrip("/")
    if cgroup != top and not cgroup.startswith(top + "/"):
        return None
    rel = cgroup[len(top) :].strip("/")
    base = root / mount.mount_point.lstrip("/")
    return base / rel if rel else base


def _v2_has_memory(top: Path) -> bool:
    """Whether the memory controller is bound to the cgroup v2 hierarchy mounted at ``top``
    (a hybrid system keeps it on v1 and leaves the unified hierarchy without it)."""
    controllers = read_bounded(top / "cgroup.controllers", _SMALL_LIMIT)
    return controllers is not None and "memory" in controllers.split()


def memory_cgroups(root: Path = Path("/")) -> list[CgroupDir]:
    """This process's cgroups that can carry memory limits, v2 first (``root``: a fake tree
    for tests; the real one is ``/``)."""
    cgroup_text = read_bounded(root / "proc/self/cgroup", _SMALL_LIMIT)
    mountinfo = read_bounded(root / "proc/self/mountinfo", MOUNTINFO_LIMIT)
    if cgroup_text is None or mountinfo is None:
        return []
    unified, memory = _process_cgroups(cgroup_text)
    found: list[CgroupDir] = []
    for mount in parse_mount_entries(mountinfo):
        if mount.fs_type == "cgroup2" and unified is not None:
            if not _v2_has_memory(root / mount.mount_point.lstrip("/")):
                continue
            version, path = 2, _inside(root, mount, unified)
        elif mount.fs_type == "cgroup" and "memory" in mount.super_options and memory:
            version, path = 1, _inside(root, mount, memory)
        else:
            continue
        top = root / mount.mount_point.lstrip("/")
        if path is not None and path.is_dir() and all(c.path != path for c in found):
            found.append(CgroupDir(version, path, top))
    return sorted(found, key=lambda c: -c.version)


@dataclass(frozen=True)
class MemoryLimit:
    """The memory limit of one cgroup level and what is charged there that stays charged."""

    #: the limit in bytes
    limit: int
    #: charged bytes the kernel cannot reclaim without swap: usage minus file page cache
    in_use: int
    #: the file that sets the limit (for messages)
    source: Path

    @property
    def headroom(self) -> int:
        """Bytes that may still be charged before the OOM killer runs."""
        return max(0, self.limit - self.in_use)


def read_number(path: Path) -> int | None:
    """The decimal number a cgroup file holds, or None (unreadable, ``max``, anything else)."""
    text = read_bounded(path, 64)
    if text is None or not _NUMBER.fullmatch(text.strip()):
        return None
    return int(text.strip())


def read_keyed(path: Path, keys: tuple[str, ...]) -> dict[str, int] | None:
    """The ``key value`` lines of a cgroup file (``memory.stat``, ``memory.events``) whose key
    is one of ``keys`` and whose value is a number; None if the file cannot be read."""
    text = read_bounded(path, _SMALL_LIMIT)
    if text is None:
        return None
    found: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key in keys and _NUMBER.fullmatch(value.strip()):
            found[key] = int(value.strip())
    return found


_FILES = {
    2: ("memory.max", "memory.current", ("active_file", "inactive_file")),
    1: (
        "memory.limit_in_bytes",
        "memory.usage_in_bytes",
        ("total_active_file", "total_inactive_file"),
    ),
}


def _level_limit(version: int, directory: Path) -> MemoryLimit | None:
    limit_name, usage_name, cache_keys = _FILES[version]
    limit = read_number(directory / limit_name)  # "max" (v2's no limit) is not a number
    if limit is None or limit >= UNLIMITED:
        return None
    usage = read_number(directory / usage_name)
    stat = read_keyed(directory / "memory.stat", cache_keys)
    if usage is None or stat is None:
        return None
    return MemoryLimit(limit, max(0, usage - sum(stat.values())), directory / limit_name)


def memory_limit(root: Path = Path("/")) -> MemoryLimit | None:
    """The tightest memory limit on this process: the least headroom over its cgroup and
    every ancestor it can see, in either hierarchy; None when no limit is known."""
    tightest: MemoryLimit | None = None
    for cgroup in memory_cgroups(root):
        level = cgroup.path
        for _ in range(_MAX_DEPTH):
            found = _level_limit(cgroup.version, level)
            if found is not None and (tightest is None or found.headroom < tightest.headroom):
                tightest = found
            if level == cgroup.mount_point or level.parent == level:
                break
            level = level.parent
    return tightest
