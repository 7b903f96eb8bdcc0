"""Registry wire models: the CNAP model-info JSON plus modelseal's fields (docs/guides/registry.md).

``ModelInfo`` is what ``GET /models/{id}`` returns and what the loader reads. Its first eleven
fields are exactly Intel CNAP's model-info object (``cnap/core/modelprovider.py``), so a CNAP client
can use a modelseal registry; the modelseal fields (``format``, ``model_digest``, ``manifest_url``,
``files``) default to the values of a plain CNAP record, so the loader can read a CNAP model-info
server with the same model. Unknown fields are ignored on read (another server may
add its own), but every name used to build a path is validated here, once, for every party:
a malicious registry must not be able to make the loader write outside its destination.

``ModelRegistration`` is the body of ``PUT /models/{id}/versions/{v}`` (publish -> registry):
it names blobs relative to the model version, never absolute URLs, so the registry can build
URLs for whatever host name it is reached by.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import Meta

from modelseal.errors import ConfigError
from modelseal.protocol.wire import WireModel

__all__ = [
    "FORMAT_CNAP",
    "FORMAT_V1",
    "KBS_CNAP",
    "KBS_TRUSTEE",
    "MANIFEST_PATH",
    "FileInfo",
    "FileRecord",
    "ModelInfo",
    "ModelList",
    "ModelRecord",
    "ModelRegistration",
    "blob_key",
    "check_name",
    "check_relpath",
]

FORMAT_V1: Final = "modelseal/v1"
FORMAT_CNAP: Final = "cnap"
#: ``kbs`` value: a Trustee-compatible KBS (RCAR, protocol 0.4); ``kbs_url`` is its base URL
#: and ``key_id`` the resource path ``repo/type/tag``.
KBS_TRUSTEE: Final = "trustee"
#: ``kbs`` value CNAP clients understand: ``kbs_url`` is the full key-transfer POST URL.
KBS_CNAP: Final = "simple_kbs"
#: Plaintext path of the sealed manifest inside a modelseal/v1 model.
MANIFEST_PATH: Final = "modelseal-manifest.json"

_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
MAX_SEGMENT: Final = 255
MAX_PATH: Final = 1024
MAX_DEPTH: Final = 32
MAX_FILES: Final = 100_000


def check_name(value: str, *, what: str = "name") -> str:
    """One model id / version / path segment: ``[A-Za-z0-9_][A-Za-z0-9_.-]*``, ≤ 255 chars.

    The first character can be neither ``.`` nor ``-``, which rules out ``.``, ``..``, hidden
    files and option-like names in one rule.
    """
    if not isinstance(value, str) or len(value) > MAX_SEGMENT or not _SEGMENT.fullmatch(value):
        raise ConfigError(f"invalid {what} {value!r}: expected [A-Za-z0-9_][A-Za-z0-9_.-]*")
    return value


def check_relpath(value: str, *, what: str = "path") -> str:
    """A relative POSIX path of valid segments: no ``..``, no absolute, no empty segment."""
    if not isinstance(value, str) or not value or len(value) > MAX_PATH:
        raise ConfigError(f"invalid {what} {value!r}: empty or longer than {MAX_PATH}")
    parts = value.split("/")
    if len(parts) > MAX_DEPTH:
        raise ConfigError(f"invalid {what} {value!r}: deeper than {MAX_DEPTH}")
    for part in parts:
        try:
            check_name(part)
        except ConfigError:
            raise ConfigError(
                f"invalid {what} {value!r}: each segment must match [A-Za-z0-9_][A-Za-z0-9_.-]*"
            ) from None
    return value


def blob_key(model_id: str, version: str, path: str) -> str:
    """The blob-store key of a model file: ``<model_id>/<version>/<path>``, validated."""
    check_name(model_id, what="model id")
    check_name(version, what="version")
    check_relpath(path, what="blob path")
    return f"{model_id}/{version}/{path}"


def _in_model(check: Callable[[str], str], value: str) -> None:
    """Run a name/path check inside a model: msgspec reports a ValueError with its field.

    The message says what is allowed, never the value (it comes from an untrusted party).
    """
    try:
        check(value)
    except ConfigError:
        raise ValueError(
            "invalid name or path: segments of [A-Za-z0-9_][A-Za-z0-9_.-]*, "
            f"at most {MAX_SEGMENT} characters each, {MAX_PATH} in all, {MAX_DEPTH} deep"
        ) from None


# \A...\Z: msgspec searches, and "$" would also accept a trailing newline
Sha256Hex = Annotated[str, Meta(pattern=rf"\A{_SHA256_HEX.pattern}\Z")]
ModelDigest = Annotated[str, Meta(pattern=rf"\A{_DIGEST.pattern}\Z")]
ShortText = Annotated[str, Meta(max_length=256)]
Url = Annotated[str, Meta(min_length=1, max_length=4096)]
Size = Annotated[int, Meta(ge=0)]


class FileInfo(WireModel, frozen=True, kw_only=True):
    """One sealed file of a model as the loader sees it."""

    #: plaintext relative path inside the model (where the loader writes it)
    path: str
    #: absolute URL of the sealed blob (GET with Range)
    url: Url
    #: exact length of the sealed blob in bytes
    sealed_size: Size
    #: SHA-256 (hex) of the sealed blob, also its ETag; null on servers that do not know it
    sha256: Sha256Hex | None = None

    def __post_init__(self) -> None:
        _in_model(check_relpath, self.path)


class ModelInfo(WireModel, frozen=True, kw_only=True):
    """``GET /models/{id}``: CNAP model-info fields first, then modelseal's."""

    id: Annotated[str, Meta(min_length=1, max_length=MAX_SEGMENT)]
    framework: ShortText | None = None
    target: ShortText | None = None
    #: CNAP: URL of the (single) sealed file; for a multi-file model the model root URL
    url: Url
    name: ShortText | None = None
    version: ShortText | None = None
    dtype: ShortText | None = None
    #: CNAP clients decrypt only when this is literally ``true``
    encrypted: bool = False
    #: ``"trustee"`` (RCAR, ``kbs_url`` = base URL) or ``"simple_kbs"`` (CNAP transfer URL)
    kbs: ShortText | None = None
    kbs_url: Url | None = None
    #: KBS resource path of the data key (``models/<id>/<version>`` by default)
    key_id: Annotated[str, Meta(max_length=MAX_PATH)] | None = None
    format: Literal["modelseal/v1", "cnap"] = FORMAT_CNAP
    #: ``"sha256:" + hex(SHA-256(plaintext manifest bytes))``; null for cnap
    model_digest: ModelDigest | None = None
    #: absolute URL of the sealed manifest blob; null for cnap
    manifest_url: Url | None = None
    files: Annotated[list[FileInfo], Meta(max_length=MAX_FILES)] = msgspec.field(
        default_factory=list
    )

    def __post_init__(self) -> None:
        if self.format == FORMAT_V1:
            if self.model_digest is None or self.manifest_url is None or not self.files:
                raise ValueError("modelseal/v1 model info needs model_digest, manifest_url, files")
            if not self.encrypted:
                raise ValueError("modelseal/v1 model info must be encrypted")
        paths = [f.path for f in self.files]
        if len(set(paths)) != len(paths):
            raise ValueError("duplicate file path in model info")


class ModelList(WireModel, frozen=True, kw_only=True):
    """``GET /models``."""

    models: list[ModelInfo]


class FileRecord(WireModel, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One sealed file in a registration: its plaintext path and its blob."""

    #: plaintext relative path (for the manifest: ``modelseal-manifest.json``)
    path: str
    #: blob path relative to ``/blobs/<id>/<version>/`` (e.g. ``weights.safetensors.sealed``)
    blob: str
    sealed_size: Size
    #: SHA-256 (hex) of the sealed blob; the registry checks it against the stored blob
    sha256: Sha256Hex

    def __post_init__(self) -> None:
        _in_model(check_relpath, self.path)
        _in_model(check_relpath, self.blob)


class ModelRegistration(WireModel, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Body of ``PUT /models/{id}/versions/{version}`` (sent by ``modelseal publish``)."""

    format: Literal["modelseal/v1", "cnap"] = FORMAT_V1
    name: ShortText | None = None
    framework: ShortText | None = None
    target: ShortText | None = None
    dtype: ShortText | None = None
    kbs: ShortText
    kbs_url: Url
    key_id: Annotated[str, Meta(min_length=1, max_length=MAX_PATH)]
    model_digest: ModelDigest | None = None
    manifest: FileRecord | None = None
    files: Annotated[list[FileRecord], Meta(min_length=1, max_length=MAX_FILES)]

    def __post_init__(self) -> None:
        if self.format == FORMAT_V1 and (self.manifest is None or self.model_digest is None):
            raise ValueError("a modelseal/v1 registration needs manifest and model_digest")
        if self.format == FORMAT_CNAP and self.manifest is not None:
            raise ValueError("a cnap registration has no manifest")
        blobs = [f.blob for f in self.all_files()]
        paths = [f.path for f in self.files]
        if len(set(blobs)) != len(blobs) or len(set(paths)) != len(paths):
            raise ValueError("duplicate path or blob in registration")

    def all_files(self) -> list[FileRecord]:
        """Data files plus the manifest (if any): every blob the record references."""
        return [*self.files, *([self.manifest] if self.manifest is not None else [])]


class ModelRecord(WireModel, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What the registry stores per model version: the registration plus identity and time."""

    id: str
    version: str
    registered_at: float
    #: monotonic per registry: orders versions when times tie
    sequence: Size
    registration: ModelRegistration

    def __post_init__(self) -> None:
        _in_model(check_name, self.id)
        _in_model(check_name, self.version)

    def to_info(self, base_url: str) -> ModelInfo:
        """Build the wire model with absolute URLs under ``base_url`` (no trailing slash)."""
        reg = self.registration
        root = f"{base_url.rstrip('/')}/blobs/{self.id}/{self.version}/"
        files = [
            {"path": f.path, "url": root + f.blob, "sealed_size": f.sealed_size, "sha256": f.sha256}
            for f in reg.files
        ]
        data: dict[str, Any] = {
            "id": self.id,
            "framework": reg.framework,
            "target": reg.target,
            "url": files[0]["url"] if len(files) == 1 else root,
            "name": reg.name if reg.name is not None else self.id,
            "version": self.version,
            "dtype": reg.dtype,
            "encrypted": True,
            "kbs": reg.kbs,
            "kbs_url": reg.kbs_url,
            "key_id": reg.key_id,
            "format": reg.format,
            "model_digest": reg.model_digest,
            "manifest_url": root + reg.manifest.blob if reg.manifest is not None else None,
            "files": files,
        }
        return ModelInfo.from_data(data)
