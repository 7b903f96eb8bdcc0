"""The loader's ITA/CNAP key-transfer client against a scripted hostile KBS on 127.0.0.1.

The happy path runs against a real ``kbs serve`` in ``tests/e2e/test_cnap_roundtrip.py``;
here every other answer maps to one documented error, bodies are capped, and the quote the
client sends binds the server's nonce and the client's fresh workload key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from modelseal._internal.encoding import b64_decode, b64_encode
from modelseal.crypto.cnap_wrap import WorkloadKey
from modelseal.crypto.secret import SecretBytes
from modelseal.errors import (
    AttestationError,
    DecryptionError,
    FormatError,
    NotFound,
    PolicyDenied,
    TransientError,
    UnsupportedTee,
)
from modelseal.format import cnap
from modelseal.loader.settings import LoaderSettings
from modelseal.loader.transfer_client import MAX_ANSWER_BYTES, transfer_key
from modelseal.tee.mock_tdx.ca import MockTdxCA
from modelseal.tee.tdx.quote import parse_quote
from tests.hostile_http import HostileServer, answer, endless

PATH = "/kbs/v1/keys/default/key/x/transfer"
NONCE = {
    "val": b64_encode(b"n" * 32),
    "iat": b64_encode(b"2026-12-06T00:00:00Z"),
    "signature": "c2ln",
}
DEK = b"\x42" * 32


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("transfer") / "ca"
    MockTdxCA.create(path)
    return path


@pytest.fixture
def server() -> Iterator[HostileServer]:
    with HostileServer().running() as running:
        yield running


def _settings(ca_dir: Path, tee: str = "mock-tdx") -> LoaderSettings:
    return LoaderSettings(
        model="http://127.0.0.1:9/models/m",
        tee=tee,
        tee_options={"mock_tdx_dir": ca_dir},
        timeout=5.0,
    )


def _rounds(round2: object) -> object:
    """Round 1 answers the nonce; round 2 runs ``round2`` (a script)."""
    calls: list[int] = []

    def script(handler: BaseHTTPRequestHandler) -> None:
        calls.append(1)
        if len(calls) == 1:
            answer(200, json.dumps(NONCE).encode())(handler)
        else:
            round2(handler)  # type: ignore[operator]

    return script


def test_round_two_binds_nonce_and_workload_key_and_unwraps(
    server: HostileServer, ca_dir: Path
) -> None:
    seen: dict[str, object] = {}

    def round2(handler: BaseHTTPRequestHandler) -> None:
        body = json.loads(handler.request_body)  # type: ignore[attr-defined]
        seen.update(body=body, kind=handler.headers["Attestation-Type"])
        user_data = b64_decode(body["user_data"])
        quote = parse_quote(b64_decode(body["quote"]))
        raw = b64_decode(NONCE["val"]) + b64_decode(NONCE["iat"])
        assert quote.report.report_data == hashlib.sha512(raw + user_data).digest()
        swk = SecretBytes(b"\x07" * 32)
        wrapped = {
            "wrapped_key": b64_encode(cnap.encode(swk, DEK)),
            "wrapped_swk": b64_encode(WorkloadKey.from_user_data(user_data).wrap(swk)),
        }
        answer(200, json.dumps(wrapped).encode())(handler)

    server.routes[f"POST {PATH}"] = _rounds(round2)
    release = transfer_key(_settings(ca_dir), server.url + PATH, "default/key/x")
    assert release.dek.reveal() == DEK
    assert release.tee == "mock-tdx"
    body = seen["body"]
    assert isinstance(body, dict)
    assert body["nonce"] == NONCE
    assert body["event_log"]
    assert seen["kind"] == "MOCK-TDX"


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (403, PolicyDenied),
        (401, AttestationError),
        (404, NotFound),
        (400, FormatError),
        (503, TransientError),
    ],
)
def test_round_two_refusals_map_to_exit_codes(
    server: HostileServer, ca_dir: Path, status: int, error: type[Exception]
) -> None:
    body = b'{"type": "x", "detail": "access denied"}'
    server.routes[f"POST {PATH}"] = _rounds(answer(status, body))
    with pytest.raises(error):
        transfer_key(_settings(ca_dir), server.url + PATH, "default/key/x")


@pytest.mark.parametrize(
    "nonce",
    [
        b"[]",
        b'{"val": 1, "iat": "x", "signature": "y"}',
        b'{"val": "!!", "iat": "", "signature": ""}',
    ],
)
def test_a_malformed_nonce_is_refused(server: HostileServer, ca_dir: Path, nonce: bytes) -> None:
    server.routes[f"POST {PATH}"] = answer(200, nonce)
    with pytest.raises(FormatError):
        transfer_key(_settings(ca_dir), server.url + PATH, "default/key/x")


def test_an_endless_answer_is_cut_at_the_cap(server: HostileServer, ca_dir: Path) -> None:
    server.routes[f"POST {PATH}"] = endless(MAX_ANSWER_BYTES * 8, chunk=16 << 10)
    with pytest.raises(FormatError, match="cap"):
        transfer_key(_settings(ca_dir), server.url + PATH, "default/key/x")


def test_a_wrapped_key_for_another_workload_is_a_decryption_error(
    server: HostileServer, ca_dir: Path
) -> None:
    def round2(handler: BaseHTTPRequestHandler) -> None:
        other = {"wrapped_key": b64_encode(b"k" * 60), "wrapped_swk": b64_encode(b"s" * 384)}
        answer(200, json.dumps(other).encode())(handler)

    server.routes[f"POST {PATH}"] = _rounds(round2)
    with pytest.raises(DecryptionError):
        transfer_key(_settings(ca_dir), server.url + PATH, "default/key/x")


def test_kinds_without_td_quotes_cannot_use_the_transfer(
    server: HostileServer, ca_dir: Path
) -> None:
    with pytest.raises(UnsupportedTee, match="--kbs-url"):
        transfer_key(_settings(ca_dir, tee="sample"), server.url + PATH, "default/key/x")
    assert server.hits == []
