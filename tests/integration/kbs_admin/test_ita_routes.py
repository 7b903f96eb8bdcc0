"""Hostile bodies and queries on the Intel Trust Authority registration routes (in-process).

Whatever a client sends, each route answers in ITA's shape with a 2xx, 400, 404 or 415,
never a server error or a traceback. The routes against a real ``kbs serve`` are in
tests/e2e/test_ita_registration.py.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelseal._internal.clock import FixedClock
from modelseal.errors import ConfigError
from modelseal.kbs import ita_users
from modelseal.kbs.admin_auth import mint_admin_token, verify_admin_token
from modelseal.kbs.ita_api import LOGIN_SLOTS, ita_router
from modelseal.kbs.ita_users import MAX_NAME, SUBJECT_PREFIX, ItaUsers, hash_password
from modelseal.kbs.state import KbsState
from tests.integration.kbs_admin.strategies import bodies, json_values

HEX = "ab" * 48
BASE = "http://kbs"


class Ita:
    def __init__(self, data_dir: Path) -> None:
        self.clock = FixedClock()
        self.state = KbsState.open(data_dir, clock=self.clock)
        self.app = FastAPI()
        self.app.include_router(ita_router(self.state, ("tdx",), None), prefix="/kbs/v1")
        token = mint_admin_token(self.state.admin_key, ttl=3600, now=self.clock.now())
        self.headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
                return await client.request(method, url, **kwargs)

        return asyncio.run(go())


@pytest.fixture(scope="module")
def ita(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ita]:
    app = Ita(tmp_path_factory.mktemp("ita") / "kbs")
    yield app
    app.state.close()


attributes = st.fixed_dictionaries(
    {},
    optional={
        "mrtd": st.lists(st.just(HEX) | st.text(max_size=100), max_size=3) | json_values,
        "mrseam": st.lists(st.just(HEX), max_size=2) | json_values,
        "rtmr0": st.just(HEX) | st.text(max_size=100) | json_values,
        "seamsvn": st.integers() | json_values,
        "enforce_tcb_upto_date": st.booleans() | json_values,
    },
)
policy_bodies = st.fixed_dictionaries(
    {"attestation_type": st.sampled_from(["TDX", "SGX", "tdx", ""]) | json_values},
    optional={
        "tdx": st.fixed_dictionaries(
            {}, optional={"attributes": attributes, "policy_ids": json_values}
        ),
        "sgx": json_values,
        "id": json_values,
    },
)
key_bodies = st.fixed_dictionaries(
    {},
    optional={
        "key_information": st.fixed_dictionaries(
            {},
            optional={
                "algorithm": st.sampled_from(["AES", "aes", "RSA", "EC", ""]) | json_values,
                "key_length": st.sampled_from([128, 192, 256, 0, -1, 2**70]) | json_values,
                "key_data": st.just("A" * 43 + "=") | st.text(max_size=60) | json_values,
                "kmip_key_id": json_values,
            },
        )
        | json_values,
        "transfer_policy_id": st.uuids().map(str) | st.text(max_size=40) | json_values,
    },
)
login_bodies = st.fixed_dictionaries(
    {}, optional={"username": st.text(max_size=20) | json_values, "password": json_values}
)
HOSTILE = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _check(r: httpx.Response) -> None:
    assert r.status_code in (200, 201, 204, 400, 401, 404, 415), (r.status_code, r.text)
    if r.status_code >= 400 and r.status_code != 401:
        assert set(r.json()) == {"error"}
        assert r.content.endswith(b"\n")


@HOSTILE
@given(bodies(policy_bodies))
def test_any_policy_body_is_answered(ita: Ita, body: bytes) -> None:
    _check(ita.request("POST", "/kbs/v1/key-transfer-policies", content=body, headers=ita.headers))


@HOSTILE
@given(bodies(key_bodies))
def test_any_key_body_is_answered(ita: Ita, body: bytes) -> None:
    _check(ita.request("POST", "/kbs/v1/keys", content=body, headers=ita.headers))
    _check(
        ita.request(
            "PUT",
            "/kbs/v1/keys/4517534b-a758-4447-9d2f-3e5606152ed6",
            content=body,
            headers=ita.headers,
        )
    )


@HOSTILE
@given(bodies(login_bodies))
def test_any_login_body_is_answered(ita: Ita, body: bytes) -> None:
    headers = {"Content-Type": "application/json", "Accept": "application/jwt"}
    r = ita.request("POST", "/kbs/v1/token", content=body, headers=headers)
    assert r.status_code in (400, 401), r.text  # no user file: nobody logs in
    assert set(r.json()) == {"error"}


@HOSTILE
@given(
    st.dictionaries(
        st.sampled_from(["algorithm", "keyLength", "curveType", "transferPolicyId", "x"]),
        st.text(max_size=40),
        max_size=4,
    ),
    st.text(max_size=60),
)
def test_any_search_or_id_is_answered(ita: Ita, query: dict[str, str], some_id: str) -> None:
    _check(ita.request("GET", "/kbs/v1/keys", params=query, headers=ita.headers))
    for path in ("/kbs/v1/keys/", "/kbs/v1/key-transfer-policies/"):
        url = path + (quote(some_id.replace("/", ""), safe="") or "x")  # one segment
        _check(ita.request("GET", url, headers=ita.headers))
        _check(ita.request("DELETE", url, headers=ita.headers))


def test_wrong_headers_are_415_before_the_body_is_parsed(ita: Ita) -> None:
    for name, value, error in (
        ("Content-Type", "application/json; charset=utf-8", "Invalid Content-type header"),
        ("Accept", "*/*", "Invalid Accept header"),
    ):
        headers = {**ita.headers, name: value}
        r = ita.request("POST", "/kbs/v1/key-transfer-policies", content=b"{", headers=headers)
        assert (r.status_code, r.json()) == (415, {"error": error})


def _logins(app: FastAPI, *attempts: tuple[str, str]) -> list[httpx.Response]:
    """``POST /kbs/v1/token`` for every (user name, password), all at once."""

    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            return list(
                await asyncio.gather(
                    *(
                        client.post(
                            "/kbs/v1/token",
                            json={"username": username, "password": password},
                            headers={
                                "Content-Type": "application/json",
                                "Accept": "application/jwt",
                            },
                        )
                        for username, password in attempts
                    )
                )
            )

    return asyncio.run(go())


def _login(app: FastAPI, username: str, password: str) -> httpx.Response:
    return _logins(app, (username, password))[0]


def test_logins_against_a_user_file_edited_into_garbage_are_503(tmp_path: Path) -> None:
    """A user file broken after the start: the login answers 503 without naming the file."""
    users = ItaUsers(tmp_path / "users.json")
    users.save({"alice": hash_password("alice", b"password 123")})
    state = KbsState.open(tmp_path / "kbs", clock=FixedClock())
    try:
        app = FastAPI()
        app.include_router(ita_router(state, ("tdx",), users), prefix="/kbs/v1")

        def login(password: str) -> httpx.Response:
            return _login(app, "alice", password)

        ok = login("password 123")
        assert ok.status_code == 200
        assert ok.headers["strict-transport-security"].startswith("max-age=")
        who = verify_admin_token(ok.text, state.admin_key, now=state.clock.now())
        assert (who.subject, who.roles, who.namespaces) == (
            "ita:alice",
            frozenset({"publisher"}),
            frozenset({"default/key"}),
        )
        users.path.write_text("{")
        broken = login("password 123")
        assert broken.status_code == 503
        assert str(tmp_path) not in broken.text
    finally:
        state.close()


@pytest.mark.parametrize("digits", [5000, 4301, 9])
def test_a_key_length_filter_of_thousands_of_digits_is_400(ita: Ita, digits: int) -> None:
    """int() of more than 4300 digits raises ValueError: the filter is checked first."""
    r = ita.request("GET", "/kbs/v1/keys", params={"keyLength": "1" * digits}, headers=ita.headers)
    assert (r.status_code, r.json()) == (400, {"error": "Invalid filter criteria"})


def test_the_longest_user_name_logs_in_and_a_longer_one_is_refused(tmp_path: Path) -> None:
    """The token subject is ``ita:<name>``, at most 128 characters: a name the file accepts
    must get a token with its right password (never a 400 that only the right password
    reaches), and a longer name is refused when it is added and when the file is read."""
    users = ItaUsers(tmp_path / "users.json")
    longest = "n" * MAX_NAME
    users.save({longest: hash_password(longest, b"password 123")})
    state = KbsState.open(tmp_path / "kbs", clock=FixedClock())
    try:
        app = FastAPI()
        app.include_router(ita_router(state, ("tdx",), users), prefix="/kbs/v1")
        ok = _login(app, longest, "password 123")
        assert ok.status_code == 200, ok.text
        who = verify_admin_token(ok.text, state.admin_key, now=state.clock.now())
        assert who.subject == SUBJECT_PREFIX + longest
    finally:
        state.close()
    longer = "n" * (MAX_NAME + 1)
    with pytest.raises(ConfigError, match="user name"):
        hash_password(longer, b"password 123")
    doc = json.loads(users.path.read_text())
    doc["users"][0]["name"] = longer
    users.path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="user name"):
        users.load()


class _ScryptCounter:
    """Wraps the scrypt check of the user file: counts runs and the most at once."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.real = ita_users.scrypt_matches
        self.calls = self.running = self.peak = 0
        self.lock = threading.Lock()
        monkeypatch.setattr(ita_users, "scrypt_matches", self)

    def __call__(self, *args: Any, **kwargs: Any) -> bool:
        with self.lock:
            self.calls += 1
            self.running += 1
            self.peak = max(self.peak, self.running)
        try:
            time.sleep(0.05)  # hold the check a little so parallel logins overlap
            return bool(self.real(*args, **kwargs))
        finally:
            with self.lock:
                self.running -= 1


def test_parallel_logins_run_at_most_login_slots_scrypt_checks_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``/token`` needs no token and each check is 32 MiB of scrypt: a burst of logins
    waits for LOGIN_SLOTS checks instead of taking one thread and 32 MiB per request."""
    users = ItaUsers(tmp_path / "users.json")
    users.save({"alice": hash_password("alice", b"password 123")})
    scrypt = _ScryptCounter(monkeypatch)
    state = KbsState.open(tmp_path / "kbs", clock=FixedClock())
    try:
        app = FastAPI()
        app.include_router(ita_router(state, ("tdx",), users), prefix="/kbs/v1")
        attempts = [("alice", "password 12" + str(i)) for i in range(4, 10)]
        attempts += [("mallory", "password 123")] * 5 + [("alice", "password 123")]
        answers = _logins(app, *attempts)
    finally:
        state.close()
    assert [r.status_code for r in answers] == [401] * 11 + [200]
    assert scrypt.calls == len(attempts)  # unknown names cost a check too
    assert scrypt.peak == LOGIN_SLOTS


def test_without_a_user_file_a_login_fails_without_a_scrypt_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A KBS that never enabled logins has no user names to hide, so it spends nothing on
    the password anyone may send."""
    scrypt = _ScryptCounter(monkeypatch)
    state = KbsState.open(tmp_path / "kbs", clock=FixedClock())
    try:
        app = FastAPI()
        app.include_router(ita_router(state, ("tdx",), None), prefix="/kbs/v1")
        answers = _logins(app, *[("alice", "password 123")] * 4)
    finally:
        state.close()
    assert [(r.status_code, r.json()) for r in answers] == [
        (401, {"error": "401: Invalid username or password"})
    ] * 4
    assert scrypt.calls == 0


def test_a_key_export_is_refused_and_audited(ita: Ita) -> None:
    """ITA's ``POST /keys/<id>`` hands key bytes to a token holder: refused, and the
    attempt is in the audit log (with the key when the id is one, else without)."""
    key_uuid = "4517534B-A758-4447-9D2F-3E5606152ED6"
    for some_id, key_id in ((key_uuid, f"default/key/{key_uuid.lower()}"), ("nope", None)):
        before = len(ita.state.audit.entries(limit=1000))
        r = ita.request("POST", f"/kbs/v1/keys/{some_id}", content=b"", headers=ita.headers)
        assert r.status_code == 403
        assert r.json()["error"].startswith("403: modelseal never returns key bytes")
        rows = ita.state.audit.entries(limit=1000)
        assert len(rows) == before + 1
        assert (rows[-1].action, rows[-1].decision, rows[-1].key_id) == (
            "ita.key.export",
            "deny",
            key_id,
        )
    before = len(ita.state.audit.entries(limit=1000))
    r = ita.request("POST", f"/kbs/v1/keys/{key_uuid}", content=b"")
    assert r.status_code == 401  # no token: refused before anything is written
    assert len(ita.state.audit.entries(limit=1000)) == before
    assert ita.state.audit.verify().ok
