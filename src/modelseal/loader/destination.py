"""Where plaintext may land: memory-backed filesystems only, unless explicitly allowed.

Decrypted weights must never reach a disk the host can read (docs/concepts/threat-model.md).
The kernel knows which filesystem backs a path: ``statfs(2)`` returns its magic number, and
``/proc/self/mountinfo`` names its type and mount point. We trust ``statfs`` when libc is
reachable and fall back to the longest matching mount point (the last one mounted wins when
mounts are stacked) otherwise.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import grp
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from modelseal._internal.procfs import (
    MOUNTINFO_LIMIT,
    MemoryLimit,
    memory_limit,
    parse_mount_entries,
    read_bounded,
)
from modelseal.errors import ConfigError, DestinationTooSmall, UnsafeDestination

#: filesystem types whose pages live only in RAM (and swap, which a TEE encrypts)
MEMORY_FS_TYPES = frozenset({"tmpfs", "ramfs"})
_MAGIC_TO_TYPE = {0x01021994: "tmpfs", 0x858458F6: "ramfs"}
#: prefix of the private work directory created inside the destination
TEMP_PREFIX = ".modelseal-tmp-"
#: directory inside the destination holding the receipt and the ready marker
META_DIR = ".modelseal"


#: group- and world-writable and executable bits a plaintext file never gets
_FORBIDDEN_BITS = 0o7133


@dataclass(frozen=True)
class FileModes:
    """Permission bits (and optionally the group) of what the loader places.

    The default, 0640 files in 0750 directories, lets the inference container read the
    model when it shares the loader's group (Kubernetes ``fsGroup`` makes a shared
    ``emptyDir`` setgid, so every file the loader creates carries that group) and keeps
    every other user out. ``0600`` serves a server running as the loader's own user.
    ``group`` gives every placed file and directory that group, for a loader running as
    root next to a server of another UID without ``fsGroup``.
    """

    file: int = 0o640
    group: int | None = None

    def __post_init__(self) -> None:
        if self.file & _FORBIDDEN_BITS or not self.file & 0o400:
            raise ConfigError(
                f"file mode {self.file:04o}: plaintext must be readable by its owner and "
                "never writable by group/others or executable (e.g. 0600, 0640, 0644)"
            )
        if self.group is not None and self.group < 0:
            raise ConfigError(f"group {self.group}: not a group id")

    @property
    def directory(self) -> int:
        """The file mode plus search (x) permission wherever it grants read."""
        return 0o700 | self.file | ((self.file & 0o044) >> 2)

    @classmethod
    def parse(cls, text: str) -> FileModes:
        """An octal mode such as ``0640`` or ``640``."""
        try:
            return cls(int(text, 8))
        except ValueError:
            raise ConfigError(f"file mode {text!r}: expected an octal mode like 0640") from None

    def with_group(self, text: str) -> FileModes:
        """A copy owned by group ``text``: a numeric id or a name from the group database."""
        if text.isdigit():
            return replace(self, group=int(text))
        try:
            return replace(self, group=grp.getgrnam(text).gr_gid)
        except KeyError:
            raise ConfigError(f"group {text!r}: no such group") from None

    def apply_to_file(self, fd: int) -> None:
        """Give an open file exactly these permissions (and group), whatever the umask."""
        self._chown(lambda gid: os.fchown(fd, -1, gid))
        os.fchmod(fd, self.file)

    def apply_to_directory(self, path: Path) -> None:
        """Give a directory the matching permissions (and group)."""
        self._chown(lambda gid: os.chown(path, -1, gid))
        os.chmod(path, self.directory)

    def _chown(self, chown: Callable[[int], None]) -> None:
        if self.group is None:
            return
        try:
            chown(self.group)
        except PermissionError:
            raise ConfigError(
                f"cannot give the model files group {self.group}: run the loader as root or "
                "as a member of that group (or use the pod's fsGroup instead of --group)"
            ) from None


@dataclass(frozen=True)
class Destination:
    """A checked destination directory and what backs it."""

    path: Path
    fs_type: str
    mount_point: str
    memory_backed: bool
    free_bytes: int


def parse_mountinfo(text: str) -> list[tuple[str, str]]:
    """``(mount_point, fs_type)`` per line of ``/proc/<pid>/mountinfo``, in mount order."""
    return [(m.mount_point, m.fs_type) for m in parse_mount_entries(text)]


def mount_for(path: Path, mounts: list[tuple[str, str]]) -> tuple[str, str]:
    """The mount covering ``path``: longest mount point prefix, the latest on ties."""
    target = str(path)
    best: tuple[str, str] | None = None
    for mount_point, fs_type in mounts:
        prefix = mount_point.rstrip("/") + "/"
        if (target == mount_point or target.startswith(prefix) or mount_point == "/") and (
            best is None or len(mount_point) >= len(best[0])
        ):
            best = (mount_point, fs_type)
    if best is None:
        raise UnsafeDestination(f"{path}: no mount found in /proc/self/mountinfo")
    return best


class _Statfs(ctypes.Structure):
    # struct statfs: f_type is the first word; the tail is oversized on purpose
    _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 256)]


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library already mapped into this process (``dlopen(NULL)``).

    Not ``ctypes.util.find_library``: that runs ``ldconfig -p`` in a child process, twice
    per load, on the initContainer's critical path.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.statfs  # noqa: B018 - resolve the symbol now; AttributeError if absent
    except (OSError, AttributeError):
        return None
    return libc


def statfs_type(path: Path) -> str | None:
    """Filesystem type from ``statfs(2)``'s magic (``tmpfs``/``ramfs``/``other``), or None."""
    libc = _libc()
    if libc is None:
        return None
    try:
        buf = _Statfs()
        if libc.statfs(os.fsencode(str(path)), ctypes.byref(buf)) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return _MAGIC_TO_TYPE.get(buf.f_type & 0xFFFFFFFF, "other")


def _existing_ancestor(path: Path) -> Path:
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    return probe


def inspect_destination(path: Path) -> Destination:
    """Describe the filesystem that backs ``path`` (or its nearest existing ancestor)."""
    resolved = Path(os.path.realpath(_existing_ancestor(path.absolute())))
    mountinfo = read_bounded(Path("/proc/self/mountinfo"), MOUNTINFO_LIMIT)
    if mountinfo is None:
        raise UnsafeDestination("cannot read /proc/self/mountinfo")
    mount_point, fs_type = mount_for(resolved, parse_mountinfo(mountinfo))
    kernel_type = statfs_type(resolved)
    memory = fs_type in MEMORY_FS_TYPES if kernel_type is None else kernel_type != "other"
    if kernel_type is not None and kernel_type != "other":
        fs_type = kernel_type
    st = os.statvfs(resolved)
    return Destination(
        path=path.absolute(),
        fs_type=fs_type,
        mount_point=mount_point,
        memory_backed=memory,
        free_bytes=st.f_bavail * st.f_frsize,
    )


def check_destination(path: Path, *, allow_disk: bool, needed_bytes: int = 0) -> Destination:
    """Refuse a destination that is not memory-backed (unless allowed) or too small.

    Raises ``UnsafeDestination`` (exit 6). ``needed_bytes`` is the plaintext size about to be
    written; checking it up front, against the free space and (memory-backed) against this
    process's memory cgroup limit, avoids filling the pod's memory limit half-way.
    """
    dest = inspect_destination(path)
    if not dest.memory_backed and not allow_disk:
        raise UnsafeDestination(
            f"{path} is on {dest.fs_type} (mounted at {dest.mount_point}), not tmpfs/ramfs: "
            "decrypted weights would reach disk"
        )
    if needed_bytes and dest.free_bytes < needed_bytes:
        raise DestinationTooSmall(
            f"{path} has {dest.free_bytes} bytes free but the model needs {needed_bytes}"
        )
    if needed_bytes and dest.memory_backed:
        pages = f"{path} is on {dest.fs_type}, whose pages"
        check_memory_limit(pages, needed_bytes, memory_limit())
    return dest


def check_memory_limit(pages: str, needed_bytes: int, limit: MemoryLimit | None) -> None:
    """Refuse ``needed_bytes`` of memory-backed plaintext that would not fit under ``limit``.

    tmpfs, ramfs and memfd pages are charged to the memory cgroup of the process that
    writes them (this one) and the kernel cannot reclaim them, so a model larger than the
    cgroup's headroom would be OOM-killed part-way, however much free space a tmpfs
    reports. The mount (``modelseal mount``) serves such a model from reclaimable page
    cache instead. ``pages`` names where the plaintext goes, for the message.
    """
    if limit is None or needed_bytes <= limit.headroom:
        return
    raise DestinationTooSmall(
        f"{pages} are charged to this process's memory cgroup: its limit is {limit.limit} "
        f"bytes ({limit.source}) with {limit.in_use} already in use, but the model needs "
        f"{needed_bytes}"
    )


def prepare_destination(path: Path) -> None:
    """Create the destination and remove leftovers of an interrupted earlier load."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"destination {path} exists and is not a directory")
    path.mkdir(parents=True, exist_ok=True)
    for entry in path.iterdir():
        if entry.name.startswith(TEMP_PREFIX):
            wipe_tree(entry)


def wipe_file(path: Path, *, overwrite: bool) -> None:
    """Delete a plaintext file; zero it first when it may sit on a real disk."""
    with contextlib.suppress(FileNotFoundError):
        if overwrite and path.is_file() and not path.is_symlink():
            size = path.stat().st_size
            fd = os.open(path, os.O_WRONLY)
            try:
                zeros = bytes(min(size, 1 << 20) or 1)
                offset = 0
                while offset < size:
                    offset += os.pwrite(fd, zeros[: min(len(zeros), size - offset)], offset)
                os.fsync(fd)
            finally:
                os.close(fd)
        path.unlink()


def wipe_tree(path: Path, *, overwrite: bool = False) -> None:
    """Delete a directory tree of (possibly partial) plaintext; ignores what is gone."""
    if not path.exists() and not path.is_symlink():
        return
    if path.is_file() or path.is_symlink():
        wipe_file(path, overwrite=overwrite)
        return
    if overwrite:
        for root, _dirs, files in os.walk(path):
            for name in files:
                wipe_file(Path(root) / name, overwrite=True)
    shutil.rmtree(path, ignore_errors=True)
