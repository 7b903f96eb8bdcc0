"""The TEE side of the Intel Trust Authority / CNAP key transfer, for CNAP model info.

A CNAP model-info record names its KBS as ``"kbs": "simple_kbs"`` with ``kbs_url`` the
full transfer URL (``.../kbs/v1/keys/<id>/transfer``, what ``publish --format cnap``
writes). The loader follows it with no extra flag, in ITA's two rounds:

1. ``POST {kbs_url}`` with an empty body → ``{"val", "iat", "signature"}`` (a single-use
   nonce, all std base64);
2. ``POST {kbs_url}`` with ``Attestation-Type`` and ``{"quote", "nonce", "user_data",
   "event_log"?, "init_data"?}`` where ``user_data`` is a fresh RSA-3072 public key in
   ITA's encoding (u32 LE exponent ‖ BE modulus) and the quote's REPORTDATA is
   ``SHA-512(val ‖ iat ‖ user_data)`` over the decoded bytes → ``{"wrapped_key",
   "wrapped_swk"}``; the SWK is RSA-OAEP-SHA256-unwrapped, then the key is the CNAP
   12-byte-header AES-GCM message under the SWK.

Only kinds whose evidence is a TD quote can use it (their plugin lists the
``Attestation-Type`` values); others must be given ``--kbs-url`` of a Trustee-compatible
KBS. Answers are read within a byte cap and the settings' deadline.
"""

from __future__ import annotations

import hashlib
from typing import Any

import httpx

from modelseal._internal.bounded import load_json
from modelseal._internal.bounded_http import Reply, send
from modelseal._internal.encoding import b64_decode, b64_encode
from modelseal._internal.urls import display_url
from modelseal.crypto.cnap_wrap import WorkloadKeyPair
from modelseal.crypto.secret import SecretBytes
from modelseal.errors import (
    AttestationError,
    BackendError,
    FormatError,
    NotFound,
    PolicyDenied,
    TransientError,
    UnsupportedTee,
)
from modelseal.format import cnap
from modelseal.loader.attest import (
    INSECURE_TEES,
    KeyRelease,
    build_attester,
    read_init_data,
    resolve_tee,
)
from modelseal.loader.kbs_client import _tls_verify
from modelseal.loader.settings import LoaderSettings
from modelseal.tee import registry
from modelseal.tee.base import close_attester
from modelseal.tee.tdx.evidence import decode_evidence

#: Largest transfer answer read (a nonce, or two base64 blobs of a few hundred bytes).
MAX_ANSWER_BYTES = 64 << 10
_JSON = {"Accept": "application/json", "Content-Type": "application/json"}


def _fail(reply: Reply, what: str) -> Exception:
    status = reply.status_code
    if status >= 500:
        return TransientError(f"{what}: HTTP {status}")
    if status == 404:
        return NotFound(f"{what}: the KBS has no such transfer endpoint (HTTP 404)")
    if status == 403:
        return PolicyDenied(f"{what}: the KBS denied the key transfer")
    if status == 401:
        return AttestationError(f"{what}: the KBS rejected the attestation (HTTP 401)")
    if status == 400:
        return FormatError(f"{what}: the KBS says the request is malformed (HTTP 400)")
    return BackendError(f"{what}: HTTP {status}")


def _json_object(reply: Reply, what: str, members: tuple[str, ...]) -> dict[str, str]:
    doc = load_json(reply.content, what=what, max_bytes=MAX_ANSWER_BYTES, max_depth=4)
    if not isinstance(doc, dict) or not all(isinstance(doc.get(m), str) for m in members):
        raise FormatError(f"{what}: expected a JSON object with {', '.join(members)}")
    return {m: doc[m] for m in members}


def transfer_key(settings: LoaderSettings, transfer_url: str, key_id: str) -> KeyRelease:
    """Attest to an ITA/CNAP transfer endpoint and unwrap the model key (one attempt)."""
    kind = resolve_tee(settings)
    init_data = read_init_data(settings)
    attester = build_attester(kind, settings, init_data)
    try:
        wire = registry.evidence_kind(kind, attester)
        types = registry.plugin(wire).transfer_types
        if not types:
            raise UnsupportedTee(
                f"the model's KBS is an ITA/CNAP key-transfer URL, which takes TD quotes; "
                f"{wire} evidence cannot use it: pass --kbs-url of a Trustee-compatible KBS"
            )
        where = display_url(transfer_url)
        workload = WorkloadKeyPair()
        user_data = workload.public.ita_bytes()
        with httpx.Client(
            verify=_tls_verify(settings.kbs_verify),
            timeout=settings.timeout,
            follow_redirects=False,
            trust_env=False,
        ) as http:

            def post(what: str, **options: Any) -> Reply:
                try:
                    reply = send(
                        http, "POST", transfer_url, limit=MAX_ANSWER_BYTES,
                        seconds=settings.timeout, what=what, **options,
                    )  # fmt: skip
                except httpx.HTTPError as exc:
                    raise TransientError(
                        f"{what}: KBS unreachable at {where} ({type(exc).__name__})"
                    ) from exc
                if reply.status_code != 200:
                    raise _fail(reply, what)
                return reply

            nonce = _json_object(
                post("key transfer nonce", headers={"Accept": "application/json"}),
                "key transfer nonce",
                ("val", "iat", "signature"),
            )
            raw = b64_decode(nonce["val"], what="nonce.val") + b64_decode(
                nonce["iat"], what="nonce.iat"
            )
            evidence = decode_evidence(attester.evidence(hashlib.sha512(raw + user_data).digest()))
            body: dict[str, Any] = {
                "quote": b64_encode(evidence.quote),
                "nonce": nonce,
                "user_data": b64_encode(user_data),
            }
            if evidence.cc_eventlog:
                body["event_log"] = b64_encode(evidence.cc_eventlog)
            if init_data is not None:
                body["init_data"] = b64_encode(init_data.text.encode("utf-8"))
            answer = _json_object(
                post("key transfer", json=body, headers={**_JSON, "Attestation-Type": types[0]}),
                "key transfer",
                ("wrapped_key", "wrapped_swk"),
            )
        swk = workload.unwrap(b64_decode(answer["wrapped_swk"], what="wrapped_swk"))
        try:
            dek = SecretBytes(
                cnap.decode(swk, b64_decode(answer["wrapped_key"], what="wrapped_key"))
            )
        finally:
            swk.wipe()
    finally:
        close_attester(attester)
    return KeyRelease(
        dek=dek, tee=wire, token_id=None, kbs_url=transfer_url, insecure=wire in INSECURE_TEES
    )
