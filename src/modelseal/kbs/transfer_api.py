"""Intel Trust Authority / CNAP key transfer, mounted at ``/kbs/v1`` (the key-transfer API of
ITA's KBS, ``intel/trustauthority-kbs``, as Intel CNAP's ``SimpleKeyBrokerClient`` calls it).

``POST /kbs/v1/keys/<repo>/<type>/<tag>/transfer`` - the key id is the three path segments
(a ``%2F``-encoded single segment works too, because the path is decoded before routing);
``POST /kbs/v1/keys/<uuid>/transfer`` - an ITA/CNAP UUID key id, stored as the resource
``default/key/<uuid>`` (lower case). Any other path under ``/kbs/v1`` is Trustee's 404.

Round 1 (body empty or without ``quote``) returns a single-use nonce (5 min, stored in the
database so any replica can finish the exchange) in ITA's shape::

    {"val": b64(32 random bytes), "iat": b64(RFC 3339 issue time), "signature": b64(MAC)}

Round 2 ``{"quote": b64, "nonce": {val, iat, signature}, "user_data": b64, "event_log"?: b64}``
(``Attestation-Type: TDX``; unknown members rejected) requires the TD quote's REPORTDATA
to equal ``SHA-512(val ‖ iat ‖ user_data)`` (all raw bytes after base64 decoding - ITA's
TDX adapter rule). modelseal adds one optional member, ``init_data`` (std base64 of the
init-data TOML bound by MRCONFIGID), so ``init_data``/``model_digest`` rules can apply.
The quote goes through the same verifier, release policy and audit log as RCAR. The
answer is ``{"wrapped_key", "wrapped_swk"}``: the model key in the CNAP 12-byte-header
layout under a fresh AES-256 SWK, and the SWK RSA-OAEP-SHA256-wrapped to the RSA key in
``user_data`` (DER SPKI or ITA exponent‖modulus, >= 3072 bits).

CNAP's one-shot request ``{"quote", "user_data"}`` (no nonce; REPORTDATA =
``SHA-512(user_data)``) can be replayed by anyone who saw it, so it is refused unless the
KBS runs with ``--allow-cnap-oneshot``. ``Attestation-Type: TDX`` selects the ``tdx``
verifier, or ``mock-tdx`` when the KBS is configured with a mock-tdx test root.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from hashlib import sha512
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, Header, Request
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from modelseal._internal.bounded import load_json
from modelseal._internal.encoding import b64_decode, b64_encode
from modelseal._internal.http_edge import guarded_route, read_body
from modelseal.crypto.cnap_wrap import WorkloadKey, new_swk
from modelseal.errors import FormatError, TokenError
from modelseal.format import cnap
from modelseal.kbs.errors_http import RCAR_ERRORS
from modelseal.kbs.state import KbsState
from modelseal.keystore.paths import validate_key_id
from modelseal.protocol.claims import Claims
from modelseal.protocol.kbs import is_uuid_key_id, resource_path
from modelseal.tee.plugin import KindConfig
from modelseal.tee.registry import QUOTE_TRANSFER_TYPE, kind_for_transfer_type

__all__ = ["MAX_TRANSFER_BODY", "TransferRequest", "TransferService", "transfer_router"]

log = logging.getLogger("modelseal.kbs.transfer")

MAX_TRANSFER_BODY = 4 * 1024 * 1024


class Attestation(Protocol):
    """What the transfer service needs from the KBS's ``AttestationService``."""

    @property
    def configs(self) -> Mapping[str, KindConfig]: ...

    def verify(
        self, tee: str, evidence: Any, *, expected_report_data: bytes, init_data: bytes | None
    ) -> Claims: ...


class NonceModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    val: StrictStr = Field(max_length=128)
    iat: StrictStr = Field(max_length=128)
    signature: StrictStr = Field(max_length=128)


class TransferRequest(BaseModel):
    """Round 2 (or CNAP one-shot when ``nonce`` is absent)."""

    model_config = ConfigDict(extra="forbid")

    quote: StrictStr = Field(max_length=64 * 1024)
    nonce: NonceModel | None = None
    user_data: StrictStr = Field(max_length=8 * 1024)
    event_log: StrictStr | None = Field(default=None, max_length=3 * 1024 * 1024)
    #: modelseal extension: std base64 of the init-data TOML the TD was launched with
    #: (bound by MRCONFIGID), so ``init_data``/``model_digest`` policy rules can apply.
    init_data: StrictStr | None = Field(default=None, max_length=512 * 1024)


def _json_response(body: dict[str, str], headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body).encode(),
        media_type="application/json",
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


def _tee_for(header: str | None, attestation: Attestation) -> str:
    return kind_for_transfer_type(header or QUOTE_TRANSFER_TYPE, attestation.configs)


class TransferService:
    """The two rounds of a key transfer over one :class:`KbsState` (blocking: both touch
    the database, round 2 also the verifier; the route runs them in the thread pool)."""

    def __init__(self, state: KbsState, attestation: Attestation, *, allow_oneshot: bool) -> None:
        self.state = state
        self.attestation = attestation
        self.allow_oneshot = allow_oneshot
        if allow_oneshot:
            log.warning(
                "INSECURE: CNAP one-shot key transfers (no nonce) are enabled; a captured "
                "request can be replayed to obtain the key again (--allow-cnap-oneshot)"
            )

    def round1(self, key_id: str) -> Response:
        state = self.state
        nonce = state.issue_transfer_nonce(key_id)
        iat = datetime.fromtimestamp(state.clock.now(), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        iat_bytes = iat.encode("ascii")
        body = {
            "val": b64_encode(nonce.value),
            "iat": b64_encode(iat_bytes),
            "signature": b64_encode(state.transfer_nonce_mac(nonce.value, iat_bytes)),
        }
        return _json_response(body, {"Attestation-Type": QUOTE_TRANSFER_TYPE})

    def round2(
        self, key_id: str, req: TransferRequest, tee_header: str | None, client: str
    ) -> Response:
        state, attestation = self.state, self.attestation
        user_data = b64_decode(req.user_data, what="user_data")
        workload = WorkloadKey.from_user_data(user_data)
        quote = b64_decode(req.quote, what="quote")
        event_log = b64_decode(req.event_log, what="event_log") if req.event_log else None
        init_data = b64_decode(req.init_data, what="init_data") if req.init_data else None
        tee = _tee_for(tee_header, attestation)
        if req.nonce is not None:
            val = b64_decode(req.nonce.val, what="nonce.val")
            iat = b64_decode(req.nonce.iat, what="nonce.iat")
            sig = b64_decode(req.nonce.signature, what="nonce.signature")
            if not hmac.compare_digest(state.transfer_nonce_mac(val, iat), sig):
                raise TokenError("transfer nonce signature is invalid")
            state.consume_transfer_nonce(val, key_id)
            report_data = sha512(val + iat + user_data).digest()
            nonce_id = "nonce:" + val.hex()[:16]
        elif self.allow_oneshot:
            report_data = sha512(user_data).digest()
            nonce_id = "oneshot"
        else:
            raise TokenError("a nonce from round 1 is required (one-shot transfers are disabled)")
        evidence = {
            "quote": b64_encode(quote),
            "cc_eventlog": b64_encode(event_log) if event_log else None,
            "aa_eventlog": None,
        }
        claims = attestation.verify(
            tee, evidence, expected_report_data=report_data, init_data=init_data
        )
        dek = state.release_for_transfer(
            key_id, claims, requester=f"transfer:{client}", nonce_id=nonce_id
        )
        swk = new_swk()
        try:
            wrapped_key = cnap.encode(swk, dek.reveal())
            wrapped_swk = workload.wrap(swk)
        finally:
            dek.wipe()
            swk.wipe()
        log.info("transferred %s to %s (tee %s, %s)", key_id, client, claims.tee, nonce_id)
        return _json_response(
            {"wrapped_key": b64_encode(wrapped_key), "wrapped_swk": b64_encode(wrapped_swk)}
        )


async def transfer_key_id(repo: str, kind: str, tag: str) -> str:
    """Dependency: the validated key id of the three path segments (400 if invalid)."""
    try:
        return validate_key_id(f"{repo}/{kind}/{tag}")
    except Exception as exc:
        raise FormatError(str(exc)) from None


async def transfer_uuid_key_id(key: str) -> str:
    """Dependency: the resource path of a one-segment key id, which must be a UUID (ITA's
    key ids): ``default/key/<uuid>``; any other single segment is 400."""
    if not is_uuid_key_id(key):
        raise FormatError(
            "a transfer key id is a UUID (/kbs/v1/keys/<uuid>/transfer) or a resource path "
            "(/kbs/v1/keys/<repo>/<type>/<tag>/transfer)"
        )
    return validate_key_id(resource_path(key))


async def transfer_body(request: Request) -> TransferRequest | None:
    """Dependency: None for round 1, else the validated round-2 request."""
    return _parse(await read_body(request, MAX_TRANSFER_BODY))


def transfer_router(state: KbsState, attestation: Attestation, *, allow_oneshot: bool) -> APIRouter:
    """The ITA/CNAP transfer route; the KBS app mounts it at ``/kbs/v1``."""
    service = TransferService(state, attestation, allow_oneshot=allow_oneshot)
    router = APIRouter(route_class=guarded_route(RCAR_ERRORS))

    async def run(
        key_id: str, payload: TransferRequest | None, request: Request, attestation_type: str | None
    ) -> Response:
        if payload is None:
            return await run_in_threadpool(service.round1, key_id)
        client = request.client.host if request.client else "unknown"
        return await run_in_threadpool(service.round2, key_id, payload, attestation_type, client)

    @router.post("/keys/{repo}/{kind}/{tag}/transfer")
    async def transfer(
        key_id: Annotated[str, Depends(transfer_key_id)],
        payload: Annotated[TransferRequest | None, Depends(transfer_body)],
        request: Request,
        attestation_type: Annotated[str | None, Header()] = None,
    ) -> Response:
        return await run(key_id, payload, request, attestation_type)

    @router.post("/keys/{key}/transfer")
    async def transfer_uuid(
        # the body first: an oversized body is refused as such whatever the key id
        payload: Annotated[TransferRequest | None, Depends(transfer_body)],
        key_id: Annotated[str, Depends(transfer_uuid_key_id)],
        request: Request,
        attestation_type: Annotated[str | None, Header()] = None,
    ) -> Response:
        return await run(key_id, payload, request, attestation_type)

    return router


def _parse(body: bytes) -> TransferRequest | None:
    """None for round 1 (empty body, ``{}`` or no ``quote``), else the validated request."""
    if not body.strip():
        return None
    value = load_json(body, what="transfer request", max_bytes=MAX_TRANSFER_BODY)
    if not isinstance(value, dict):
        raise FormatError("transfer request must be a JSON object")
    if "quote" not in value:
        if value:
            raise FormatError("round 1 takes an empty body; round 2 needs quote and user_data")
        return None
    try:
        return TransferRequest.model_validate(value)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            for e in exc.errors(include_url=False, include_input=False)
        ]
        raise FormatError("invalid transfer request: " + "; ".join(problems[:5])) from None
