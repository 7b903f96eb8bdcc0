"""KBS key releases per second: full RCAR (auth + attest + resource), sample and mock-tdx.

Starts ``modelseal kbs serve`` (SQLite; sample TEE allowed; mock-tdx trusted through its
test root, so every quote goes through the real DCAP verification) as its own process,
registers a key through the admin API, then drives it from this process with 1, 8 and 32
concurrent clients. Every release uses a fresh handshake, a fresh TEE key and fresh evidence
bound to that session's nonce, and every JWE is decrypted and checked after the timed
window, so a wrong key counts as an error.

The load generator must cost much less CPU than the server on the same two cores: it speaks
HTTP/1.1 on raw asyncio streams, encodes and decodes its JSON with msgspec, generates the
TEE key pairs before the timed window (each session still gets its own), and decrypts the
released JWEs after it.

Run: ``python -m bench kbs_bench`` (optional env: KBS_BENCH_SECONDS, KBS_BENCH_WORKERS,
KBS_BENCH_TEES (default ``sample,mock-tdx``), KBS_BENCH_CLIENTS (default ``1,8,32``)).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx
import msgspec

from modelseal.crypto.jose.jwe import decrypt
from modelseal.crypto.jose.jwk import TeeKeyPair
from modelseal.crypto.secret import SecretBytes
from modelseal.owner.kbs_admin import KbsAdminClient
from modelseal.protocol.binding import runtime_data_digest
from modelseal.tee.sample.attester import Attester

KEY_ID = "models/bench/1"
DEK = bytes(range(32))
POLICY = {"apiVersion": "modelseal/v1", "kind": "ReleasePolicy", "tee": ["sample", "mock-tdx"]}
CLI = [sys.executable, "-c", "from modelseal.cli import main; main()"]
CLIENTS = tuple(int(c) for c in os.environ.get("KBS_BENCH_CLIENTS", "1,8,32").split(","))
TARGETS = {"sample": 1000.0, "mock-tdx": 600.0}
T = TypeVar("T")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_server(
    data_dir: Path, workers: int = 1, *extra: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        *CLI, "kbs", "serve", "--data-dir", str(data_dir), "--port", str(port),
        "--insecure-allow-sample", "--log-level", "warning", "--workers", str(workers), *extra,
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("kbs serve did not start")


def register_key(data_dir: Path, url: str, env: dict[str, str] | None = None) -> None:
    token = subprocess.run(
        [*CLI, "kbs", "token", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout.strip()
    with KbsAdminClient(url, token) as admin:
        admin.put_key(KEY_ID, SecretBytes(DEK), policy=POLICY)


class Connection:
    """A minimal keep-alive HTTP/1.1 client on asyncio streams.

    The load generator must be much cheaper than the server it measures; httpx costs about
    as much CPU per request as the KBS itself, so it would hide the server's capacity.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: str = ""
    ) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{headers}\r\n"
        )
        self.writer.write(head.encode() + body)
        lines = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        fields: dict[str, str] = {}
        for line in lines[1:-2]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        payload = await self.reader.readexactly(int(fields.get("content-length", "0")))
        return status, fields, payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Guest:
    """The TEE side of the load: evidence for a nonce and a pre-generated key per session."""

    def __init__(self, tee: str, attester: Any, keys: int) -> None:
        self.tee = tee
        self.attester = attester
        self.auth_body = json.dumps({"version": "0.4.0", "tee": tee, "extra-params": ""}).encode()
        self._keys = [TeeKeyPair.generate() for _ in range(keys)]
        self._jwks = [k.public_jwk() for k in self._keys]
        self._next = 0

    def session_key(self) -> tuple[TeeKeyPair, dict[str, Any]]:
        i = self._next % len(self._keys)
        self._next += 1
        return self._keys[i], self._jwks[i]


#: Released JWEs and the key each was wrapped to, decrypted and checked after the window.
Released = list[tuple[bytes, TeeKeyPair]]


async def one_release(conn: Connection, guest: Guest, released: Released) -> None:
    """auth → attest → resource on a fresh session; raises on any failure."""
    keys, jwk = guest.session_key()
    status, fields, body = await conn.request("POST", "/kbs/v0/auth", guest.auth_body)
    if status != 200:
        raise RuntimeError(f"auth {status}")
    nonce = msgspec.json.decode(body)["nonce"]
    cookie = fields["set-cookie"].split(";", 1)[0]
    evidence = guest.attester.evidence(runtime_data_digest(nonce, jwk))
    attestation = {
        "runtime-data": {"nonce": nonce, "tee-pubkey": jwk},
        "tee-evidence": {"primary_evidence": evidence, "additional_evidence": ""},
    }
    status, _, body = await conn.request(
        "POST", "/kbs/v0/attest", msgspec.json.encode(attestation), f"Cookie: {cookie}\r\n"
    )
    if status != 200:
        raise RuntimeError(f"attest {status}")
    token = msgspec.json.decode(body)["token"]
    status, _, body = await conn.request(
        "GET", f"/kbs/v0/resource/{KEY_ID}", headers=f"Authorization: Bearer {token}\r\n"
    )
    if status != 200:
        raise RuntimeError(f"resource {status}")
    released.append((body, keys))


def check_released(released: Released) -> int:
    """Decrypt every released JWE with the session's key; the number of wrong ones."""
    return sum(decrypt(json.loads(body), keys).reveal() != DEK for body, keys in released)


async def run_level(url: str, guest: Guest, concurrency: int, seconds: float) -> dict[str, float]:
    host, port = url.removeprefix("http://").split(":")
    conns = [Connection(host, int(port)) for _ in range(concurrency)]
    latencies: list[float] = []
    released: Released = []
    errors = 0
    for conn in conns:  # warm-up: connections, server caches
        await one_release(conn, guest, released)
    stop = time.perf_counter() + seconds

    async def worker(conn: Connection) -> None:
        nonlocal errors
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            try:
                await one_release(conn, guest, released)
            except Exception:
                errors += 1
                conn.close()
                conn.writer = None
                continue
            latencies.append(time.perf_counter() - t0)

    t_start, cpu_start = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker(c) for c in conns))
    elapsed = time.perf_counter() - t_start
    load_cpu = time.process_time() - cpu_start
    for conn in conns:
        conn.close()
    wrong = check_released(released)
    latencies.sort()
    return {
        "concurrency": concurrency,
        "releases": len(latencies),
        "errors": errors + wrong,
        "rate": len(latencies) / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "load_cpu_ms": 1000 * load_cpu / max(1, len(latencies)),
    }


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """Run the load on uvloop when installed: its streams cost the load process less CPU."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def process_tree_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of ``pid`` and each of its direct children (workers)."""
    tick = os.sysconf("SC_CLK_TCK")

    def stat(p: int) -> list[str]:
        with open(f"/proc/{p}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()

    found: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = stat(int(entry))
        except OSError:
            continue
        if int(entry) == pid or fields[1] == str(pid):
            found[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    return found


def component_costs(n: int = 300) -> dict[str, float]:
    """CPU ms per release of the server-side work, called in-process (no HTTP, no sockets).

    ``rcar`` is everything of ours (sessions, binding, ES256 token, JWE); ``decision`` is
    ``KbsState.release`` (key load and unwrap, policy, hash-chained audit append), so the
    report can say where the server's time goes.
    """
    from modelseal.kbs.app import create_app
    from modelseal.protocol.kbs import AttestationRequest, AuthRequest, parse_model

    auth = b'{"version":"0.4.0","tee":"sample"}'
    from modelseal.kbs.settings import KbsSettings
    from modelseal.kbs.state import KbsState
    from modelseal.protocol.claims import Claims

    class _Request:  # the three attributes Kbs.resource reads from a Starlette request
        def __init__(self, token: str) -> None:
            self.headers = {"authorization": f"Bearer {token}"}
            self.cookies: dict[str, str] = {}
            self.client = None

    attester = Attester()

    def guest_side() -> tuple[TeeKeyPair, Callable[[str], bytes]]:
        keys = TeeKeyPair.generate()
        jwk = keys.public_jwk()

        def attestation(nonce: str) -> bytes:
            evidence = attester.evidence(runtime_data_digest(nonce, jwk))
            return json.dumps(
                {
                    "runtime-data": {"nonce": nonce, "tee-pubkey": jwk},
                    "tee-evidence": {"primary_evidence": evidence, "additional_evidence": ""},
                }
            ).encode()

        return keys, attestation

    with tempfile.TemporaryDirectory(prefix="kbs-bench-") as tmp:
        state = KbsState.open(Path(tmp) / "kbs")
        state.keys.put(KEY_ID, SecretBytes(DEK), policy=POLICY, actor="bench")
        settings = KbsSettings(
            data_dir=Path(tmp) / "kbs", tee_options={"insecure_allow_sample": True}
        )
        kbs = create_app(settings.validated(), state).state.kbs

        async def releases(count: int) -> float:
            guest = 0.0
            for _ in range(count):
                r = await kbs.auth(parse_model(AuthRequest, auth, what="auth"))
                nonce = json.loads(r.body)["nonce"]
                sid = r.headers["set-cookie"].split("=", 1)[1].split(";", 1)[0]
                g0 = time.process_time()
                _keys, attestation = guest_side()
                body = attestation(nonce)
                guest += time.process_time() - g0
                r = await kbs.attest(parse_model(AttestationRequest, body, what="attest"), sid)
                await kbs.resource(KEY_ID, _Request(json.loads(r.body)["token"]))
            return guest

        asyncio.run(releases(20))
        t0 = time.process_time()
        guest = asyncio.run(releases(n))
        total = time.process_time() - t0 - guest
        claims = Claims(
            tee="sample", debug=False, report_data=bytes(64), tcb_status="UpToDate", insecure=True
        )
        state.release(KEY_ID, claims, token_id="bench", requester="bench")
        t0 = time.process_time()
        for _ in range(n):
            state.release(KEY_ID, claims, token_id="bench", requester="bench").wipe()
        decision = time.process_time() - t0
        state.close()
    return {"server": 1000 * total / n, "decision": 1000 * decision / n}


def guest_for(tee: str, ca_dir: Path, keys: int) -> Guest:
    if tee == "mock-tdx":
        from modelseal.tee.mock_tdx.attester import Attester as MockTdxAttester

        return Guest(tee, MockTdxAttester(ca_dir), keys)
    return Guest(tee, Attester(), keys)


def measure(workers: int, tee: str, seconds: float) -> list[dict[str, Any]]:
    from modelseal.tee.mock_tdx.ca import MockTdxCA

    with tempfile.TemporaryDirectory(prefix="kbs-bench-") as tmp:
        data_dir = Path(tmp) / "kbs"
        ca = MockTdxCA.create(Path(tmp) / "ca")
        proc, url = start_server(data_dir, workers, "--mock-tdx-root", str(ca.root_pem_path))
        try:
            register_key(data_dir, url)
            guest = guest_for(tee, ca.directory, keys=256)
            results: list[dict[str, Any]] = []
            for concurrency in CLIENTS:
                cpu0 = process_tree_cpu(proc.pid)
                result: dict[str, Any] = dict(
                    run_async(run_level(url, guest, concurrency, seconds))
                )
                cpu1 = process_tree_cpu(proc.pid)
                used = {p: cpu1[p] - cpu0.get(p, 0.0) for p in cpu1}
                total = sum(used.values())
                result["server_cpu_ms"] = 1000 * total / max(1.0, result["releases"] + concurrency)
                busiest = max(used.values()) if used else 0.0
                result["busiest_share"] = busiest / total if total else 0.0
                result["workers"] = workers
                result["tee"] = tee
                results.append(result)
        finally:
            proc.terminate()
            proc.wait(10)
    return results


def verdicts(results: list[dict[str, Any]]) -> str:
    """One line per TEE kind: best rate at 32 clients against its target, errors."""
    lines = []
    for tee, target in TARGETS.items():
        at_32 = [r for r in results if r["tee"] == tee and r["concurrency"] == 32]
        if not at_32:
            continue
        best = max(at_32, key=lambda r: r["rate"])
        errors = sum(int(r["errors"]) for r in results if r["tee"] == tee)
        met = best["rate"] >= target and errors == 0
        lines.append(
            f"- {tee}: target {target:.0f} releases/s at 32 clients with zero errors: "
            f"**{'met' if met else 'missed'}** -- best {best['rate']:.0f}/s "
            f"({best['workers']:.0f} worker(s)), {errors} errors."
        )
    return "\n".join(lines)


def main() -> None:
    seconds = float(os.environ.get("KBS_BENCH_SECONDS", "10"))
    worker_counts = [int(w) for w in os.environ.get("KBS_BENCH_WORKERS", "1,2").split(",")]
    tees = os.environ.get("KBS_BENCH_TEES", "sample,mock-tdx").split(",")
    load_before = os.getloadavg()[0]
    results = [r for tee in tees for w in worker_counts for r in measure(w, tee, seconds)]
    costs = component_costs()
    load_after = os.getloadavg()[0]
    rows = "\n".join(
        f"| {r['tee']} | {r['workers']:.0f} | {r['concurrency']:.0f} | **{r['rate']:.0f}** "
        f"| {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['releases']:.0f} | {r['errors']:.0f} "
        f"| {r['server_cpu_ms']:.2f} | {r['load_cpu_ms']:.2f} | {100 * r['busiest_share']:.0f} % |"
        for r in results
    )
    machine = f"{os.cpu_count()}-CPU machine, Python {platform.python_version()}"
    header = (
        "| TEE | workers | concurrent clients | releases/s | p50 (ms) | p99 (ms) | releases "
        "| errors | server CPU (ms/release) | load process CPU (ms/release) "
        "| busiest process's CPU share |"
    )
    md = f"""Command: `python -m bench kbs_bench` ({seconds:.0f} s per level; environment
`KBS_BENCH_SECONDS`, `KBS_BENCH_WORKERS` (default `1,2`), `KBS_BENCH_TEES` (default
`sample,mock-tdx`), `KBS_BENCH_CLIENTS` (default `1,8,32`)).

`modelseal kbs serve --insecure-allow-sample --mock-tdx-root ... --workers N` (SQLite WAL in
a temp data dir, ES256 tokens, ECDH-ES+A256KW P-256 JWE) and one load process (asyncio, one
keep-alive HTTP/1.1 connection per client, raw HTTP/1.1) on the same {machine}.
A release = `POST /kbs/v0/auth` + `POST /kbs/v0/attest` (fresh nonce; a TEE key of its own;
fresh evidence bound to both: sample evidence, or a mock-tdx quote that the KBS verifies with
dcap-qvl against the test root and collateral) + `GET /kbs/v0/resource/...` (token verified,
policy evaluated, audit row appended, DEK wrapped to the TEE key). The load process makes its
TEE keys before and decrypts and checks every released key after the timed window.
"server CPU" is the KBS processes' user+system CPU time per release, "load process CPU" the
load generator's own during the timed window (both compete for the same 2 CPUs, so at best
releases/s = 2000 / (server + load process ms)); "busiest process's CPU share" is how much of
the server CPU the busiest process used (50 % = two workers evenly loaded; with more
workers the supervisor's few ms count too). On SQLite each worker group-commits the RCAR
writes (session insert, nonce consumption, release + audit row) of the requests it has in
flight: one transaction per batch, a savepoint per unit, every answer after its commit.
The machine is shared: the 1-minute load
average was {load_before:.1f} before and {load_after:.1f} after this run, and under such load
both the throughput and the CPU time per operation get worse, so rerun on a quiet machine to
see the code's own capacity.

{header}
| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |
{rows}

Where the server's CPU goes, measured in-process without HTTP (same code, called directly,
sample TEE): {costs["server"]:.2f} ms per release in total, of which {costs["decision"]:.2f} ms
is the release decision (`KbsState.release`, as a transaction of its own: key load and
unwrap, policy evaluation, hash-chained audit append) and the rest is RCAR (sessions,
binding digest, sample verification, ES256 token issue, JWE; a token that comes back to the
process that issued it is not verified again). The rest of the "server CPU" column is HTTP
(uvicorn's parsing and its two `write`s per response, routing, middleware) and the hand-offs
to the group-commit thread.

{verdicts(results)}
"""
    print(md)
    from bench.report import write_section

    write_section("KBS: key releases per second", md)


if __name__ == "__main__":
    main()
