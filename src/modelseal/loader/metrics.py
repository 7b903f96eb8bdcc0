"""What one loader run moved and how it ended, as a node-exporter textfile.

The loader is a short-lived process (an initContainer), so nothing could scrape it while it
runs. ``modelseal load --metrics-textfile DIR/modelseal-loader.prom`` writes its series at
exit, atomically (a temporary file renamed over the old one), for the node exporter's
textfile collector (or any sidecar that serves the file) to expose:

* ``modelseal_loader_fetched_bytes_total``: bytes received from the registry, retried
  ranges and headers included;
* ``modelseal_loader_decrypted_bytes_total``: plaintext bytes decrypted and authenticated
  into the destination;
* ``modelseal_loader_runs_total{result}``: runs by outcome (``ok`` or the exit code's
  class: ``config``, ``not_found``, ``denied``, ``integrity``, ``unsafe_destination``,
  ``transient``, ``interrupted``, ``error``);
* ``modelseal_loader_authentication_failures_total{kind}``: ``attestation`` (the KBS
  refused the evidence or its policy denied the key) and ``integrity`` (sealed data, the
  manifest or a segment, failed authentication);
* ``modelseal_loader_last_run_timestamp_seconds``, ``..._last_success_timestamp_seconds``
  and ``..._last_run_duration_seconds`` (gauges).

Counters continue from the values in the file a previous run left (a restarted
initContainer adds to them), so a failure between two scrapes is still seen. A file that
is not ours or not readable starts them from zero.

Pushing to a Pushgateway was the alternative; it needs a network path from inside the TEE
to one more service and keeps stale series after the pod is gone, while a textfile on a
volume the node exporter reads needs neither.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from modelseal._internal import environment
from modelseal.errors import ConfigError, Error

__all__ = ["ByteCounter", "LoadStats", "check_textfile_path", "recording", "write_textfile"]

log = logging.getLogger(__name__)

#: a previous textfile larger than this is not ours: counters start from zero
MAX_PREVIOUS_FILE: Final = 1 << 20
_RESULTS: Final = {
    0: "ok",
    2: "config",
    3: "not_found",
    4: "denied",
    5: "integrity",
    6: "unsafe_destination",
    75: "transient",
    130: "interrupted",
}


class ByteCounter:
    """A byte count that several download threads add to."""

    def __init__(self) -> None:
        self._value = 0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        if n:
            with self._lock:
                self._value += n

    @property
    def value(self) -> int:
        return self._value


@dataclass
class LoadStats:
    """The counts of one run, filled while it runs (so a failed run reports them too)."""

    fetched: ByteCounter = field(default_factory=ByteCounter)
    decrypted: ByteCounter = field(default_factory=ByteCounter)


def check_textfile_path(path: Path) -> None:
    """Refuse, before loading anything, a textfile the collector would not read or a run
    that could not write one."""
    if path.suffix != ".prom":
        raise ConfigError(f"--metrics-textfile {path}: the node exporter reads only *.prom files")
    if not path.parent.is_dir():
        raise ConfigError(f"--metrics-textfile {path}: directory {path.parent} does not exist")
    if importlib.util.find_spec("prometheus_client") is None:
        raise ConfigError(
            "--metrics-textfile needs prometheus-client (pip install modelseal[server])"
        )


def result_of(exc: BaseException | None) -> str:
    """The ``result`` label of a run that ended with ``exc`` (None: success)."""
    if exc is None:
        return "ok"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    code = exc.exit_code if isinstance(exc, Error) else 1
    return _RESULTS.get(code, "error")


def _previous(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The loader's samples in the file an earlier run wrote: (name, labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        if path.stat().st_size > MAX_PREVIOUS_FILE:
            return {}
        text = path.read_text(encoding="utf-8")
        return {
            (point.name, tuple(sorted(point.labels.items()))): float(point.value)
            for family in text_string_to_metric_families(text)
            if family.name.startswith("modelseal_loader_")
            for point in family.samples
            if point.value >= 0
        }
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, ValueError, TypeError) as exc:
        log.warning("metrics textfile %s unreadable (%s); counters start from zero", path, exc)
        return {}


def write_textfile(
    path: Path, stats: LoadStats, *, result: str, started: float, ended: float
) -> None:
    """Write the run's series to ``path`` (atomically), continuing earlier counters."""
    # prometheus-client picks its value store when first imported: a PROMETHEUS_MULTIPROC_DIR
    # meant for some server must not send this one process's values to shared files
    with environment.hidden("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import CollectorRegistry, Counter, Gauge, write_to_textfile

    before = _previous(path)

    def prior(name: str, **labels: str) -> float:
        return before.get((name + "_total", tuple(sorted(labels.items()))), 0.0)

    registry = CollectorRegistry(auto_describe=True)
    fetched = Counter(
        "modelseal_loader_fetched_bytes",
        "Bytes received from the registry (retries and headers included)",
        registry=registry,
    )
    fetched.inc(prior("modelseal_loader_fetched_bytes") + stats.fetched.value)
    decrypted = Counter(
        "modelseal_loader_decrypted_bytes",
        "Plaintext bytes decrypted and authenticated into the destination",
        registry=registry,
    )
    decrypted.inc(prior("modelseal_loader_decrypted_bytes") + stats.decrypted.value)
    runs = Counter("modelseal_loader_runs", "Loader runs by result", ["result"], registry=registry)
    for name in sorted({*_RESULTS.values(), "error"}):
        runs.labels(name).inc(prior("modelseal_loader_runs", result=name) + (name == result))
    failures = Counter(
        "modelseal_loader_authentication_failures",
        "Runs ended by an attestation/policy refusal or by sealed data failing authentication",
        ["kind"],
        registry=registry,
    )
    for kind, ended_so in (("attestation", "denied"), ("integrity", "integrity")):
        failures.labels(kind).inc(
            prior("modelseal_loader_authentication_failures", kind=kind) + (result == ended_so)
        )
    last_run = Gauge(
        "modelseal_loader_last_run_timestamp_seconds",
        "When the last run ended",
        registry=registry,
    )
    last_run.set(ended)
    duration = Gauge(
        "modelseal_loader_last_run_duration_seconds",
        "How long the last run took",
        registry=registry,
    )
    duration.set(max(0.0, ended - started))
    success = Gauge(
        "modelseal_loader_last_success_timestamp_seconds",
        "When a run last succeeded (0: never, as far as this file remembers)",
        registry=registry,
    )
    last_success = before.get(("modelseal_loader_last_success_timestamp_seconds", ()), 0.0)
    success.set(ended if result == "ok" else last_success)
    write_to_textfile(str(path), registry)


@contextmanager
def recording(path: Path | None) -> Iterator[LoadStats]:
    """Count one run and write the textfile at ``path`` when it ends, however it ends.

    A failure to write the file is logged, never raised: it must not hide the run's own
    outcome (nor turn a good load into a failed initContainer)."""
    stats = LoadStats()
    started = time.time()
    outcome: BaseException | None = None
    try:
        yield stats
    except BaseException as exc:
        outcome = exc
        raise
    finally:
        if path is not None:
            try:
                write_textfile(
                    path, stats, result=result_of(outcome), started=started, ended=time.time()
                )
            except (OSError, ValueError) as exc:
                log.warning("could not write the metrics textfile %s: %s", path, exc)
