"""``AsyncAttestedTransport`` (httpx.AsyncClient, openai.AsyncOpenAI) against the gateway."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import httpx
import openai
import pytest

from modelseal.errors import EvidenceError, PolicyDenied
from modelseal.ratls.async_transport import AsyncAttestedTransport
from tests.ratls_helpers import (
    MODEL,
    Upstream,
    last_byte_changed,
    policy_for,
)

pytestmark = pytest.mark.e2e


def _transport(served: dict[str, Any], **changes: Any) -> AsyncAttestedTransport:
    return AsyncAttestedTransport(
        policy_for(served["attester"], **changes), tee_options=served["options"]
    )


@pytest.mark.parametrize("fresh", [True, False])
def test_async_client_gets_the_answer_and_streams(served: dict[str, Any], fresh: bool) -> None:
    async def main() -> tuple[Any, list[str]]:
        transport = AsyncAttestedTransport(
            policy_for(served["attester"]), tee_options=served["options"], fresh=fresh
        )
        async with httpx.AsyncClient(transport=transport) as client:
            answer = await client.post(served["url"] + "/v1/classify", content=b"async prompt")
            lines = []
            async with client.stream("GET", served["url"] + "/sse") as response:
                async for line in response.aiter_lines():
                    if line:
                        lines.append(line)
                    if line == "data: event 0":
                        served["upstream"].proceed.set()
            return answer.json(), lines

    body, lines = anyio.run(main)
    assert body["echo"] == "async prompt"
    assert lines == ["data: event 0", "data: event 1", "data: event 2"]
    assert not served["upstream"].sse_gave_up


def test_async_refusal_keeps_the_body_in_the_client(served: dict[str, Any]) -> None:
    up: Upstream = served["upstream"]

    async def main() -> None:
        transport = _transport(served, model_digest=last_byte_changed(MODEL))
        async with httpx.AsyncClient(transport=transport) as client:
            await client.post(served["url"] + "/v1/classify", content=b"secret")

    with pytest.raises(PolicyDenied, match="not among the attested models"):
        anyio.run(main)
    assert up.received == []


def test_async_relay_without_evidence_is_refused(served: dict[str, Any], tmp_path: Path) -> None:
    from modelseal.crypto.tls_identity import TlsKey
    from tests.ratls_helpers import Relay, relay_certificate

    key = TlsKey()
    port = int(served["url"].rsplit(":", 1)[1])
    with Relay(port, relay_certificate(key, None), key) as relay:

        async def main() -> None:
            async with httpx.AsyncClient(transport=_transport(served)) as client:
                await client.get(f"https://127.0.0.1:{relay.port}/")

        with pytest.raises(EvidenceError, match="no attestation evidence"):
            anyio.run(main)
    assert served["upstream"].received == []


def test_async_openai_client_streams_through_the_gateway(served: dict[str, Any]) -> None:
    async def main() -> tuple[str, str]:
        client = openai.AsyncOpenAI(
            base_url=served["url"] + "/v1",
            api_key="not-a-real-key",
            http_client=httpx.AsyncClient(transport=_transport(served)),
            max_retries=0,
        )
        messages: Any = [{"role": "user", "content": "async attested hello"}]
        reply = await client.chat.completions.create(model="digits", messages=messages)
        chunks = await client.chat.completions.create(
            model="digits", messages=messages, stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in chunks])
        await client.close()
        return reply.choices[0].message.content or "", text

    whole, streamed = anyio.run(main)
    assert whole == "olleh detsetta cnysa"
    assert streamed.split() == ["olleh", "detsetta", "cnysa"]
