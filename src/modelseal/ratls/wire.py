"""Attested-TLS wire format (normative: docs/reference/ratls.md).

The certificate extension and the fresh-evidence response carry one *evidence buffer*
in the CCC "Interoperable RA-TLS" shape (also produced by rats-tls, rats-rs/TNG and
Gramine's newer RA-TLS)::

    evidence-buffer = #6.<tag>([ evidence: bstr, claims-buffer: bstr ])
    claims-buffer   = { "pubkey-hash": bstr .cbor [alg-id, hash], * tstr => bstr }
    report data     = SHA-256(claims-buffer), zero-padded to the TEE's field

A TDX quote travels raw under the Intel TEE quote tag, as every interoperable verifier
expects; evidence of any other kind travels as modelseal's JSON envelope
``{"tee": kind, "evidence": <Trustee primary_evidence>}`` under a private tag. modelseal
adds its own claims (all byte strings, as the convention requires): issue and expiry
times, the attested model digests, and for fresh evidence the TLS exporter value.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cbor2

from modelseal._internal.encoding import b64_decode, b64_encode
from modelseal.errors import EvidenceError, FormatError

#: tcg-dice-tagged-evidence (TCG DICE conceptual message wrapper), as the CCC convention
OID_TAGGED_EVIDENCE = "2.23.133.5.4.9"
#: CBOR tag of an Intel TEE quote (SGX or TDX ECDSA quote), as rats-tls/rats-rs use it
TAG_INTEL_TEE_QUOTE = 0x1A7501
#: CBOR tag of modelseal's JSON envelope around Trustee evidence of any kind
TAG_MODELSEAL_JSON = 0x6D736C01

CLAIM_PUBKEY_HASH = "pubkey-hash"
CLAIM_NONCE = "nonce"
#: RFC 9266 channel binding: the TLS exporter with this label, no context, 32 bytes
CLAIM_TLS_EXPORTER = "tls-exporter"
CLAIM_ISSUED_AT = "modelseal-iat"
CLAIM_EXPIRES = "modelseal-exp"
CLAIM_MODELS = "modelseal-models"

EXPORTER_LABEL = b"EXPORTER-Channel-Binding"
EXPORTER_LENGTH = 32
#: The well-known path of fresh evidence (``?nonce=<base64url>``).
FRESH_PATH = "/.well-known/modelseal-attestation"
FRESH_CONTENT_TYPE = "application/cbor"

#: Bounds on what a peer may send.
MAX_EVIDENCE_BUFFER = 1024 * 1024
MAX_CLAIMS = 16
MAX_MODELS = 64
MIN_NONCE, MAX_NONCE = 16, 64

_U64 = struct.Struct(">Q")


@dataclass(frozen=True)
class Statement:
    """What the gateway's claims buffer says about its TLS key and its models."""

    spki_hash_alg: int
    spki_hash: bytes
    issued_at: int
    expires: int
    models: tuple[str, ...] = ()
    nonce: bytes | None = None
    tls_exporter: bytes | None = None
    #: custom claims of other producers, kept (and hashed) but not interpreted
    other: Mapping[str, bytes] = field(default_factory=dict)

    def encode(self) -> bytes:
        """The claims buffer: a definite-length CBOR map of text keys to byte strings."""
        claims: dict[str, bytes] = {
            CLAIM_PUBKEY_HASH: cbor2.dumps([self.spki_hash_alg, self.spki_hash]),
            CLAIM_ISSUED_AT: _U64.pack(self.issued_at),
            CLAIM_EXPIRES: _U64.pack(self.expires),
            CLAIM_MODELS: cbor2.dumps(list(self.models)),
        }
        if self.nonce is not None:
            claims[CLAIM_NONCE] = self.nonce
        if self.tls_exporter is not None:
            claims[CLAIM_TLS_EXPORTER] = self.tls_exporter
        return cbor2.dumps(claims, canonical=True)


@dataclass(frozen=True)
class EvidenceBuffer:
    """A decoded evidence buffer: the tag, the raw evidence and the claims buffer bytes."""

    tag: int
    evidence: bytes
    claims_buffer: bytes

    def encode(self) -> bytes:
        return cbor2.dumps(cbor2.CBORTag(self.tag, [self.evidence, self.claims_buffer]))


def _cbor(data: bytes, what: str) -> Any:
    if len(data) > MAX_EVIDENCE_BUFFER:
        raise EvidenceError(f"{what} is larger than {MAX_EVIDENCE_BUFFER} bytes")
    # one definite-length item, no repeated map key, nothing after it: another verifier
    # of the same bytes must not read a different claim (a repeated pubkey-hash, say)
    stream = io.BytesIO(data)
    decoder = cbor2.CBORDecoder(
        stream, read_size=1, allow_indefinite=False, allow_duplicate_keys=False
    )
    try:
        item = decoder.decode()
    except (cbor2.CBORDecodeError, ValueError, RecursionError, OverflowError) as exc:
        raise EvidenceError(f"{what} is not valid CBOR") from exc
    if stream.tell() != len(data):
        raise EvidenceError(f"{what} has bytes after its CBOR item")
    return item


def decode_evidence_buffer(data: bytes) -> EvidenceBuffer:
    """Parse ``#6.<tag>([bstr, bstr])``; anything else is ``EvidenceError``."""
    item = _cbor(data, "the evidence buffer")
    if not isinstance(item, cbor2.CBORTag) or item.tag not in (
        TAG_INTEL_TEE_QUOTE,
        TAG_MODELSEAL_JSON,
    ):
        raise EvidenceError("the evidence buffer is not a tagged TDX quote or modelseal envelope")
    value = item.value
    if (
        not isinstance(value, list | tuple)
        or len(value) != 2
        or not all(isinstance(v, bytes) for v in value)
    ):
        raise EvidenceError("the evidence buffer must be a two-element array of byte strings")
    return EvidenceBuffer(item.tag, value[0], value[1])


def decode_statement(claims_buffer: bytes) -> Statement:
    """Parse and check a claims buffer (the modelseal claims are required)."""
    item = _cbor(claims_buffer, "the claims buffer")
    if not isinstance(item, dict) or len(item) > MAX_CLAIMS:
        raise EvidenceError(f"the claims buffer must be a map of at most {MAX_CLAIMS} claims")
    claims: dict[str, bytes] = {}
    for key, value in item.items():
        if not isinstance(key, str) or not isinstance(value, bytes):
            raise EvidenceError("every claim must be a text name with a byte-string value")
        claims[key] = value
    try:
        alg, digest = _pubkey_hash(claims)
        models = _models(claims.get(CLAIM_MODELS, cbor2.dumps([])))
        issued, expires = _u64(claims, CLAIM_ISSUED_AT), _u64(claims, CLAIM_EXPIRES)
    except FormatError as exc:
        raise EvidenceError(str(exc)) from exc
    nonce = claims.get(CLAIM_NONCE)
    exporter = claims.get(CLAIM_TLS_EXPORTER)
    known = {CLAIM_PUBKEY_HASH, CLAIM_MODELS, CLAIM_ISSUED_AT, CLAIM_EXPIRES}
    known |= {CLAIM_NONCE, CLAIM_TLS_EXPORTER}
    return Statement(
        spki_hash_alg=alg,
        spki_hash=digest,
        issued_at=issued,
        expires=expires,
        models=models,
        nonce=nonce,
        tls_exporter=exporter,
        other={k: v for k, v in claims.items() if k not in known},
    )


def _pubkey_hash(claims: Mapping[str, bytes]) -> tuple[int, bytes]:
    raw = claims.get(CLAIM_PUBKEY_HASH)
    if raw is None:
        raise FormatError("the claims buffer has no pubkey-hash claim")
    entry = _cbor(raw, "the pubkey-hash claim")
    if (
        not isinstance(entry, list | tuple)
        or len(entry) != 2
        or not isinstance(entry[0], int)
        or isinstance(entry[0], bool)
        or not isinstance(entry[1], bytes)
    ):
        raise FormatError("pubkey-hash must be a [hash-alg-id, hash-value] array")
    return entry[0], entry[1]


def _models(raw: bytes) -> tuple[str, ...]:
    value = _cbor(raw, "the modelseal-models claim")
    if (
        not isinstance(value, list | tuple)
        or len(value) > MAX_MODELS
        or not all(isinstance(v, str) and len(v) <= 128 for v in value)
    ):
        raise FormatError(f"modelseal-models must be an array of at most {MAX_MODELS} digests")
    return tuple(value)


def _u64(claims: Mapping[str, bytes], name: str) -> int:
    raw = claims.get(name)
    if raw is None or len(raw) != _U64.size:
        raise FormatError(f"the claims buffer needs {name} as 8 big-endian bytes")
    value: int = _U64.unpack(raw)[0]
    return value


# --- evidence <-> tagged bytes --------------------------------------------------------


def tdx_quote_of(evidence: Any) -> bytes | None:
    """The raw quote of Trustee-shaped TDX evidence (``{"quote": base64, ...}`` whose quote
    header says TDX), else None."""
    if not isinstance(evidence, Mapping) or not isinstance(evidence.get("quote"), str):
        return None
    try:
        quote = b64_decode(evidence["quote"], what="quote")
    except FormatError:
        return None
    # quote header: version (u16 LE), attestation key type (u16), TEE type (u32): 0x81 = TDX
    if len(quote) < 8 or quote[0:2] not in (b"\x04\x00", b"\x05\x00"):
        return None
    return quote if int.from_bytes(quote[4:8], "little") == 0x81 else None


def wrap_evidence(kind: str, evidence: Any, claims_buffer: bytes) -> EvidenceBuffer:
    """The evidence buffer for ``evidence`` produced by an attester of ``kind``."""
    quote = tdx_quote_of(evidence)
    if quote is not None:
        return EvidenceBuffer(TAG_INTEL_TEE_QUOTE, quote, claims_buffer)
    envelope = json.dumps({"tee": kind, "evidence": evidence}, separators=(",", ":"))
    return EvidenceBuffer(TAG_MODELSEAL_JSON, envelope.encode("utf-8"), claims_buffer)


@dataclass(frozen=True)
class Unwrapped:
    """Evidence as the TEE verifiers take it, and which kinds may verify it."""

    evidence: Any
    #: None: any kind whose verifier reads a TDX quote; else the one kind named
    kind: str | None


def unwrap_evidence(buffer: EvidenceBuffer) -> Unwrapped:
    """The ``primary_evidence`` JSON value a TEE verifier takes, from an evidence buffer."""
    if buffer.tag == TAG_INTEL_TEE_QUOTE:
        return Unwrapped({"quote": b64_encode(buffer.evidence), "cc_eventlog": None}, None)
    try:
        envelope = json.loads(buffer.evidence)
    except (ValueError, RecursionError) as exc:
        raise EvidenceError("the modelseal evidence envelope is not JSON") from exc
    if (
        not isinstance(envelope, dict)
        or set(envelope) != {"tee", "evidence"}
        or not isinstance(envelope["tee"], str)
        or len(envelope["tee"]) > 64
    ):
        raise EvidenceError('the modelseal evidence envelope must be {"tee", "evidence"}')
    return Unwrapped(envelope["evidence"], envelope["tee"])


def models_claim(models: Sequence[str]) -> tuple[str, ...]:
    """Model digests as the ``modelseal-models`` claim lists them (sorted, unique)."""
    return tuple(sorted(set(models)))
