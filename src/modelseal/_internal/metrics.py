"""Prometheus metrics of the modelseal servers: every series defined once, and the scrape
endpoint.

The series (names, labels and types are listed in docs/guides/metrics.md):

* ``modelseal_http_request_duration_seconds{server, route, method, status_class}``:
  recorded by the one HTTP edge middleware for every app (KBS RCAR, admin, transfer,
  registry). ``route`` is the route *template* (``/kbs/v0/resource/{path:path}``), never
  the requested path, so a client cannot mint series.
* ``modelseal_attestations_total{tee, result}`` and
  ``modelseal_attestation_verify_duration_seconds{tee}``: every evidence verification, RCAR
  and transfer alike.
* ``modelseal_key_release_decisions_total{key_id, decision, api}``: every release decision.
  ``key_id`` is a label only for keys that exist, and only for the first
  :data:`MAX_KEY_LABELS` distinct ones a process sees; unknown or malformed paths count as
  ``_unknown`` and keys past the cap as ``_other``, so label cardinality is bounded by the
  operator's keys and a constant, never by what requesters send.
* ``modelseal_collateral_lookups_total{tee, source}``: where DCAP collateral came from.
* ``modelseal_kek_token_events_total{event}``: a PKCS#11 KEK token's session lost,
  reopened, or found unavailable.
* ``modelseal_mount_*`` (:data:`MOUNT_COUNTERS`, :data:`MOUNT_GAUGES`): a mount's reads,
  cache, fetches and authentication failures, read from its counters at scrape time
  (:class:`SnapshotCollector`), so the serving path records nothing twice.
* ``modelseal_gateway_*``: the attested TLS gateway's connections by outcome, fresh-evidence
  answers and certificate renewals (counters, every label value one of the constant tuples
  below), and its open connections and certificate times (:data:`GATEWAY_GAUGES`, read from
  the gateway at scrape time). Its requests are ``modelseal_http_request_duration_seconds``
  with ``server="gateway"``.

prometheus-client is in the ``server`` extra. Without it (a verifier used from the command
line, say) recording is a no-op and asking to serve metrics is a :class:`ConfigError`.

Multi-process servers use prometheus-client's multiprocess mode: the supervisor makes an
empty private directory, names it in ``PROMETHEUS_MULTIPROC_DIR`` before the workers start
(each worker then writes its values to memory-mapped files there), and serves the sum over
all files (dead workers' included, so counters never go back).
"""

from __future__ import annotations

import hmac
import logging
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from socketserver import ThreadingMixIn
from types import MappingProxyType, ModuleType
from typing import Any, Final
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from modelseal._internal import environment
from modelseal._internal.urls import is_loopback
from modelseal.errors import ConfigError

log = logging.getLogger(__name__)

_prom: ModuleType | None
_multiprocess: ModuleType | None
try:
    import prometheus_client
    from prometheus_client import multiprocess
except ImportError:  # pragma: no cover - the server extra installs it
    _prom = _multiprocess = None
else:
    # one sample per series: the ``_created`` twins only double what a scrape carries
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    _prom, _multiprocess = prometheus_client, multiprocess

__all__ = [
    "ATTESTATIONS",
    "AVAILABLE",
    "COLLATERAL_LOOKUPS",
    "HTTP_REQUEST_SECONDS",
    "KEK_TOKEN_EVENTS",
    "KEY_RELEASES",
    "MAX_KEY_LABELS",
    "MULTIPROC_ENV",
    "VERIFY_SECONDS",
    "OTHER_KEY",
    "UNKNOWN_KEY",
    "MOUNT_COUNTERS",
    "MOUNT_GAUGES",
    "GATEWAY_CONNECTIONS",
    "GATEWAY_CONNECTION_RESULTS",
    "GATEWAY_DIRECTIONS",
    "GATEWAY_FRESH_EVIDENCE",
    "GATEWAY_FRESH_RESULTS",
    "GATEWAY_GAUGES",
    "GATEWAY_RELAYED_BYTES",
    "GATEWAY_RENEWALS",
    "GATEWAY_RENEWAL_RESULTS",
    "HTTP_METHODS",
    "OTHER_METHOD",
    "MetricsEndpoint",
    "MetricsServer",
    "RequestSeries",
    "SnapshotCollector",
    "check_environment",
    "key_label",
    "method_label",
    "mark_process_dead",
    "prepare_multiprocess_dir",
    "remove_multiprocess_dir",
    "status_class",
]

#: True when prometheus-client is installed (metrics are recorded and can be served)
AVAILABLE: Final = _prom is not None
#: the variable prometheus-client reads, at import, to write values to shared files
MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"

#: distinct ``key_id`` label values one process gives out before using ``_other``
MAX_KEY_LABELS: Final = 1000
UNKNOWN_KEY: Final = "_unknown"
OTHER_KEY: Final = "_other"

_REQUEST_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_REQUEST_BUCKETS_LONG: Final = (2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_VERIFY_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5)
_VERIFY_BUCKETS_LONG: Final = (1.0, 2.5, 5.0, 10.0, 30.0)


class _Null:
    """Stands for a metric when prometheus-client is not installed: records nothing."""

    def labels(self, *_values: str, **_labels: str) -> _Null:
        return self

    def inc(self, _amount: float = 1) -> None:
        return None

    def observe(self, _value: float) -> None:
        return None


def _counter(name: str, doc: str, labels: Iterable[str]) -> Any:
    return _prom.Counter(name, doc, list(labels)) if _prom is not None else _Null()


def _histogram(name: str, doc: str, labels: Iterable[str], buckets: tuple[float, ...]) -> Any:
    if _prom is None:
        return _Null()
    return _prom.Histogram(name, doc, list(labels), buckets=buckets)


HTTP_REQUEST_SECONDS: Final = _histogram(
    "modelseal_http_request_duration_seconds",
    "HTTP requests by server, route template, method and status class: time from the "
    "request to the last byte of the response",
    ("server", "route", "method", "status_class"),
    _REQUEST_BUCKETS + _REQUEST_BUCKETS_LONG,
)
ATTESTATIONS: Final = _counter(
    "modelseal_attestations",
    "Evidence verifications by TEE kind and result (ok, rejected, unsupported, unavailable, error)",
    ("tee", "result"),
)
VERIFY_SECONDS: Final = _histogram(
    "modelseal_attestation_verify_duration_seconds",
    "Time to verify one piece of evidence, by TEE kind (every result)",
    ("tee",),
    _VERIFY_BUCKETS + _VERIFY_BUCKETS_LONG,
)
KEY_RELEASES: Final = _counter(
    "modelseal_key_release_decisions",
    "Key release decisions by key id (existing keys only, capped), decision (allow, deny) "
    "and API (rcar, transfer)",
    ("key_id", "decision", "api"),
)
COLLATERAL_LOOKUPS: Final = _counter(
    "modelseal_collateral_lookups",
    "DCAP collateral lookups by TEE type and where the set came from (bundle, cache: hits; "
    "pccs: a miss, downloaded; stale, missing, pccs_error)",
    ("tee", "source"),
)
KEK_TOKEN_EVENTS: Final = _counter(
    "modelseal_kek_token_events",
    "PKCS#11 KEK token events: session_lost (an operation found the session gone), "
    "reopened (a new session logged in), unavailable (a reopen failed: calls answer 503)",
    ("event",),
)

_key_labels: set[str] = set()
_key_labels_lock = threading.Lock()


def key_label(key_id: str | None, *, exists: bool) -> str:
    """The ``key_id`` label value for a release decision: the id of an existing key while
    fewer than :data:`MAX_KEY_LABELS` have been labelled, else ``_other``; ``_unknown``
    for a path that names no key (requesters choose those)."""
    if key_id is None or not exists:
        return UNKNOWN_KEY
    if key_id in _key_labels:
        return key_id
    with _key_labels_lock:
        if key_id in _key_labels:
            return key_id
        if len(_key_labels) >= MAX_KEY_LABELS:
            return OTHER_KEY
        _key_labels.add(key_id)
    return key_id


def status_class(status: int) -> str:
    """``2xx``, ``4xx``, ...: the bounded form of a status code."""
    return f"{status // 100}xx" if 100 <= status <= 599 else "other"


#: the ``method`` label values of :data:`HTTP_REQUEST_SECONDS`; any other method counts as
#: :data:`OTHER_METHOD` (clients choose methods, so they never become label values)
HTTP_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
OTHER_METHOD: Final = "OTHER"


def method_label(method: str) -> str:
    """The bounded form of a request method: a standard one, else ``OTHER``."""
    return method if method in HTTP_METHODS else OTHER_METHOD


class RequestSeries:
    """The :data:`HTTP_REQUEST_SECONDS` children one server records into, each resolved
    once: ``labels()`` takes a lock and builds tuples, too much for every request. The
    labels are bounded by the caller (route templates or constants, :func:`method_label`),
    so the cache is too. Two threads resolving the same child at once get the same one."""

    def __init__(self, server: str) -> None:
        self.server = server
        self._children: dict[tuple[str, str, int], Any] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status // 100)
        child = self._children.get(key)
        if child is None:
            child = HTTP_REQUEST_SECONDS.labels(self.server, route, method, status_class(status))
            self._children[key] = child
        child.observe(seconds)


# -- multiprocess mode -----------------------------------------------------------------------


def prepare_multiprocess_dir() -> Path:
    """A fresh private directory for the workers' metric files, named in the environment
    (so the workers started after this see it). The caller removes it at the end."""
    path = Path(tempfile.mkdtemp(prefix="modelseal-metrics-"))
    environment.export(MULTIPROC_ENV, str(path))
    return path


def check_environment(named: str | None = None) -> None:
    """Refuse to start with ``PROMETHEUS_MULTIPROC_DIR`` (``named``, default: this process's)
    naming no directory: every value this process records would then fail, and with it
    every request."""
    if named is None:
        named = environment.variable(MULTIPROC_ENV)
    if named is not None and not Path(named).is_dir():
        raise ConfigError(f"{MULTIPROC_ENV}={named} is not a directory (unset it or create it)")


def mark_process_dead(pid: int, path: Path) -> None:
    """Drop a dead worker's live-gauge files (its counters and histograms stay counted)."""
    if _multiprocess is not None:
        _multiprocess.mark_process_dead(pid, str(path))


def remove_multiprocess_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


#: a mount's counters: series name (``_total`` is appended) -> (its counter, help)
MOUNT_COUNTERS: Final[dict[str, tuple[str, str]]] = {
    "modelseal_mount_reads": ("reads", "FUSE reads answered with authenticated plaintext"),
    "modelseal_mount_read_bytes": ("bytes_read", "Plaintext bytes returned to the kernel"),
    "modelseal_mount_cache_hits": (
        "cache_hits",
        "Segment lookups answered from the decrypted-segment cache",
    ),
    "modelseal_mount_cache_misses": (
        "cache_misses",
        "Segment lookups that fetched the segment or waited for its fetch",
    ),
    "modelseal_mount_fetched_segments": (
        "segments_fetched",
        "Sealed segments fetched (authenticated or not)",
    ),
    "modelseal_mount_fetched_bytes": (
        "sealed_bytes_fetched",
        "Sealed bytes fetched from the registry or the sealed directory",
    ),
    "modelseal_mount_readahead_runs": ("readahead_runs", "Read-ahead fetches started"),
    "modelseal_mount_authentication_failures": (
        "auth_failures",
        "Segments that failed authentication: the reads that needed them got EIO",
    ),
    "modelseal_mount_fetch_failures": (
        "fetch_failures",
        "Fetches that failed: the reads that needed them got EIO",
    ),
}
#: a mount's gauges: series name -> (its value, help)
MOUNT_GAUGES: Final[dict[str, tuple[str, str]]] = {
    "modelseal_mount_cached_bytes": (
        "cached_bytes",
        "Decrypted bytes held in the mount's segment cache (the page cache holds more)",
    ),
}


#: how a gateway connection ended (``modelseal_gateway_connections_total{result}``): served
#: (the exchange ended normally), refused_limit (over --max-connections, closed unread),
#: handshake_failed (no TLS session: plain TCP, a client that refused the certificate, a
#: probe), malformed (a request head h11 could not parse, answered 400), timed_out (an idle
#: keep-alive connection or a stalled peer), aborted (the client reset the connection or
#: broke TLS or HTTP framing mid-exchange), cut_off (the upstream broke off or garbled a
#: response under way), error (anything else: a bug, or evidence that could not be made)
GATEWAY_CONNECTION_RESULTS: Final = (
    "served",
    "refused_limit",
    "handshake_failed",
    "malformed",
    "timed_out",
    "aborted",
    "cut_off",
    "error",
)
GATEWAY_CONNECTIONS: Final = _counter(
    "modelseal_gateway_connections",
    "Attested TLS gateway connections by how they ended ("
    + ", ".join(GATEWAY_CONNECTION_RESULTS)
    + ")",
    ("result",),
)
#: fresh-evidence requests: ok (evidence made for the nonce), rejected (not a bodiless GET,
#: or no valid nonce: 400/405), error (the TEE did not produce evidence)
GATEWAY_FRESH_RESULTS: Final = ("ok", "rejected", "error")
GATEWAY_FRESH_EVIDENCE: Final = _counter(
    "modelseal_gateway_fresh_evidence",
    "Fresh-evidence requests to the gateway by result (ok, rejected, error)",
    ("result",),
)
#: body bytes the gateway relayed: request (client to upstream), response (upstream to client)
GATEWAY_DIRECTIONS: Final = ("request", "response")
GATEWAY_RELAYED_BYTES: Final = _counter(
    "modelseal_gateway_relayed_bytes",
    "Body bytes relayed by the gateway: request (client to upstream), response (upstream "
    "to client); a body cut off counts what passed",
    ("direction",),
)
#: renewals of the gateway's attested certificate: ok, failed (the old one is still served)
GATEWAY_RENEWAL_RESULTS: Final = ("ok", "failed")
GATEWAY_RENEWALS: Final = _counter(
    "modelseal_gateway_certificate_renewals",
    "Renewals of the gateway's attested certificate by result (ok; failed: the previous "
    "certificate is still served)",
    ("result",),
)
#: a gateway's gauges: series name -> (its value in the gateway's snapshot, help)
GATEWAY_GAUGES: Final[dict[str, tuple[str, str]]] = {
    "modelseal_gateway_open_connections": (
        "open_connections",
        "Client connections the gateway holds now (each takes one of --max-connections)",
    ),
    "modelseal_gateway_connection_limit": (
        "connection_limit",
        "The gateway's --max-connections",
    ),
    "modelseal_gateway_certificate_expiry_timestamp_seconds": (
        "certificate_expiry",
        "When the attested certificate served now, and its evidence, expire (Unix time)",
    ),
    "modelseal_gateway_certificate_renewal_timestamp_seconds": (
        "certificate_renewal",
        "When the attested certificate served now is due for renewal (Unix time; half its "
        "lifetime): well in the past means renewals are failing",
    ),
}


class SnapshotCollector:
    """Counters and gauges read from ``snapshot()`` at every scrape.

    For a component that already keeps its own counters under one lock (the mount's
    :class:`~modelseal.loader.mount.store.Stats`): the series are derived from them when
    scraped, instead of every event being recorded twice on the serving path. A counter
    missing from a snapshot reads 0.
    """

    def __init__(
        self,
        snapshot: Callable[[], Mapping[str, float]],
        counters: Mapping[str, tuple[str, str]],
        gauges: Mapping[str, tuple[str, str]] = MappingProxyType({}),
    ) -> None:
        self._snapshot = snapshot
        self._counters = dict(counters)
        self._gauges = dict(gauges)

    def collect(self) -> Iterator[Any]:
        if _prom is None:
            return
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        values = self._snapshot()
        for name, (key, doc) in self._counters.items():
            yield CounterMetricFamily(name, doc, value=values.get(key, 0))
        for name, (key, doc) in self._gauges.items():
            yield GaugeMetricFamily(name, doc, value=values.get(key, 0))


# -- the scrape endpoint ---------------------------------------------------------------------


@dataclass(frozen=True)
class MetricsEndpoint:
    """Where ``/metrics`` is served and who may read it.

    Metrics name key ids and TEE kinds, so they are for the operator: on loopback by
    default, and off loopback only behind a bearer token (``--metrics-token-file``).
    """

    host: str = "127.0.0.1"
    port: int = 0
    token_file: Path | None = None

    def validated(self) -> MetricsEndpoint:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--metrics-port {self.port} is not a TCP port")
        if not self.host:
            raise ConfigError("--metrics-host must not be empty")
        if not is_loopback(self.host) and self.token_file is None:
            raise ConfigError(
                f"refusing to serve metrics on non-loopback host {self.host!r} without "
                "--metrics-token-file (scrapers then send Authorization: Bearer <token>)"
            )
        if self.token_file is not None:
            self.token()
        if not AVAILABLE:
            raise ConfigError(
                "serving metrics needs prometheus-client (pip install modelseal[server])"
            )
        return self

    def token(self) -> str | None:
        """The bearer token scrapers must send, or None (loopback without a token file)."""
        if self.token_file is None:
            return None
        try:
            token = self.token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read --metrics-token-file {self.token_file}") from exc
        if len(token) < 16 or any(not 0x21 <= ord(c) <= 0x7E for c in token):
            raise ConfigError(
                f"--metrics-token-file {self.token_file} must hold one token of at least 16 "
                "printable ASCII characters"
            )
        return token


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr; a scraper that stalls is dropped after 10 s."""

    timeout = 10

    def log_message(self, format: str, *args: Any) -> None:
        return None


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    """One thread per scrape, none outliving the process."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One debug line instead of socketserver's traceback on stderr: a client that
        connects and idles (before any token check) must not flood the log."""
        log.debug("metrics connection from %s failed", client_address)


class _ThreadingServer6(_ThreadingServer):
    address_family = socket.AF_INET6


WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _guarded(app: WsgiApp, token: str | None) -> WsgiApp:
    """``app`` at ``/metrics`` only, behind ``Authorization: Bearer <token>`` if given."""
    expected = f"Bearer {token}".encode() if token is not None else None

    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found\n"]
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD")])
            return [b"method not allowed\n"]
        if expected is not None:
            sent = str(environ.get("HTTP_AUTHORIZATION", "")).encode("latin-1", "replace")
            if not hmac.compare_digest(sent, expected):
                start_response(
                    "401 Unauthorized",
                    [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")],
                )
                return [b"unauthorized\n"]
        return app(environ, start_response)

    return wsgi


class MetricsServer:
    """``/metrics`` on its own port, served by a thread of this process.

    With ``multiprocess_dir`` it serves the sum over the workers' files (the supervisor of
    a multi-worker KBS); else this process's own registry.
    """

    def __init__(
        self,
        endpoint: MetricsEndpoint,
        *,
        multiprocess_dir: Path | None = None,
        collectors: Iterable[SnapshotCollector] = (),
    ) -> None:
        endpoint = endpoint.validated()
        assert _prom is not None
        assert _multiprocess is not None
        if multiprocess_dir is not None:
            registry = _prom.CollectorRegistry()
            _multiprocess.MultiProcessCollector(registry, path=str(multiprocess_dir))
        else:
            registry = _prom.REGISTRY
        # registered for this server's lifetime only: a process may serve more than once
        self._registry = registry
        #: the collectors registered so far: those, and only those, are unregistered
        self._collectors: list[SnapshotCollector] = []
        try:
            for collector in collectors:
                self._register(collector)
            self._start(registry, endpoint)
        except BaseException:
            self._unregister()
            raise

    def _start(self, registry: Any, endpoint: MetricsEndpoint) -> None:
        assert _prom is not None
        app = _guarded(_prom.make_wsgi_app(registry), endpoint.token())
        server_class = _ThreadingServer6 if ":" in endpoint.host else _ThreadingServer
        try:
            self._server = make_server(
                endpoint.host.strip("[]"),
                endpoint.port,
                app,
                server_class=server_class,
                handler_class=_QuietHandler,
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {endpoint.host}:{endpoint.port}: {exc.strerror}"
            ) from None
        self.host = endpoint.host
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        """``http://HOST:PORT/metrics`` as a scraper reaches it (the port may have been
        chosen by the kernel; an IPv6 host in brackets)."""
        host = self.host.strip("[]")
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/metrics"

    @contextmanager
    def collecting(self, collector: SnapshotCollector) -> Iterator[None]:
        """Serve ``collector``'s series while the block runs: a server bound early (before
        a slow start-up, so that a port in use costs nothing) shows a component's series
        only while that component exists."""
        self._register(collector)
        try:
            yield
        finally:
            self._collectors.remove(collector)
            self._registry.unregister(collector)

    def _register(self, collector: SnapshotCollector) -> None:
        try:
            self._registry.register(collector)
        except ValueError:  # prometheus-client's DuplicateTimeseries
            raise ConfigError(
                "another component of this process already serves these metrics "
                "(one metrics endpoint per mount or gateway)"
            ) from None
        self._collectors.append(collector)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self._unregister()

    def _unregister(self) -> None:
        for collector in self._collectors:
            self._registry.unregister(collector)
        self._collectors.clear()
