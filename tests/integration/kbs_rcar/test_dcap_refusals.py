"""A KBS verifying real TDX quotes: the client gets a bare 401 / 503, and the operator's
log line says in plain words what failed and what to do."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest

from modelseal._internal.clock import FixedClock
from modelseal.crypto.jose.jwk import TeeKeyPair
from modelseal.tee.tdx.evidence import decode_evidence
from tests.integration.kbs_rcar.conftest import make_kbs

pytestmark = pytest.mark.anyio
AUTH = {"version": "0.4.0", "tee": "tdx", "extra-params": ""}


async def _attest(tmp_path: Path, collateral: Path, quote: Path, now: float) -> httpx.Response:
    kbs = make_kbs(tmp_path, FixedClock(now), tee_options={"collateral": str(collateral)})
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=kbs.app), base_url="http://127.0.0.1"
        ) as client:
            r = await client.post("/kbs/v0/auth", json=AUTH)
            assert r.status_code == 200, r.text
            jwk = TeeKeyPair.generate().public_jwk()
            body = {
                "runtime-data": {"nonce": r.json()["nonce"], "tee-pubkey": jwk},
                "tee-evidence": {
                    "primary_evidence": decode_evidence(quote.read_bytes()).to_json(),
                    "additional_evidence": "",
                },
            }
            return await client.post("/kbs/v0/attest", json=body)
    finally:
        kbs.state.close()


def _logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "modelseal.kbs"]


async def test_expired_collateral_logged_with_its_remedy(
    tmp_path: Path, shared_vectors: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="modelseal.kbs")
    vectors = shared_vectors / "tdx/dcap-qvl"
    r = await _attest(
        tmp_path, vectors / "tdx_quote_collateral.json", vectors / "tdx_quote", 1796538513
    )
    assert r.status_code == 401
    assert "CRL" not in r.text  # the guest learns nothing about the KBS's collateral
    [line] = [m for m in _logged(caplog) if "refused (401)" in m]
    assert line.endswith(
        "EvidenceError: collateral expired: the root CA CRL expired at 2026-04-03T11:21:57Z "
        "(verification time 2026-12-06T06:28:33Z); fetch fresher collateral (--pccs-url or a "
        "newer bundle) or, for recorded evidence, verify at the time it was made with --at "
        "UNIX_SECONDS"
    )
    assert "{" not in line
    assert "UnixTime" not in line


async def test_missing_collateral_is_503_and_names_the_platform(
    tmp_path: Path, shared_vectors: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="modelseal.kbs")
    r = await _attest(
        tmp_path, shared_vectors / "tdx", shared_vectors / "tdx/trustee/tdx_quote_6.dat", 1763e6
    )
    assert r.status_code == 503
    assert "FMSPC" not in r.text
    [line] = [m for m in _logged(caplog) if "failed" in m]
    assert "CollateralMissing: no DCAP collateral for TDX FMSPC 00a06d080000" in line
