"""In-process KBS (httpx.ASGITransport) over a real KbsState in a temporary data dir."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelseal._internal.clock import FixedClock
from modelseal.crypto.jose.jwe import decrypt
from modelseal.crypto.jose.jwk import TeeKeyPair
from modelseal.crypto.secret import SecretBytes
from modelseal.kbs.app import create_app
from modelseal.kbs.settings import KbsSettings
from modelseal.kbs.state import KbsState
from modelseal.protocol.binding import runtime_data_digest
from modelseal.tee.sample.attester import Attester

SAMPLE_POLICY = {"apiVersion": "modelseal/v1", "kind": "ReleasePolicy", "tee": ["sample"]}
DENY_POLICY = {"apiVersion": "modelseal/v1", "kind": "ReleasePolicy", "tee": ["tdx"]}
KEY_ID = "models/demo/1"
DENIED_KEY_ID = "models/secret/1"
DEK = bytes(range(32))


@dataclass
class Kbs:
    state: KbsState
    settings: KbsSettings
    clock: FixedClock
    app: Any


@pytest.fixture
def clock() -> FixedClock:
    import time

    return FixedClock(time.time())


def make_kbs(tmp_path: Path, clock: FixedClock, **overrides: Any) -> Kbs:
    data_dir = tmp_path / "kbs"
    state = KbsState.open(data_dir, clock=clock)
    if state.keys.list_keys() == []:
        state.keys.put(KEY_ID, SecretBytes(DEK), policy=SAMPLE_POLICY, actor="test")
        state.keys.put(DENIED_KEY_ID, SecretBytes(DEK), policy=DENY_POLICY, actor="test")
    settings = KbsSettings(
        data_dir=data_dir, **{"tee_options": {"insecure_allow_sample": True}, **overrides}
    )
    app = create_app(settings.validated(), state, clock=clock)
    return Kbs(state, settings, clock, app)


@pytest.fixture
def kbs(tmp_path: Path, clock: FixedClock) -> Iterator[Kbs]:
    k = make_kbs(tmp_path, clock)
    yield k
    k.state.close()


@pytest.fixture
def kbs_factory(tmp_path: Path, clock: FixedClock) -> Iterator[Callable[..., Kbs]]:
    made: list[Kbs] = []

    def factory(**overrides: Any) -> Kbs:
        k = make_kbs(tmp_path, clock, **overrides)
        made.append(k)
        return k

    yield factory
    for k in made:
        k.state.close()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client(kbs: Kbs) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=kbs.app), base_url="http://127.0.0.1"
    ) as c:
        yield c


def attestation_body(
    nonce: str, keys: TeeKeyPair, *, report_data: bytes | None = None, **extra: Any
) -> dict[str, Any]:
    jwk = keys.public_jwk()
    digest = runtime_data_digest(nonce, jwk) if report_data is None else report_data
    return {
        "runtime-data": {"nonce": nonce, "tee-pubkey": jwk},
        "tee-evidence": {
            "primary_evidence": Attester().evidence(digest),
            "additional_evidence": "",
        },
        **extra,
    }


async def rcar(client: httpx.AsyncClient, keys: TeeKeyPair, *, tee: str = "sample") -> str:
    """Full auth + attest with the sample TEE; returns the token."""
    r = await client.post("/kbs/v0/auth", json={"version": "0.4.0", "tee": tee, "extra-params": ""})
    assert r.status_code == 200, r.text
    r = await client.post("/kbs/v0/attest", json=attestation_body(r.json()["nonce"], keys))
    assert r.status_code == 200, r.text
    token: str = r.json()["token"]
    return token


def open_jwe(response: httpx.Response, keys: TeeKeyPair) -> bytes:
    assert response.status_code == 200, response.text
    return decrypt(response.json(), keys).reveal()
