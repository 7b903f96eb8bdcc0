"""The loader's textfile: outcome classes, counters that continue across runs, a file that
is not ours, and the checks made before a load starts."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelseal.errors import (
    ConfigError,
    DecryptionError,
    IntegrityError,
    PolicyDenied,
    TokenError,
    TransientError,
    UnsafeDestination,
)
from modelseal.loader.metrics import (
    ByteCounter,
    LoadStats,
    check_textfile_path,
    recording,
    result_of,
    write_textfile,
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _read(path: Path) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(path.read_text())
        for s in family.samples
    }


def _stats(fetched: int, decrypted: int) -> LoadStats:
    stats = LoadStats()
    stats.fetched.add(fetched)
    stats.decrypted.add(decrypted)
    return stats


@pytest.mark.parametrize(
    ("exc", "result"),
    [
        (None, "ok"),
        (ConfigError("x"), "config"),
        (PolicyDenied(reasons=("no",)), "denied"),
        (TokenError("x"), "denied"),
        (IntegrityError("x"), "integrity"),
        (DecryptionError("x"), "integrity"),
        (UnsafeDestination("x"), "unsafe_destination"),
        (TransientError("x"), "transient"),
        (KeyboardInterrupt(), "interrupted"),
        (RuntimeError("bug"), "error"),
    ],
)
def test_results(exc: BaseException | None, result: str) -> None:
    assert result_of(exc) == result


def test_counters_continue_across_runs(tmp_path: Path) -> None:
    path = tmp_path / "loader.prom"
    write_textfile(path, _stats(1000, 900), result="ok", started=100.0, ended=102.5)
    write_textfile(path, _stats(50, 0), result="integrity", started=200.0, ended=201.0)
    write_textfile(path, _stats(10, 0), result="denied", started=300.0, ended=300.5)
    s = _read(path)
    assert s[("modelseal_loader_fetched_bytes_total", ())] == 1060
    assert s[("modelseal_loader_decrypted_bytes_total", ())] == 900
    assert s[("modelseal_loader_runs_total", (("result", "ok"),))] == 1
    assert s[("modelseal_loader_runs_total", (("result", "integrity"),))] == 1
    assert s[("modelseal_loader_runs_total", (("result", "denied"),))] == 1
    assert s[("modelseal_loader_runs_total", (("result", "transient"),))] == 0
    failures = "modelseal_loader_authentication_failures_total"
    assert s[(failures, (("kind", "integrity"),))] == 1
    assert s[(failures, (("kind", "attestation"),))] == 1
    assert s[("modelseal_loader_last_run_timestamp_seconds", ())] == 300.5
    assert s[("modelseal_loader_last_run_duration_seconds", ())] == 0.5
    # the last success is remembered through the failed runs
    assert s[("modelseal_loader_last_success_timestamp_seconds", ())] == 102.5
    assert not list(tmp_path.glob("*.tmp*")), "the file is replaced atomically"


def test_a_file_that_is_not_ours_starts_from_zero(tmp_path: Path) -> None:
    path = tmp_path / "loader.prom"
    path.write_bytes(b"\xff\xfe not metrics {{{\n")
    write_textfile(path, _stats(7, 7), result="ok", started=1.0, ended=2.0)
    assert _read(path)[("modelseal_loader_fetched_bytes_total", ())] == 7
    other = tmp_path / "other.prom"
    other.write_text("modelseal_loader_fetched_bytes_total -5\nunrelated_total 9\n")
    write_textfile(other, _stats(3, 3), result="ok", started=1.0, ended=2.0)
    samples = _read(other)
    assert samples[("modelseal_loader_fetched_bytes_total", ())] == 3
    assert ("unrelated_total", ()) not in samples


def test_recording_writes_on_failure_and_never_hides_it(tmp_path: Path) -> None:
    path = tmp_path / "loader.prom"

    def failing_run() -> None:
        with recording(path) as stats:
            stats.fetched.add(123)
            raise IntegrityError("segment 3 failed authentication")

    with pytest.raises(IntegrityError):
        failing_run()
    s = _read(path)
    assert s[("modelseal_loader_runs_total", (("result", "integrity"),))] == 1
    assert s[("modelseal_loader_fetched_bytes_total", ())] == 123
    # an unwritable textfile is logged, and the run's own outcome stands
    missing = tmp_path / "gone" / "loader.prom"
    with recording(missing) as stats:
        stats.decrypted.add(1)
    assert not missing.exists()


def test_no_textfile_no_write(tmp_path: Path) -> None:
    with recording(None) as stats:
        stats.fetched.add(5)
    assert list(tmp_path.iterdir()) == []


def test_checked_before_loading(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\*\.prom"):
        check_textfile_path(tmp_path / "loader.txt")
    with pytest.raises(ConfigError, match="does not exist"):
        check_textfile_path(tmp_path / "absent" / "loader.prom")
    check_textfile_path(tmp_path / "loader.prom")


def test_byte_counter_is_thread_safe() -> None:
    counter = ByteCounter()

    def add() -> None:
        for _ in range(10_000):
            counter.add(3)

    threads = [threading.Thread(target=add) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counter.value == 120_000


def test_a_servers_multiprocess_dir_is_not_used(tmp_path: Path) -> None:
    """prometheus-client chooses its value store at import: the loader keeps its values in
    memory even when the environment names a (here missing) multiprocess directory."""
    path = tmp_path / "loader.prom"
    code = (
        "from pathlib import Path\n"
        "from modelseal.loader.metrics import LoadStats, write_textfile\n"
        f"write_textfile(Path({str(path)!r}), LoadStats(), result='ok', started=1, ended=2)\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "gone")}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    assert _read(path)[("modelseal_loader_runs_total", (("result", "ok"),))] == 1
