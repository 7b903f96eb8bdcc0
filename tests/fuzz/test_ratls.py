"""Fuzz targets: what an attested-TLS client reads from a gateway it does not trust yet (the
evidence buffer and claims buffer, whole certificates through the client's verification,
fresh evidence bound to a nonce and a TLS exporter value)."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from functools import cache
from pathlib import Path

import cbor2
import pytest

from modelseal.errors import Error
from modelseal.ratls.identity import AttestedIdentity
from modelseal.ratls.upstream import Head, Response, UpstreamPool
from modelseal.ratls.verify import PeerPolicy
from modelseal.ratls.wire import (
    TAG_INTEL_TEE_QUOTE,
    TAG_MODELSEAL_JSON,
    decode_evidence_buffer,
    decode_statement,
    unwrap_evidence,
)
from modelseal.tee import registry
from tests.fuzz.harness import Target, run
from tests.ratls_helpers import Pieces, mock_identity, policy_for

NONCE = b"\x4e" * 32
EXPORTER = b"\x58" * 32


@cache
def _gateway() -> tuple[AttestedIdentity, PeerPolicy]:
    work = Path(tempfile.mkdtemp(prefix="modelseal-fuzz-ratls-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    identity, attester = mock_identity(work / "ca")
    peer = PeerPolicy(
        policy_for(attester), tee_options={"mock_tdx_root": str(attester.ca.root_pem_path)}
    )
    return identity, peer


@cache
def _buffers() -> list[bytes]:
    identity, _ = _gateway()
    fresh = identity.statement(nonce=NONCE, tls_exporter=EXPORTER)
    sample = AttestedIdentity("sample", registry.attester_for("sample"))
    return [
        identity.evidence_buffer(identity.statement()),
        identity.evidence_buffer(fresh),
        sample.evidence_buffer(sample.statement()),
    ]


def _decode(data: bytes) -> object:
    buffer = decode_evidence_buffer(data)
    decode_statement(buffer.claims_buffer)
    return unwrap_evidence(buffer)


def _certificate(data: bytes) -> object:
    return _gateway()[1].check_certificate(data)


def _fresh(data: bytes) -> object:
    identity, peer = _gateway()
    return peer.check_fresh(
        data, certificate_der=identity.current.certificate, nonce=NONCE, exporter=EXPORTER
    )


HOSTILE = (
    cbor2.dumps(cbor2.CBORTag(TAG_INTEL_TEE_QUOTE, [b"\x04\x00" + b"\xff" * 40, b"\xa0"])),
    cbor2.dumps(cbor2.CBORTag(TAG_MODELSEAL_JSON, [b"[" * 50_000, b"\xa0"])),
    b"\x9f" * 50_000,
    b"\xd9\xd9\xf7" * 20_000,
)

TARGETS = [
    Target("ratls-evidence-buffer", _decode, _buffers, hostile=HOSTILE),
    Target(
        "ratls-certificate",
        _certificate,
        lambda: [_gateway()[0].current.certificate],
        hostile=HOSTILE,
        quick_examples=25,
    ),
    Target("ratls-fresh-evidence", _fresh, lambda: _buffers()[1:2], quick_examples=25),
]

pytestmark = pytest.mark.fuzz


@pytest.mark.parametrize("target", TARGETS, ids=str)
def test_fuzz(target: Target) -> None:
    run(target)


def _chunked(data: bytes) -> object:
    """The gateway's decoding of an upstream's chunked body, fed in one piece and again
    byte by byte: both give the same body or both fail, with a documented error."""
    outcomes = []
    for pieces in ([data], [data[i : i + 1] for i in range(len(data))]):
        sock = Pieces(pieces)
        head = Head(200, b"OK", [], "chunked", 0, True)
        pool = UpstreamPool("127.0.0.1", 1, connect_timeout=1, io_timeout=1, max_idle=1)
        response = Response(pool, sock, head, b"")  # type: ignore[arg-type]
        try:
            outcomes.append(b"".join(bytes(p) for b in response.batches() for p in b))
        except Error as exc:
            outcomes.append(type(exc).__name__)
        finally:
            response.close()
    assert outcomes[0] == outcomes[1], outcomes
    return outcomes[0]


CHUNKED_SEED = (
    b"5\r\nhello\r\n1;name=value\r\n \r\n10  \r\n" + b"x" * 16 + b"\r\n0\r\nx-trailer: 1\r\n\r\n"
)
TARGETS.append(
    Target(
        "ratls-upstream-chunked",
        _chunked,
        lambda: [CHUNKED_SEED],
        hostile=(b"1" * 5000 + b"\r\n", b"0\r\n" + b"x-t: 1\r\n" * 10_000, b"f" * 17 + b"\r\n"),
    )
)
