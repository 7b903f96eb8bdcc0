"""Intel Trust Authority KBS registration objects and their meaning in modelseal.

The request and response shapes of ITA's ``/kbs/v1`` management API (key-transfer
policies, keys, tokens; normative: docs/reference/ita-kbs-api.md), and the translation of
an ITA key-transfer policy into the :class:`~modelseal.policy.document.ReleasePolicy` that
modelseal evaluates. The translation keeps ITA's semantics (an attribute that is absent
or empty is not checked; ``mrtd`` is a list of accepted values) and refuses what modelseal
cannot evaluate instead of ignoring it, so a policy never silently means less here than
on ITA:

* ``mrtd`` / ``mrseam`` / ``mrsignerseam`` (lists) -> ``measurements`` entries ``mr_td`` /
  ``mr_seam`` / ``mr_signer_seam``, one entry per combination, each also holding the
  ``rtmr0``..``rtmr3`` values given;
* ``enforce_tcb_upto_date: true`` -> ``tcb_status: [UpToDate]``; ``false`` or absent ->
  every TCB status (ITA does not check the TCB status then either);
* ``attestation_type: TDX`` -> the TEE kinds this KBS's transfer route verifies TDX
  quotes with;
* refused (400): ``policy_ids`` (policies evaluated by the Intel Trust Authority service,
  which modelseal does not call), ``seamsvn`` (no claim carries the SEAM SVN alone),
  ``attestation_type: SGX`` (no SGX verifier), a TDX policy without ``attributes``.

modelseal is stricter than ITA in one way: a TD in debug mode is refused (the release
policy's ``debug: false`` default), where ITA leaves that to the attestation service.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from modelseal.policy.document import TCB_STATUSES, ReleasePolicy, parse_policy

__all__ = [
    "AES_KEY_BITS",
    "ITA_UUID_RE",
    "KeyCreateRequest",
    "KeyUpdateRequest",
    "LoginRequest",
    "NIL_UUID",
    "PolicyRequest",
    "TranslationRefused",
    "go_time",
    "go_json",
    "policy_document",
    "release_policy",
]

#: ITA's route pattern for ids: a version-4 UUID (its character class also admits ``|``
#: in the variant position, which no UUID it generates contains).
ITA_UUID_RE = re.compile(
    r"[a-fA-F0-9]{8}-[a-fA-F0-9]{4}-4[a-fA-F0-9]{3}-[89aAbB][a-fA-F0-9]{3}-[a-fA-F0-9]{12}"
)
#: what ITA writes for a key without a transfer policy (a zero UUID is never omitted)
NIL_UUID = "00000000-0000-0000-0000-000000000000"
#: ITA's attestation type for TD quotes; a policy object holds its attributes in the member
#: named after the type in lower case (as for SGX)
ITA_TDX = "TDX"
TDX_MEMBER = ITA_TDX.lower()
#: AES key lengths ITA accepts, in bits
AES_KEY_BITS = (128, 192, 256)
_SHA384_HEX = re.compile(r"[a-fA-F0-9]{96}")
#: cap on the measurement entries one ITA policy may expand into (the release policy's own cap)
MAX_ENTRIES = 1024

Hex384 = Annotated[StrictStr, Field(max_length=96)]
HexList = Annotated[list[Hex384], Field(max_length=64)]
PolicyIds = Annotated[list[Annotated[StrictStr, Field(max_length=64)]], Field(max_length=64)]


class TranslationRefused(ValueError):
    """An ITA policy that modelseal cannot evaluate as written (HTTP 400)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TdxAttributes(_Strict):
    mrsignerseam: HexList | None = None
    mrseam: HexList | None = None
    seamsvn: Annotated[StrictInt, Field(ge=0, le=65535)] | None = None
    mrtd: HexList | None = None
    rtmr0: Hex384 | None = None
    rtmr1: Hex384 | None = None
    rtmr2: Hex384 | None = None
    rtmr3: Hex384 | None = None
    enforce_tcb_upto_date: StrictBool | None = None


class TdxPolicy(_Strict):
    attributes: TdxAttributes | None = None
    policy_ids: (
        Annotated[list[Annotated[StrictStr, Field(max_length=64)]], Field(max_length=64)] | None
    ) = None


class SgxPolicy(_Strict):
    """Parsed only to be refused with a precise reason (modelseal has no SGX verifier)."""

    attributes: dict[StrictStr, Any] | None = None
    policy_ids: (
        Annotated[list[Annotated[StrictStr, Field(max_length=64)]], Field(max_length=64)] | None
    ) = None


class PolicyRequest(_Strict):
    """``POST /kbs/v1/key-transfer-policies``. ITA decodes ``id`` and ``created_at`` too
    (the request and the stored object are one type) and then overwrites them; so does
    modelseal."""

    id: Annotated[StrictStr, Field(max_length=64)] | None = None
    created_at: Annotated[StrictStr, Field(max_length=64)] | None = None
    attestation_type: Annotated[StrictStr, Field(max_length=16)]
    sgx: SgxPolicy | None = None
    tdx: TdxPolicy | None = None


class KeyInformation(_Strict):
    algorithm: Annotated[StrictStr, Field(max_length=16)] = ""
    key_length: Annotated[StrictInt, Field(ge=0, le=1 << 20)] = 0
    curve_type: Annotated[StrictStr, Field(max_length=32)] = ""
    key_data: Annotated[StrictStr, Field(max_length=16 * 1024)] = ""
    kmip_key_id: Annotated[StrictStr, Field(max_length=256)] = ""


class KeyCreateRequest(_Strict):
    """``POST /kbs/v1/keys``."""

    key_information: KeyInformation | None = None
    transfer_policy_id: Annotated[StrictStr, Field(max_length=64)] | None = None


class KeyUpdateRequest(_Strict):
    """``PUT /kbs/v1/keys/<id>``."""

    transfer_policy_id: Annotated[StrictStr, Field(max_length=64)] | None = None


class LoginRequest(_Strict):
    """``POST /kbs/v1/token``."""

    username: Annotated[StrictStr, Field(max_length=1024)] = ""
    password: Annotated[StrictStr, Field(max_length=4096)] = ""


def _hex(values: Iterable[str], what: str) -> list[str]:
    out = []
    for i, value in enumerate(values):
        if not _SHA384_HEX.fullmatch(value):
            raise TranslationRefused(f"{what}[{i}] is not a SHA-384 hex string (96 hex digits)")
        out.append(value.lower())
    return out


def _one_hex(value: str | None, what: str) -> str | None:
    if not value:  # ITA: an empty string is "not given"
        return None
    if not _SHA384_HEX.fullmatch(value):
        raise TranslationRefused(f"{what} is not a SHA-384 hex string (96 hex digits)")
    return value.lower()


def normalized_attributes(attrs: TdxAttributes) -> dict[str, Any]:
    """The attributes as modelseal stores and answers them: ITA's member order, hex in
    lower case, absent and empty members left out (ITA's ``omitempty``)."""
    doc: dict[str, Any] = {}
    for name in ("mrsignerseam", "mrseam"):
        values = getattr(attrs, name)
        if values:
            doc[name] = _hex(values, name)
    if attrs.seamsvn is not None:
        doc["seamsvn"] = attrs.seamsvn
    if attrs.mrtd:
        doc["mrtd"] = _hex(attrs.mrtd, "mrtd")
    for i in range(4):
        value = _one_hex(getattr(attrs, f"rtmr{i}"), f"rtmr{i}")
        if value is not None:
            doc[f"rtmr{i}"] = value
    if attrs.enforce_tcb_upto_date is not None:
        doc["enforce_tcb_upto_date"] = attrs.enforce_tcb_upto_date
    return doc


def policy_document(req: PolicyRequest, *, policy_id: str, created_at: float) -> dict[str, Any]:
    """The stored and answered ITA policy object (``id``, ``created_at``,
    ``attestation_type``, ``tdx``), after refusing what modelseal cannot evaluate."""
    if req.attestation_type == "SGX":
        raise TranslationRefused(
            "attestation_type SGX is not supported: modelseal has no SGX verifier"
        )
    if req.attestation_type != ITA_TDX:
        raise TranslationRefused("Invalid attestation type (TDX or SGX)")
    if req.sgx is not None:
        raise TranslationRefused("sgx attributes are not supported: modelseal has no SGX verifier")
    if req.tdx is None or req.tdx.attributes is None:
        raise TranslationRefused("a TDX key-transfer policy needs tdx.attributes")
    if req.tdx.policy_ids:
        raise TranslationRefused(
            "tdx.policy_ids name policies evaluated by the Intel Trust Authority service, "
            "which modelseal does not call; express them as tdx.attributes"
        )
    if req.tdx.attributes.seamsvn is not None:
        raise TranslationRefused(
            "tdx.attributes.seamsvn cannot be evaluated (no claim carries the SEAM SVN "
            "alone); use enforce_tcb_upto_date or mrseam"
        )
    return {
        "id": policy_id,
        "created_at": go_time(created_at),
        "attestation_type": ITA_TDX,
        TDX_MEMBER: {"attributes": normalized_attributes(req.tdx.attributes)},
    }


def release_policy(document: dict[str, Any], tee_kinds: Iterable[str]) -> ReleasePolicy:
    """The ReleasePolicy an ITA policy object (from :func:`policy_document`) stands for."""
    attrs = document[TDX_MEMBER]["attributes"]
    common = {f"rtmr{i}": attrs[f"rtmr{i}"] for i in range(4) if f"rtmr{i}" in attrs}
    entries: list[dict[str, str]] = []
    for td in attrs.get("mrtd") or [None]:
        for seam in attrs.get("mrseam") or [None]:
            for signer in attrs.get("mrsignerseam") or [None]:
                entry = dict(common)
                for name, value in (("mr_td", td), ("mr_seam", seam), ("mr_signer_seam", signer)):
                    if value is not None:
                        entry[name] = value
                if entry and entry not in entries:
                    entries.append(entry)
                if len(entries) > MAX_ENTRIES:
                    raise TranslationRefused(
                        f"mrtd x mrseam x mrsignerseam expands into more than {MAX_ENTRIES} "
                        "accepted combinations"
                    )
    tcb = ["UpToDate"] if attrs.get("enforce_tcb_upto_date") is True else list(TCB_STATUSES)
    doc: dict[str, Any] = {
        "apiVersion": "modelseal/v1",
        "kind": "ReleasePolicy",
        "tee": sorted(set(tee_kinds)),
        "tcb_status": tcb,
    }
    if entries:
        doc["measurements"] = entries
    return parse_policy(doc)


def go_time(when: float) -> str:
    """A time as Go's ``time.Time`` marshals to JSON in UTC (RFC 3339, fraction without
    trailing zeros)."""
    value = datetime.fromtimestamp(when, UTC)
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        text += f".{value.microsecond:06d}".rstrip("0")
    return text + "Z"


def go_json(value: Any) -> bytes:
    """JSON as Go's ``json.Encoder`` writes it: compact, newline-terminated."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
