"""The ``openai`` package over ``AttestedTransport``: an OpenAI-compatible client checks
the gateway before any prompt leaves it (the guide's example, run for real)."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from modelseal.errors import PolicyDenied
from modelseal.ratls.transport import AttestedTransport
from tests.ratls_helpers import (
    MODEL,
    Upstream,
    last_byte_changed,
    policy_for,
)

pytestmark = pytest.mark.e2e


def _openai(served: dict[str, Any], **policy_changes: Any) -> openai.OpenAI:
    transport = AttestedTransport(
        policy_for(served["attester"], **policy_changes), tee_options=served["options"]
    )
    return openai.OpenAI(
        base_url=served["base_url"],
        api_key="not-a-real-key",
        http_client=httpx.Client(transport=transport),
        max_retries=0,
    )


def test_chat_completion_and_streaming_through_the_gateway(served: dict[str, Any]) -> None:
    client = _openai(served)
    messages: Any = [{"role": "user", "content": "hello attested world"}]
    reply = client.chat.completions.create(model="digits", messages=messages)
    assert reply.choices[0].message.content == "dlrow detsetta olleh"
    chunks = client.chat.completions.create(model="digits", messages=messages, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text.split() == ["dlrow", "detsetta", "olleh"]
    client.close()


def test_wrong_model_digest_keeps_the_prompt_in_the_client(served: dict[str, Any]) -> None:
    up: Upstream = served["upstream"]
    client = _openai(served, model_digest=last_byte_changed(MODEL))
    with pytest.raises(openai.APIConnectionError) as caught:
        client.chat.completions.create(
            model="digits", messages=[{"role": "user", "content": "confidential prompt"}]
        )
    assert isinstance(caught.value.__cause__, PolicyDenied)
    assert up.received == []
    client.close()
