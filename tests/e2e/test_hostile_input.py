"""Hostile bodies against real ``kbs serve`` and ``registry serve`` processes on loopback.

Every request must end in the app's documented error shape and status, and the server's
log must hold no traceback and no ERROR line: a ``RecursionError`` or ``AttributeError``
from a parser is a 500 and a traceback, which is exactly what these bodies used to cause.
The servers' stderr is captured for the whole module and checked once at the end.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelseal.crypto.jose.jwk import TeeKeyPair
from modelseal.kbs.admin_auth import load_admin_credential, mint_admin_token
from modelseal.protocol.binding import runtime_data_digest
from modelseal.protocol.kbs import ERROR_TYPE_PREFIX
from modelseal.tee.sample.attester import Attester
from tests.e2e.kbs_process import start_kbs, stop_process
from tests.e2e.test_registry_http import RegistryServer, start_registry

# one worker runs the module: its module-scoped server checks, at teardown, the log of
# the whole module's traffic
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("test_hostile_input")]

#: modelseal's one problem ``type`` prefix, the admin API's and the registry's
ADMIN_PREFIX = REGISTRY_PREFIX = "https://modelseal.dev/problems/"
DEEP = 100_000


def deep_json(depth: int = DEEP, *, leaf: str = "1") -> Any:
    """A raw JSON fragment ``[[[…1…]]]`` (never decoded here: json.loads would recurse)."""
    return RawJson("[" * depth + leaf + "]" * depth)


class RawJson(str):
    """Marker: spliced into a body verbatim by :func:`body`."""


def body(template: Any) -> bytes:
    """JSON of ``template`` with every :class:`RawJson` value inserted verbatim."""
    raws: list[str] = []

    def swap(value: Any) -> Any:
        if isinstance(value, RawJson):
            raws.append(value)
            return f"@@RAW{len(raws) - 1}@@"
        if isinstance(value, dict):
            return {k: swap(v) for k, v in value.items()}
        if isinstance(value, list):
            return [swap(v) for v in value]
        return value

    text = json.dumps(swap(template))
    for i, raw in enumerate(raws):
        text = text.replace(f'"@@RAW{i}@@"', raw)
    return text.encode()


@dataclass
class Servers:
    kbs: str
    kbs_proc: subprocess.Popen[bytes]
    kbs_data: Path
    registry: RegistryServer

    def admin(self, role: str = "admin") -> dict[str, str]:
        token = mint_admin_token(load_admin_credential(self.kbs_data), role=role, now=time.time())
        return {"Authorization": f"Bearer {token}"}


class LogDrain:
    """Reads a server's stderr continuously (a full pipe would block the server)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.chunks: list[bytes] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.chunks.append(line)

    def text(self) -> str:
        self.thread.join(10)
        return b"".join(self.chunks).decode(errors="replace")


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    data = tmp_path_factory.mktemp("hostile") / "kbs"
    url, proc = start_kbs(data, "--insecure-allow-sample")
    registry = start_registry(tmp_path_factory.mktemp("hostile-registry") / "data")
    s = Servers(url, proc, data, registry)
    kbs_drain, registry_drain = LogDrain(proc), LogDrain(registry.proc)
    failed = True
    try:
        yield s
        failed = False
    finally:
        stop_process(proc)
        registry.stop()
    if not failed:
        for name, log in (("kbs", kbs_drain.text()), ("registry", registry_drain.text())):
            assert "Traceback" not in log, f"{name} logged a traceback:\n{log[-4000:]}"
            assert "ERROR" not in log, f"{name} logged an error:\n{log[-4000:]}"


def assert_problem(r: httpx.Response, status: int, prefix: str, kind: str | None = None) -> str:
    assert r.status_code == status, (r.status_code, r.text[:500])
    assert r.headers["content-type"].startswith("application/json")
    doc = r.json()
    assert set(doc) == {"type", "detail"}, doc
    assert doc["type"].startswith(prefix), doc
    if kind is not None:
        assert doc["type"] == prefix + kind, doc
    assert isinstance(doc["detail"], str)
    assert len(doc["detail"]) <= 300
    detail: str = doc["detail"]
    return detail


def trustee(r: httpx.Response, status: int, variant: str | None = None) -> str:
    return assert_problem(r, status, ERROR_TYPE_PREFIX, variant)


# --- RCAR -------------------------------------------------------------------------------


def test_deep_extra_params_in_auth(servers: Servers) -> None:
    r = httpx.post(
        servers.kbs + "/kbs/v0/auth",
        content=body({"version": "0.4.0", "tee": "sample", "extra-params": deep_json()}),
    )
    assert "nested too deeply" in trustee(r, 400, "SerdeError")


def test_moderately_deep_body_is_400_not_a_recursion_error(servers: Servers) -> None:
    # 900 levels: under the interpreter's limit of 1000 but over the cap of 32
    r = httpx.post(
        servers.kbs + "/kbs/v0/auth",
        content=body({"version": "0.4.0", "tee": "sample", "extra-params": deep_json(900)}),
    )
    trustee(r, 400, "SerdeError")


def _session(servers: Servers, client: httpx.Client) -> str:
    r = client.post(
        servers.kbs + "/kbs/v0/auth",
        json={"version": "0.4.0", "tee": "sample", "extra-params": ""},
    )
    assert r.status_code == 200, r.text
    nonce: str = r.json()["nonce"]
    return nonce


def test_deep_primary_evidence_in_attest(servers: Servers) -> None:
    with httpx.Client() as client:
        nonce = _session(servers, client)
        jwk = TeeKeyPair.generate().public_jwk()
        doc = {
            "runtime-data": {"nonce": nonce, "tee-pubkey": jwk},
            "tee-evidence": {"primary_evidence": deep_json(), "additional_evidence": ""},
        }
        r = client.post(servers.kbs + "/kbs/v0/attest", content=body(doc))
    assert "attestation request" in trustee(r, 400, "SerdeError")


@pytest.mark.parametrize(
    "where",
    ["tee-pubkey", "init-data", "runtime-data", "top"],
)
def test_deep_json_anywhere_in_attest(servers: Servers, where: str) -> None:
    with httpx.Client() as client:
        nonce = _session(servers, client)
        jwk: Any = TeeKeyPair.generate().public_jwk()
        doc: dict[str, Any] = {
            "runtime-data": {"nonce": nonce, "tee-pubkey": jwk},
            "tee-evidence": {"primary_evidence": {}, "additional_evidence": ""},
        }
        if where == "tee-pubkey":
            doc["runtime-data"]["tee-pubkey"] = {**jwk, "x5c": deep_json(5000)}
        elif where == "init-data":
            doc["init-data"] = deep_json(5000)
        elif where == "runtime-data":
            doc["runtime-data"]["extra"] = deep_json(5000)
        else:
            doc["unknown"] = deep_json(5000)
        r = client.post(servers.kbs + "/kbs/v0/attest", content=body(doc))
    trustee(r, 400, "SerdeError")


def test_deep_toml_init_data_is_an_attestation_failure(servers: Servers) -> None:
    keys = TeeKeyPair.generate()
    for toml in (
        'algorithm = "sha384"\nversion = "0.1.0"\n[data]\nx = ' + "[" * 50_000 + "]" * 50_000,
        'algorithm = "sha384"\nversion = "0.1.0"\n[data]\nx = ' + "{a=" * 5_000 + "1" + "}" * 5_000,
        'algorithm = "sha384"\nversion = "0.1.0"\n[data]\n' + ".".join(["a"] * 5000) + " = 1",
    ):
        with httpx.Client() as client:
            nonce = _session(servers, client)
            jwk = keys.public_jwk()
            doc = {
                "init-data": {"format": "toml", "body": toml},
                "runtime-data": {"nonce": nonce, "tee-pubkey": jwk},
                "tee-evidence": {
                    "primary_evidence": Attester().evidence(runtime_data_digest(nonce, jwk)),
                    "additional_evidence": "",
                },
            }
            r = client.post(servers.kbs + "/kbs/v0/attest", json=doc)
        trustee(r, 401, "AttestationError")


def test_hostile_tokens_on_resource(servers: Servers) -> None:
    url = servers.kbs + "/kbs/v0/resource/models/demo/1"
    for header in (
        "[" * 8000 + "]" * 8000,
        '{"alg": "ES256", "x": ' + "[" * 8000 + "]" * 8000 + "}",
        '{"alg": NaN}',
    ):
        import base64

        seg = base64.urlsafe_b64encode(header.encode()).rstrip(b"=").decode()
        r = httpx.get(url, headers={"Authorization": f"Bearer {seg}.{seg}.AAAA"})
        trustee(r, 401, "TokenVerifierError")


# --- admin API --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "payload"),
    [
        ("PUT", "/modelseal/v1/keys/a/b/c", {"generate": True, "policy": deep_json()}),
        ("PUT", "/modelseal/v1/keys/a/b/c", deep_json()),
        ("PUT", "/modelseal/v1/keys/a/b/c", {"generate": True, "policy": deep_json(200)}),
        ("PUT", "/modelseal/v1/keys/a/b/c/policy", deep_json()),
        ("PUT", "/modelseal/v1/keys/a/b/c/policy", {"tee": ["tdx"], "init_data": deep_json()}),
        ("PUT", "/modelseal/v1/keys/a/b/c/model", {"model_digest": deep_json()}),
    ],
)
def test_deep_admin_bodies(servers: Servers, method: str, path: str, payload: Any) -> None:
    r = httpx.request(method, servers.kbs + path, content=body(payload), headers=servers.admin())
    assert_problem(r, 400, ADMIN_PREFIX, "bad-request")


@pytest.mark.parametrize(
    "yaml_text",
    [
        "- " * 20_000 + "x",  # block sequences, two bytes a level
        "tee: " + "[" * 20_000 + "]" * 20_000,
        "tee: [tdx]\ninit_data:\n" + "".join(" " * i + f"k{i}:\n" for i in range(1, 200)) + "  x",
        "a: &a [x, x, x, x]\nb: &b [*a, *a, *a, *a]\ntee: [*b, *b]",
    ],
)
def test_hostile_yaml_policies(servers: Servers, yaml_text: str) -> None:
    r = httpx.put(
        servers.kbs + "/modelseal/v1/keys/a/b/c/policy",
        content=yaml_text.encode(),
        headers=servers.admin(),
    )
    assert_problem(r, 400, ADMIN_PREFIX, "bad-request")


def test_deep_admin_token_header(servers: Servers) -> None:
    import base64

    seg = base64.urlsafe_b64encode(b"[" * 8000 + b"]" * 8000).rstrip(b"=").decode()
    r = httpx.get(
        servers.kbs + "/modelseal/v1/whoami", headers={"Authorization": f"Bearer {seg}.{seg}.AA"}
    )
    assert_problem(r, 401, ADMIN_PREFIX, "unauthorized")


def test_deep_transfer_body(servers: Servers) -> None:
    r = httpx.post(
        servers.kbs + "/kbs/v1/keys/a/b/c/transfer",
        content=body({"quote": "AA", "user_data": "AA", "nonce": deep_json()}),
    )
    trustee(r, 400, "SerdeError")


# --- error shapes of unknown routes and methods -----------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status", "prefix", "kind"),
    [
        ("GET", "/nope", 404, ERROR_TYPE_PREFIX, "InvalidRequestPath"),
        ("GET", "/kbs/v0/nope", 404, ERROR_TYPE_PREFIX, "InvalidRequestPath"),
        ("POST", "/kbs/v2/anything", 404, ERROR_TYPE_PREFIX, "InvalidRequestPath"),
        ("GET", "/kbs/v0/auth", 405, ERROR_TYPE_PREFIX, "InvalidRequestPath"),
        ("PUT", "/kbs/v0/attest", 405, ERROR_TYPE_PREFIX, "InvalidRequestPath"),
        ("PATCH", "/kbs/v0/resource/a/b/c", 405, ERROR_TYPE_PREFIX, "InvalidRequestPath"),
        ("POST", "/healthz", 405, ERROR_TYPE_PREFIX, "InvalidRequestPath"),
        ("GET", "/modelseal/v1/nope", 404, ADMIN_PREFIX, "not-found"),
        ("DELETE", "/modelseal/v1/whoami", 405, ADMIN_PREFIX, "method-not-allowed"),
        ("GET", "/kbs/v1/keys/a/b/c/transfer", 405, ERROR_TYPE_PREFIX, "InvalidRequestPath"),
    ],
)
def test_kbs_unknown_routes_and_methods(
    servers: Servers, method: str, path: str, status: int, prefix: str, kind: str
) -> None:
    r = httpx.request(method, servers.kbs + path)
    assert_problem(r, status, prefix, kind)
    if status == 405:
        assert r.headers.get("allow")


@pytest.mark.parametrize(
    ("method", "path", "status", "kind"),
    [
        ("GET", "/nope", 404, "not-found"),
        ("POST", "/models", 405, "method-not-allowed"),
        ("GET", "/models/m?version=" + "v" * 300, 400, "bad-request"),
    ],
)
def test_registry_unknown_routes_and_methods(
    servers: Servers, method: str, path: str, status: int, kind: str
) -> None:
    r = httpx.request(method, servers.registry.url + path)
    assert_problem(r, status, REGISTRY_PREFIX, kind)


@pytest.mark.parametrize(
    "payload",
    [
        deep_json(),
        {"files": deep_json()},
        {"files": [{"path": "a", "blob": deep_json(900)}]},
    ],
)
def test_deep_registry_registration(servers: Servers, payload: Any) -> None:
    reg = servers.registry
    r = httpx.put(
        reg.url + "/models/m/versions/v1",
        content=body(payload),
        headers=reg.auth(),
    )
    detail = assert_problem(r, 422, REGISTRY_PREFIX, "invalid-registration")
    assert "nested too deeply" in detail
