"""Two KBS replicas on one PostgreSQL, 32 clients, 2,000 releases, ``kill -9`` of one replica
in the middle of the run.

Two ``modelseal kbs serve --database-url ...`` processes share one PostgreSQL database; each
has its own data directory holding copies of the first one's admin credential, token-signing
key and KEK file (tests/e2e/durability/kbs_driver.py, ``KbsCluster``), as an operator's
secret distribution would give every pod the same Secrets. The load process plays 32 TEE
clients behind a client-side load balancer: every release opens and attests its session on
one replica and fetches the key from the *other* one (sample TEE, fresh TEE key and nonce
each time; the JWE is decrypted and compared with the key that was put). Meanwhile one admin
client keeps putting new keys through either replica.

When half of the releases are done one replica (chosen by the seed) is killed with SIGKILL
and stays down to the end. A request that fails in transport (connection refused or cut) or
with a 5xx marks that replica down in the balancer until its /healthz answers again, and the
release is retried from the start (a new session) on what is left, up to ``ATTEMPTS`` times;
a release that never succeeds counts as an error, and so does any 4xx.

After the run the killed replica is restarted and:

- a nonce consumed on one replica is replayed on the other: 401 is required (both ways);
- the durability checker of the kill -9 suite runs (every acknowledged key reads back with its
  bytes, every acknowledged release has its ``allow`` row in the audit log, ``modelseal kbs
  audit --verify`` passes, releases work through both replicas).

Run: ``python -m bench replicas_bench`` (environment: REPLICAS_BENCH_CLIENTS (32),
REPLICAS_BENCH_RELEASES (2000), REPLICAS_BENCH_SEED (0)); ``python -m bench.replicas_bench``
prints without touching docs/benchmarks.md. Needs the PostgreSQL server binaries
(scripts/system-packages.txt).
"""

from __future__ import annotations

import contextlib
import os
import platform
import random
import statistics
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from tests.e2e.durability.kbs_driver import (
    AUTH_BODY,
    Checker,
    KbsCluster,
    KbsConfig,
    Ledger,
    RcarClient,
    b64url,
    permissive_policy,
    policy_digest,
    token_id,
)
from tests.e2e.durability.processes import HTTP_TIMEOUT
from tests.pg import PgServer, bin_dir

from bench.report import write_section
from modelseal.crypto.jose.jwk import TeeKeyPair

#: tries of one release (each a new session) before it counts as an error
ATTEMPTS = 20
#: keys put before the clients start
INITIAL_KEYS = 32
#: pause between two admin puts during the run
PUT_INTERVAL = 0.05


class Balancer:
    """A client-side load balancer with passive health checks: a replica that failed in
    transport or with a 5xx is skipped until a probe of its /healthz answers 200."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = list(urls)
        self._down: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._prober = threading.Thread(target=self._probe, daemon=True)
        self._prober.start()

    def live(self) -> list[str]:
        with self._lock:
            up = [u for u in self.urls if u not in self._down]
        return up or list(self.urls)  # all marked down: try them all again

    def mark_down(self, url: str) -> None:
        with self._lock:
            self._down.add(url)

    def _probe(self) -> None:
        with httpx.Client(timeout=1) as http:
            while not self._stop.wait(0.25):
                with self._lock:
                    down = list(self._down)
                for url in down:
                    with contextlib.suppress(httpx.HTTPError):
                        if http.get(url + "/healthz").status_code == 200:
                            with self._lock:
                                self._down.discard(url)

    def close(self) -> None:
        self._stop.set()
        self._prober.join(2)


class _Retry(Exception):
    """This attempt failed at ``url`` in a way a load balancer retries elsewhere."""

    def __init__(self, url: str, label: str) -> None:
        super().__init__(label)
        self.url = url
        self.label = label


@dataclass
class Run:
    """Counters shared by the client threads."""

    target: int
    claimed: int = 0
    released: int = 0
    errors: int = 0
    retries: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    #: (monotonic time, url of the resource step) of every acknowledged release
    done_at: list[tuple[float, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def claim(self) -> bool:
        with self.lock:
            if self.claimed >= self.target:
                return False
            self.claimed += 1
            return True


def _step(url: str, what: str, call: Any, *args: Any) -> Any:
    """``call(*args)``, one HTTP step; transport errors and 5xx become :class:`_Retry` for
    ``url``."""
    try:
        return call(*args)
    except httpx.TransportError as exc:
        raise _Retry(url, f"{what} {type(exc).__name__}") from None
    except Exception as exc:  # the driver's refusal carries the status in its label
        label = getattr(exc, "label", None)
        if isinstance(label, str) and label.split()[-1].startswith("5"):
            raise _Retry(url, label) from None
        raise


def one_release(
    client: RcarClient, balancer: Balancer, ledger: Ledger, rng: random.Random, run: Run
) -> None:
    """Session (auth + attest) on one replica, resource on another; retried on failure."""
    t0 = time.monotonic()
    for attempt in range(ATTEMPTS):
        up = balancer.live()
        session_url = rng.choice(up)
        others = [u for u in up if u != session_url]
        resource_url = rng.choice(others) if others else session_url
        key_id = ledger.pick_keys(rng, 1)[0]
        try:
            token, pair = _step(session_url, "session", client.handshake, session_url, session_url)
            dek = _step(
                resource_url, "resource", client.resource, resource_url, key_id, token, pair
            )
        except _Retry as exc:
            balancer.mark_down(exc.url)
            with run.lock:
                run.retries += 1
                run.failures[exc.label] += 1
            time.sleep(min(0.5, 0.02 * 2**attempt) * rng.random())
            continue
        except Exception as exc:
            with run.lock:
                run.errors += 1
                run.failures[getattr(exc, "label", type(exc).__name__)] += 1
            return
        if dek != ledger.keys[key_id]:
            ledger.violation(f"released wrong bytes for {key_id}")
            with run.lock:
                run.errors += 1
            return
        ledger.ack_release(token_id(token), key_id)
        with run.lock:
            run.released += 1
            run.latencies.append(time.monotonic() - t0)
            run.done_at.append((time.monotonic(), resource_url))
        return
    with run.lock:
        run.errors += 1


def putter(
    balancer: Balancer, ledger: Ledger, admin_token: str, rng: random.Random, stop: threading.Event
) -> Counter[str]:
    """Put new keys one after another through either replica until ``stop``."""
    outcomes: Counter[str] = Counter()
    with httpx.Client(
        timeout=HTTP_TIMEOUT, headers={"Authorization": f"Bearer {admin_token}"}
    ) as admin:
        while not stop.wait(PUT_INTERVAL):
            dek = rng.randbytes(32)
            doc = permissive_policy(rng.getrandbits(30))
            key_id, _ = ledger.new_key(dek, policy_digest(doc))
            url = rng.choice(balancer.live())
            try:
                r = admin.put(
                    f"{url}/modelseal/v1/keys/{key_id}", json={"key": b64url(dek), "policy": doc}
                )
            except httpx.TransportError:
                balancer.mark_down(url)
                outcomes["unanswered"] += 1  # stays unacknowledged: the checker decides
                continue
            if r.status_code == 201:
                ledger.ack_key(key_id, policy_digest(doc))
                outcomes["acknowledged"] += 1
            else:
                outcomes[f"HTTP {r.status_code}"] += 1
    return outcomes


def replay_across(urls: list[str]) -> list[int]:
    """Consume a nonce on one replica, replay it on the other; the statuses of the replays."""
    from modelseal.protocol.binding import runtime_data_digest
    from modelseal.tee.sample.attester import Attester

    statuses = []
    with httpx.Client(timeout=HTTP_TIMEOUT) as http:
        for first, second in ((urls[0], urls[1]), (urls[1], urls[0])):
            keys = TeeKeyPair.generate()
            r = http.post(first + "/kbs/v0/auth", content=AUTH_BODY)
            http.cookies.clear()
            cookie = {"Cookie": r.headers["set-cookie"].split(";", 1)[0]}
            nonce, jwk = r.json()["nonce"], keys.public_jwk()
            body = {
                "runtime-data": {"nonce": nonce, "tee-pubkey": jwk},
                "tee-evidence": {
                    "primary_evidence": Attester().evidence(runtime_data_digest(nonce, jwk)),
                    "additional_evidence": "",
                },
            }
            if http.post(first + "/kbs/v0/attest", json=body, headers=cookie).status_code != 200:
                raise RuntimeError(f"attestation on {first} failed")
            http.cookies.clear()
            statuses.append(http.post(second + "/kbs/v0/attest", json=body, headers=cookie))
            http.cookies.clear()
    return [r.status_code for r in statuses]


def measure(clients: int, releases: int, seed: int) -> dict[str, Any]:
    bindir = bin_dir()
    if bindir is None:
        raise SystemExit("replicas_bench needs the PostgreSQL server binaries (make system)")
    rng = random.Random(seed)
    pg = PgServer(bindir).start()
    try:
        with tempfile.TemporaryDirectory(prefix="replicas-bench-") as tmp:
            url = pg.create_database("replicas_bench")
            cluster = KbsCluster(Path(tmp), KbsConfig(replicas=2), url)
            cluster.start()
            try:
                return _drive(cluster, clients, releases, rng)
            finally:
                cluster.stop()
    finally:
        pg.stop()


def _drive(cluster: KbsCluster, clients: int, releases: int, rng: random.Random) -> dict[str, Any]:
    ledger = Ledger(tag="replicas")
    balancer = Balancer(cluster.urls)
    admin_token = cluster.admin_token()
    with httpx.Client(
        timeout=HTTP_TIMEOUT, headers={"Authorization": f"Bearer {admin_token}"}
    ) as a:
        for i in range(INITIAL_KEYS):
            dek = rng.randbytes(32)
            doc = permissive_policy(i)
            key_id, _ = ledger.new_key(dek, policy_digest(doc))
            r = a.put(
                f"{cluster.urls[i % 2]}/modelseal/v1/keys/{key_id}",
                json={"key": b64url(dek), "policy": doc},
            )
            r.raise_for_status()
            ledger.ack_key(key_id, policy_digest(doc))
    run = Run(target=releases)
    stop_puts = threading.Event()
    put_outcomes: Counter[str] = Counter()

    def client_thread(thread_rng: random.Random) -> None:
        client = RcarClient()
        try:
            while run.claim():
                one_release(client, balancer, ledger, thread_rng, run)
        finally:
            client.close()

    def put_thread(thread_rng: random.Random) -> None:
        put_outcomes.update(putter(balancer, ledger, admin_token, thread_rng, stop_puts))

    threads = [
        threading.Thread(target=client_thread, args=(random.Random(rng.getrandbits(64)),))
        for _ in range(clients)
    ]
    puts = threading.Thread(target=put_thread, args=(random.Random(rng.getrandbits(64)),))
    victim = rng.randrange(2)
    victim_url = cluster.urls[victim]
    t_start = time.monotonic()
    for t in (*threads, puts):
        t.start()
    while run.released < releases // 2 and any(t.is_alive() for t in threads):
        time.sleep(0.01)
    released_at_kill = run.released
    cluster.kill9([victim])  # returns once the whole process group is gone
    killed_at = time.monotonic()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t_start
    stop_puts.set()
    puts.join()
    balancer.close()

    after_kill = [(t, u) for t, u in run.done_at if t > killed_at]
    first_after = min((t for t, _ in after_kill), default=float("nan"))
    cluster.start([victim])  # back on a new port: the checks go through both replicas
    replays = replay_across(cluster.urls)
    problems = Checker(cluster, ledger, rng).check()
    lat = sorted(run.latencies) or [float("nan")]
    return {
        "clients": clients,
        "target": releases,
        "released": run.released,
        "errors": run.errors,
        "retries": run.retries,
        "failures": dict(run.failures.most_common()),
        "seconds": elapsed,
        "rate": run.released / elapsed,
        "p50_ms": 1000 * statistics.median(lat),
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))],
        "max_ms": 1000 * lat[-1],
        "victim": victim,
        "released_at_kill": released_at_kill,
        "released_after_kill": len(after_kill),
        "victim_after_kill": sum(u == victim_url for _, u in after_kill),
        "first_after_kill_ms": 1000 * (first_after - killed_at),
        "keys_acknowledged": len(ledger.keys),
        "puts": dict(put_outcomes),
        "replay_statuses": replays,
        "problems": problems,
    }


def table(r: dict[str, Any]) -> str:
    ok = (
        r["errors"] == 0
        and r["released"] == r["target"]
        and not r["problems"]
        and r["replay_statuses"] == [401, 401]
    )
    problems = "; ".join(r["problems"][:5]) or "none"
    failures = ", ".join(f"{k}: {n}" for k, n in r["failures"].items()) or "none"
    puts = ", ".join(f"{k}: {n}" for k, n in sorted(r["puts"].items()))
    row = (
        f"| {r['clients']} | {r['released']} / {r['target']} | {r['errors']} | {r['retries']} "
        f"| {r['seconds']:.1f} | **{r['rate']:.0f}** | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} "
        f"| {r['max_ms']:.0f} |"
    )
    header = (
        "| clients | releases | errors | retries | wall (s) | releases/s | p50 (ms) | p99 (ms) "
        "| max (ms) |"
    )
    return f"""{header}
| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |
{row}

- replica {r["victim"]} killed with SIGKILL after {r["released_at_kill"]} releases;
  {r["released_after_kill"]} releases acknowledged after the kill, of them through the killed
  replica: {r["victim_after_kill"]}; the first {r["first_after_kill_ms"]:.0f} ms after it.
- failed attempts that were retried (a new session on what was up): {failures}.
- admin puts during the run: {puts}; {r["keys_acknowledged"]} acknowledged keys in all.
- nonce consumed on one replica, replayed on the other (both ways): HTTP
  {", ".join(map(str, r["replay_statuses"]))}.
- after restarting the killed replica, the durability checks (every acknowledged key reads
  back with its bytes, every acknowledged release audited, `kbs audit --verify`, releases
  through both replicas): problems: {problems}.
- verdict: **{"zero errors, nothing acknowledged lost" if ok else "FAILED"}**."""


def main() -> None:
    clients = int(os.environ.get("REPLICAS_BENCH_CLIENTS", "32"))
    releases = int(os.environ.get("REPLICAS_BENCH_RELEASES", "2000"))
    seed = int(os.environ.get("REPLICAS_BENCH_SEED", "0"))
    load_before = os.getloadavg()[0]
    result = measure(clients, releases, seed)
    load_after = os.getloadavg()[0]
    body = f"""Command: `python -m bench replicas_bench` (environment `REPLICAS_BENCH_CLIENTS`,
`REPLICAS_BENCH_RELEASES`, `REPLICAS_BENCH_SEED`; seed {seed} here).

Two `modelseal kbs serve --database-url postgresql://... --insecure-allow-sample` replicas on
one PostgreSQL 15 server (loopback), sharing the admin credential, token-signing key and KEK
file; {clients} client threads in the load process (httpx, sample TEE, a fresh TEE key and
session per release) open and attest each session on one replica and fetch the key from the
other, while an admin client puts a key every {1000 * PUT_INTERVAL:.0f} ms through either.
Half-way one replica is killed with `kill -9` and stays down; clients mark it down and retry
each failed release from a new session on the other replica (bench/replicas_bench.py). All
processes on one {os.cpu_count()}-CPU machine, Python {platform.python_version()}; 1-minute
load average {load_before:.1f} before, {load_after:.1f} after.

{table(result)}
"""
    write_section("KBS replicas: kill -9 of one replica under release load", body)
    print(table(result))


if __name__ == "__main__":
    print(
        table(
            measure(
                int(os.environ.get("REPLICAS_BENCH_CLIENTS", "32")),
                int(os.environ.get("REPLICAS_BENCH_RELEASES", "2000")),
                int(os.environ.get("REPLICAS_BENCH_SEED", "0")),
            )
        )
    )
