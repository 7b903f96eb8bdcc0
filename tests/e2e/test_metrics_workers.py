"""``kbs serve --workers 2 --metrics-port P``: one scrape of the supervisor sums what every
worker counted, and a worker killed with SIGKILL (then restarted) loses none of its counts."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelseal.quickstart.services import MODELSEAL, Service, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

AUTH = {"version": "0.4.0", "tee": "sample", "extra-params": ""}
ROUTE = "/kbs/v0/auth"


@pytest.fixture
def kbs(tmp_path: Path) -> Iterator[tuple[Service, str]]:
    port, metrics_port = free_port(), free_port()
    service = Service(
        "kbs",
        [
            *MODELSEAL, "kbs", "serve", "--data-dir", str(tmp_path / "kbs"),
            "--port", str(port), "--workers", "2", "--insecure-allow-sample",
            "--log-level", "debug", "--log-format", "json",
            "--metrics-port", str(metrics_port),
        ],
        f"http://127.0.0.1:{port}",
        tmp_path / "kbs.log",
    )  # fmt: skip
    try:
        service.start(timeout=120)
        yield service, f"http://127.0.0.1:{metrics_port}/metrics"
    finally:
        service.stop()


def _auth_count(metrics_url: str) -> float:
    text = httpx.get(metrics_url, timeout=10).text
    for family in text_string_to_metric_families(text):
        if family.name == "modelseal_http_request_duration_seconds":
            return sum(
                s.value
                for s in family.samples
                if s.name.endswith("_count")
                and s.labels.get("route") == ROUTE
                and s.labels.get("status_class") == "2xx"
            )
    return 0.0


def _auth_pids(log: Path) -> set[int]:
    pids = set()
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            doc = json.loads(line)
            if doc.get("http_route") == ROUTE:
                pids.add(int(doc["pid"]))
    return pids


def _auths(url: str, n: int) -> None:
    for _ in range(n):  # a new connection each: the kernel spreads them over the workers
        with httpx.Client(timeout=10) as client:
            assert client.post(url + ROUTE, json=AUTH).status_code == 200


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_workers_are_summed_and_survive_a_kill(kbs: tuple[Service, str]) -> None:
    service, metrics_url = kbs
    _auths(service.url, 24)
    _wait(lambda: len(_auth_pids(service.log_path)) == 2, 10, "not both workers served")
    pids = _auth_pids(service.log_path)
    assert len(pids) == 2, f"both workers should have served some of 24 connections: {pids}"
    assert _auth_count(metrics_url) == 24
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    _wait(
        lambda: "restarting" in service.log_path.read_text(errors="replace"),
        30,
        "the supervisor did not notice the killed worker",
    )
    _auths(service.url, 6)
    # the killed worker's 12-odd requests still count, next to everyone's new ones
    assert _auth_count(metrics_url) == 30
