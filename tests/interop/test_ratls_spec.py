"""A verifier written from docs/reference/ratls.md alone, against a real gateway.

``ratls_spec_client`` imports nothing from modelseal; modelseal is used here only to start
the gateway (as an operator would, as a process) and to name what the test expects
(the mock-tdx MRTD, the model digest of the receipt). If the normative page stops
describing what the gateway sends, these tests fail.
"""

# ruff: noqa: TID251 - the relay certificate is made without modelseal

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from modelseal.quickstart.services import MODELSEAL, child_env
from modelseal.tee.mock_tdx.attester import DEFAULT_MR_TD
from modelseal.tee.mock_tdx.ca import MockTdxCA
from tests.conftest import free_port
from tests.interop import ratls_spec_client as spec
from tests.ratls_helpers import (
    MODEL,
    Upstream,
    last_byte_changed,
    upstream_server,
    wait_listening,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with upstream_server() as up:
        yield up


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, upstream: Upstream
) -> Iterator[dict[str, Any]]:
    tmp_path = tmp_path_factory.mktemp("spec-gateway")
    receipt = tmp_path / "receipt.json"
    receipt.write_text(
        json.dumps({"format_version": "modelseal-receipt/1", "model_digest": MODEL}),
        encoding="utf-8",
    )
    port = free_port()
    log = tmp_path / "gateway.log"
    ca = tmp_path / "ca"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*MODELSEAL, "gateway", "--listen", f"127.0.0.1:{port}",
             "--upstream", upstream.url, "--tee", "mock-tdx", "--mock-tdx-dir", str(ca),
             "--receipt", str(receipt)],
            stdout=out, stderr=subprocess.STDOUT, env=child_env(), start_new_session=True,
        )  # fmt: skip
    try:
        wait_listening(port, proc, log)
        root = x509.load_pem_x509_certificate((ca / "root-ca.pem").read_bytes())
        collateral = json.loads((ca / "collateral.json").read_text())
        yield {"port": port, "root": root, "collateral": collateral}
    finally:
        proc.terminate()
        proc.wait(10)


def _connect(gateway: dict[str, Any]) -> Any:
    return spec.connect("127.0.0.1", gateway["port"])


def _verify(gateway: dict[str, Any], conn: Any, **kwargs: Any) -> spec.Result:
    options: dict[str, Any] = {"root": gateway["root"], "mr_td": DEFAULT_MR_TD, "model": MODEL}
    return spec.verify_connection(conn, host="127.0.0.1", **{**options, **kwargs})


def test_the_spec_alone_verifies_a_gateway_and_its_fresh_evidence(
    gateway: dict[str, Any], upstream: Upstream
) -> None:
    conn = _connect(gateway)
    try:
        nonce = bytes(range(32))
        result = _verify(gateway, conn, nonce=nonce)
        cert = result.certificate
        assert cert.tag == spec.TAG_INTEL_QUOTE
        assert cert.quote.version == 4
        assert cert.quote.report.mr_td == DEFAULT_MR_TD
        assert cert.claims.models == [MODEL]
        assert set(cert.claims.values) == {
            "pubkey-hash", "modelseal-iat", "modelseal-exp", "modelseal-models"
        }  # fmt: skip
        assert cert.claims.exp - cert.claims.iat == 3600
        fresh = result.fresh
        assert fresh is not None
        assert fresh.claims.values["nonce"] == nonce
        assert fresh.claims.values["tls-exporter"] == result.exporter
        assert fresh.claims.exp - fresh.claims.iat == 3600
        assert fresh.claims.values["pubkey-hash"] == cert.claims.values["pubkey-hash"]
        assert fresh.claims.models == cert.claims.models
        assert fresh.quote.report.report_data[:32] == hashlib.sha256(fresh.claims.raw).digest()
        # the claims buffer's keys are in RFC 8949 deterministic order (shorter keys first)
        assert list(fresh.claims.values) == [
            "nonce", "pubkey-hash", "tls-exporter",
            "modelseal-exp", "modelseal-iat", "modelseal-models",
        ]  # fmt: skip
        # the connection stays open for the requests that follow
        upstream.received.clear()
        conn.sendall(b"GET /after HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        status, _, _ = spec._read_response(conn, time.monotonic() + 10)
        assert status == 200
        assert upstream.received == [("GET", "/after", b"")]
    finally:
        conn.close()


def test_a_nonce_other_than_the_clients_is_refused(gateway: dict[str, Any]) -> None:
    nonce = bytes(range(32))
    conn = _connect(gateway)
    try:
        with pytest.raises(spec.RefusedError, match="nonce is not ours"):
            _verify(gateway, conn, nonce=nonce, expected_nonce=nonce[:-1] + b"\x20")
    finally:
        conn.close()


def test_fresh_evidence_of_another_connection_is_refused(gateway: dict[str, Any]) -> None:
    first, second = _connect(gateway), _connect(gateway)
    try:
        certificate, _ = spec.peer_evidence(first)
        status, _, body = spec.get_fresh(first, "127.0.0.1", spec.nonce_param(bytes(16)))
        assert status == 200
        own = first.export_keying_material(spec.EXPORTER_LABEL, 32)
        other = second.export_keying_material(spec.EXPORTER_LABEL, 32)
        options: dict[str, Any] = {"root": gateway["root"], "nonce": bytes(16), "now": time.time()}
        spec.verify_fresh(body, certificate, exporter=own, **options)
        # replayed on the second connection, whose exporter differs
        assert own != other
        with pytest.raises(spec.RefusedError, match="tls-exporter"):
            spec.verify_fresh(body, certificate, exporter=other, **options)
        # and an exporter that differs from the right one in its last byte
        with pytest.raises(spec.RefusedError, match="tls-exporter"):
            spec.verify_fresh(
                body, certificate, exporter=own[:-1] + bytes([own[-1] ^ 1]), **options
            )
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize("what", ["mr_td", "model"])
def test_a_policy_the_gateway_does_not_meet_is_refused(gateway: dict[str, Any], what: str) -> None:
    conn = _connect(gateway)
    try:
        if what == "mr_td":
            wrong: dict[str, Any] = {"mr_td": bytes.fromhex(last_byte_changed(DEFAULT_MR_TD.hex()))}
        else:
            wrong = {"model": last_byte_changed(MODEL)}
        with pytest.raises(spec.RefusedError, match="mr_td" if what == "mr_td" else "model"):
            _verify(gateway, conn, fresh=False, **wrong)
    finally:
        conn.close()


def test_a_quote_under_another_root_is_refused(gateway: dict[str, Any], tmp_path: Path) -> None:
    other = x509.load_pem_x509_certificate(
        MockTdxCA.load_or_create(tmp_path / "other").root_pem_path.read_bytes()
    )
    conn = _connect(gateway)
    try:
        with pytest.raises(spec.RefusedError, match="trusted root"):
            _verify(gateway, conn, root=other, fresh=False)
    finally:
        conn.close()


def _certificate_evidence(gateway: dict[str, Any]) -> tuple[x509.Certificate, bytes]:
    conn = _connect(gateway)
    try:
        return spec.peer_evidence(conn)
    finally:
        conn.close()


def test_every_binding_breaks_when_one_byte_changes(gateway: dict[str, Any]) -> None:
    certificate, extension = _certificate_evidence(gateway)
    root, now = gateway["root"], time.time()
    spec.verify_evidence_buffer(extension, certificate, root=root, now=now)
    tag, quote, claims = spec.decode_evidence_buffer(extension)

    def buffer(quote: bytes, claims: bytes) -> bytes:
        return cbor2.dumps(cbor2.CBORTag(tag, [quote, claims]))

    assert buffer(quote, claims) == extension
    values = cbor2.loads(claims)
    # a claims buffer the quote does not hash
    changed = dict(values, **{"modelseal-models": cbor2.dumps([last_byte_changed(MODEL)])})
    with pytest.raises(spec.RefusedError, match="report data"):
        spec.verify_evidence_buffer(
            buffer(quote, cbor2.dumps(changed, canonical=True)), certificate, root=root, now=now
        )
    # the report data itself changed (the quote's signature covers it)
    offset = spec.HEADER_LEN + 520 + 31  # the last byte of SHA-256(claims)
    bad = bytearray(quote)
    bad[offset] ^= 1
    with pytest.raises(spec.RefusedError, match="report data"):
        spec.verify_evidence_buffer(buffer(bytes(bad), claims), certificate, root=root, now=now)
    # a claims buffer and a quote that agree, but a quote body the QE never signed
    body = bytearray(quote)
    body[spec.HEADER_LEN + 136 + 47] ^= 1  # the last byte of MRTD
    with pytest.raises(spec.RefusedError, match="quote: signature"):
        spec.verify_evidence_buffer(buffer(bytes(body), claims), certificate, root=root, now=now)
    # the same extension in another key's certificate (a TLS-terminating relay)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay")])
    relay = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(certificate.not_valid_before_utc)
        .not_valid_after(certificate.not_valid_after_utc)
        .add_extension(x509.UnrecognizedExtension(spec.EVIDENCE_OID, extension), critical=False)
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(spec.RefusedError, match="pubkey-hash"):
        spec.verify_evidence_buffer(extension, relay, root=root, now=now)


def test_the_nonce_may_be_sent_with_or_without_base64_padding(gateway: dict[str, Any]) -> None:
    nonce = bytes(range(20))  # 27 characters unpadded, one "=" when padded
    for encoded in (
        spec.nonce_param(nonce),
        base64.urlsafe_b64encode(nonce).decode(),
        base64.urlsafe_b64encode(nonce).decode().replace("=", "%3D"),
    ):
        conn = _connect(gateway)
        try:
            status, headers, body = spec.get_fresh(conn, "127.0.0.1", encoded)
            assert status == 200
            assert headers["cache-control"] == "no-store"
            claims = cbor2.loads(spec.decode_evidence_buffer(body)[2])
            assert claims["nonce"] == nonce
        finally:
            conn.close()


_PATH = "/.well-known/modelseal-attestation"
_HOST = "Host: 127.0.0.1\r\n"


@pytest.mark.parametrize(
    ("request_head", "status"),
    [
        pytest.param(f"GET {_PATH}?nonce={'A' * 20}", 400, id="15-bytes"),
        pytest.param(f"GET {_PATH}?nonce={'A' * 87}", 400, id="65-bytes"),
        pytest.param(f"GET {_PATH}?nonce={'A' * 22}&nonce={'A' * 22}", 400, id="twice"),
        pytest.param(f"GET {_PATH}", 400, id="no-nonce"),
        # standard base64's "+" and "/" are not base64url
        pytest.param(f"GET {_PATH}?nonce={'A' * 21}+", 400, id="plus"),
        pytest.param(f"GET {_PATH}?nonce={'A' * 21}/", 400, id="slash"),
        pytest.param(f"GET {_PATH}?nonce={'A' * 22}&a=1&b=2&c=3&d=4", 400, id="5-params"),
        pytest.param(f"GET {_PATH}?nonce={'A' * 22}", 400, id="no-host"),
        pytest.param(f"GET {_PATH}?nonce={'A' * 22}", 405, id="body"),
        pytest.param(f"DELETE {_PATH}?nonce={'A' * 22}", 405, id="delete"),
        pytest.param(f"HEAD {_PATH}?nonce={'A' * 22}", 405, id="head"),
    ],
)
def test_bad_fresh_evidence_requests_get_the_documented_status(
    gateway: dict[str, Any], request: pytest.FixtureRequest, request_head: str, status: int
) -> None:
    case = request.node.callspec.id
    headers = "" if case == "no-host" else _HOST
    if case == "body":
        headers += "Content-Length: 0\r\n"
    conn = _connect(gateway)
    try:
        conn.sendall(f"{request_head} HTTP/1.1\r\n{headers}\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(4096)
            assert chunk, head
            head += chunk
        lines = head.split(b"\r\n")
        assert lines[0].split(b" ", 2)[1] == str(status).encode()
        assert b"connection: close" in [line.lower() for line in lines]
        # the error closes the connection; to HEAD no body came before the close
        rest = b""
        with contextlib.suppress(SSL.ZeroReturnError, SSL.SysCallError):
            while chunk := conn.recv(4096):
                rest += chunk
        if request_head.startswith("HEAD"):
            assert head.endswith(b"\r\n\r\n")
            assert rest == b""
    finally:
        conn.close()


def test_the_quote_matches_the_identities_its_collateral_signs(gateway: dict[str, Any]) -> None:
    certificate, extension = _certificate_evidence(gateway)
    root, collateral, now = gateway["root"], gateway["collateral"], time.time()
    quote = spec.verify_evidence_buffer(extension, certificate, root=root, now=now).quote
    spec.verify_identities(quote, collateral, root, now=now)
    # collateral text changed in one character: its signature no longer verifies
    for name in ("qe_identity", "tcb_info"):
        text = collateral[name]
        tampered = dict(collateral, **{name: text.replace('"version":', '"version" :', 1)})
        with pytest.raises(spec.RefusedError, match="collateral: signature"):
            spec.verify_identities(quote, tampered, root, now=now)
    # a QE identity naming another signer, as if signed (the check after the signature)
    other = bytearray(quote.qe_report)
    other[159] ^= 1  # the last byte of the QE's MRSIGNER
    with pytest.raises(spec.RefusedError, match="QE identity"):
        spec.verify_identities(
            dataclasses.replace(quote, qe_report=bytes(other)), collateral, root, now=now
        )
