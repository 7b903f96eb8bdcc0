"""The release-policy document (DESIGN.md section 6; normative: docs/reference/policy.md).

A policy is a small declarative YAML or JSON document. It is validated strictly at upload
(unknown fields, unknown TEE kinds, unknown TCB states, malformed hex are all rejected) so a
typo can never silently widen who gets a key. The stored form is the normalized document
(defaults filled in, hex lower-cased, times in UTC) and its digest is the SHA-256 of its
RFC 8785 canonical JSON.
"""

from __future__ import annotations

import functools
import json
import re
from datetime import UTC, datetime
from hashlib import sha256
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    ValidationError,
    field_validator,
)

from modelseal._internal.canonical import canonical_json
from modelseal.errors import ConfigError

__all__ = [
    "MAX_POLICY_BYTES",
    "TCB_CHECKED_TEES",
    "TCB_STATUSES",
    "TEE_KINDS",
    "PolicyInvalid",
    "ReleasePolicy",
    "parse_policy",
    "parse_policy_text",
]

#: TEE kinds a policy may name. ``sample`` is honoured only on a KBS started insecure.
TEE_KINDS = ("tdx", "snp", "sgx", "tpm", "mock-tdx", "sample")
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
TCB_CHECKED_TEES = frozenset({"tdx", "sgx", "snp", "mock-tdx"})
MAX_POLICY_BYTES = 64 * 1024

_NAME = re.compile(r"[a-z0-9][a-z0-9_.:-]{0,63}")
_HEX = re.compile(r"(?:[0-9a-f]{2}){1,512}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_INIT_KEY = re.compile(r"[A-Za-z0-9_.:/-]{1,128}")

TeeKind = Literal["tdx", "snp", "sgx", "tpm", "mock-tdx", "sample"]
TcbStatus = Literal[
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
]


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
    measurements: (
        Annotated[tuple[dict[StrictStr, StrictStr], ...], Field(min_length=1, max_length=1024)]
        | None
    ) = None
    init_data: Annotated[dict[StrictStr, StrictStr], Field(max_length=256)] = Field(
        default_factory=dict
    )
    model_digest: StrictStr | None = None
    not_after: datetime | None = None

    @field_validator("tee", "tcb_status")
    @classmethod
    def _unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("entries must be unique")
        return value

    @field_validator("measurements")
    @classmethod
    def _measurements(
        cls, value: tuple[dict[str, str], ...] | None
    ) -> tuple[dict[str, str], ...] | None:
        if value is None:
            return None
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
        if self.not_after is not None:
            doc["not_after"] = _utc_text(self.not_after)
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
    """Parse and validate a policy file's content: JSON, or YAML (needs PyYAML)."""
    raw = text.encode("utf-8") if isinstance(text, str) else text
    if len(raw) > MAX_POLICY_BYTES:
        raise PolicyInvalid(f"a release policy must be at most {MAX_POLICY_BYTES} bytes")
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyInvalid("a release policy must be UTF-8 text") from None
    if decoded.lstrip().startswith("{"):
        try:
            document = json.loads(decoded)
        except (ValueError, RecursionError) as exc:
            raise PolicyInvalid(f"release policy is not valid JSON: {exc}") from None
    else:
        document = _load_yaml(decoded)
    return parse_policy(document)


def _load_yaml(text: str) -> Any:
    try:
        import yaml
    except ImportError:  # pragma: no cover - yaml is in the server extra and dev deps
        raise PolicyInvalid(
            "YAML policies need PyYAML (pip install 'modelseal[server]'); or write JSON"
        ) from None
    _check_flow_depth(text)
    try:
        return yaml.load(text, Loader=_loader_class(yaml))  # noqa: S506 - a SafeLoader subclass
    except (yaml.YAMLError, RecursionError, ValueError, OverflowError) as exc:
        # ValueError/OverflowError: PyYAML's implicit timestamps build datetimes without
        # range checks (``not_after: 2027-13-45T00:00:00Z``).
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None)
        if isinstance(exc, ValueError | OverflowError):
            problem = f"invalid timestamp ({str(exc)[:80]})"
        why = f": {problem}" if isinstance(problem, str) else ""
        raise PolicyInvalid(f"release policy is not valid YAML{where}{why}") from None


#: A policy nests three levels (``measurements: [{name: hex}]``); anything far deeper is
#: refused before PyYAML spends seconds of CPU on it (64 KiB of ``[`` takes ~2.5 s).
MAX_FLOW_DEPTH = 32


def _check_flow_depth(text: str) -> None:
    """Refuse YAML flow collections (``[``/``{``) nested deeper than MAX_FLOW_DEPTH.

    A linear scan that skips quoted scalars and comments; it may over-count brackets inside
    plain scalars, which only matters for documents no policy resembles.
    """
    depth, quote, comment = 0, "", False
    for ch in text:
        if comment:
            comment = ch != "\n"
        elif quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#":
            comment = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_FLOW_DEPTH:
                raise PolicyInvalid(f"release policy is nested more than {MAX_FLOW_DEPTH} levels")
        elif ch in "]}":
            depth = max(depth - 1, 0)


@functools.cache
def _loader_class(yaml: Any) -> Any:
    """``yaml.SafeLoader`` without anchors/aliases.

    A policy never needs them, and aliases let a 64 KiB document expand into millions of
    nodes for the validator to walk (a "billion laughs" CPU bomb), so any alias is a
    YAML error here.
    """

    class _NoAliasSafeLoader(yaml.SafeLoader):  # type: ignore[misc]
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.composer.ComposerError(
                    None, None, "YAML aliases are not allowed in a release policy", event.start_mark
                )
            return super().compose_node(parent, index)

    return _NoAliasSafeLoader
