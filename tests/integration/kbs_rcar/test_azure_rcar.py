"""RCAR with az-tdx-vtpm evidence from the simulated Azure CVM, against the real KBS app.

The KBS's az-tdx-vtpm verifier is anchored at the mock-tdx test root (patched into the
registry here; a KBS outside tests trusts only Intel's root for this kind). Everything
else is the production path: auth, nonce, the attester's version-2 evidence bound to the
session's runtime data, claims, the release policy (MRTD + a vTPM PCR), the JWE.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelseal._internal.clock import FixedClock
from modelseal.crypto.jose.jwk import TeeKeyPair
from modelseal.crypto.secret import SecretBytes
from modelseal.protocol.binding import runtime_data_digest
from modelseal.tee import registry
from modelseal.tee.az_tdx_vtpm.attester import Attester
from modelseal.tee.azure.hcl import REPORT_TYPE_TDX
from tests.integration.kbs_rcar.conftest import DEK, make_kbs, open_jwe
from tests.unit.tee.azure.simulated_vm import MR_TD, Imds, imds, paravisor, tdx_verifier, vtpm

pytestmark = [pytest.mark.anyio, pytest.mark.swtpm]
__all__ = ["imds", "vtpm"]  # fixtures used by the tests below
KIND = "az-tdx-vtpm"
ALLOWED, DENIED = "models/azure/1", "models/azure-other-pcr/1"


def _policy(pcr17: str) -> dict[str, Any]:
    return {
        "apiVersion": "modelseal/v1",
        "kind": "ReleasePolicy",
        "tee": [KIND],
        "measurements": [{"mr_td": MR_TD.hex(), "pcr17": pcr17}],
    }


@pytest.fixture
async def client(
    tmp_path: Path,
    clock: FixedClock,
    monkeypatch: pytest.MonkeyPatch,
    imds: tuple[str, type[Imds]],
) -> AsyncIterator[httpx.AsyncClient]:
    real = registry.verifier_for
    monkeypatch.setattr(
        "modelseal.tee.registry.verifier_for",
        lambda kind, config: tdx_verifier(imds[1].ca) if kind == KIND else real(kind, config),
    )
    kbs = make_kbs(tmp_path, clock)
    pcr17 = "ff" * 32  # swtpm's PCR17 after start-up (locality-4 PCRs start at all ones)
    other = "ff" * 31 + "fe"
    kbs.state.keys.put(ALLOWED, SecretBytes(DEK), policy=_policy(pcr17), actor="test")
    kbs.state.keys.put(DENIED, SecretBytes(DEK), policy=_policy(other), actor="test")
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=kbs.app), base_url="http://127.0.0.1"
        ) as c:
            yield c
    finally:
        kbs.state.close()


async def test_release_to_an_attested_azure_tdx_vm(
    client: httpx.AsyncClient,
    vtpm: tuple[str, dict[str, Any]],
    imds: tuple[str, type[Imds]],
    tmp_path: Path,
) -> None:
    tcti, jwk = vtpm
    keys = TeeKeyPair.generate()
    r = await client.post("/kbs/v0/auth", json={"version": "0.4.0", "tee": KIND})
    assert r.status_code == 200, r.text
    nonce = r.json()["nonce"]
    binding = runtime_data_digest(nonce, keys.public_jwk())
    paravisor(tcti, tmp_path, jwk, REPORT_TYPE_TDX, binding)
    evidence = Attester(imds_url=imds[0], tcti=tcti, refresh_timeout=2).evidence(binding)
    body = {
        "runtime-data": {"nonce": nonce, "tee-pubkey": keys.public_jwk()},
        "tee-evidence": {"primary_evidence": evidence, "additional_evidence": ""},
    }
    r = await client.post("/kbs/v0/attest", json=body)
    assert r.status_code == 200, r.text

    assert open_jwe(await client.get(f"/kbs/v0/resource/{ALLOWED}"), keys) == DEK
    denied = await client.get(f"/kbs/v0/resource/{DENIED}")
    assert denied.status_code == 403, denied.text


async def test_evidence_for_another_session_is_refused(
    client: httpx.AsyncClient,
    vtpm: tuple[str, dict[str, Any]],
    imds: tuple[str, type[Imds]],
    tmp_path: Path,
) -> None:
    """Evidence made for the runtime data of one session, sent in another: 401 (the
    reason, a report-data binding mismatch, is pinned by the verifier's own tests)."""
    tcti, jwk = vtpm
    keys = TeeKeyPair.generate()
    r = await client.post("/kbs/v0/auth", json={"version": "0.4.0", "tee": KIND})
    nonce = r.json()["nonce"]
    stale = runtime_data_digest("an-earlier-nonce", keys.public_jwk())
    paravisor(tcti, tmp_path, jwk, REPORT_TYPE_TDX, stale)
    evidence = Attester(imds_url=imds[0], tcti=tcti, refresh_timeout=2).evidence(stale)
    body = {
        "runtime-data": {"nonce": nonce, "tee-pubkey": keys.public_jwk()},
        "tee-evidence": {"primary_evidence": evidence, "additional_evidence": ""},
    }
    r = await client.post("/kbs/v0/attest", json=body)
    assert r.status_code == 401, r.text
