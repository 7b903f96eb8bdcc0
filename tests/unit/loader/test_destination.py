"""Destination checks: memory-backed only unless allowed; mountinfo parsing; wiping."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelseal import errors
from modelseal.loader import destination as d

SHM = Path("/dev/shm")
needs_shm = pytest.mark.skipif(
    not SHM.is_dir() or d.statfs_type(SHM) != "tmpfs", reason="/dev/shm is not tmpfs here"
)

MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
25 24 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw
30 25 0:27 / /dev/shm rw,relatime - ext4 /dev/vdb rw
40 27 0:40 / /models rw - ramfs none rw
41 27 0:41 / /mnt/with\\040space rw - tmpfs tmpfs rw
garbage line without separator
"""


def test_parse_mountinfo_and_lookup() -> None:
    mounts = d.parse_mountinfo(MOUNTINFO)
    assert ("/mnt/with space", "tmpfs") in mounts
    assert d.mount_for(Path("/models/x/y"), mounts) == ("/models", "ramfs")
    assert d.mount_for(Path("/modelsX"), mounts) == ("/", "ext4")
    # stacked mounts: the one mounted last wins
    assert d.mount_for(Path("/dev/shm/a"), mounts) == ("/dev/shm", "ext4")
    assert d.mount_for(Path("/mnt/with space/m"), mounts) == ("/mnt/with space", "tmpfs")


@given(st.text(max_size=300))
def test_parse_mountinfo_never_crashes(text: str) -> None:
    for mount_point, fs_type in d.parse_mountinfo(text):
        assert isinstance(mount_point, str)
        assert isinstance(fs_type, str)


@needs_shm
def test_shm_is_memory_backed(tmp_path: Path) -> None:
    with tempfile.TemporaryDirectory(dir=SHM) as shm:
        dest = d.check_destination(Path(shm) / "not" / "yet", allow_disk=False)
        assert dest.memory_backed
        assert dest.fs_type == "tmpfs"


def _disk_dir() -> Path:
    """A directory on a disk-backed filesystem (the repository's own, normally)."""
    here = Path(__file__).resolve().parent
    if d.inspect_destination(here).memory_backed:
        pytest.skip("the repository itself is on tmpfs here")
    return here


def test_disk_is_refused_unless_allowed() -> None:
    disk = _disk_dir() / "nonexistent-dest"
    with pytest.raises(errors.UnsafeDestination) as info:
        d.check_destination(disk, allow_disk=False)
    assert info.value.exit_code == 6
    assert not disk.exists()
    assert not d.check_destination(disk, allow_disk=True).memory_backed


@needs_shm
def test_not_enough_space_is_refused() -> None:
    with pytest.raises(errors.UnsafeDestination, match="bytes free"):
        d.check_destination(SHM, allow_disk=False, needed_bytes=1 << 60)


@needs_shm
def test_prepare_removes_stale_temp_dirs() -> None:
    with tempfile.TemporaryDirectory(dir=SHM) as shm:
        root = Path(shm)
        stale = root / f"{d.TEMP_PREFIX}abc"
        (stale / "sub").mkdir(parents=True)
        (stale / "sub" / "w.bin").write_bytes(b"plaintext")
        (root / "keep.txt").write_text("x")
        d.prepare_destination(root)
        assert not stale.exists()
        assert (root / "keep.txt").exists()


def test_prepare_refuses_a_file(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(errors.ConfigError):
        d.prepare_destination(f)


def test_wipe_tree_overwrites_then_deletes(tmp_path: Path) -> None:
    (tmp_path / "t" / "a").mkdir(parents=True)
    (tmp_path / "t" / "a" / "x").write_bytes(b"secret" * 1000)
    (tmp_path / "t" / "y").write_bytes(b"")
    d.wipe_tree(tmp_path / "t", overwrite=True)
    assert not (tmp_path / "t").exists()
    d.wipe_tree(tmp_path / "t", overwrite=True)  # already gone: no error


@needs_shm
def test_statfs_runs_no_child_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """The filesystem check is a syscall: no ``ldconfig -p`` on the loader's critical path."""
    import subprocess

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"spawned {args!r}")

    monkeypatch.setattr(subprocess.Popen, "__init__", forbidden)
    monkeypatch.setattr(d.os, "posix_spawn", forbidden, raising=False)
    d._libc.cache_clear()
    assert d.statfs_type(SHM) == "tmpfs"
    assert d.statfs_type(Path(tempfile.gettempdir())) in {"tmpfs", "other"}


@pytest.mark.parametrize(
    ("text", "file_mode", "dir_mode"),
    [("0640", 0o640, 0o750), ("600", 0o600, 0o700), ("0644", 0o644, 0o755), ("0400", 0o400, 0o700)],
)
def test_file_modes(text: str, file_mode: int, dir_mode: int) -> None:
    modes = d.FileModes.parse(text)
    assert (modes.file, modes.directory) == (file_mode, dir_mode)


@pytest.mark.parametrize("text", ["0660", "0602", "0740", "4640", "0200", "0o7", "", "-1"])
def test_unsafe_or_malformed_file_modes(text: str) -> None:
    with pytest.raises(errors.ConfigError):
        d.FileModes.parse(text)


def test_group_by_name_or_id() -> None:
    import grp

    name = grp.getgrgid(os.getgid()).gr_name
    assert d.FileModes().with_group(name).group == os.getgid()
    assert d.FileModes(0o600).with_group("4242") == d.FileModes(0o600, group=4242)
    with pytest.raises(errors.ConfigError, match="no such group"):
        d.FileModes().with_group("no-such-group-modelseal")


def test_group_not_permitted_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "fchown", refuse)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with pytest.raises(errors.ConfigError, match="cannot give the model files group 4242"):
            d.FileModes(group=4242).apply_to_file(fd)
    finally:
        os.close(fd)
