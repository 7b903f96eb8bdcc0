"""RCAR over ASGI, observed: attestation and release counters with bounded labels, the
verification histogram, and request ids in the log lines the thread pool writes."""

from __future__ import annotations

import logging

import httpx
import pytest
from prometheus_client import REGISTRY

from modelseal._internal.logs import RequestIdFilter
from modelseal.crypto.jose.jwk import TeeKeyPair
from tests.integration.kbs_rcar.conftest import (
    DENIED_KEY_ID,
    KEY_ID,
    attestation_body,
    open_jwe,
    rcar,
)

pytestmark = pytest.mark.anyio
AUTH = {"version": "0.4.0", "tee": "sample", "extra-params": ""}


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _snapshot() -> dict[str, float]:
    return {
        "ok": _value("modelseal_attestations_total", tee="sample", result="ok"),
        "rejected": _value("modelseal_attestations_total", tee="sample", result="rejected"),
        "verified": _value("modelseal_attestation_verify_duration_seconds_count", tee="sample"),
        "allow": _value(
            "modelseal_key_release_decisions_total", key_id=KEY_ID, decision="allow", api="rcar"
        ),
        "deny": _value(
            "modelseal_key_release_decisions_total",
            key_id=DENIED_KEY_ID,
            decision="deny",
            api="rcar",
        ),
        "unknown": _value(
            "modelseal_key_release_decisions_total",
            key_id="_unknown",
            decision="deny",
            api="rcar",
        ),
        "resource_2xx": _value(
            "modelseal_http_request_duration_seconds_count",
            server="kbs",
            route="/kbs/v0/resource/{path:path}",
            method="GET",
            status_class="2xx",
        ),
        "resource_4xx": _value(
            "modelseal_http_request_duration_seconds_count",
            server="kbs",
            route="/kbs/v0/resource/{path:path}",
            method="GET",
            status_class="4xx",
        ),
    }


async def test_counters_follow_the_flow(client: httpx.AsyncClient) -> None:
    before = _snapshot()
    keys = TeeKeyPair.generate()
    await rcar(client, keys)
    open_jwe(await client.get(f"/kbs/v0/resource/{KEY_ID}"), keys)
    assert (await client.get(f"/kbs/v0/resource/{DENIED_KEY_ID}")).status_code == 403
    for i in range(3):  # requester-chosen paths: never label values
        assert (await client.get(f"/kbs/v0/resource/models/probe-{i}/1")).status_code == 403
    r = await client.post("/kbs/v0/auth", json=AUTH)
    bad = attestation_body(r.json()["nonce"], keys, report_data=b"\x01" * 48)
    assert (await client.post("/kbs/v0/attest", json=bad)).status_code == 401
    after = _snapshot()
    assert {k: after[k] - before[k] for k in before} == {
        "ok": 1,
        "rejected": 1,
        "verified": 2,
        "allow": 1,
        "deny": 1,
        "unknown": 3,
        "resource_2xx": 1,
        "resource_4xx": 4,
    }
    labelled = {
        sample.labels["key_id"]
        for family in REGISTRY.collect()
        if family.name == "modelseal_key_release_decisions"
        for sample in family.samples
    }
    assert not any("probe" in key for key in labelled)


async def test_unknown_tee_kind_is_not_a_label(client: httpx.AsyncClient) -> None:
    r = await client.post("/kbs/v0/auth", json={**AUTH, "tee": "made-up-kind"})
    assert r.status_code in (400, 401)
    kinds = {
        sample.labels["tee"]
        for family in REGISTRY.collect()
        if family.name == "modelseal_attestations"
        for sample in family.samples
    }
    assert "made-up-kind" not in kinds


async def test_release_log_lines_carry_the_request_id(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """The release decision is logged in the KBS's own thread pool: the request's context
    goes with the work, so its line names the request id the client sent."""
    caplog.handler.addFilter(RequestIdFilter())
    caplog.set_level(logging.INFO, logger="modelseal")
    keys = TeeKeyPair.generate()
    await rcar(client, keys)
    r = await client.get(f"/kbs/v0/resource/{KEY_ID}", headers={"X-Request-Id": "rcar-req-7"})
    assert r.headers["x-request-id"] == "rcar-req-7"
    decided = [
        rec
        for rec in caplog.records
        if rec.name == "modelseal.kbs.release" and KEY_ID in rec.getMessage()
    ]
    assert decided, [rec.getMessage() for rec in caplog.records]
    assert [getattr(rec, "request_id", None) for rec in decided] == ["rcar-req-7"]
    released = [rec for rec in caplog.records if rec.getMessage().startswith("released ")]
    assert [getattr(rec, "request_id", None) for rec in released] == ["rcar-req-7"]
