"""The memory cgroup limit read from fake /proc and /sys trees: v1, v2, no limit, garbage."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelseal import errors
from modelseal._internal import procfs
from modelseal.loader.destination import check_memory_limit

MIB = 1 << 20
V2_MOUNT = "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
V1_MOUNT = "31 25 0:27 {root} /sys/fs/cgroup/memory rw - cgroup cgroup rw,relatime,memory\n"
ROOTFS = "22 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"


def fake(tmp_path: Path, cgroup: str, mountinfo: str, files: dict[str, str]) -> Path:
    """A root with /proc/self/{cgroup,mountinfo} and the given files (paths from /)."""
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/cgroup").write_text(cgroup)
    (tmp_path / "proc/self/mountinfo").write_text(ROOTFS + mountinfo)
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


def v2_level(
    path: str, limit: str, current: int, active: int = 0, inactive: int = 0
) -> dict[str, str]:
    return {
        f"{path}/memory.max": f"{limit}\n",
        f"{path}/memory.current": f"{current}\n",
        f"{path}/memory.stat": f"anon 1\nactive_file {active}\ninactive_file {inactive}\n",
    }


def v2_tree(tmp_path: Path, **leaf: str) -> Path:
    """A pod-level limit of 1 GiB above a container without one (v2, as Kubernetes sets)."""
    base = "sys/fs/cgroup/kubepods/pod1"
    files = {
        "sys/fs/cgroup/cgroup.controllers": "cpuset cpu io memory pids\n",
        **v2_level(base, str(1 << 30), 300 * MIB, active=100 * MIB, inactive=50 * MIB),
        **v2_level(f"{base}/ctr", "max", 200 * MIB),
    }
    files.update(leaf)
    return fake(tmp_path, "0::/kubepods/pod1/ctr\n", V2_MOUNT, files)


def test_v2_the_tightest_ancestor_binds_and_file_cache_is_reclaimable(tmp_path: Path) -> None:
    root = v2_tree(tmp_path)
    (found,) = procfs.memory_cgroups(root)
    assert found.version == 2
    assert found.path == root / "sys/fs/cgroup/kubepods/pod1/ctr"
    limit = procfs.memory_limit(root)
    assert limit is not None
    assert limit.limit == 1 << 30
    assert limit.in_use == 150 * MIB  # 300 MiB charged, 150 MiB of it file page cache
    assert limit.headroom == (1 << 30) - 150 * MIB
    assert limit.source == root / "sys/fs/cgroup/kubepods/pod1/memory.max"


def test_v2_a_tighter_leaf_wins(tmp_path: Path) -> None:
    leaf = "sys/fs/cgroup/kubepods/pod1/ctr"
    root = v2_tree(tmp_path, **v2_level(leaf, str(256 * MIB), 200 * MIB, inactive=190 * MIB))
    limit = procfs.memory_limit(root)
    assert limit is not None
    assert (limit.limit, limit.in_use) == (256 * MIB, 10 * MIB)
    assert limit.source == root / leaf / "memory.max"


def test_v2_max_everywhere_is_no_limit(tmp_path: Path) -> None:
    pod = "sys/fs/cgroup/kubepods/pod1"
    assert procfs.memory_limit(v2_tree(tmp_path, **v2_level(pod, "max", 1))) is None


def v1_tree(tmp_path: Path, limit: str, *, usage: str = str(100 * MIB)) -> Path:
    """A container's own memory cgroup shown as the root of the v1 mount (no namespace)."""
    mem = "sys/fs/cgroup/memory"
    files = {
        f"{mem}/memory.limit_in_bytes": limit + "\n",
        f"{mem}/memory.usage_in_bytes": usage + "\n",
        f"{mem}/memory.stat": (
            f"cache 1\nactive_file 7\ntotal_active_file {30 * MIB}\n"
            f"total_inactive_file {20 * MIB}\nhierarchical_memory_limit {limit}\n"
        ),
        # the hybrid layout: a unified hierarchy without the memory controller
        "sys/fs/cgroup/unified/cgroup.controllers": "hugetlb\n",
    }
    mounts = V1_MOUNT.format(root="/docker/abc") + V2_MOUNT.replace(
        "/sys/fs/cgroup ", "/sys/fs/cgroup/unified "
    )
    return fake(tmp_path, "4:memory:/docker/abc\n1:cpu,cpuacct:/docker/abc\n0::/\n", mounts, files)


def test_v1_memory_controller_in_a_hybrid_layout(tmp_path: Path) -> None:
    root = v1_tree(tmp_path, str(512 * MIB))
    (found,) = procfs.memory_cgroups(root)  # the unified hierarchy has no memory controller
    assert found.version == 1
    assert found.path == root / "sys/fs/cgroup/memory"
    limit = procfs.memory_limit(root)
    assert limit is not None
    assert (limit.limit, limit.in_use, limit.headroom) == (512 * MIB, 50 * MIB, 462 * MIB)


def test_v1_page_counter_max_is_no_limit(tmp_path: Path) -> None:
    assert procfs.memory_limit(v1_tree(tmp_path, "9223372036854771712")) is None


@pytest.mark.parametrize(
    "value", ["", "max", "-5", "12abc", "1e9", "0x1000", "\u0661\u0662\u0663", "9" * 25, "1 2"]
)
def test_garbage_limit_is_no_limit(tmp_path: Path, value: str) -> None:
    assert procfs.memory_limit(v1_tree(tmp_path, value)) is None


def test_garbage_usage_is_no_limit(tmp_path: Path) -> None:
    assert procfs.memory_limit(v1_tree(tmp_path, str(512 * MIB), usage="lots")) is None


def test_hostile_huge_files_are_not_read_whole(tmp_path: Path) -> None:
    root = v1_tree(tmp_path, str(512 * MIB))
    stat = root / "sys/fs/cgroup/memory/memory.stat"
    with stat.open("r+b") as f:
        f.truncate(8 << 20)  # sparse: 8 MiB of NULs after the real lines
    assert procfs.memory_limit(root) is None
    with (root / "sys/fs/cgroup/memory/memory.limit_in_bytes").open("wb") as f:
        f.write(b"1" * 4096)
    assert procfs.read_number(root / "sys/fs/cgroup/memory/memory.limit_in_bytes") is None
    with (root / "proc/self/mountinfo").open("r+b") as f:
        f.truncate(procfs.MOUNTINFO_LIMIT + 1)
    assert procfs.memory_cgroups(root) == []


@pytest.mark.parametrize(
    ("cgroup", "mount_root"),
    [
        ("4:memory:/../escape\n", "/"),  # never walks out of the mount
        ("4:memory:/other\n", "/docker/abc"),  # a cgroup the mount does not show
        ("4:memory\n", "/"),  # malformed line
        ("4:memory:relative\n", "/"),
    ],
)
def test_cgroup_paths_outside_the_mount_are_ignored(
    tmp_path: Path, cgroup: str, mount_root: str
) -> None:
    files = {
        f"sys/fs/cgroup/{where}/memory.limit_in_bytes": "1048576\n"
        for where in ("memory", "memory/other", "escape")
    }
    root = fake(tmp_path, cgroup, V1_MOUNT.format(root=mount_root), files)
    assert procfs.memory_cgroups(root) == []
    assert procfs.memory_limit(root) is None


def test_a_nul_in_a_mount_point_is_no_limit(tmp_path: Path) -> None:
    mounts = "30 25 0:26 / /sys/fs/cg\\000roup rw - cgroup2 cgroup2 rw\n"
    root = fake(tmp_path, "0::/\n", mounts, {})
    assert procfs.memory_cgroups(root) == []


def test_no_proc_no_limit(tmp_path: Path) -> None:
    assert procfs.memory_cgroups(tmp_path) == []
    assert procfs.memory_limit(tmp_path) is None


@settings(max_examples=200, deadline=None)
@given(cgroup=st.text(max_size=200), mountinfo=st.text(max_size=300), value=st.text(max_size=30))
def test_never_raises(
    tmp_path_factory: pytest.TempPathFactory, cgroup: str, mountinfo: str, value: str
) -> None:
    root = tmp_path_factory.mktemp("fuzz")
    files = {"sys/fs/cgroup/memory/memory.limit_in_bytes": value}
    procfs.memory_limit(fake(root, cgroup, mountinfo, files))


def test_mountinfo_escapes_and_fields() -> None:
    (_rootfs, entry) = procfs.parse_mount_entries(
        ROOTFS + "41 27 0:41 /a\\040b /mnt/with\\040space rw - tmpfs tmpfs rw,size=10k\n"
    )
    assert entry == procfs.MountEntry("/a b", "/mnt/with space", "tmpfs", ("rw", "size=10k"))
    assert procfs.unescape("\\134x\\011\\089") == "\\x\t\\089"  # 8 and 9 are not octal


def test_load_refuses_a_tmpfs_model_above_the_cgroup_headroom(tmp_path: Path) -> None:
    pages = f"{tmp_path} is on tmpfs, whose pages"
    limit = procfs.memory_limit(v1_tree(tmp_path / "root", str(512 * MIB)))
    assert limit is not None
    check_memory_limit(pages, limit.headroom, limit)  # exactly fits
    check_memory_limit(pages, 1 << 40, None)  # no limit known
    with pytest.raises(errors.DestinationTooSmall) as refused:
        check_memory_limit(pages, limit.headroom + 1, limit)
    assert refused.value.exit_code == 6
    text = refused.value.diagnostics()
    assert str(512 * MIB) in text
    assert "memory.limit_in_bytes" in text
    assert "memory cgroup" in text
    assert "modelseal mount" in text
