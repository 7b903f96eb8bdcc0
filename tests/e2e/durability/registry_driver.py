"""Crash-durability driver for the registry: a real ``modelseal registry serve`` under
concurrent uploads, ``kill -9`` at random moments, and the checks after every restart.

Each uploader thread publishes model versions the way ``modelseal publish`` does: the
version's blobs (random bytes, a few KiB up to a few MiB, some with a ``Content-Digest``,
some uploaded twice with different bytes before registering, so refs get replaced and old
objects collected), then ``PUT /models/<id>/versions/<v>`` with a registration naming each
blob's size and SHA-256. A request counts as *acknowledged* when its 2xx answer arrived.

The registry keeps its blobs in its data directory, or in an S3 bucket (``blob_store``, a
``registry serve --blob-store s3://...`` URL; Ceph RGW in the tests).

After every restart (:class:`RegistryChecker`):

- the registry starts;
- no partial object is visible: every blob ref in the store (a ref file, or an S3 metadata
  object) points to an existing object and serves exactly ``size`` bytes whose SHA-256 is
  the ref's digest (each ref is downloaded once per content), and, on the filesystem,
  every object file's bytes hash to its name;
- every acknowledged blob upload is served with the acknowledged bytes (or with bytes of a
  later upload to the same key that was cut off);
- every registered version (``GET /models``, ``/models/<id>/versions``) points only at
  blobs that exist with the registered size and digest;
- every acknowledged registration is there, unchanged.
"""

from __future__ import annotations

import base64
import hashlib
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx

from modelseal.blobstore.base import BlobStore
from modelseal.blobstore.local import LocalBlobStore
from modelseal.blobstore.s3 import S3BlobStore
from tests.e2e.durability.processes import (
    CLI,
    HTTP_TIMEOUT,
    DurabilityFailure,
    Load,
    ServerDidNotStart,
    ServerProcess,
    Stopwatch,
    wait_for_progress,
)

__all__ = ["RegistryLedger", "run_registry_durability"]

SIZES = (1024, 64 * 1024, 700 * 1024, 3 * 1024 * 1024)
#: Acknowledged requests a kill window waits for before its random kill moment starts.
WARM_ACKS = 3


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class RegistryLedger:
    """Acknowledged blobs and registrations, and what was sent without an answer."""

    tag: str
    blobs: dict[str, str] = field(default_factory=dict)  # key -> acknowledged sha256
    blob_pending: dict[str, set[str]] = field(default_factory=dict)  # sent after the ack
    models: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    outcomes: Counter[str] = field(default_factory=Counter)
    #: acknowledged requests so far (to see that a kill window's traffic is flowing)
    acks: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    _next: int = 0

    def new_model(self) -> str:
        with self.lock:
            self._next += 1
            return f"dur-{self.tag}-m{self._next}"

    def blob_sent(self, key: str, data: bytes) -> None:
        with self.lock:
            self.blob_pending.setdefault(key, set()).add(_sha(data))

    def ack_blob(self, key: str, sha: str) -> None:
        with self.lock:
            self.blobs[key] = sha
            self.blob_pending.pop(key, None)
            self.acks += 1

    def ack_model(self, model_id: str, version: str, registration: dict[str, Any]) -> None:
        with self.lock:
            self.models[(model_id, version)] = registration
            self.acks += 1

    def outcome(self, what: str, result: str) -> None:
        with self.lock:
            self.outcomes[f"{what} {result}"] += 1


class RegistryTraffic(Load):
    """Uploader threads publishing model versions until :meth:`stop`."""

    def __init__(
        self, url: str, token: str, ledger: RegistryLedger, rng: random.Random, uploaders: int
    ) -> None:
        super().__init__(ledger.outcome)
        self.url = url
        self.token = token
        self.ledger = ledger
        for _ in range(uploaders):
            self.spawn(self._uploader, random.Random(rng.getrandbits(64)))

    def _send(
        self, http: httpx.Client, what: str, method: str, path: str, **kwargs: Any
    ) -> httpx.Response | None:
        return self.call(http, what, method, self.url + path, **kwargs)

    def _uploader(self, rng: random.Random) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        with httpx.Client(timeout=HTTP_TIMEOUT, headers=headers) as http:
            while not self.stopping.is_set():
                self._publish(http, rng)

    def _publish(self, http: httpx.Client, rng: random.Random) -> None:
        model_id, version = self.ledger.new_model(), "v1"
        names = ["modelseal-manifest.json.sealed"] + [
            f"part{i}.bin.sealed" for i in range(rng.randint(1, 3))
        ]
        uploaded: dict[str, tuple[int, str]] = {}
        for name in names:
            for _ in range(2 if rng.random() < 0.25 else 1):  # sometimes overwrite first
                data = rng.randbytes(rng.choice(SIZES) + rng.randrange(1024))
                key = f"{model_id}/{version}/{name}"
                extra: dict[str, str] = {}
                if rng.random() < 0.5:
                    digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
                    extra["Content-Digest"] = f"sha-256=:{digest}:"
                self.ledger.blob_sent(key, data)
                r = self._send(http, "blob", "PUT", f"/blobs/{key}", content=data, headers=extra)
                if r is None or r.status_code not in (200, 201):
                    return
                if r.json()["sha256"] != _sha(data):
                    self.ledger.outcome("blob", "acknowledged-with-wrong-digest")
                    return
                self.ledger.ack_blob(key, _sha(data))
                uploaded[name] = (len(data), _sha(data))
            if self.stopping.is_set():
                return
        manifest, *parts = names
        size, sha = uploaded[manifest]
        registration = {
            "format": "modelseal/v1",
            "kbs": "trustee",
            "kbs_url": "http://127.0.0.1:9",
            "key_id": f"models/{model_id}/{version}",
            "model_digest": "sha256:" + _sha(model_id.encode()),
            "manifest": {
                "path": "modelseal-manifest.json",
                "blob": manifest,
                "sealed_size": size,
                "sha256": sha,
            },
            "files": [
                {
                    "path": p.removesuffix(".sealed"),
                    "blob": p,
                    "sealed_size": uploaded[p][0],
                    "sha256": uploaded[p][1],
                }
                for p in parts
            ],
        }
        r = self._send(
            http, "register", "PUT", f"/models/{model_id}/versions/{version}", json=registration
        )
        if r is not None and r.status_code in (200, 201):
            self.ledger.ack_model(model_id, version, registration)


class RegistryChecker:
    """The properties of the module doc against the restarted registry and its files."""

    def __init__(self, data_dir: Path, ledger: RegistryLedger, blob_store: str | None) -> None:
        self.data_dir = data_dir
        self.ledger = ledger
        #: the S3 URL the registry stores blobs at; None: its data directory
        self.blob_store = blob_store
        self.verified_refs: set[tuple[str, str]] = set()
        self.verified_objects: set[str] = set()

    def check(self, url: str) -> list[str]:
        problems: list[str] = []
        refs = anyio.run(self._refs)
        with httpx.Client(base_url=url, timeout=HTTP_TIMEOUT) as http:
            problems += self._served_refs(http, refs)
            problems += self._objects()
            problems += self._acknowledged_blobs(refs)
            problems += self._records(http)
        return problems

    async def _refs(self) -> dict[str, tuple[int, str]]:
        store: BlobStore = (
            LocalBlobStore(self.data_dir / "blobs")
            if self.blob_store is None
            else S3BlobStore.from_url(self.blob_store)
        )
        try:
            return {info.key: (info.size, info.sha256) async for info in store.list_blobs()}
        finally:
            await store.aclose()

    def _served_refs(self, http: httpx.Client, refs: dict[str, tuple[int, str]]) -> list[str]:
        problems = []
        objects = self.data_dir / "blobs" / "objects"
        for key, (size, sha) in sorted(refs.items()):
            if self.blob_store is None and not (objects / sha[:2] / sha).is_file():
                problems.append(f"blob {key} points to a missing object {sha}")
                continue
            if (key, sha) in self.verified_refs:
                continue
            r = http.get(f"/blobs/{key}")
            if r.status_code != 200:
                problems.append(f"blob {key} has a ref but GET answers {r.status_code}")
            elif len(r.content) != size or _sha(r.content) != sha:
                problems.append(
                    f"blob {key} serves {len(r.content)} bytes with SHA-256 {_sha(r.content)}, "
                    f"its ref says {size} bytes {sha} (a partial object is visible)"
                )
            else:
                self.verified_refs.add((key, sha))
        return problems

    def _objects(self) -> list[str]:
        """Object files hash to their names (the filesystem store's content addressing;
        an S3 object is only reachable through its metadata, checked by _served_refs)."""
        if self.blob_store is not None:
            return []
        problems = []
        for obj in sorted((self.data_dir / "blobs" / "objects").glob("*/*")):
            if obj.name in self.verified_objects:
                continue
            if _sha(obj.read_bytes()) != obj.name:
                problems.append(f"object file {obj.name} does not hash to its name")
            else:
                self.verified_objects.add(obj.name)
        return problems

    def _acknowledged_blobs(self, refs: dict[str, tuple[int, str]]) -> list[str]:
        problems = []
        ledger = self.ledger
        for key, sha in sorted(ledger.blobs.items()):
            allowed = {sha, *ledger.blob_pending.get(key, ())}
            if key not in refs:
                problems.append(f"acknowledged blob {key} is gone")
            elif refs[key][1] not in allowed:
                problems.append(f"blob {key} holds {refs[key][1]}, not the acknowledged {sha}")
            else:
                ledger.blobs[key] = refs[key][1]
        for key, shas in sorted(ledger.blob_pending.items()):
            if key in refs and key not in ledger.blobs:
                if refs[key][1] not in shas:
                    problems.append(f"blob {key} holds bytes nobody uploaded")
                else:
                    ledger.blobs[key] = refs[key][1]
        ledger.blob_pending.clear()
        return problems

    def _records(self, http: httpx.Client) -> list[str]:
        problems = []
        listing = http.get("/models")
        if listing.status_code != 200:
            return [f"GET /models answers {listing.status_code}: {listing.text[:300]}"]
        registered: dict[tuple[str, str], dict[str, Any]] = {}
        for latest in listing.json()["models"]:
            versions = http.get(f"/models/{latest['id']}/versions")
            if versions.status_code != 200:
                problems.append(f"GET /models/{latest['id']}/versions: {versions.status_code}")
                continue
            for info in versions.json()["models"]:
                registered[(info["id"], info["version"])] = info
        for (model_id, version), info in sorted(registered.items()):
            files = [*info["files"], {"url": info["manifest_url"], "sealed_size": None}]
            for f in files:
                r = http.head(f["url"])
                if r.status_code != 200:
                    problems.append(f"{model_id} {version} names {f['url']}: {r.status_code}")
                elif f["sealed_size"] is not None and (
                    int(r.headers["content-length"]) != f["sealed_size"]
                    or r.headers["etag"].strip('"') != f["sha256"]
                ):
                    problems.append(f"{model_id} {version}: {f['url']} differs from the record")
        for (model_id, version), registration in sorted(self.ledger.models.items()):
            info = registered.get((model_id, version))
            if info is None:
                problems.append(f"acknowledged registration {model_id} {version} is gone")
                continue
            got = {(f["path"], f["sha256"], f["sealed_size"]) for f in info["files"]}
            want = {(f["path"], f["sha256"], f["sealed_size"]) for f in registration["files"]}
            if got != want:
                problems.append(f"registration {model_id} {version} changed: {got} != {want}")
        return problems


@dataclass
class RegistryRunReport:
    seed: int
    kill_points: int
    ledger: RegistryLedger
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        return (
            f"seed {self.seed}: {self.kill_points} kill points, {len(self.ledger.blobs)} blobs, "
            f"{len(self.ledger.models)} versions acknowledged; outcomes "
            f"{dict(sorted(self.ledger.outcomes.items()))}; seconds "
            f"{ ({k: round(v, 1) for k, v in self.seconds.items()}) }"
        )


def run_registry_durability(
    base: Path,
    *,
    kill_points: int,
    seed: int,
    window: tuple[float, float] = (0.3, 1.5),
    uploaders: int = 3,
    blob_store: str | None = None,
    env: dict[str, str] | None = None,
) -> RegistryRunReport:
    """``kill_points`` times: uploads, ``kill -9`` at a random moment ``window`` seconds
    after they are flowing, restart, check. ``blob_store``: an ``s3://`` URL for the
    registry's blobs (with its credentials in ``env``)."""
    rng = random.Random(seed)
    data_dir = base / "registry"
    ledger = RegistryLedger(tag=f"s{seed % 100000}")
    report = RegistryRunReport(seed, 0, ledger)
    store_args = [] if blob_store is None else ["--blob-store", blob_store]
    server = ServerProcess(
        "registry",
        lambda port: [
            *CLI, "registry", "serve", "--data-dir", str(data_dir), "--port", str(port),
            *store_args,
        ],
        base / "registry.log",
        env=env,
    )  # fmt: skip
    checker = RegistryChecker(data_dir, ledger, blob_store)

    def fail(point: int, problems: list[str]) -> DurabilityFailure:
        shown = "\n  ".join(problems[:20])
        return DurabilityFailure(
            f"registry, seed {seed} (rerun with MODELSEAL_DURABILITY_SEED={seed}), kill point "
            f"{point}/{kill_points}:\n  {shown}\n{report.summary()}\n{server.log_tail()}"
        )

    try:
        server.start()
        token = (data_dir / "upload-token").read_text().strip()
        for point in range(1, kill_points + 1):
            clock = Stopwatch(report.seconds)
            traffic = RegistryTraffic(server.url, token, ledger, rng, uploaders).start()
            wait_for_progress(lambda: ledger.acks, WARM_ACKS)
            time.sleep(rng.uniform(*window))
            server.kill9()
            clock.lap("traffic")
            traffic.stop()
            report.kill_points = point
            crashes = list(traffic.crashes)
            try:
                server.start()
            except ServerDidNotStart as exc:
                raise fail(point, [f"the registry does not start after kill -9: {exc}"]) from None
            clock.lap("restart")
            problems = crashes + checker.check(server.url)
            clock.lap("check")
            if problems:
                raise fail(point, problems)
    finally:
        server.stop()
    return report
