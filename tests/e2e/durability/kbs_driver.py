"""Crash-durability driver for the KBS: real ``modelseal kbs serve`` processes, concurrent
admin and RCAR traffic, ``kill -9`` at random moments, and the checks after every restart.

Traffic (threads, one keep-alive httpx client each, spread over the replicas):

- key puts: new key ids with random 32-byte keys and a policy that allows the sample TEE;
- policy changes on acknowledged keys (every variant still allows the sample TEE);
- KEK rotations (on the first replica, see below);
- RCAR releases: auth + attest (sample TEE, fresh TEE key) + resource, each step on a
  random replica; every released key is decrypted and compared with what was put.

A request counts as *acknowledged* only when its 2xx response arrived. After each kill the
servers are restarted and :class:`Checker` asserts:

- the KBS starts (a crash never leaves it unable to start);
- every acknowledged key reads back from the store with exactly its bytes, and a key whose
  put was cut off by the kill is either absent or has exactly the bytes that were sent;
- every key's policy is the last acknowledged one or one sent after it;
- no key row is wrapped under a KEK other than the current ``kek`` file's, and the audit
  head names that KEK; each acknowledged rotation appears in the audit log and the last
  ``kek.rotate`` row names the current KEK;
- ``modelseal kbs audit --data-dir D --verify`` passes;
- every acknowledged release has its ``allow`` row (``token_id=<jti>``, key id) in the log;
- releases through the restarted servers return the right bytes.

Replicas (two ``kbs serve`` processes, one PostgreSQL database): each has its own data
directory holding copies of the first replica's ``admin-credential`` and
``token-signing-key.pem`` (so admin and attestation tokens verify on either), and of its
``kek``. The KEK is a file per data directory (kbs/keys.py): a rotation on one replica
re-wraps the shared rows and promotes ``kek.next`` in *its* directory only, and the others
fail closed until they get the new file. The driver therefore rotates on the first replica
only and, after each acknowledged rotation and before restarting another replica, copies
the first replica's ``kek`` into the other directories (atomic replace, mode 0600), as an
operator's secret distribution would. The first replica always restarts first, so a
rotation interrupted by the kill is finished (``kek.next``) before the KEK is copied; after
it restarts, the KEK is copied to the replicas that kept running too.

The run is reproducible up to thread timing: everything random (kill moments, victims, key
bytes, which keys are released) comes from one seed, printed in every failure.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from modelseal.crypto.jose.jwe import decrypt
from modelseal.crypto.jose.jwk import TeeKeyPair
from modelseal.crypto.kek import KekRing
from modelseal.errors import ConfigError, DecryptionError, Error, KeyNotFound
from modelseal.kbs.admin_auth import ADMIN_CREDENTIAL_FILE, load_admin_credential, mint_admin_token
from modelseal.kbs.audit import AuditLog
from modelseal.kbs.db import Database, sqlite_url
from modelseal.kbs.keys import KEK_FILE
from modelseal.kbs.settings import TOKEN_SIGNING_KEY_FILE
from modelseal.kbs.state import open_kek_sources
from modelseal.keystore.store import KeyStore
from modelseal.policy.document import parse_policy
from modelseal.protocol.binding import runtime_data_digest
from modelseal.tee.sample.attester import Attester
from tests.e2e.durability.processes import (
    BACKOFF,
    CLI,
    HTTP_TIMEOUT,
    DurabilityFailure,
    Load,
    ServerDidNotStart,
    ServerProcess,
    Stopwatch,
    clean_env,
    wait_for_progress,
)

__all__ = [
    "Checker",
    "DurabilityFailure",
    "KbsCluster",
    "KbsConfig",
    "Ledger",
    "LoadResult",
    "RcarClient",
    "Traffic",
    "TrafficMix",
    "admin_under_load",
    "permissive_policy",
    "release_round",
    "run_kbs_durability",
]

ADMIN_PREFIX = "/modelseal/v1"
#: Acknowledged requests a kill window waits for before its random kill moment starts.
WARM_ACKS = 10
AUTH_BODY = b'{"version":"0.4.0","tee":"sample","extra-params":""}'


def permissive_policy(n: int) -> dict[str, Any]:
    """The ``n``-th of many distinct policies that all allow the sample TEE, so policy
    changes never stop releases (each has its own digest, so the last one is traceable)."""
    not_after = datetime(2090, 1, 1, tzinfo=UTC) + timedelta(seconds=n)
    return {
        "apiVersion": "modelseal/v1",
        "kind": "ReleasePolicy",
        "tee": ["sample"] if n % 2 == 0 else ["sample", "tdx"],
        "not_after": not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def policy_digest(doc: dict[str, Any]) -> str:
    return parse_policy(doc).digest


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def token_id(token: str) -> str:
    """The ``jti`` of an attestation token (the audit rows name it as ``token_id=``)."""
    payload = token.split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["jti"])


# --- the servers --------------------------------------------------------------------------


@dataclass(frozen=True)
class KbsConfig:
    """One deployment shape: worker processes per server and server replicas."""

    workers: int = 1
    replicas: int = 1
    #: A ``pkcs11:`` URI: the KEK lives in that token, shared by every replica and worker.
    kek_uri: str | None = None

    @property
    def label(self) -> str:
        where = " KEK in a PKCS#11 token" if self.kek_uri else ""
        return f"{self.replicas} replica(s) x {self.workers} worker(s){where}"

    def kek_args(self) -> list[str]:
        return ["--kek-uri", self.kek_uri] if self.kek_uri else []


class KbsCluster:
    """``replicas`` ``kbs serve`` processes on one database (SQLite only with one replica)."""

    def __init__(self, base: Path, config: KbsConfig, database_url: str | None = None) -> None:
        if config.replicas > 1 and database_url is None:
            raise ValueError("replicas share a PostgreSQL database")
        self.config = config
        self.database_url = database_url
        self.dirs = [base / f"replica-{i}" for i in range(config.replicas)]
        self.servers = [
            ServerProcess(f"kbs replica {i}", self._argv(i), base / f"kbs-{i}.log")
            for i in range(config.replicas)
        ]

    def _argv(self, i: int) -> Callable[[int], list[str]]:
        def argv(port: int) -> list[str]:
            extra = ["--database-url", self.database_url] if self.database_url else []
            return [
                *CLI, "kbs", "serve", "--data-dir", str(self.dirs[i]), "--port", str(port),
                "--insecure-allow-sample", "--log-level", "warning",
                "--workers", str(self.config.workers), *self.config.kek_args(), *extra,
            ]  # fmt: skip

        return argv

    @property
    def primary(self) -> Path:
        return self.dirs[0]

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    def start(self, which: list[int] | None = None) -> None:
        """Start the given replicas (default all), the first one first (see module doc)."""
        for i in sorted(range(len(self.servers)) if which is None else which):
            if i > 0:
                self._seed_replica(self.dirs[i])
                self.sync_kek()
            self.servers[i].start()
            if i == 0 and len(self.servers) > 1:
                # a rotation the kill interrupted was finished by this start: hand the KEK
                # to the replicas still running, as an operator would after any rotation
                self.sync_kek()

    def _seed_replica(self, directory: Path) -> None:
        if directory.exists():
            return
        directory.mkdir(mode=0o700, parents=True)
        shared = (ADMIN_CREDENTIAL_FILE, TOKEN_SIGNING_KEY_FILE)
        for name in shared if self.config.kek_uri else (*shared, KEK_FILE):
            shutil.copy2(self.primary / name, directory / name)

    def sync_kek(self) -> None:
        """Copy the first replica's ``kek`` to the others, as an operator would (a KEK in
        a token is shared: nothing to copy)."""
        if self.config.kek_uri:
            return
        for directory in self.dirs[1:]:
            if not directory.exists():
                continue
            tmp = directory / ".kek.sync"
            shutil.copy2(self.primary / KEK_FILE, tmp)
            os.chmod(tmp, 0o600)
            os.replace(tmp, directory / KEK_FILE)

    def kill9(self, which: list[int]) -> None:
        for i in which:
            self.servers[i].kill9()

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def admin_token(self) -> str:
        key = load_admin_credential(self.primary)
        return mint_admin_token(key, role="admin", ttl=3600, subject="durability", now=time.time())

    def database(self) -> Database:
        return Database(self.database_url or sqlite_url(self.primary))

    def audit_cli(self) -> subprocess.Popen[str]:
        """Start ``modelseal kbs audit --data-dir <first replica> [--database-url U]
        --verify`` (it runs while the other checks read the store)."""
        extra = ["--database-url", self.database_url] if self.database_url else []
        return subprocess.Popen(
            [
                *CLI,
                "kbs",
                "audit",
                "--data-dir",
                str(self.primary),
                *extra,
                *self.config.kek_args(),
                "--verify",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=clean_env(),
        )

    def log_tails(self) -> str:
        return "\n".join(f"--- {s.name} log ---\n{s.log_tail()}" for s in self.servers)


# --- what the servers acknowledged --------------------------------------------------------


@dataclass
class Ledger:
    """Everything the KBS acknowledged (2xx received) and what was sent without an answer."""

    tag: str
    keys: dict[str, bytes] = field(default_factory=dict)
    unacked_keys: dict[str, bytes] = field(default_factory=dict)
    policy: dict[str, str] = field(default_factory=dict)
    policy_pending: dict[str, set[str]] = field(default_factory=dict)
    releases: Counter[tuple[str, str]] = field(default_factory=Counter)
    rotations: list[str] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    #: acknowledged requests so far (to see that a kill window's traffic is flowing)
    acks: int = 0
    _next: int = 0
    _key_list: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def new_key(self, dek: bytes, digest: str) -> tuple[str, int]:
        with self.lock:
            self._next += 1
            key_id = f"dur/{self.tag}/k{self._next}"
            self.unacked_keys[key_id] = dek
            self.policy_pending.setdefault(key_id, set()).add(digest)
            return key_id, self._next

    def ack_key(self, key_id: str, digest: str) -> None:
        with self.lock:
            self.keys[key_id] = self.unacked_keys.pop(key_id)
            self._key_list.append(key_id)
            self._ack_policy(key_id, digest)
            self.acks += 1

    def policy_sent(self, key_id: str, digest: str) -> None:
        with self.lock:
            self.policy_pending.setdefault(key_id, set()).add(digest)

    def ack_policy(self, key_id: str, digest: str) -> None:
        with self.lock:
            self._ack_policy(key_id, digest)

    def _ack_policy(self, key_id: str, digest: str) -> None:
        self.acks += 1
        self.policy[key_id] = digest
        self.policy_pending.pop(key_id, None)

    def ack_release(self, token: str, key_id: str) -> None:
        with self.lock:
            self.releases[(token, key_id)] += 1
            self.acks += 1

    def ack_rotation(self, new_kek_id: str) -> None:
        with self.lock:
            self.rotations.append(new_kek_id)
            self.acks += 1

    def outcome(self, what: str, result: str) -> None:
        with self.lock:
            self.outcomes[f"{what} {result}"] += 1

    def violation(self, text: str) -> None:
        with self.lock:
            self.violations.append(text)

    def pick_keys(self, rng: random.Random, n: int) -> list[str]:
        with self.lock:
            if not self._key_list:
                return []
            return [rng.choice(self._key_list) for _ in range(n)]

    def adopt(self, key_id: str, dek: bytes) -> None:
        """A put cut off by a crash whose row survived with the right bytes: it exists now."""
        with self.lock:
            self.keys[key_id] = dek
            self._key_list.append(key_id)


# --- traffic ------------------------------------------------------------------------------


class RcarClient:
    """Sample-TEE RCAR over one keep-alive client: each step may go to a different replica
    (sessions live in the shared database, tokens verify with the shared signing key)."""

    def __init__(self, timeout: float = HTTP_TIMEOUT) -> None:
        self.http = httpx.Client(timeout=timeout)
        self.attester = Attester()

    def close(self) -> None:
        self.http.close()

    def handshake(self, auth_url: str, attest_url: str) -> tuple[str, TeeKeyPair]:
        """auth + attest with a fresh TEE key; returns (token, key pair)."""
        keys = TeeKeyPair.generate()
        r = self.http.post(auth_url + "/kbs/v0/auth", content=AUTH_BODY)
        self.http.cookies.clear()
        _expect(r, 200, "auth")
        nonce = r.json()["nonce"]
        cookie = r.headers["set-cookie"].split(";", 1)[0]
        jwk = keys.public_jwk()
        attestation = {
            "runtime-data": {"nonce": nonce, "tee-pubkey": jwk},
            "tee-evidence": {
                "primary_evidence": self.attester.evidence(runtime_data_digest(nonce, jwk)),
                "additional_evidence": "",
            },
        }
        r = self.http.post(
            attest_url + "/kbs/v0/attest", json=attestation, headers={"Cookie": cookie}
        )
        self.http.cookies.clear()
        _expect(r, 200, "attest")
        return str(r.json()["token"]), keys

    def resource(self, url: str, key_id: str, token: str, keys: TeeKeyPair) -> bytes:
        r = self.http.get(
            f"{url}/kbs/v0/resource/{key_id}", headers={"Authorization": f"Bearer {token}"}
        )
        _expect(r, 200, "resource")
        return decrypt(r.json(), keys).reveal()


class _Refused(Exception):
    def __init__(self, step: str, status: int) -> None:
        super().__init__(f"{step} {status}")
        self.label = f"{step} {status}"


def _expect(response: httpx.Response, status: int, step: str) -> None:
    if response.status_code != status:
        raise _Refused(step, response.status_code)


@dataclass(frozen=True)
class TrafficMix:
    """How many threads of each kind; a rotation every ``rotate_every`` seconds (0: none)."""

    putters: int = 2
    policy_setters: int = 1
    rcar_clients: int = 8
    rotate_every: tuple[float, float] = (0.15, 0.5)
    releases_per_session: int = 2


class Traffic(Load):
    """The concurrent load of one kill window; :meth:`stop` ends it and joins the threads."""

    def __init__(
        self, cluster: KbsCluster, ledger: Ledger, mix: TrafficMix, rng: random.Random
    ) -> None:
        super().__init__(ledger.outcome)
        self.cluster = cluster
        self.ledger = ledger
        self.mix = mix
        self.token = cluster.admin_token()
        self.urls = list(cluster.urls)
        jobs: list[Callable[[random.Random], None]] = [
            *[self._putter] * mix.putters,
            *[self._policy_setter] * mix.policy_setters,
            *[self._rcar] * mix.rcar_clients,
        ]
        if mix.rotate_every[1] > 0:
            jobs.append(self._rotator)
        for job in jobs:
            self.spawn(job, random.Random(rng.getrandbits(64)))

    @contextlib.contextmanager
    def _admin(self) -> Iterator[httpx.Client]:
        with httpx.Client(
            timeout=HTTP_TIMEOUT, headers={"Authorization": f"Bearer {self.token}"}
        ) as http:
            yield http

    def _putter(self, rng: random.Random) -> None:
        with self._admin() as http:
            while not self.stopping.is_set():
                dek = rng.randbytes(32)
                serial = rng.getrandbits(30)
                doc = permissive_policy(serial)
                digest = policy_digest(doc)
                key_id, _ = self.ledger.new_key(dek, digest)
                url = rng.choice(self.urls)
                body = {"key": b64url(dek), "policy": doc}
                r = self.call(http, "put", "PUT", f"{url}{ADMIN_PREFIX}/keys/{key_id}", json=body)
                if r is not None and r.status_code in (200, 201):
                    self.ledger.ack_key(key_id, digest)

    def _policy_setter(self, rng: random.Random) -> None:
        with self._admin() as http:
            while not self.stopping.is_set():
                picked = self.ledger.pick_keys(rng, 1)
                if not picked:
                    self.stopping.wait(0.02)
                    continue
                key_id = picked[0]
                doc = permissive_policy(rng.getrandbits(30))
                digest = policy_digest(doc)
                self.ledger.policy_sent(key_id, digest)
                url = rng.choice(self.urls)
                policy_url = f"{url}{ADMIN_PREFIX}/keys/{key_id}/policy"
                r = self.call(http, "policy", "PUT", policy_url, json=doc)
                if r is not None and r.status_code == 200:
                    self.ledger.ack_policy(key_id, digest)

    def _rotator(self, rng: random.Random) -> None:
        with self._admin() as http:
            while not self.stopping.wait(rng.uniform(*self.mix.rotate_every)):
                r = self.call(http, "rotate", "POST", f"{self.urls[0]}{ADMIN_PREFIX}/kek/rotate")
                if r is not None and r.status_code == 200:
                    self.ledger.ack_rotation(str(r.json()["new_kek_id"]))
                    self.cluster.sync_kek()

    def _rcar(self, rng: random.Random) -> None:
        client = RcarClient()
        try:
            while not self.stopping.is_set():
                picked = self.ledger.pick_keys(rng, self.mix.releases_per_session)
                if not picked:
                    self.stopping.wait(0.02)
                    continue
                if release_round(client, self.ledger, rng, self.urls, picked) < len(picked):
                    self.stopping.wait(BACKOFF)
        finally:
            client.close()


def release_round(
    client: RcarClient, ledger: Ledger, rng: random.Random, urls: list[str], keys: list[str]
) -> int:
    """One handshake, then each of ``keys`` released and checked; returns how many were."""
    done = 0
    try:
        token, pair = client.handshake(rng.choice(urls), rng.choice(urls))
        jti = token_id(token)
        for key_id in keys:
            dek = client.resource(rng.choice(urls), key_id, token, pair)
            if dek != ledger.keys[key_id]:
                ledger.violation(f"RCAR released wrong bytes for {key_id}")
                continue
            ledger.ack_release(jti, key_id)
            done += 1
        ledger.outcome("rcar", "ok")
    except _Refused as exc:
        ledger.outcome("rcar", exc.label)
    except httpx.HTTPError as exc:
        ledger.outcome("rcar", type(exc).__name__)
    except Error as exc:
        ledger.violation(f"RCAR response did not decrypt: {type(exc).__name__}: {exc}")
    return done


# --- the checks after a restart -----------------------------------------------------------


class Checker:
    """The durability properties of the module doc, against the stored state."""

    def __init__(self, cluster: KbsCluster, ledger: Ledger, rng: random.Random) -> None:
        self.cluster = cluster
        self.ledger = ledger
        self.rng = rng
        self.audit_after = 0
        self.allowed: Counter[tuple[str, str]] = Counter()
        self.rotated_to: list[str] = []

    def check(self, *, final: bool = False) -> list[str]:
        """``final``: verify the audit chain with the operator's ``kbs audit --verify``
        command (a process of its own); the checks between kill points verify it with the
        same library call in this process, which costs a fraction of the CPU."""
        problems = list(self.ledger.violations)
        self.ledger.violations.clear()
        cli = self.cluster.audit_cli() if final else None
        files = open_kek_sources(self.cluster.primary, self.cluster.config.kek_uri)
        if files.load_next() is not None:
            problems.append("a next KEK is still present after a successful start")
        current = files.load()
        ring = KekRing(current)  # no reload: a row under a retired KEK must not decrypt
        db = self.cluster.database()
        try:
            store = KeyStore(db.begin, ring)
            audit = AuditLog(db, lambda: ring)
            problems += self._kek_ids(store, audit, current.id)
            problems += self._keys(store)
            problems += self._audit_rows(audit, current.id)
            if cli is None:
                verdict = audit.verify()
                if not verdict.ok:
                    problems.append(
                        f"the audit chain breaks at row {verdict.first_bad_seq}: {verdict.reason}"
                    )
        finally:
            db.dispose()
        if cli is not None:
            output, _ = cli.communicate(timeout=120)
            if cli.returncode != 0:
                problems.append(f"`kbs audit --verify` exited {cli.returncode}: {output[-800:]}")
        problems += self._live_releases()
        return problems

    def _kek_ids(self, store: KeyStore, audit: AuditLog, current: str) -> list[str]:
        problems = []
        for kek_id, count in sorted(store.count_by_kek().items()):
            if kek_id != current:
                problems.append(
                    f"{count} key row(s) wrapped under {kek_id}, not the current {current}"
                )
        head = audit.head_kek_id()
        if head != current:
            problems.append(f"audit head MACed under {head}, not the current KEK {current}")
        return problems

    def _keys(self, store: KeyStore) -> list[str]:
        problems: list[str] = []
        ledger = self.ledger
        for key_id, dek in sorted(ledger.keys.items()):
            problems += self._read_back(store, key_id, dek, acknowledged=True)
        for key_id, dek in sorted(ledger.unacked_keys.items()):
            found = self._read_back(store, key_id, dek, acknowledged=False)
            problems += found
            if not found and _exists(store, key_id):
                ledger.adopt(key_id, dek)
        ledger.unacked_keys.clear()
        for key_id in sorted(set(ledger.keys) & (set(ledger.policy) | set(ledger.policy_pending))):
            try:
                stored = store.get(key_id).policy_digest
            except KeyNotFound:
                continue  # reported above
            allowed = {ledger.policy.get(key_id), *ledger.policy_pending.get(key_id, ())}
            if stored not in allowed:
                problems.append(
                    f"{key_id}: policy {stored} is neither the acknowledged one nor a later one"
                )
            elif stored is not None:
                ledger.policy[key_id] = stored
            ledger.policy_pending.pop(key_id, None)
        return problems

    @staticmethod
    def _read_back(store: KeyStore, key_id: str, dek: bytes, *, acknowledged: bool) -> list[str]:
        what = "acknowledged key" if acknowledged else "key whose put was cut off,"
        try:
            loaded = store.load(key_id)
        except KeyNotFound:
            return [f"acknowledged key {key_id} is lost"] if acknowledged else []
        except ConfigError as exc:
            return [f"{what} {key_id} cannot be unwrapped with the current KEK: {exc}"]
        except DecryptionError as exc:
            return [f"{what} {key_id} fails authentication: {exc}"]
        if loaded.dek.reveal() != dek:
            return [f"{what} {key_id} reads back with different bytes"]
        return []

    def _audit_rows(self, audit: AuditLog, current: str) -> list[str]:
        while True:
            page = audit.entries(after=self.audit_after, limit=1000)
            for row in page:
                if row.action == "key.release" and row.decision == "allow" and row.key_id:
                    for reason in row.reasons:
                        if reason.startswith("token_id="):
                            self.allowed[(reason[len("token_id=") :], row.key_id)] += 1
                elif row.action == "kek.rotate":
                    self.rotated_to.append(row.reasons[0].rsplit(" ", 1)[-1])
            if not page:
                break
            self.audit_after = page[-1].seq
        problems = []
        missing = [
            (jti, key_id, n)
            for (jti, key_id), n in self.ledger.releases.items()
            if self.allowed[(jti, key_id)] < n
        ]
        if missing:
            jti, key_id, n = missing[0]
            problems.append(
                f"{len(missing)} acknowledged release(s) missing from the audit log, e.g. "
                f"{key_id} with token {jti}: {n} acknowledged, {self.allowed[(jti, key_id)]} logged"
            )
        logged = set(self.rotated_to)
        lost = [k for k in self.ledger.rotations if k not in logged]
        if lost:
            problems.append(f"acknowledged KEK rotation(s) to {lost[:3]} not in the audit log")
        if self.rotated_to and self.rotated_to[-1] != current:
            problems.append(
                f"the last kek.rotate row names {self.rotated_to[-1]}, the kek file is {current}"
            )
        return problems

    def _live_releases(self) -> list[str]:
        keys = self.ledger.pick_keys(self.rng, 3)
        if not keys:
            return []
        client = RcarClient()
        try:
            for url in self.cluster.urls:
                if release_round(client, self.ledger, self.rng, [url], keys) != len(keys):
                    last = self.ledger.outcomes.most_common()
                    return [f"releases through the restarted {url} failed ({last[:4]})"]
        finally:
            client.close()
        problems = list(self.ledger.violations)
        self.ledger.violations.clear()
        return problems


def _exists(store: KeyStore, key_id: str) -> bool:
    try:
        store.get(key_id)
    except KeyNotFound:
        return False
    return True


# --- the run ------------------------------------------------------------------------------


@dataclass
class RunReport:
    seed: int
    kill_points: int
    ledger: Ledger
    victims: Counter[str] = field(default_factory=Counter)
    #: wall seconds spent in traffic, in stopping it, in restarts and in checks
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        ok = sum(n for k, n in self.ledger.outcomes.items() if k.split()[1] in ("200", "201", "ok"))
        return (
            f"seed {self.seed}: {self.kill_points} kill points ({dict(self.victims)}), "
            f"{len(self.ledger.keys)} keys, {sum(self.ledger.releases.values())} releases, "
            f"{len(self.ledger.rotations)} rotations acknowledged; {ok} requests ok; "
            f"outcomes {dict(sorted(self.ledger.outcomes.items()))}; "
            f"seconds { ({k: round(v, 1) for k, v in self.seconds.items()}) }"
        )


def run_kbs_durability(
    base: Path,
    config: KbsConfig,
    *,
    kill_points: int,
    seed: int,
    database_url: str | None = None,
    window: tuple[float, float] = (0.3, 1.5),
    mix: TrafficMix | None = None,
) -> RunReport:
    """Start the cluster, then ``kill_points`` times: traffic, ``kill -9`` at a random
    moment ``window`` seconds after the traffic is flowing, restart, check. Raises
    DurabilityFailure."""
    mix = mix or TrafficMix()
    rng = random.Random(seed)
    ledger = Ledger(tag=f"s{seed % 100000}")
    report = RunReport(seed, 0, ledger)
    cluster = KbsCluster(base, config, database_url)
    checker = Checker(cluster, ledger, rng)

    def fail(point: int, problems: list[str]) -> DurabilityFailure:
        shown = "\n  ".join(problems[:20])
        return DurabilityFailure(
            f"{config.label}, {'PostgreSQL' if database_url else 'SQLite'}, seed {seed} "
            f"(rerun with MODELSEAL_DURABILITY_SEED={seed}), kill point {point}/{kill_points}:"
            f"\n  {shown}\n{report.summary()}\n{cluster.log_tails()}"
        )

    try:
        cluster.start()
        for point in range(1, kill_points + 1):
            clock = Stopwatch(report.seconds)
            traffic = Traffic(cluster, ledger, mix, rng).start()
            wait_for_progress(lambda: ledger.acks, WARM_ACKS)
            time.sleep(rng.uniform(*window))
            victims = _victims(rng, config.replicas)
            cluster.kill9(victims)
            clock.lap("traffic")
            traffic.stop()
            ledger.violations.extend(traffic.crashes)
            clock.lap("stop")
            report.victims[",".join(map(str, victims))] += 1
            report.kill_points = point
            try:
                cluster.start(victims)
            except ServerDidNotStart as exc:
                raise fail(point, [f"the KBS does not start after kill -9: {exc}"]) from None
            clock.lap("restart")
            problems = checker.check(final=point == kill_points)
            clock.lap("check")
            if problems:
                raise fail(point, problems)
    finally:
        cluster.stop()
    return report


def _victims(rng: random.Random, replicas: int) -> list[int]:
    """Which replicas to kill: one of them, or (a third of the time) all at once."""
    if replicas == 1 or rng.random() < 1 / 3:
        return list(range(replicas))
    return [rng.randrange(replicas)]


# --- admin writes under release load ------------------------------------------------------


@dataclass
class LoadResult:
    """What :func:`admin_under_load` saw: every put's latency and any failures."""

    put_seconds: list[float]
    put_errors: list[str]
    releases: int
    release_seconds: float
    outcomes: Counter[str]
    problems: list[str]

    @property
    def release_failures(self) -> dict[str, int]:
        return {k: n for k, n in self.outcomes.items() if k.startswith("rcar") and k != "rcar ok"}


def admin_under_load(
    base: Path,
    *,
    clients: int = 32,
    puts: int = 200,
    config: KbsConfig | None = None,
    database_url: str | None = None,
    seed: int = 0,
) -> LoadResult:
    """``clients`` RCAR threads release keys nonstop while one admin client puts ``puts``
    new keys one after another; then the stored state is checked like after a restart."""
    rng = random.Random(seed)
    cluster = KbsCluster(base, config or KbsConfig(), database_url)
    ledger = Ledger(tag=f"load{seed % 100000}")
    stopping = threading.Event()
    put_seconds: list[float] = []
    put_errors: list[str] = []

    def releaser(thread_rng: random.Random) -> None:
        client = RcarClient()
        try:
            while not stopping.is_set():
                release_round(
                    client, ledger, thread_rng, cluster.urls, ledger.pick_keys(thread_rng, 2)
                )
        finally:
            client.close()

    cluster.start()
    try:
        with httpx.Client(
            timeout=HTTP_TIMEOUT, headers={"Authorization": f"Bearer {cluster.admin_token()}"}
        ) as admin:

            def put() -> None:
                dek = rng.randbytes(32)
                doc = permissive_policy(rng.getrandbits(30))
                key_id, _ = ledger.new_key(dek, policy_digest(doc))
                body = {"key": b64url(dek), "policy": doc}
                t0 = time.perf_counter()
                try:
                    r = admin.put(f"{cluster.urls[0]}{ADMIN_PREFIX}/keys/{key_id}", json=body)
                except httpx.HTTPError as exc:
                    put_errors.append(f"{key_id}: {type(exc).__name__}")
                    return
                put_seconds.append(time.perf_counter() - t0)
                if r.status_code == 201:
                    ledger.ack_key(key_id, policy_digest(doc))
                else:
                    put_errors.append(f"{key_id}: HTTP {r.status_code} {r.text[:200]}")

            for _ in range(4):  # keys to release before the measured puts
                put()
            put_seconds.clear()
            threads = [
                threading.Thread(target=releaser, args=(random.Random(rng.getrandbits(64)),))
                for _ in range(clients)
            ]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 60
            while sum(ledger.releases.values()) < clients and time.monotonic() < deadline:
                time.sleep(0.05)  # every client under way before the measured puts start
            released_before = sum(ledger.releases.values())
            t_start = time.perf_counter()
            for _ in range(puts):
                put()
            elapsed = time.perf_counter() - t_start
            released = sum(ledger.releases.values()) - released_before
            stopping.set()
            for t in threads:
                t.join(HTTP_TIMEOUT + 10)
        problems = Checker(cluster, ledger, rng).check()
    finally:
        stopping.set()
        cluster.stop()
    return LoadResult(put_seconds, put_errors, released, elapsed, ledger.outcomes, problems)
