"""Fuzz targets: the JSON wire documents peers exchange (model info and registry records,
RCAR messages, the KBS admin API's requests and responses)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from modelseal.dev import guest_components
from modelseal.kbs import transfer_api
from modelseal.kbs.ita_model import (
    KeyCreateRequest,
    PolicyRequest,
    TranslationRefused,
    policy_document,
    release_policy,
)
from modelseal.protocol import admin
from modelseal.protocol.kbs import (
    AttestationRequest,
    AttestationResponse,
    AuthRequest,
    Challenge,
    FlattenedJwe,
    parse_model,
    resource_path,
)
from modelseal.protocol.model_info import (
    ModelInfo,
    ModelList,
    ModelRecord,
    ModelRegistration,
)
from modelseal.protocol.wire import WireError, WireModel
from tests.fuzz.harness import HOSTILE_TEXT, Target, json_docs, json_mutated, run

SHA = "ab" * 32
DIGEST = "sha256:" + "cd" * 32
REGISTRATION: dict[str, Any] = {
    "format": "modelseal/v1",
    "framework": "safetensors",
    "kbs": "trustee",
    "kbs_url": "http://127.0.0.1:8080",
    "key_id": "models/m/v1",
    "model_digest": DIGEST,
    "manifest": {
        "path": "modelseal-manifest.json",
        "blob": "modelseal-manifest.json.sealed",
        "sealed_size": 300,
        "sha256": SHA,
    },
    "files": [
        {"path": "w.safetensors", "blob": "w.safetensors.sealed", "sealed_size": 10, "sha256": SHA},
        {"path": "tok/vocab.json", "blob": "vocab.sealed", "sealed_size": 7, "sha256": SHA},
    ],
}
RECORD = ModelRecord.from_data(
    {"id": "m", "version": "v1", "registered_at": 1.0, "sequence": 0, "registration": REGISTRATION}
)
INFO = RECORD.to_info("http://127.0.0.1:8090/").to_data()
CNAP_INFO = {
    "id": "2b4c6e3c-1111-4a5e-9a51-0d0a6a3f1f00",
    "framework": "tensorflow",
    "url": "http://models/ssdmobilenet_v10.pb.enc",
    "encrypted": True,
    "kbs": "simple_kbs",
    "kbs_url": "https://kbs/kbs/v1/keys/x/transfer",
    "key_id": "2b4c6e3c-2222-4a5e-9a51-0d0a6a3f1f00",
}
JWK = {"alg": "ECDH-ES+A256KW", "crv": "P-256", "kty": "EC", "x": "eA", "y": "eQ"}
ATTEST = {
    "init-data": {"format": "toml", "body": 'algorithm = "sha384"\nversion = "0.1.0"\n'},
    "runtime-data": {"nonce": "bm9uY2U=", "tee-pubkey": JWK},
    "tee-evidence": {"primary_evidence": {"quote": "AAAA"}, "additional_evidence": ""},
}
AUDIT_ROW = {
    "seq": 1,
    "time": "2026-11-22T00:00:00Z",
    "actor": "admin",
    "action": "release",
    "key_id": "models/m/v1",
    "tee": "tdx",
    "claims_digest": SHA,
    "policy_digest": None,
    "decision": "allow",
    "reasons": [],
    "prev_hash": "0" * 64,
    "row_hash": SHA,
}
KEY_INFO = {
    "key_id": "models/m/v1",
    "state": "active",
    "kek_id": "kek-1",
    "size": 32,
    "model_digest": DIGEST,
    "policy_digest": None,
    "created_at": "2026-11-22T00:00:00Z",
    "updated_at": "2026-11-22T00:00:00Z",
}


def _wire(model: type[WireModel], *docs: Any, hostile: bool = True) -> Target:
    """``model.from_json``: its documented error is ``WireError`` (callers map it)."""
    return Target(
        f"wire-{model.__name__}",
        model.from_json,
        lambda: [json.dumps(d).encode() for d in docs],
        extra=lambda: json_mutated(docs) | json_docs(),
        documented=(WireError,),
        hostile=HOSTILE_TEXT if hostile else (),
    )


def _rcar(model: type[WireModel], *docs: Any) -> Target:
    """``parse_model``, the KBS's and the loader's entry: FormatError on any problem."""
    return Target(
        f"rcar-{model.__name__}",
        lambda b: parse_model(model, b, what="fuzz"),
        lambda: [json.dumps(d).encode() for d in docs],
        extra=lambda: json_mutated(docs) | json_docs(),
        hostile=HOSTILE_TEXT,
    )


def _admin(
    model: type[BaseModel], *docs: Any, then: Callable[[Any], object] | None = None
) -> Target:
    """``model_validate_json``: the admin API and the owner's client both catch exactly
    pydantic's ``ValidationError`` (-> HTTP 400 / BackendError), so nothing else may escape."""

    def parse(data: bytes) -> object:
        value = model.model_validate_json(data)
        return then(value) if then is not None else value

    return Target(
        f"admin-{model.__name__}",
        parse,
        lambda: [json.dumps(d).encode() for d in docs],
        extra=lambda: json_mutated(docs) | json_docs(),
        documented=(ValidationError,),
        hostile=HOSTILE_TEXT,
    )


TRANSFER = {
    "quote": "AAAA",
    "nonce": {"val": "bm9uY2U=", "iat": "2026-11-22T00:00:00Z", "signature": "c2ln"},
    "user_data": "MIIBIjAN",
    "event_log": None,
    "init_data": None,
}


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _aael_event(data: bytes) -> object:
    """The dev server's AAEL body reader answers with a reason, never an exception."""
    result = guest_components._aael_event(data)
    assert isinstance(result, str | tuple)
    return result


ITA_POLICY = {
    "attestation_type": "TDX",
    "tdx": {
        "attributes": {
            "mrsignerseam": ["ab" * 48],
            "mrseam": ["cd" * 48],
            "mrtd": ["ef" * 48, "01" * 48],
            "rtmr0": "23" * 48,
            "enforce_tcb_upto_date": True,
        }
    },
}


def _ita_policy(data: bytes) -> object:
    """An ITA key-transfer policy as ``POST /kbs/v1/key-transfer-policies`` takes it:
    validated, then translated; a refusal is ``TranslationRefused`` (-> 400)."""
    req = PolicyRequest.model_validate_json(data)
    return release_policy(policy_document(req, policy_id="p", created_at=0.0), ("tdx",))


ITA_TARGETS = [
    Target(
        "ita-PolicyRequest",
        _ita_policy,
        lambda: [json.dumps(ITA_POLICY).encode()],
        extra=lambda: json_mutated([ITA_POLICY]) | json_docs(),
        documented=(ValidationError, TranslationRefused),
        hostile=HOSTILE_TEXT,
    ),
    _admin(
        KeyCreateRequest,
        {
            "key_information": {"algorithm": "AES", "key_length": 256, "key_data": "eA=="},
            "transfer_policy_id": "4517534b-a758-4447-9d2f-3e5606152ed6",
        },
    ),
]

TARGETS = [
    *ITA_TARGETS,
    Target(
        "key-id",
        lambda b: resource_path(_text(b)),
        lambda: [b"models/m/v1", b"kbs:///models/m/v1", CNAP_INFO["key_id"].encode()],
        hostile=HOSTILE_TEXT,
    ),
    Target(
        "runtime-data",
        lambda b: guest_components.decode_runtime_data(_text(b), "base64"),
        lambda: [b"eHh4eA", b"cmVwb3J0", b""],
    ),
    Target(
        "aael-event",
        _aael_event,
        lambda: [json.dumps({"domain": "d", "operation": "o", "content": "c"}).encode()],
        extra=lambda: (
            json_mutated([{"domain": "d", "operation": "o", "content": "c"}]) | json_docs()
        ),
        documented=(),
        hostile=HOSTILE_TEXT,
    ),
    Target(
        "cnap-transfer",
        transfer_api._parse,
        lambda: [json.dumps(TRANSFER).encode(), b"", b"{}"],
        extra=lambda: json_mutated([TRANSFER]),
        hostile=HOSTILE_TEXT,
    ),
    _wire(ModelInfo, INFO, CNAP_INFO),
    _wire(ModelList, {"models": [INFO, CNAP_INFO]}),
    _wire(ModelRegistration, REGISTRATION),
    _wire(ModelRecord, RECORD.to_data()),
    _rcar(AuthRequest, {"version": "0.4.0", "tee": "tdx", "extra-params": ""}),
    _rcar(AttestationRequest, ATTEST),
    _rcar(Challenge, {"nonce": "bm9uY2U=", "extra-params": ""}),
    _rcar(AttestationResponse, {"token": "a.b.c"}),
    _rcar(
        FlattenedJwe, {k: "eA" for k in ("protected", "encrypted_key", "iv", "ciphertext", "tag")}
    ),
    _admin(admin.PutKeyRequest, {"generate": True, "policy": {"tee": ["tdx"]}}, {"key": "eA"}),
    _admin(admin.ModelDigestRequest, {"model_digest": DIGEST}),
    _admin(admin.KeyList, {"keys": [KEY_INFO, {**KEY_INFO, "created": True}]}),
    _admin(admin.PolicyInfo, {"key_id": "k", "policy": {"tee": ["tdx"]}, "policy_digest": SHA}),
    _admin(
        admin.ModelList,
        {
            "models": [
                {"model_digest": DIGEST, "key_id": "k", "state": "active", "policy_digest": None}
            ]
        },
    ),
    _admin(admin.RotateResponse, {"old_kek_id": "a", "new_kek_id": "b", "rewrapped": 3}),
    _admin(admin.AuditVerifyResponse, {"ok": False, "rows": 2, "first_bad_seq": 2, "reason": "x"}),
    _admin(
        admin.AuditPage,
        {"entries": [AUDIT_ROW, {**AUDIT_ROW, "seq": 2, "prev_hash": SHA}], "next_after": 2},
        then=lambda page: admin.verify_audit_chain(page.entries),
    ),
]

pytestmark = pytest.mark.fuzz


@pytest.mark.parametrize("target", TARGETS, ids=str)
def test_fuzz(target: Target) -> None:
    run(target)
