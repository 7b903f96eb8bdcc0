"""Wire models of the KBS attestation protocol (RCAR), Trustee ``kbs-types`` 0.4 compatible.

Field names follow the wire exactly (kebab-case at the top level, snake_case inside
``tee-evidence``); Python attributes are snake_case aliases. Shared by the KBS and the
loader's client, so both sides validate the same shapes.
"""

from __future__ import annotations

import re
from typing import Any, Final, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from modelseal.errors import FormatError

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


M = TypeVar("M", bound=BaseModel)


def version_supported(version: str) -> bool:
    """True for semver versions in ``>=0.4.0, <0.5.0`` (pre-releases of 0.4.x excluded)."""
    m = _VERSION_RE.fullmatch(version)
    if m is None or m.group(4):
        return False
    return (int(m.group(1)), int(m.group(2))) == (0, 4)


def check_resource_path(path: str) -> str:
    """Validate Trustee's ``repo/type/tag`` grammar; raises FormatError otherwise."""
    if not RESOURCE_PATH_RE.fullmatch(path) or any(
        len(seg) > MAX_SEGMENT_CHARS for seg in path.split("/")
    ):
        raise FormatError(
            "resource path must be repo/type/tag, segments [A-Za-z0-9_-][A-Za-z0-9_.-]*"
        )
    return path


class _Wire(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)


class AuthRequest(_Wire):
    """``POST /kbs/v0/auth`` body (kbs-types ``Request``)."""

    version: str = Field(max_length=64)
    tee: str = Field(max_length=64)
    extra_params: Any = Field(default="", alias="extra-params")


class Challenge(_Wire):
    """``/kbs/v0/auth`` response: 32-byte nonce in standard base64, ``extra-params`` = ""."""

    nonce: str
    extra_params: Any = Field(default="", alias="extra-params")


class InitData(_Wire):
    """Init-data document the TEE was launched with (TOML text, Trustee ``InitData``)."""

    format: Literal["toml"]
    body: str = Field(max_length=256 * 1024)


class RuntimeData(_Wire):
    nonce: str = Field(max_length=4096)
    tee_pubkey: dict[str, Any] = Field(alias="tee-pubkey")


class TeeEvidence(_Wire):
    primary_evidence: Any
    additional_evidence: str = ""

    @field_validator("primary_evidence")
    @classmethod
    def _present(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("primary_evidence is required")
        return value


class AttestationRequest(_Wire):
    """``POST /kbs/v0/attest`` body (kbs-types ``Attestation``)."""

    init_data: InitData | None = Field(default=None, alias="init-data")
    runtime_data: RuntimeData = Field(alias="runtime-data")
    tee_evidence: TeeEvidence = Field(alias="tee-evidence")


class AttestationResponse(_Wire):
    token: str


class ErrorInformation(_Wire):
    """RFC 7807-like error body: ``{"type": URI, "detail": safe text}``."""

    type: str
    detail: str


class FlattenedJwe(_Wire):
    """Resource response: RFC 7516 flattened JSON serialization, no ``aad``."""

    protected: str
    encrypted_key: str
    iv: str
    ciphertext: str
    tag: str


def parse_model(model: type[M], body: bytes | str, *, what: str) -> M:
    """Validate a JSON body into ``model``; any problem becomes a FormatError (HTTP 400)."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[:1]
        where = ".".join(str(p) for p in first[0]["loc"]) if first else ""
        msg = first[0]["msg"] if first else "invalid"
        raise FormatError(
            f"malformed {what}: {where}: {msg}" if where else f"malformed {what}: {msg}"
        ) from None
