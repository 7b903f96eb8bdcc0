"""The pipeline's vectored write: every byte lands at its offset, even after short writes."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelseal import errors
from modelseal.loader import pipeline


def _parts() -> list[memoryview]:
    return [memoryview(os.urandom(n)) for n in (5000, 0, 4096, 777)]


@pytest.fixture
def target(tmp_path: Path) -> Iterator[int]:
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    yield fd
    os.close(fd)


def test_one_pwritev_lands_every_part(tmp_path: Path, target: int) -> None:
    parts = _parts()
    pipeline._pwritev_all(target, parts, 100)
    data = (tmp_path / "f").read_bytes()
    assert data[:100] == bytes(100)
    assert data[100:] == b"".join(bytes(p) for p in parts)


@pytest.mark.parametrize("short", [1, 4999, 5000, 5001, 9095, 9096, 9872])
def test_short_writes_are_completed(
    tmp_path: Path, target: int, monkeypatch: pytest.MonkeyPatch, short: int
) -> None:
    """The kernel may write less than asked; the rest goes out part by part, in place."""
    real = os.pwritev

    def partial(fd: int, buffers: list[memoryview], offset: int) -> int:
        joined = b"".join(bytes(b) for b in buffers)[:short]
        return real(fd, [joined], offset)

    monkeypatch.setattr(pipeline.os, "pwritev", partial)
    parts = _parts()
    pipeline._pwritev_all(target, parts, 7)
    assert (tmp_path / "f").read_bytes()[7:] == b"".join(bytes(p) for p in parts)


def test_a_full_destination_is_exit_6(target: int, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, buffers: object, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pipeline.os, "pwritev", full)
    with pytest.raises(errors.UnsafeDestination) as info:
        pipeline._pwritev_all(target, _parts(), 0)
    assert info.value.exit_code == 6


def test_other_write_errors_propagate(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_RDONLY | os.O_CREAT, 0o600)
    try:
        with pytest.raises(OSError) as info:
            pipeline._pwritev_all(fd, _parts(), 0)
    finally:
        os.close(fd)
    assert info.value.errno == errno.EBADF
