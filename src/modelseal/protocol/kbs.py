"""Wire models of the KBS attestation protocol (RCAR), Trustee ``kbs-types`` 0.4 compatible.

Field names follow the wire exactly (kebab-case at the top level, snake_case inside
``tee-evidence``); Python attributes are snake_case, renamed on the wire. Shared by the KBS
and the loader's client, so both sides validate the same shapes (msgspec models: see
``protocol/wire.py`` for why).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Final, Literal, TypeVar

import msgspec
from msgspec import Meta

from modelseal.errors import FormatError
from modelseal.protocol.wire import WireModel, describe

#: The protocol version our client sends (what Trustee requires exactly).
PROTOCOL_VERSION: Final = "0.4.0"
COOKIE_NAME: Final = "kbs-session-id"
AUTH_PATH: Final = "/kbs/v0/auth"
ATTEST_PATH: Final = "/kbs/v0/attest"
RESOURCE_PREFIX: Final = "/kbs/v0/resource/"

#: Trustee's ErrorInformation ``type`` prefix; variants below reuse Trustee's names.
ERROR_TYPE_PREFIX: Final = "https://github.com/confidential-containers/kbs/errors/"

_SEGMENT = r"[A-Za-z0-9_-][A-Za-z0-9_.-]*"
RESOURCE_PATH_RE: Final = re.compile(rf"^{_SEGMENT}/{_SEGMENT}/{_SEGMENT}$")
MAX_SEGMENT_CHARS: Final = 128

_VERSION_RE = re.compile(
    r"^(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})"
    r"(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$"
)


M = TypeVar("M", bound=WireModel)


def version_supported(version: str) -> bool:
    """True for semver versions in ``>=0.4.0, <0.5.0`` (pre-releases of 0.4.x excluded)."""
    m = _VERSION_RE.fullmatch(version)
    if m is None or m.group(4):
        return False
    return (int(m.group(1)), int(m.group(2))) == (0, 4)


#: Scheme and empty authority of a CoCo resource URI (``kbs:///repo/type/tag``): the
#: KBS is the one the guest is configured with, as the CDH writes it.
KBS_URI_PREFIX: Final = "kbs:///"
#: Repository and type a bare UUID key id (Intel Trust Authority, CNAP) maps to: Trustee's
#: default repository and its ``key`` type, so a CoCo guest fetches the same key as
#: ``kbs:///default/key/<uuid>``.
UUID_KEY_PREFIX: Final = "default/key/"
_HEX4 = "[0-9a-fA-F]{4}"
_UUID_RE = re.compile(rf"(?:{_HEX4}){{2}}-{_HEX4}-{_HEX4}-{_HEX4}-(?:{_HEX4}){{3}}")


def is_uuid_key_id(key_id: str) -> bool:
    """True for a bare UUID key id as Intel Trust Authority and CNAP write them."""
    return _UUID_RE.fullmatch(key_id) is not None


def resource_path(key_id: str) -> str:
    """The ``repo/type/tag`` resource path a key id names; FormatError otherwise.

    Accepted spellings: ``repo/type/tag``; the CoCo resource URI ``kbs:///repo/type/tag``
    (a URI naming another KBS, ``kbs://host/...``, is refused: the KBS is chosen by
    configuration, never by a key id); a bare UUID (ITA/CNAP key ids), which is the
    resource ``default/key/<uuid>`` with the UUID in lower case.
    """
    if not isinstance(key_id, str) or len(key_id) > 512:
        raise FormatError("a key id must be repo/type/tag, kbs:///repo/type/tag or a UUID")
    if key_id.startswith(KBS_URI_PREFIX):
        key_id = key_id[len(KBS_URI_PREFIX) :]
    elif key_id.startswith("kbs://"):
        raise FormatError(
            "a kbs:// key id must have an empty authority (kbs:///repo/type/tag); the KBS "
            "comes from the configuration, not from the key id"
        )
    elif is_uuid_key_id(key_id):
        return UUID_KEY_PREFIX + key_id.lower()
    return check_resource_path(key_id)


def check_resource_path(path: str) -> str:
    """Validate Trustee's ``repo/type/tag`` grammar; raises FormatError otherwise."""
    if not RESOURCE_PATH_RE.fullmatch(path) or any(
        len(seg) > MAX_SEGMENT_CHARS for seg in path.split("/")
    ):
        raise FormatError(
            "resource path must be repo/type/tag, segments [A-Za-z0-9_-][A-Za-z0-9_.-]*"
        )
    return path


class AuthRequest(WireModel, frozen=True, kw_only=True, rename={"extra_params": "extra-params"}):
    """``POST /kbs/v0/auth`` body (kbs-types ``Request``)."""

    version: Annotated[str, Meta(max_length=64)]
    tee: Annotated[str, Meta(max_length=64)]
    extra_params: Any = ""


class Challenge(WireModel, frozen=True, kw_only=True, rename={"extra_params": "extra-params"}):
    """``/kbs/v0/auth`` response: 32-byte nonce in standard base64, ``extra-params`` = ""."""

    nonce: str
    extra_params: Any = ""


class InitData(WireModel, frozen=True, kw_only=True):
    """Init-data document the TEE was launched with (TOML text, Trustee ``InitData``)."""

    format: Literal["toml"]
    body: Annotated[str, Meta(max_length=256 * 1024)]


class RuntimeData(WireModel, frozen=True, kw_only=True, rename={"tee_pubkey": "tee-pubkey"}):
    nonce: Annotated[str, Meta(max_length=4096)]
    tee_pubkey: dict[str, Any]


class TeeEvidence(WireModel, frozen=True, kw_only=True):
    primary_evidence: Any
    additional_evidence: str = ""

    def __post_init__(self) -> None:
        if self.primary_evidence is None:
            raise ValueError("primary_evidence is required")


class AttestationRequest(
    WireModel,
    frozen=True,
    kw_only=True,
    rename={
        "init_data": "init-data",
        "runtime_data": "runtime-data",
        "tee_evidence": "tee-evidence",
    },
):
    """``POST /kbs/v0/attest`` body (kbs-types ``Attestation``)."""

    init_data: InitData | None = None
    runtime_data: RuntimeData
    tee_evidence: TeeEvidence


class AttestationResponse(WireModel, frozen=True, kw_only=True):
    token: str


class ErrorInformation(WireModel, frozen=True, kw_only=True):
    """RFC 7807-like error body: ``{"type": URI, "detail": safe text}``."""

    type: str
    detail: str


class FlattenedJwe(WireModel, frozen=True, kw_only=True):
    """Resource response: RFC 7516 flattened JSON serialization, no ``aad``."""

    protected: str
    encrypted_key: str
    iv: str
    ciphertext: str
    tag: str


def parse_model(model: type[M], body: bytes | str, *, what: str) -> M:
    """Validate a JSON body into ``model``; any problem becomes a FormatError (HTTP 400).

    The message names the first offending field (``$.runtime-data.nonce``), never its value.
    Bodies nested more than :data:`~modelseal._internal.bounded.MAX_DEPTH` levels deep are
    refused before decoding; the byte cap is the caller's (the KBS reads bodies with one).
    """
    try:
        return model.from_json(body)
    except msgspec.DecodeError as exc:  # ValidationError included
        # invalid fields name their path, malformed JSON a byte offset, the caps their limit
        raise FormatError(f"malformed {what}: {describe(exc)}") from None
