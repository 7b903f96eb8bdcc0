"""The metrics module: bounded key labels, status classes, the scrape endpoint and its
bearer token, and the multiprocess sum."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modelseal._internal import metrics
from modelseal._internal.metrics import MetricsEndpoint, MetricsServer
from modelseal.errors import ConfigError

TOKEN = "s3cr3t-scrape-token-0123456789abcdef"


def test_key_labels_only_for_existing_keys_and_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "_key_labels", set())
    monkeypatch.setattr(metrics, "MAX_KEY_LABELS", 3)
    assert metrics.key_label("models/a/1", exists=False) == "_unknown"
    assert metrics.key_label(None, exists=True) == "_unknown"
    assert [metrics.key_label(f"models/k/{i}", exists=True) for i in range(3)] == [
        "models/k/0",
        "models/k/1",
        "models/k/2",
    ]
    assert metrics.key_label("models/k/3", exists=True) == "_other"
    # a key already labelled keeps its label after the cap is reached
    assert metrics.key_label("models/k/1", exists=True) == "models/k/1"


@pytest.mark.parametrize(
    ("status", "label"), [(200, "2xx"), (204, "2xx"), (304, "3xx"), (403, "4xx"), (503, "5xx")]
)
def test_status_classes(status: int, label: str) -> None:
    assert metrics.status_class(status) == label


@pytest.mark.parametrize("status", [0, 99, 600, 1000])
def test_status_outside_http_is_other(status: int) -> None:
    assert metrics.status_class(status) == "other"


def test_off_loopback_needs_a_token(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="non-loopback"):
        MetricsEndpoint(host="0.0.0.0", port=9100).validated()
    short = tmp_path / "short"
    short.write_text("too-short\n")
    with pytest.raises(ConfigError, match="at least 16"):
        MetricsEndpoint(host="0.0.0.0", port=9100, token_file=short).validated()
    spaced = tmp_path / "spaced"
    spaced.write_text("a token with spaces inside it\n")
    with pytest.raises(ConfigError, match="printable"):
        MetricsEndpoint(token_file=spaced).validated()
    with pytest.raises(ConfigError, match="cannot read"):
        MetricsEndpoint(token_file=tmp_path / "absent").validated()
    with pytest.raises(ConfigError, match="TCP port"):
        MetricsEndpoint(port=70000).validated()
    good = tmp_path / "token"
    good.write_text(TOKEN + "\n")
    endpoint = MetricsEndpoint(host="0.0.0.0", port=9100, token_file=good).validated()
    assert endpoint.token() == TOKEN


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[str]:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    server = MetricsServer(MetricsEndpoint(port=0, token_file=token_file))
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.close()


def test_scrape_needs_the_exact_token(guarded: str) -> None:
    metrics.ATTESTATIONS.labels("sample", "ok").inc(0)
    r = httpx.get(guarded + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200
    assert "modelseal_attestations_total" in r.text
    assert "# TYPE modelseal_http_request_duration_seconds histogram" in r.text
    for header in (
        None,
        f"Bearer {TOKEN[:-1]}g",  # full length, last byte differs
        f"Bearer {TOKEN}x",
        f"Basic {TOKEN}",
        "Bearer",
    ):
        headers = {"Authorization": header} if header is not None else {}
        r = httpx.get(guarded + "/metrics", headers=headers)
        assert r.status_code == 401, header
        assert r.headers["www-authenticate"] == "Bearer"
        assert "modelseal" not in r.text


def test_only_get_metrics_is_served(guarded: str) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.get(guarded + "/", headers=auth).status_code == 404
    assert httpx.get(guarded + "/metrics/x", headers=auth).status_code == 404
    assert httpx.post(guarded + "/metrics", headers=auth).status_code == 405


def test_loopback_scrape_without_token() -> None:
    server = MetricsServer(MetricsEndpoint(port=0))
    try:
        r = httpx.get(f"http://127.0.0.1:{server.port}/metrics")
        assert r.status_code == 200
        # this process's own registry: the process collector is there
        assert "process_cpu_seconds_total" in r.text or "python_info" in r.text
    finally:
        server.close()


def test_port_in_use_is_a_config_error() -> None:
    server = MetricsServer(MetricsEndpoint(port=0))
    try:
        with pytest.raises(ConfigError, match="cannot serve metrics"):
            MetricsServer(MetricsEndpoint(port=server.port))
    finally:
        server.close()


def _samples(text: str, name: str) -> float:
    """The value of the one sample named ``name`` in an exposition."""
    (value,) = [line.split()[1] for line in text.splitlines() if line.split(" ")[0] == name]
    return float(value)


def test_snapshot_collector_reads_its_counters_at_each_scrape() -> None:
    counts = {"reads": 3, "auth_failures": 1, "cached_bytes": 4096}
    collector = metrics.SnapshotCollector(
        lambda: dict(counts), metrics.MOUNT_COUNTERS, metrics.MOUNT_GAUGES
    )
    server = MetricsServer(MetricsEndpoint(port=0), collectors=[collector])
    url = f"http://127.0.0.1:{server.port}/metrics"
    try:
        first = httpx.get(url).text
        assert _samples(first, "modelseal_mount_reads_total") == 3
        assert _samples(first, "modelseal_mount_authentication_failures_total") == 1
        assert _samples(first, "modelseal_mount_cached_bytes") == 4096
        assert _samples(first, "modelseal_mount_fetch_failures_total") == 0  # not counted yet
        assert "# TYPE modelseal_mount_reads_total counter" in first
        assert "# TYPE modelseal_mount_cached_bytes gauge" in first
        counts["reads"] = 10
        assert _samples(httpx.get(url).text, "modelseal_mount_reads_total") == 10
    finally:
        server.close()
    # unregistered with its server: the next one (another mount in this process) may
    # register the same series, and a server without them does not show them
    again = MetricsServer(MetricsEndpoint(port=0), collectors=[collector])
    again.close()
    plain = MetricsServer(MetricsEndpoint(port=0))
    try:
        assert (
            "modelseal_mount_reads_total"
            not in httpx.get(f"http://127.0.0.1:{plain.port}/metrics").text
        )
    finally:
        plain.close()


def test_a_server_that_cannot_start_unregisters_its_collectors() -> None:
    collector = metrics.SnapshotCollector(dict, metrics.MOUNT_COUNTERS)
    server = MetricsServer(MetricsEndpoint(port=0))
    try:
        with pytest.raises(ConfigError, match="cannot serve metrics"):
            MetricsServer(MetricsEndpoint(port=server.port), collectors=[collector])
        MetricsServer(MetricsEndpoint(port=0), collectors=[collector]).close()
    finally:
        server.close()


def test_a_second_server_of_the_same_series_is_refused_and_leaves_no_trace() -> None:
    mount = metrics.SnapshotCollector(dict, metrics.MOUNT_COUNTERS)
    gateway = metrics.SnapshotCollector(dict, {}, metrics.GATEWAY_GAUGES)
    twin = metrics.SnapshotCollector(dict, metrics.MOUNT_COUNTERS)
    server = MetricsServer(MetricsEndpoint(port=0), collectors=[mount])
    try:
        with pytest.raises(ConfigError, match="already serves these metrics"):
            MetricsServer(MetricsEndpoint(port=0), collectors=[gateway, twin])
    finally:
        server.close()
    # the gateway's collector, registered before the twin was refused, was taken back
    MetricsServer(MetricsEndpoint(port=0), collectors=[gateway, twin]).close()


_WORKER = textwrap.dedent(
    """
    import sys
    from modelseal._internal import metrics
    for _ in range(int(sys.argv[1])):
        metrics.ATTESTATIONS.labels("sample", "ok").inc()
    metrics.VERIFY_SECONDS.labels("sample").observe(0.01)
    """
)


def test_multiprocess_sum_over_processes(tmp_path: Path) -> None:
    """Two processes record into the shared directory; one scrape serves their sum, also
    after both have exited (a restarted worker's counts are not lost)."""
    directory = tmp_path / "mp"
    directory.mkdir()
    env = {**os.environ, metrics.MULTIPROC_ENV: str(directory)}
    for n in (2, 5):
        subprocess.run([sys.executable, "-c", _WORKER, str(n)], env=env, check=True, timeout=60)
    metrics.mark_process_dead(999_999, directory)  # no such worker: a no-op
    server = MetricsServer(MetricsEndpoint(port=0), multiprocess_dir=directory)
    try:
        text = httpx.get(f"http://127.0.0.1:{server.port}/metrics").text
    finally:
        server.close()
    assert 'modelseal_attestations_total{result="ok",tee="sample"} 7.0' in text
    assert 'modelseal_attestation_verify_duration_seconds_count{tee="sample"} 2.0' in text


def test_prepare_multiprocess_dir() -> None:
    previous = os.environ.pop(metrics.MULTIPROC_ENV, None)
    path = metrics.prepare_multiprocess_dir()
    try:
        assert os.environ[metrics.MULTIPROC_ENV] == str(path)
        assert path.is_dir()
        assert list(path.iterdir()) == []
        assert path.stat().st_mode & 0o077 == 0
    finally:
        metrics.remove_multiprocess_dir(path)
        # restored by hand: servers started by later tests inherit this environment
        os.environ.pop(metrics.MULTIPROC_ENV, None)
        if previous is not None:
            os.environ[metrics.MULTIPROC_ENV] = previous
    assert not path.exists()


def test_a_multiprocess_dir_that_is_gone_is_refused(tmp_path: Path) -> None:
    metrics.check_environment(str(tmp_path))
    with pytest.raises(ConfigError, match=metrics.MULTIPROC_ENV):
        metrics.check_environment(str(tmp_path / "gone"))


def test_a_collector_that_cannot_be_registered_leaves_none_registered() -> None:
    """Registration stops at the first collector the registry refuses (its series collide):
    the ones registered before it go too, or the process could never serve them again."""
    first = metrics.SnapshotCollector(dict, metrics.MOUNT_COUNTERS)
    clashing = metrics.SnapshotCollector(dict, metrics.MOUNT_COUNTERS)
    with pytest.raises(ConfigError, match="already serves these metrics"):
        MetricsServer(MetricsEndpoint(port=0), collectors=[first, clashing])
    MetricsServer(MetricsEndpoint(port=0), collectors=[first]).close()


def test_collecting_the_same_series_twice_is_a_config_error() -> None:
    """``collecting`` (a server bound early, a component's series added later) refuses a
    clash as the constructor does, and leaves the first registration in place."""
    server = MetricsServer(MetricsEndpoint(port=0))
    first = metrics.SnapshotCollector(dict, metrics.MOUNT_COUNTERS)
    try:
        with server.collecting(first):
            clashing = metrics.SnapshotCollector(dict, metrics.MOUNT_COUNTERS)
            refused = pytest.raises(ConfigError, match="already serves these metrics")
            with refused, server.collecting(clashing):
                pass
            text = httpx.get(f"http://127.0.0.1:{server.port}/metrics").text
            assert "modelseal_mount_reads_total" in text
        assert (
            "modelseal_mount_reads_total"
            not in httpx.get(f"http://127.0.0.1:{server.port}/metrics").text
        )
    finally:
        server.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "[::1]"])
def test_the_url_is_what_a_scraper_reaches(host: str) -> None:
    try:
        server = MetricsServer(MetricsEndpoint(host=host, port=0))
    except ConfigError:
        pytest.skip("no IPv6 loopback here")
    try:
        expected = "[::1]" if ":" in host else host
        assert server.url == f"http://{expected}:{server.port}/metrics"
        assert httpx.get(server.url).status_code == 200
    finally:
        server.close()
