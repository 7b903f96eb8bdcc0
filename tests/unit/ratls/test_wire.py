"""The attested-TLS wire format: round trips, the CCC shape, and hostile buffers."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import cbor2
import pytest

from modelseal.crypto.tls_identity import TlsKey, certificate_extension, spki_hash
from modelseal.errors import EvidenceError, FormatError
from modelseal.ratls.wire import (
    OID_TAGGED_EVIDENCE,
    TAG_INTEL_TEE_QUOTE,
    TAG_MODELSEAL_JSON,
    EvidenceBuffer,
    Statement,
    decode_evidence_buffer,
    decode_statement,
    unwrap_evidence,
    wrap_evidence,
)

STATEMENT = Statement(
    spki_hash_alg=1,
    spki_hash=b"\x11" * 32,
    issued_at=1_800_000_000,
    expires=1_800_003_600,
    models=("sha256:" + "ab" * 32,),
    nonce=b"\x22" * 32,
    tls_exporter=b"\x33" * 32,
)


def test_statement_round_trips_as_the_ccc_claims_map() -> None:
    raw = STATEMENT.encode()
    claims = cbor2.loads(raw)
    # text names, byte-string values; pubkey-hash is the CoSWID hash-entry [alg, value]
    assert all(isinstance(k, str) and isinstance(v, bytes) for k, v in claims.items())
    assert list(cbor2.loads(claims["pubkey-hash"])) == [1, b"\x11" * 32]
    assert claims["nonce"] == b"\x22" * 32
    assert decode_statement(raw) == STATEMENT


def test_tdx_quotes_travel_raw_under_the_intel_quote_tag() -> None:
    quote = b"\x04\x00\x02\x00\x81\x00\x00\x00" + b"\x00" * 600
    evidence = {"quote": base64.b64encode(quote).decode(), "cc_eventlog": None}
    buffer = wrap_evidence("mock-tdx", evidence, STATEMENT.encode())
    assert buffer.tag == TAG_INTEL_TEE_QUOTE
    assert buffer.evidence == quote
    decoded = decode_evidence_buffer(buffer.encode())
    assert decoded == buffer
    unwrapped = unwrap_evidence(decoded)
    assert unwrapped.kind is None
    assert base64.b64decode(unwrapped.evidence["quote"]) == quote


def test_other_kinds_travel_in_the_json_envelope() -> None:
    evidence = {"svn": "1", "report_data": "AA=="}
    buffer = wrap_evidence("sample", evidence, STATEMENT.encode())
    assert buffer.tag == TAG_MODELSEAL_JSON
    unwrapped = unwrap_evidence(decode_evidence_buffer(buffer.encode()))
    assert (unwrapped.kind, unwrapped.evidence) == ("sample", evidence)


def test_sgx_quote_is_not_taken_for_tdx() -> None:
    sgx = b"\x03\x00\x02\x00\x00\x00\x00\x00" + b"\x00" * 600
    buffer = wrap_evidence("x", {"quote": base64.b64encode(sgx).decode()}, b"")
    assert buffer.tag == TAG_MODELSEAL_JSON


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xff\xff",
        cbor2.dumps([b"a", b"b"]),  # untagged
        cbor2.dumps(cbor2.CBORTag(1234, [b"a", b"b"])),  # unknown tag
        cbor2.dumps(cbor2.CBORTag(TAG_INTEL_TEE_QUOTE, [b"a"])),
        cbor2.dumps(cbor2.CBORTag(TAG_INTEL_TEE_QUOTE, [b"a", "text"])),
        cbor2.dumps(cbor2.CBORTag(TAG_INTEL_TEE_QUOTE, {"a": b"b"})),
        b"\x9f" * 100_000,  # deeply nested indefinite arrays
        b"\x5a\xff\xff\xff\xff",  # a byte string claiming 4 GiB
        b"\x00" * (1024 * 1024 + 1),
        pytest.param(
            cbor2.dumps(cbor2.CBORTag(TAG_INTEL_TEE_QUOTE, [b"a", b"b"])) + b"\x00",
            id="trailing-byte",
        ),
        pytest.param(
            bytes.fromhex("da001a7501") + b"\x82\x5f\x41a\xff\x41b", id="indefinite-evidence"
        ),
    ],
)
def test_hostile_evidence_buffers_are_evidence_errors(raw: bytes) -> None:
    with pytest.raises(EvidenceError):
        decode_evidence_buffer(raw)


def _claims(**members: Any) -> bytes:
    base: dict[str, Any] = cbor2.loads(STATEMENT.encode())
    base.update(members)
    return cbor2.dumps({k: v for k, v in base.items() if v is not None})


@pytest.mark.parametrize(
    "raw",
    [
        cbor2.dumps([1, 2]),
        _claims(**{"pubkey-hash": None}),
        _claims(**{"pubkey-hash": cbor2.dumps([True, b"x"])}),
        _claims(**{"pubkey-hash": cbor2.dumps({"alg": 1})}),
        _claims(**{"modelseal-iat": b"\x00" * 7}),
        _claims(**{"modelseal-exp": None}),
        _claims(**{"modelseal-models": cbor2.dumps(["x" * 129])}),
        _claims(**{"modelseal-models": cbor2.dumps(["sha256:00"] * 65)}),
        _claims(nonce="text"),
        cbor2.dumps({f"claim{i}": b"" for i in range(17)}),
        cbor2.dumps({1: b"x"}),
        pytest.param(STATEMENT.encode() + b"\x00", id="trailing-byte"),
        # pubkey-hash twice: verifiers keeping the first or the last would disagree
        pytest.param(
            bytes([STATEMENT.encode()[0] + 1])
            + STATEMENT.encode()[1:]
            + cbor2.dumps("pubkey-hash")
            + cbor2.dumps(cbor2.dumps([1, b"\x12" * 32])),
            id="repeated-pubkey-hash",
        ),
        pytest.param(
            _claims(**{"pubkey-hash": cbor2.dumps([1, b"\x11" * 32]) + b"\x00"}),
            id="pubkey-hash-trailing-byte",
        ),
    ],
)
def test_hostile_claims_buffers_are_evidence_errors(raw: bytes) -> None:
    with pytest.raises(EvidenceError):
        decode_statement(raw)


@pytest.mark.parametrize(
    "envelope",
    [b"not json", b"[1]", b'{"tee": "x"}', b'{"tee": 1, "evidence": {}}', b"[" * 100_000],
)
def test_hostile_json_envelopes_are_evidence_errors(envelope: bytes) -> None:
    with pytest.raises(EvidenceError):
        unwrap_evidence(EvidenceBuffer(TAG_MODELSEAL_JSON, envelope, b""))


def test_certificate_carries_the_buffer_and_binds_its_spki() -> None:
    key = TlsKey()
    value = EvidenceBuffer(TAG_MODELSEAL_JSON, b"{}", STATEMENT.encode()).encode()
    cert = key.certificate(
        extensions=[(OID_TAGGED_EVIDENCE, value)], not_before=1.7e9, not_after=1.8e9
    )
    assert certificate_extension(cert, OID_TAGGED_EVIDENCE) == value
    assert spki_hash(key.spki_der, 1) == hashlib.sha256(key.spki_der).digest()
    assert spki_hash(key.spki_der, 7) == hashlib.sha384(key.spki_der).digest()
    with pytest.raises(FormatError):
        spki_hash(key.spki_der, 2)
    with pytest.raises(FormatError):
        certificate_extension(b"\x30\x03\x02\x01\x00", OID_TAGGED_EVIDENCE)


def _self_signed(extensions: list[tuple[str, bytes]]) -> bytes:
    import time

    now = time.time()
    return TlsKey().certificate(extensions=extensions, not_before=now - 60, not_after=now + 3600)


def test_a_peer_certificate_with_a_negative_serial_is_parsed_not_a_warning() -> None:
    # pyca warns about serials RFC 5280 forbids; with warnings as errors (as here) an
    # unhandled warning would escape the documented errors
    from cryptography import x509

    der = bytearray(_self_signed([(OID_TAGGED_EVIDENCE, b"\x01")]))
    serial = x509.load_der_x509_certificate(bytes(der)).serial_number
    encoded = serial.to_bytes(serial.bit_length() // 8 + 1, "big")
    at = der.index(b"\x02" + bytes([len(encoded)]) + encoded)
    der[at + 2] |= 0x80  # the serial's sign bit: now negative
    assert certificate_extension(bytes(der), OID_TAGGED_EVIDENCE) == b"\x01"


def test_a_pem_certificate_inside_a_der_one_is_not_what_is_read() -> None:
    # a TLS peer's DER certificate may carry any bytes in an extension, including a PEM
    # certificate with other evidence: the evidence read must be the outer certificate's
    inner = _self_signed([(OID_TAGGED_EVIDENCE, b"inner")])
    pem = (
        b"-----BEGIN CERTIFICATE-----\n"
        + base64.encodebytes(inner)
        + b"-----END CERTIFICATE-----\n"
    )
    outer = _self_signed([(OID_TAGGED_EVIDENCE, b"outer"), ("1.3.6.1.4.1.99999.1", pem)])
    assert certificate_extension(outer, OID_TAGGED_EVIDENCE) == b"outer"
