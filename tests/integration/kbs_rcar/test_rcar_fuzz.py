"""Random bodies never crash the RCAR endpoints: only 400 (malformed) or 401 (refused)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelseal._internal.clock import FixedClock
from tests.integration.kbs_rcar.conftest import Kbs, make_kbs

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
attest_like = st.fixed_dictionaries(
    {},
    optional={
        "init-data": json_values
        | st.fixed_dictionaries({"format": st.just("toml"), "body": st.text()}),
        "runtime-data": json_values
        | st.fixed_dictionaries({"nonce": st.text(max_size=50), "tee-pubkey": json_values}),
        "tee-evidence": json_values
        | st.fixed_dictionaries(
            {"primary_evidence": json_values, "additional_evidence": json_values}
        ),
    },
)


@pytest.fixture(scope="module")
def fuzz_kbs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kbs]:
    kbs = make_kbs(Path(tmp_path_factory.mktemp("fuzz")), FixedClock(time.time()))
    yield kbs
    kbs.state.close()


def _post(kbs: Kbs, path: str, body: bytes, *, with_session: bool) -> int:
    async def go() -> int:
        transport = httpx.ASGITransport(app=kbs.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            if with_session:
                auth = {"version": "0.4.0", "tee": "sample", "extra-params": ""}
                assert (await c.post("/kbs/v0/auth", json=auth)).status_code == 200
            r = await c.post(path, content=body)
            assert set(r.json()) == {"type", "detail"}
            return r.status_code

    return asyncio.run(go())


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=json_values)
def test_auth_fuzz(fuzz_kbs: Kbs, body: Any) -> None:
    assert _post(fuzz_kbs, "/kbs/v0/auth", json.dumps(body).encode(), with_session=False) in (
        400,
        401,
    )


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=attest_like)
def test_attest_fuzz(fuzz_kbs: Kbs, body: Any) -> None:
    assert _post(fuzz_kbs, "/kbs/v0/attest", json.dumps(body).encode(), with_session=True) in (
        400,
        401,
    )


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=st.binary(max_size=200))
def test_attest_raw_bytes(fuzz_kbs: Kbs, body: bytes) -> None:
    assert _post(fuzz_kbs, "/kbs/v0/attest", body, with_session=True) in (400, 401)
