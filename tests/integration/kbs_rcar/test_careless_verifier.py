"""RCAR with a careless verifier plugged in: the KBS still enforces binding and kind.

The verifier registered for ``sample`` here checks nothing at all: it decodes the report
data the guest sent and vouches for it, under whatever kind it is told to. The base
verifier's ``verify`` must still refuse evidence that does not bind this session's nonce
and TEE key, and claims of another kind than the session named.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from modelseal._internal.clock import FixedClock
from modelseal.crypto.jose.jwk import TeeKeyPair
from modelseal.protocol.binding import runtime_data_digest
from modelseal.protocol.claims import Claims
from modelseal.tee.base import Authenticated, Verifier, pad_report_data
from modelseal.tee.plugin import KindConfig
from tests.integration.kbs_rcar.conftest import attestation_body, make_kbs

pytestmark = pytest.mark.anyio
AUTH = {"version": "0.4.0", "tee": "sample", "extra-params": ""}


class CarelessSample(Verifier):
    """Trusts the guest's word: no signature, no binding, any kind it is configured with."""

    tee: ClassVar[str] = "sample"
    claims_kind: ClassVar[str] = "sample"

    @classmethod
    def from_config(cls, config: KindConfig) -> CarelessSample:
        return cls()

    def _verify_evidence(self, evidence: Any, *, now: float) -> Authenticated:
        reported = base64.b64decode(evidence["report_data"])
        return Authenticated(
            Claims(tee=self.claims_kind, debug=False, report_data=pad_report_data(reported))
        )


class CarelessAboutKind(CarelessSample):
    claims_kind: ClassVar[str] = "tdx"


@asynccontextmanager
async def _kbs_with(
    verifier: type[Verifier], tmp_path: Path, clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[httpx.AsyncClient]:
    """A KBS whose attestation service builds ``verifier`` for every kind."""
    monkeypatch.setattr(
        "modelseal.tee.registry.verifier_for",
        lambda kind, config: verifier.from_config(config),
    )
    kbs = make_kbs(tmp_path, clock)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=kbs.app), base_url="http://127.0.0.1"
        ) as client:
            yield client
    finally:
        kbs.state.close()


@pytest.fixture
async def careless_client(
    tmp_path: Path, clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[httpx.AsyncClient]:
    async with _kbs_with(CarelessSample, tmp_path, clock, monkeypatch) as client:
        yield client


async def _attest(client: httpx.AsyncClient, tamper: str = "none") -> int:
    """One auth + attest; ``tamper`` spoils the report data the guest sends."""
    keys = TeeKeyPair.generate()
    nonce = (await client.post("/kbs/v0/auth", json=AUTH)).json()["nonce"]
    bound_key = TeeKeyPair.generate() if tamper == "another-key" else keys
    report_data = pad_report_data(runtime_data_digest(nonce, bound_key.public_jwk()))
    if tamper == "last-byte":
        report_data = report_data[:-1] + bytes([report_data[-1] ^ 1])
    body = attestation_body(nonce, keys, report_data=report_data)
    status: int = (await client.post("/kbs/v0/attest", json=body)).status_code
    return status


async def test_bound_evidence_passes_the_careless_verifier(
    careless_client: httpx.AsyncClient,
) -> None:
    assert await _attest(careless_client) == 200


@pytest.mark.parametrize("tamper", ["last-byte", "another-key"])
async def test_unbound_evidence_is_refused_anyway(
    careless_client: httpx.AsyncClient, tamper: str
) -> None:
    assert await _attest(careless_client, tamper) == 401


async def test_claims_of_another_kind_are_refused(
    tmp_path: Path, clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _kbs_with(CarelessAboutKind, tmp_path, clock, monkeypatch) as client:
        assert await _attest(client) == 401
