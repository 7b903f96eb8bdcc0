"""Every admin route, enumerated from the routers: token and role checks, and robustness.

Routes are read from the mounted routers rather than listed by hand, so a route added
later without an entry in ``ALLOWED`` fails here, and each one is proven to answer 401
without a valid token and 403 to a role it does not allow. Malformed bodies, documents
and query parameters (docs/concepts/threat-model.md) must give a typed 4xx, never a 500.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelseal._internal.clock import FixedClock
from modelseal._internal.encoding import b64url_encode
from modelseal.kbs.admin_api import MAX_ADMIN_BODY, admin_router, trustee_admin_router
from modelseal.kbs.admin_auth import mint_admin_token
from modelseal.kbs.state import KbsState
from tests.integration.kbs_admin.strategies import bodies, json_values

BASE = "http://kbs.test"
PREFIX = "/modelseal/v1"
POLICY = {"apiVersion": "modelseal/v1", "kind": "ReleasePolicy", "tee": ["sample"]}

ALL = frozenset({"admin", "publisher", "auditor"})
PUBLISH = frozenset({"admin", "publisher"})
AUDIT = frozenset({"admin", "auditor"})
ADMIN = frozenset({"admin"})

#: (method, route template) -> roles allowed. Must name every mounted route exactly.
ALLOWED: dict[tuple[str, str], frozenset[str]] = {
    ("GET", PREFIX + "/whoami"): ALL,
    ("GET", PREFIX + "/keys"): ALL,
    ("GET", PREFIX + "/keys/{repo}/{kind}/{tag}"): ALL,
    ("PUT", PREFIX + "/keys/{repo}/{kind}/{tag}"): PUBLISH,
    ("POST", PREFIX + "/keys/{repo}/{kind}/{tag}/revoke"): ADMIN,
    ("DELETE", PREFIX + "/keys/{repo}/{kind}/{tag}"): ADMIN,
    ("GET", PREFIX + "/keys/{repo}/{kind}/{tag}/policy"): ALL,
    ("PUT", PREFIX + "/keys/{repo}/{kind}/{tag}/policy"): PUBLISH,
    ("DELETE", PREFIX + "/keys/{repo}/{kind}/{tag}/policy"): ADMIN,
    ("PUT", PREFIX + "/keys/{repo}/{kind}/{tag}/model"): PUBLISH,
    ("GET", PREFIX + "/models"): ALL,
    ("POST", PREFIX + "/kek/rotate"): ADMIN,
    ("GET", PREFIX + "/audit"): AUDIT,
    ("GET", PREFIX + "/audit/verify"): AUDIT,
    ("POST", "/kbs/v0/resource/{repo}/{kind}/{tag}"): PUBLISH,
    ("DELETE", "/kbs/v0/resource/{repo}/{kind}/{tag}"): ADMIN,
}


class Kbs:
    """One state + app for the whole module (opening a KBS per test is the slow part)."""

    def __init__(self, data_dir: Path) -> None:
        self.clock = FixedClock()
        self.state = KbsState.open(data_dir, clock=self.clock)
        self.mounted = ((PREFIX, admin_router(self.state)), ("", trustee_admin_router(self.state)))
        self.app = FastAPI()
        for prefix, router in self.mounted:
            self.app.include_router(router, prefix=prefix)

    def auth(self, role: str = "admin", ttl: int = 300) -> dict[str, str]:
        token = mint_admin_token(
            self.state.admin_key,
            role=role,
            ttl=ttl,
            namespaces=["*"] if role == "publisher" else [],
            now=self.clock.now(),
        )
        return {"Authorization": f"Bearer {token}"}

    def request(self, method: str, url: str, **kwargs: object) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
                return await client.request(method, url, **kwargs)  # type: ignore[arg-type]

        return asyncio.run(go())

    def routes(self) -> Iterator[tuple[str, str]]:
        for prefix, router in self.mounted:
            for route in router.routes:
                assert isinstance(route, APIRoute)
                for method in sorted(route.methods):
                    yield method, prefix + route.path


@pytest.fixture(scope="module")
def kbs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kbs]:
    k = Kbs(tmp_path_factory.mktemp("admin-routes") / "kbs")
    yield k
    k.state.close()


def concrete(template: str, n: int = 0) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: f"{m.group(1)}{n}", template)


def test_the_route_table_is_complete(kbs: Kbs) -> None:
    assert set(kbs.routes()) == set(ALLOWED)


def test_every_route_refuses_a_missing_bad_or_expired_token(kbs: Kbs) -> None:
    other = KbsState.open(kbs.state.data_dir.parent / "other")
    forged = mint_admin_token(other.admin_key, now=kbs.clock.now())
    other.close()
    expired = kbs.auth(ttl=60)
    not_yet = mint_admin_token(kbs.state.admin_key, now=kbs.clock.now() + 3600)
    kbs.clock.advance(60 + 31)
    bad: list[dict[str, str]] = [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer    "},
        {"Authorization": "Basic YWRtaW46YWRtaW4="},
        {"Authorization": "Bearer not.a.jwt"},
        {"Authorization": f"Bearer {forged}"},
        expired,
        {"Authorization": f"Bearer {not_yet}"},
        {"Authorization": "Bearer " + "a" * 5000},
    ]
    h, p, sig = kbs.auth()["Authorization"].removeprefix("Bearer ").split(".")
    latin1 = {"Authorization": f"Bearer {h}.\xe9{p}.{sig}".encode("latin-1")}
    before = len(kbs.state.audit.entries(limit=1000))
    for method, template in ALLOWED:
        for headers in [*bad, latin1]:
            r = kbs.request(method, concrete(template), headers=headers, json={"generate": True})
            assert r.status_code == 401, (method, template, headers, r.text)
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert r.json()["type"].endswith("/unauthorized")
    assert kbs.state.keys.list_keys() == []
    assert len(kbs.state.audit.entries(limit=1000)) == before  # nothing was done


def test_every_route_refuses_roles_it_does_not_allow(kbs: Kbs) -> None:
    for (method, template), allowed in ALLOWED.items():
        for role in sorted(ALL - allowed):
            url = concrete(template, 7)
            r = kbs.request(method, url, headers=kbs.auth(role), json={"generate": True})
            assert r.status_code == 403, (method, template, role, r.text)
            assert r.json()["type"].endswith("/forbidden")
        for role in sorted(allowed):
            r = kbs.request(method, concrete(template, 8), headers=kbs.auth(role))
            assert r.status_code != 403, (method, template, role, r.text)
    assert [k.key_id for k in kbs.state.keys.list_keys()] == []


@pytest.mark.parametrize(
    "suffix",
    ["/keys/r/t/big", "/keys/r/t/big/policy", "/keys/r/t/big/model"],
)
def test_body_size_limit(kbs: Kbs, suffix: str) -> None:
    body = b'{"generate": true, "x": "' + b"a" * MAX_ADMIN_BODY + b'"}'
    r = kbs.request("PUT", PREFIX + suffix, content=body, headers=kbs.auth())
    assert r.status_code == 400, r.text
    assert "larger than" in r.json()["detail"]
    r = kbs.request("POST", "/kbs/v0/resource/r/t/big", content=body, headers=kbs.auth())
    assert r.status_code == 400


@pytest.mark.parametrize(
    ("suffix", "body", "needle"),
    [
        ("/keys/r/t/a", b"", "invalid request"),
        ("/keys/r/t/a", b"\xff\xfe\x00", "invalid request"),
        ("/keys/r/t/a", b"null", "invalid request"),
        ("/keys/r/t/a", b"[]", "invalid request"),
        ("/keys/r/t/a", b'"generate"', "invalid request"),
        ("/keys/r/t/a", b'{"generate": "yes"}', "generate"),
        ("/keys/r/t/a", b'{"key": 12345}', "key"),
        ("/keys/r/t/a", '{"key": "ключ"}'.encode(), "base64url"),
        ("/keys/r/t/a", b'{"key": "' + b"A" * 65 + b'"}', "key"),
        ("/keys/r/t/a", b'{"generate": true, "policy": []}', "policy"),
        ("/keys/r/t/a", b'{"generate": true, "policy": {"a": ' * 3000 + b"}" * 3000, ""),
        (
            "/keys/r/t/a",
            json.dumps(
                {"generate": True, "policy": {**POLICY, "not_after": "9999-12-31T23:59:59-01:00"}}
            ).encode(),
            "not_after",
        ),
        (
            "/keys/r/t/a",
            json.dumps(
                {"generate": True, "policy": {**POLICY, "measurements": [{"x": 1}]}}
            ).encode(),
            "measurements",
        ),
        ("/keys/r/t/a/policy", b"", "mapping"),
        ("/keys/r/t/a/policy", b"\xff", "UTF-8"),
        ("/keys/r/t/a/policy", b"a: &x [1]\nb: *x\n", "aliases"),
        ("/keys/r/t/a/policy", b"[" * 400, "nested"),
        ("/keys/r/t/a/policy", b"{" + b'"a":[' * 3000, "nested"),
        ("/keys/r/t/a/policy", b'{"tee": [tdx]}', "JSON"),
        ("/keys/r/t/a/policy", b"x" * (64 * 1024 + 1), "at most"),
        ("/keys/r/t/a/policy", b"not_after: 0001-01-01T00:00:00+01:00\n", "not_after"),
        ("/keys/r/t/a/model", b'{"model_digest": 1}', "model_digest"),
        ("/keys/r/t/a/model", b'{"model_digest": "sha256:zz"}', "model digest"),
    ],
)
def test_malformed_bodies_are_400(kbs: Kbs, suffix: str, body: bytes, needle: str) -> None:
    if not _exists(kbs, "r/t/a"):
        kbs.state.keys.put("r/t/a", None, actor="test")
    r = kbs.request("PUT", PREFIX + suffix, content=body, headers=kbs.auth())
    assert r.status_code == 400, r.text
    assert r.json()["type"].endswith("/bad-request")
    assert needle in r.json()["detail"]


def _exists(kbs: Kbs, key_id: str) -> bool:
    return any(k.key_id == key_id for k in kbs.state.keys.list_keys())


@pytest.mark.parametrize(
    "query",
    [
        "limit=%C2%B2",
        "after=%D9%A3",
        "limit=0",
        "limit=-1",
        "limit=1001",
        "after=-1",
        "after=1e3",
        "after=" + str(2**63),
        "limit=" + "9" * 30,
    ],
)
def test_bad_audit_query_is_400(kbs: Kbs, query: str) -> None:
    r = kbs.request("GET", f"{PREFIX}/audit?{query}", headers=kbs.auth())
    assert r.status_code == 400, r.text
    name = query.split("=", 1)[0]
    assert r.json() == {
        "type": "https://modelseal.dev/problems/bad-request",
        "detail": f"invalid request parameter: query.{name}",
    }
    assert r.headers["cache-control"] == "no-store"
    # authentication comes first: a bad query from an unknown caller is a 401
    r = kbs.request("GET", f"{PREFIX}/audit?{query}")
    assert r.status_code == 401, r.text


@pytest.mark.parametrize("query", ["", "limit=1", "limit=1000", f"after={2**63 - 1}&limit=7"])
def test_audit_query_bounds_are_inclusive(kbs: Kbs, query: str) -> None:
    r = kbs.request("GET", f"{PREFIX}/audit?{query}", headers=kbs.auth())
    assert r.status_code == 200, r.text
    assert isinstance(r.json()["entries"], list)


@pytest.mark.parametrize("query", ["model_digest=sha256:zz", "model_digest=%00"])
def test_bad_list_filters_are_400(kbs: Kbs, query: str) -> None:
    for path in ("/keys", "/models"):
        name = "digest" if path == "/models" else "model_digest"
        r = kbs.request(
            "GET", f"{PREFIX}{path}?{query.replace('model_digest', name)}", headers=kbs.auth()
        )
        assert r.status_code == 400, r.text


put_bodies = st.fixed_dictionaries(
    {},
    optional={
        "key": st.text(max_size=70) | st.just(b64url_encode(b"k" * 32)) | json_values,
        "generate": st.booleans() | json_values,
        "policy": st.just(POLICY) | json_values,
        "model_digest": st.just("sha256:" + "ab" * 32) | json_values,
    },
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.sampled_from(["/keys/r/t/fuzz", "/keys/r/t/fuzz/policy", "/keys/r/t/fuzz/model"]),
    bodies(put_bodies),
)
def test_any_body_is_answered_without_a_server_error(kbs: Kbs, suffix: str, body: bytes) -> None:
    r = kbs.request("PUT", PREFIX + suffix, content=body, headers=kbs.auth())
    assert r.status_code in (200, 201, 400, 404, 409), r.text
    assert set(r.json()) >= ({"type", "detail"} if r.status_code >= 400 else set())


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=64))
def test_any_trustee_resource_body_is_answered_without_a_server_error(
    kbs: Kbs, body: bytes
) -> None:
    r = kbs.request("POST", "/kbs/v0/resource/r/trustee/fuzz", content=body, headers=kbs.auth())
    assert r.status_code in (200, 201, 400, 409), r.text


#: Routes of the real app that are public by design (attestation is their authentication;
#: ITA's login takes a password; ITA's version is public there too).
PUBLIC = {
    ("POST", "/kbs/v1/keys/{repo}/{kind}/{tag}/transfer"),
    ("POST", "/kbs/v1/keys/{key}/transfer"),
    ("POST", "/kbs/v1/token"),
    ("GET", "/kbs/v1/version"),
}
ITA = "/kbs/v1"
#: The Intel Trust Authority registration routes and the roles they admit (401 otherwise).
ITA_ALLOWED: dict[tuple[str, str], frozenset[str]] = {
    ("POST", ITA + "/key-transfer-policies"): PUBLISH,
    ("GET", ITA + "/key-transfer-policies"): ALL,
    ("GET", ITA + "/key-transfer-policies/{policy_id}"): ALL,
    ("DELETE", ITA + "/key-transfer-policies/{policy_id}"): ADMIN,
    ("POST", ITA + "/keys"): PUBLISH,
    ("GET", ITA + "/keys"): ALL,
    ("GET", ITA + "/keys/{key_id}"): ALL,
    ("PUT", ITA + "/keys/{key_id}"): PUBLISH,
    ("DELETE", ITA + "/keys/{key_id}"): ADMIN,
    ("POST", ITA + "/keys/{key_id}"): ALL,
}


def test_the_real_kbs_app_mounts_exactly_these_routes_and_guards_them(kbs: Kbs) -> None:
    """Through ``create_app`` as served: every documented route that is not an attestation
    route is in ``ALLOWED`` (so a route added to the app without a role rule fails here)
    and answers 401 without a token."""
    from modelseal.kbs.app import create_app
    from modelseal.kbs.settings import KbsSettings

    settings = KbsSettings(data_dir=kbs.state.data_dir).validated()
    app = create_app(settings, kbs.state, clock=kbs.clock)
    documented = {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    }
    assert documented - PUBLIC == set(ALLOWED) | set(ITA_ALLOWED)

    async def probe() -> list[tuple[str, str, int]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            return [
                (m, t, (await client.request(m, concrete(t), json={"generate": True})).status_code)
                for m, t in sorted(ALLOWED)
            ]

    assert {status for _, _, status in asyncio.run(probe())} == {401}

    async def probe_ita() -> set[tuple[str, str, str, int, bytes]]:
        transport = httpx.ASGITransport(app=app)
        seen = set()
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            for (method, template), roles in sorted(ITA_ALLOWED.items()):
                for role in ("none", *sorted({"admin", "publisher", "auditor"} - roles)):
                    headers = {} if role == "none" else kbs.auth(role)
                    r = await client.request(method, concrete(template), headers=headers)
                    seen.add((method, template, role, r.status_code, r.content))
        return seen

    refused = asyncio.run(probe_ita())
    assert {(status, body) for *_, status, body in refused} == {(401, b"Unauthorized\n")}
    assert len(refused) == sum(1 + 3 - len(roles) for roles in ITA_ALLOWED.values())
