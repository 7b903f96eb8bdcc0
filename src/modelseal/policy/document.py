"""The release-policy document (normative: docs/reference/policy.md).

A policy is a small declarative YAML or JSON document. It is validated strictly at upload
(unknown fields, unknown TEE kinds, unknown TCB states, malformed hex are all rejected) so a
typo can never silently widen who gets a key. The stored form is the normalized document
(defaults filled in, hex lower-cased, times in UTC) and its digest is the SHA-256 of its
RFC 8785 canonical JSON.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from hashlib import sha256
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    ValidationError,
    field_validator,
)

from modelseal._internal.bounded import load_json, load_yaml
from modelseal._internal.canonical import canonical_json
from modelseal.errors import ConfigError, FormatError
from modelseal.tee import registry

__all__ = [
    "MAX_POLICY_BYTES",
    "GpuPolicy",
    "TCB_CHECKED_TEES",
    "TCB_STATUSES",
    "TEE_KINDS",
    "PolicyInvalid",
    "ReleasePolicy",
    "parse_policy",
    "parse_policy_text",
]

#: TEE kinds a policy may name (every registered kind but device kinds, which a policy
#: requires through ``gpus:``). Insecure kinds are honoured only on a KBS started insecure.
TEE_KINDS = registry.kinds(device=False)
#: TCB states as reported by Intel DCAP (and mapped to by the SNP verifier).
TCB_STATUSES = (
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
)
#: Kinds whose verifier reports a TCB status; for them ``tcb_status`` is enforced.
TCB_CHECKED_TEES = frozenset(registry.kinds(tcb_checked=True))
MAX_POLICY_BYTES = 64 * 1024

_NAME = re.compile(r"[a-z0-9][a-z0-9_.:-]{0,63}")
_HEX = re.compile(r"(?:[0-9a-f]{2}){1,512}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_INIT_KEY = re.compile(r"[A-Za-z0-9_.:/-]{1,128}")


def _registered_kind(value: str) -> str:
    if value not in TEE_KINDS:
        raise ValueError(f"unknown TEE kind; allowed: {', '.join(TEE_KINDS)}")
    return value


TeeKind = Annotated[
    StrictStr,
    AfterValidator(_registered_kind),
    Field(json_schema_extra={"enum": list(TEE_KINDS)}),
]
TcbStatus = Literal[
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
]


def _normalize_measurements(value: tuple[dict[str, str], ...]) -> tuple[dict[str, str], ...]:
    """Measurement entries with names and hex lower-cased; empty entries, bad names,
    odd-length hex and repeated names are refused."""
    out = []
    for i, entry in enumerate(value):
        if not entry:
            raise ValueError(f"entry {i} is empty (it would match anything)")
        norm: dict[str, str] = {}
        for name, hexval in entry.items():
            lname, lhex = name.lower(), hexval.lower()
            if not _NAME.fullmatch(lname):
                raise ValueError(f"entry {i}: invalid measurement name {name[:64]!r}")
            if not _HEX.fullmatch(lhex):
                raise ValueError(f"entry {i}: {lname} is not an even-length hex string")
            if lname in norm:
                raise ValueError(f"entry {i}: {lname} given twice")
            norm[lname] = lhex
        out.append(norm)
    return tuple(out)


#: ``measurements:`` entries (name -> hex), normalized by :func:`_normalize_measurements`
MeasurementEntries = Annotated[
    tuple[dict[StrictStr, StrictStr], ...], AfterValidator(_normalize_measurements)
]

_VERSION = re.compile(r"[0-9]{1,9}(?:\.[0-9]{1,9}){0,5}")


class GpuPolicy(BaseModel):
    """What the GPUs of a composite attestation must show (``gpus:``).

    ``min_count`` GPUs at least must have been attested with the CPU TEE; every attested
    GPU must then satisfy the other rules: ``cc_mode`` ``on`` (or ``any``, which admits
    the developer-tools mode), ``rim_match`` (both the driver and the VBIOS reference
    manifests found and matched), ``measurements`` (one entry matching, by block index),
    ``min_driver_version`` (dotted numbers, compared numerically).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_count: Annotated[int, Field(strict=True, ge=1, le=64)] = 1
    cc_mode: Literal["on", "any"] = "on"
    rim_match: StrictBool = False
    measurements: Annotated[MeasurementEntries, Field(min_length=1, max_length=256)] | None = None
    min_driver_version: StrictStr | None = None

    @field_validator("min_driver_version")
    @classmethod
    def _version(cls, value: str | None) -> str | None:
        if value is not None and not _VERSION.fullmatch(value):
            raise ValueError('must be dotted numbers, e.g. "550.90.07"')
        return value

    def to_document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "min_count": self.min_count,
            "cc_mode": self.cc_mode,
            "rim_match": self.rim_match,
        }
        if self.measurements is not None:
            doc["measurements"] = [dict(m) for m in self.measurements]
        if self.min_driver_version is not None:
            doc["min_driver_version"] = self.min_driver_version
        return doc


class PolicyInvalid(ConfigError):
    """A policy document failed validation; the message lists every problem."""


class ReleasePolicy(BaseModel):
    """A validated, normalized release policy. Evaluate with :func:`policy.evaluate`."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=False)

    api_version: Literal["modelseal/v1"] = Field(alias="apiVersion")
    kind: Literal["ReleasePolicy"]
    tee: Annotated[tuple[TeeKind, ...], Field(min_length=1, max_length=len(TEE_KINDS))]
    debug: StrictBool = False
    tcb_status: Annotated[tuple[TcbStatus, ...], Field(min_length=1)] = ("UpToDate",)
    measurements: Annotated[MeasurementEntries, Field(min_length=1, max_length=1024)] | None = None
    init_data: Annotated[dict[StrictStr, StrictStr], Field(max_length=256)] = Field(
        default_factory=dict
    )
    model_digest: StrictStr | None = None
    #: model digests the TEE must have recorded as loaded in its runtime measurements
    #: (AA event ``modelseal.dev LoadModel sha256:...``, replayed from the event log)
    loaded_models: Annotated[tuple[StrictStr, ...], Field(max_length=64)] = ()
    #: runtime events (``"<domain> <operation> <content>"``) the replayed log must contain
    runtime_events: Annotated[tuple[StrictStr, ...], Field(max_length=64)] = ()
    not_after: datetime | None = None
    gpus: GpuPolicy | None = None

    @field_validator("tee", "tcb_status")
    @classmethod
    def _unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("entries must be unique")
        return value

    @field_validator("init_data")
    @classmethod
    def _init_data(cls, value: dict[str, str]) -> dict[str, str]:
        for key, val in value.items():
            if not _INIT_KEY.fullmatch(key):
                raise ValueError(f"invalid init_data key {key[:64]!r}")
            if len(val) > 4096:
                raise ValueError(f"init_data value of {key} is too long")
        return value

    @field_validator("model_digest")
    @classmethod
    def _model_digest(cls, value: str | None) -> str | None:
        if value is None:
            return None
        lowered = value.lower()
        if not _DIGEST.fullmatch(lowered):
            raise ValueError('must be "sha256:" followed by 64 hex digits')
        return lowered

    @field_validator("loaded_models")
    @classmethod
    def _loaded_models(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        lowered = tuple(v.lower() for v in value)
        for v in lowered:
            if not _DIGEST.fullmatch(v):
                raise ValueError('entries must be "sha256:" followed by 64 hex digits')
        if len(set(lowered)) != len(lowered):
            raise ValueError("entries must be unique")
        return lowered

    @field_validator("runtime_events")
    @classmethod
    def _runtime_events(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for v in value:
            domain, _, rest = v.partition(" ")
            operation, _, content = rest.partition(" ")
            if not domain or not operation or not content or "\n" in v or len(v) > 4096:
                raise ValueError(
                    'entries are "<domain> <operation> <content>" on one line, at most '
                    "4096 characters"
                )
        if len(set(value)) != len(value):
            raise ValueError("entries must be unique")
        return value

    @field_validator("not_after", mode="before")
    @classmethod
    def _not_after_is_text(cls, value: Any) -> Any:
        # pydantic would read a number, or a numeric string, as Unix seconds *or
        # milliseconds* (by magnitude), with no zone written down; the document rule is
        # an RFC 3339 / ISO 8601 timestamp with a zone.
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value.strip())
            except ValueError:
                raise ValueError("must be an RFC 3339 timestamp with a time zone") from None
        if value is not None and not isinstance(value, datetime):
            raise ValueError("must be an RFC 3339 timestamp with a time zone (text)")
        return value

    @field_validator("not_after")
    @classmethod
    def _not_after(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("needs a time zone, e.g. 2027-01-01T00:00:00Z")
        try:
            return value.astimezone(UTC)
        except OverflowError:
            # e.g. 9999-12-31T23:59:59-01:00: pydantic reports only ValueError cleanly.
            raise ValueError("is outside the representable UTC range") from None

    # --- serialization -----------------------------------------------------------------

    def to_document(self) -> dict[str, Any]:
        """The normalized document (defaults filled in) as plain JSON values."""
        doc: dict[str, Any] = {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "tee": list(self.tee),
            "debug": self.debug,
            "tcb_status": list(self.tcb_status),
            "init_data": dict(self.init_data),
        }
        if self.measurements is not None:
            doc["measurements"] = [dict(m) for m in self.measurements]
        if self.model_digest is not None:
            doc["model_digest"] = self.model_digest
        if self.loaded_models:
            doc["loaded_models"] = list(self.loaded_models)
        if self.runtime_events:
            doc["runtime_events"] = list(self.runtime_events)
        if self.not_after is not None:
            doc["not_after"] = _utc_text(self.not_after)
        if self.gpus is not None:
            doc["gpus"] = self.gpus.to_document()
        return doc

    def canonical(self) -> bytes:
        """RFC 8785 canonical JSON of the normalized document: what gets stored and hashed."""
        return canonical_json(self.to_document())

    @property
    def digest(self) -> str:
        """``sha256:<hex>`` of :meth:`canonical`; recorded in every audit row."""
        return "sha256:" + sha256(self.canonical()).hexdigest()


def _utc_text(value: datetime) -> str:
    value = value.astimezone(UTC)
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        text += f".{value.microsecond:06d}".rstrip("0")
    return text + "Z"


def _describe(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in err["loc"]) or "document"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        problems.append(f"{where}: {msg}")
    return "; ".join(problems[:20])


def parse_policy(document: Any) -> ReleasePolicy:
    """Validate a parsed document (a dict) into a :class:`ReleasePolicy`."""
    if isinstance(document, ReleasePolicy):
        return document
    if not isinstance(document, dict):
        raise PolicyInvalid("a release policy must be a mapping (YAML or JSON object)")
    try:
        return ReleasePolicy.model_validate(document)
    except ValidationError as exc:
        raise PolicyInvalid(f"invalid release policy: {_describe(exc)}") from None


def parse_policy_text(text: str | bytes) -> ReleasePolicy:
    """Parse and validate a policy file's content: JSON, or YAML (needs PyYAML).

    Both go through the bounded parsers of ``_internal/bounded.py``: at most
    :data:`MAX_POLICY_BYTES`, nested at most :data:`MAX_NESTING` levels (a policy needs
    three: ``measurements: [{name: hex}]``), and YAML without aliases (a "billion laughs"
    document expands into millions of nodes for the validator to walk).
    """
    raw = text.encode("utf-8") if isinstance(text, str) else text
    if len(raw) > MAX_POLICY_BYTES:
        raise PolicyInvalid(f"a release policy must be at most {MAX_POLICY_BYTES} bytes")
    try:
        if raw.lstrip().startswith(b"{"):
            document = load_json(
                raw, what="release policy", max_bytes=MAX_POLICY_BYTES, max_depth=MAX_NESTING
            )
        else:
            document = load_yaml(
                raw, what="release policy", max_bytes=MAX_POLICY_BYTES, max_depth=MAX_NESTING
            )
    except FormatError as exc:
        raise PolicyInvalid(str(exc)) from None
    return parse_policy(document)


#: Nesting cap of policy documents (JSON and YAML, flow and block collections alike).
MAX_NESTING = 32
