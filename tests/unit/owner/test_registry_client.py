"""RegistryClient against a scripted registry (httpx.MockTransport): unexpected bodies.

A proxy's HTML page or a foreign JSON body under a 2xx status must be a ``BackendError``
naming the request, never a validation or JSON traceback (exit 1).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from modelseal.errors import BackendError, ModelNotFound, TransientError
from modelseal.owner.registry_client import RegistryClient
from modelseal.protocol.model_info import FileRecord, ModelRegistration


def _client(handler: Callable[[httpx.Request], httpx.Response]) -> RegistryClient:
    return RegistryClient(
        "http://registry.test", "tok", transport=httpx.MockTransport(handler), backoff=0
    )


@pytest.mark.parametrize(
    "body",
    [b"<html>proxy login</html>", b"[]", b'{"id": 5}', b"", b'{"models": "x"}'],
)
def test_unexpected_success_bodies_are_backend_errors(body: bytes) -> None:
    with _client(lambda _r: httpx.Response(200, content=body)) as client:
        with pytest.raises(BackendError, match="unexpected body"):
            client.get_model("m")
        with pytest.raises(BackendError, match="unexpected body"):
            client.list_models()
        registration = ModelRegistration(
            format="cnap",
            kbs="simple_kbs",
            kbs_url="http://kbs.test",
            key_id="cnap/keys/m",
            files=[FileRecord(path="w", blob="w.sealed", sealed_size=1, sha256="ab" * 32)],
        )
        with pytest.raises(BackendError, match="unexpected body"):
            client.register("m", "v1", registration)


@pytest.mark.parametrize("body", [b"not json", b"[1]", b'{"sha256": "00", "size": 1}'])
def test_upload_answer_must_confirm_the_bytes(tmp_path: Path, body: bytes) -> None:
    blob = tmp_path / "w.sealed"
    blob.write_bytes(b"x")
    with (
        _client(lambda _r: httpx.Response(201, content=body)) as client,
        pytest.raises(BackendError, match="stored different bytes"),
    ):
        client.upload_blob("m", "v1", "w.sealed", blob, sha256=hashlib.sha256(b"x").hexdigest())


def test_status_mapping_and_head_without_length() -> None:
    with (
        _client(lambda _r: httpx.Response(404, json={"detail": "no"})) as client,
        pytest.raises(ModelNotFound),
    ):
        client.get_model("m")
    with (
        _client(lambda _r: httpx.Response(503, text="down")) as client,
        pytest.raises(TransientError),
    ):
        client.get_model("m")

    def head(_r: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"etag": '"' + "ab" * 32 + '"'})

    with _client(head) as client:
        status = client.blob_status("m", "v1", "w.sealed")
    assert status is not None
    assert status.sha256 == "ab" * 32
