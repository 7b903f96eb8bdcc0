"""``modelseal publish``: seal a model with a fresh key, upload it, register key and model.

Steps, in this order (each one safe to repeat):

1. **Seal** the file or directory into a staging directory with a data key (DEK).
2. **Upload** every sealed file to the registry; a blob the registry already holds with the
   same SHA-256 (``HEAD``) is skipped.
3. **Register the DEK** with the KBS under the key id (default ``models/<id>/<version>``)
   together with the release policy and the model digest (admin API).
4. **Register the model record** in the registry: only now does the model become visible,
   so a loader never sees a model whose key the KBS does not have.
5. Delete the staging directory.

Resumption. The staging directory (``--staging-dir``, default
``$XDG_CACHE_HOME/modelseal/publish/<model>/<version>``) is kept until step 5. It holds
ciphertext and a ``state.json`` (parameters, source fingerprint, blob digests) — never a key.
Re-sealing produces different ciphertext, so a run can only resume the staged files with the
*same* DEK, and the DEK is kept between runs only when the owner asks for it:

* with ``--save-key FILE``: the first run writes the new DEK to FILE (0600) before sealing;
  a re-run reads FILE, authenticates the staged manifest with it, and — when parameters and
  source are unchanged — reuses the staged files, skips uploaded blobs, and repeats the
  idempotent KBS and registry registrations. If FILE exists on the first run, it is used as
  the DEK (bring your own key).
* without ``--save-key``: the DEK lives only in memory; a re-run discards the staging
  directory and starts over with a fresh DEK (blobs are uploaded again). If a previous run
  already stored a different key under the key id in the KBS, the KBS refuses (409) and
  publish says so: delete that key or publish a new version.

The DEK never touches the owner's disk except in ``--save-key`` FILE.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, Protocol

from modelseal._internal import environment
from modelseal.crypto.secret import SecretBytes
from modelseal.errors import ConfigError, DecryptionError, FormatError, NotFound
from modelseal.format.header import DEFAULT_SEGMENT_SIZE
from modelseal.format.manifest import SEALED_MANIFEST_NAME
from modelseal.format.options import SealOptions
from modelseal.keystore.paths import normalize_key_id
from modelseal.owner.kbs_admin import KeyConflictError
from modelseal.owner.keys import generate_key, read_key_file, write_key_file
from modelseal.owner.registry_client import RegistryClient
from modelseal.owner.sealing import CNAP_SUFFIX, open_manifest, seal_directory, seal_file
from modelseal.protocol.kbs import is_uuid_key_id
from modelseal.protocol.model_info import (
    FORMAT_CNAP,
    FORMAT_V1,
    KBS_CNAP,
    KBS_TRUSTEE,
    MANIFEST_PATH,
    FileRecord,
    ModelInfo,
    ModelRegistration,
    check_name,
    check_relpath,
)
from modelseal.protocol.wire import WireError, describe

__all__ = [
    "KeyRegistrar",
    "PublishProgress",
    "PublishRequest",
    "PublishResult",
    "default_staging_dir",
    "publish",
]

log = logging.getLogger(__name__)

STATE_FILE: Final = "state.json"
STATE_FORMAT: Final = "modelseal-publish-state/1"
_HASH_CHUNK: Final = 4 << 20

#: framework guess from the file suffix, for CNAP's ``framework`` field
_FRAMEWORKS: Final = {
    ".safetensors": "safetensors",
    ".gguf": "gguf",
    ".onnx": "onnx",
    ".pt": "pytorch",
    ".pth": "pytorch",
    ".bin": "pytorch",
    ".pb": "tensorflow",
    ".h5": "keras",
    ".keras": "keras",
    ".tflite": "tflite",
    ".joblib": "sklearn",
}


class KeyRegistrar(Protocol):
    """What publish needs from the KBS admin client (``owner.kbs_admin.KbsAdminClient``)."""

    def put_key(
        self,
        key_id: str,
        dek: SecretBytes | None,
        policy: Mapping[str, Any] | None = None,
        model_digest: str | None = None,
    ) -> Any: ...


class PublishProgress(Protocol):
    """Progress sink (the CLI draws rich bars on a TTY)."""

    def phase(self, name: str, total: int) -> None:
        """A new phase over ``total`` bytes begins (``total`` 0: no byte count)."""

    def advance(self, n: int) -> None:
        """``n`` more bytes of the current phase are done (negative: a retry restarted)."""

    def note(self, text: str) -> None:
        """One line of information for the user."""


class _Quiet:
    def phase(self, name: str, total: int) -> None:
        log.info("publish: %s", name)

    def advance(self, n: int) -> None:
        return None

    def note(self, text: str) -> None:
        log.info("publish: %s", text)


@dataclass(frozen=True)
class PublishRequest:
    """Everything one publish needs (the CLI flags)."""

    source: Path
    registry_url: str
    kbs_url: str
    model_id: str
    version: str = "v1"
    registry_token: str | None = None
    key_id: str | None = None
    policy: dict[str, Any] | None = None
    segment_size: int = DEFAULT_SEGMENT_SIZE
    save_key: Path | None = None
    format: Literal["v1", "cnap"] = "v1"
    #: KBS URL written into the model info for loaders (default: ``kbs_url``)
    public_kbs_url: str | None = None
    name: str | None = None
    framework: str | None = None
    target: str | None = None
    dtype: str | None = None
    staging_dir: Path | None = None
    workers: int = 2
    verify: bool | str = True
    #: seal under opaque names, padded: the registry learns no file name or exact size
    hide_names: bool = False

    @property
    def resolved_key_id(self) -> str:
        return self.key_id or f"models/{self.model_id}/{self.version}"


@dataclass
class PublishResult:
    """The registered model record and what this run uploaded, skipped or resumed."""

    model: ModelInfo
    key_id: str
    model_digest: str | None
    #: the registry record is new (False: this exact version was already registered)
    created: bool
    uploaded_bytes: int = 0
    uploaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    resumed: bool = False


@dataclass(frozen=True)
class _Blob:
    """One staged sealed file: plaintext path, blob path, local file, size, digest."""

    path: str
    blob: str
    local: Path
    size: int
    sha256: str

    def record(self) -> FileRecord:
        return FileRecord(path=self.path, blob=self.blob, sealed_size=self.size, sha256=self.sha256)

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "blob": self.blob, "size": self.size, "sha256": self.sha256}


def default_staging_dir(model_id: str, version: str) -> Path:
    """``$XDG_CACHE_HOME/modelseal/publish/<model>/<version>`` (``~/.cache`` by default)."""
    cache = environment.variable("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "modelseal" / "publish" / model_id / version


def _validate(req: PublishRequest) -> None:
    check_name(req.model_id, what="model id")
    check_name(req.version, what="version")
    # repo/type/tag, kbs:///repo/type/tag or a bare UUID (stored as default/key/<uuid>)
    for part in normalize_key_id(req.resolved_key_id).split("/"):
        check_name(part, what="key id segment")
    if req.format not in ("v1", "cnap"):
        raise ConfigError(f"unknown format {req.format!r}; use v1 or cnap")
    if not req.source.exists():
        raise NotFound(f"{req.source} not found")
    if req.format == "cnap" and req.hide_names:
        raise ConfigError("--hide-names needs the v1 format (CNAP has no manifest)")
    if req.format == "cnap" and not req.source.is_file():
        raise ConfigError("the CNAP format publishes a single file; use --format v1")
    for url, what in ((req.registry_url, "--registry"), (req.kbs_url, "--kbs-url")):
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"{what} must be an http(s):// URL, got {url!r}")


def _source_files(source: Path) -> list[tuple[str, Path]]:
    if source.is_file():
        return [(source.name, source)]
    found = []
    for root, dirs, files in os.walk(source):
        dirs.sort()
        for name in sorted(files):
            full = Path(root) / name
            found.append((full.relative_to(source).as_posix(), full))
    return found


def _fingerprint(source: Path) -> list[list[Any]]:
    """(path, size, mtime_ns) of every source file: detects a changed source on resume."""
    out: list[list[Any]] = []
    for rel, full in _source_files(source):
        st = full.stat()
        out.append([rel, st.st_size, st.st_mtime_ns])
    return out


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as fh:
        while chunk := fh.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _state_params(req: PublishRequest) -> dict[str, Any]:
    return {
        "format": STATE_FORMAT,
        "model_id": req.model_id,
        "version": req.version,
        "key_id": req.resolved_key_id,
        "seal_format": req.format,
        "segment_size": req.segment_size,
        "hide_names": req.hide_names,
        "source": str(req.source.resolve()),
        "fingerprint": _fingerprint(req.source),
    }


class _Staging:
    """The staging directory: ``sealed/`` (ciphertext) + ``state.json`` (no key)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sealed = root / "sealed"
        self.state_path = root / STATE_FILE

    def load_state(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def write_state(self, state: dict[str, Any]) -> None:
        tmp = self.state_path.with_name(STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state, indent=2), encoding="utf-8")
        os.replace(tmp, self.state_path)

    def reset(self) -> None:
        if self.root.exists():
            shutil.rmtree(self.root)
        self.root.mkdir(mode=0o700, parents=True)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive use of this staging directory (a sibling lock file, ``flock``)."""
        lock_path = self.root.with_name(self.root.name + ".lock")
        try:
            lock_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ConfigError(f"cannot use the staging directory {self.root}: {exc}") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigError(
                    f"another publish is using {self.root}; wait for it or pass --staging-dir"
                ) from None
            yield
        finally:
            os.close(fd)


def _obtain_key(req: PublishRequest) -> tuple[SecretBytes, bool]:
    """The DEK and whether it came from an existing ``--save-key`` file."""
    if req.save_key is None:
        return generate_key(), False
    if req.save_key.exists():
        return read_key_file(req.save_key), True
    dek = generate_key()
    write_key_file(req.save_key, dek)
    return dek, False


def _reusable(
    staging: _Staging, req: PublishRequest, dek: SecretBytes, params: dict[str, Any]
) -> list[_Blob] | None:
    """The staged blobs if they were sealed with ``dek`` from the same source and parameters."""
    state = staging.load_state()
    if state is None or state.get("params") != params or not state.get("complete"):
        return None
    try:
        blobs = [
            _Blob(
                path=b["path"],
                blob=b["blob"],
                local=staging.sealed / b["blob"],
                size=int(b["size"]),
                sha256=str(b["sha256"]),
            )
            for b in state["blobs"]
        ]
        digest = state.get("model_digest")
    except (KeyError, TypeError, ValueError):
        return None
    for b in blobs:
        try:
            if b.local.stat().st_size != b.size:
                return None
        except OSError:
            return None
    if req.format == "v1":
        try:
            manifest = open_manifest(staging.sealed, dek)
        except (DecryptionError, FormatError, NotFound):
            return None  # sealed with another key, or damaged: seal again
        if manifest.digest != digest:
            return None
    return blobs


def _seal(
    staging: _Staging,
    req: PublishRequest,
    dek: SecretBytes,
    progress: PublishProgress,
) -> tuple[list[_Blob], str | None]:
    total = sum(full.stat().st_size for _, full in _source_files(req.source))
    progress.phase("seal", total)
    options = SealOptions(
        key_id=req.resolved_key_id,
        segment_size=req.segment_size,
        model=req.model_id,
        workers=req.workers,
        progress=progress.advance,
        hide_names=req.hide_names,
    )
    if req.format == "cnap":
        staging.sealed.mkdir(mode=0o700)
        blob = req.source.name + CNAP_SUFFIX
        sealed = seal_file(req.source, staging.sealed / blob, dek, options, fmt="cnap")
        local = staging.sealed / blob
        entries = [_Blob(req.source.name, blob, local, sealed.sealed_size, _sha256_file(local))]
        return entries, None
    if req.source.is_file():
        # a single file is published as a one-file model: it gets a manifest and a digest
        check_relpath(req.source.name, what="file name")
        src_dir = staging.root / "source"
        src_dir.mkdir(mode=0o700)
        (src_dir / req.source.name).symlink_to(req.source.resolve())
    else:
        src_dir = req.source
    model = seal_directory(src_dir, staging.sealed, dek, options, version=req.version)
    progress.phase("hash", sum(e.sealed_size for e in model.files))
    blobs = []
    manifest_local = staging.sealed / SEALED_MANIFEST_NAME
    blobs.append(
        _Blob(
            MANIFEST_PATH,
            SEALED_MANIFEST_NAME,
            manifest_local,
            manifest_local.stat().st_size,
            _sha256_file(manifest_local),
        )
    )
    for entry in model.files:
        # under hidden names the registry gets the opaque name as the file's path too
        name = entry.sealed_relpath
        local = staging.sealed / name
        blobs.append(_Blob(entry.header_path, name, local, entry.sealed_size, _sha256_file(local)))
        progress.advance(entry.sealed_size)
    return blobs, model.model_digest


def _guess_framework(blobs: list[_Blob]) -> str | None:
    kinds = {_FRAMEWORKS.get(Path(b.path).suffix.lower()) for b in blobs if b.path != MANIFEST_PATH}
    kinds.discard(None)
    return kinds.pop() if len(kinds) == 1 else None


def _registration(
    req: PublishRequest, blobs: list[_Blob], model_digest: str | None
) -> ModelRegistration:
    kbs_public = (req.public_kbs_url or req.kbs_url).rstrip("/")
    manifest = next((b for b in blobs if b.path == MANIFEST_PATH), None)
    files = [b for b in blobs if b is not manifest]
    if req.format == "cnap":
        # ITA's transfer link names a UUID key by itself, any other by its resource path
        key = req.resolved_key_id
        transfer_id = key.lower() if is_uuid_key_id(key) else normalize_key_id(key)
        kbs, kbs_url = KBS_CNAP, f"{kbs_public}/kbs/v1/keys/{transfer_id}/transfer"
    else:
        kbs, kbs_url = KBS_TRUSTEE, kbs_public
    draft = ModelRegistration(
        format=FORMAT_CNAP if req.format == "cnap" else FORMAT_V1,
        name=req.name,
        framework=req.framework or _guess_framework(blobs),
        target=req.target,
        dtype=req.dtype,
        kbs=kbs,
        kbs_url=kbs_url,
        key_id=req.resolved_key_id,
        model_digest=model_digest,
        manifest=manifest.record() if manifest is not None else None,
        files=[b.record() for b in files],
    )
    try:  # direct construction checks paths, not lengths and patterns: validate like the registry
        return ModelRegistration.from_data(draft.to_data())
    except WireError as exc:
        raise ConfigError(f"invalid model registration: {describe(exc)}") from None


def publish(
    req: PublishRequest,
    kbs: KeyRegistrar,
    *,
    registry: RegistryClient | None = None,
    progress: PublishProgress | None = None,
) -> PublishResult:
    """Seal, upload, register the key, register the model (see the module docstring)."""
    _validate(req)
    sink: PublishProgress = progress or _Quiet()
    own_client = registry is None
    client = registry or RegistryClient(req.registry_url, req.registry_token, verify=req.verify)
    if not client.can_write:
        if own_client:
            client.close()
        raise ConfigError(
            "the registry needs its upload token: pass --registry-token "
            "(the content of <registry data dir>/upload-token)"
        )
    staging = _Staging(req.staging_dir or default_staging_dir(req.model_id, req.version))
    try:
        with staging.locked():
            dek, key_from_file = _obtain_key(req)
            try:
                return _run(req, kbs, client, staging, dek, key_from_file, sink)
            finally:
                dek.wipe()
    finally:
        if own_client:
            client.close()


def _run(
    req: PublishRequest,
    kbs: KeyRegistrar,
    client: RegistryClient,
    staging: _Staging,
    dek: SecretBytes,
    key_from_file: bool,
    sink: PublishProgress,
) -> PublishResult:
    key_id = req.resolved_key_id
    params = _state_params(req)
    blobs = _reusable(staging, req, dek, params) if key_from_file else None
    resumed = blobs is not None
    if not resumed and client.find_model(req.model_id, req.version) is not None:
        raise ConfigError(
            f"{req.model_id} version {req.version} is already published and versions are "
            "immutable: publish a new --version"
        )
    if blobs is None:
        if staging.root.exists():
            sink.note(f"discarding the previous staging directory {staging.root}")
        staging.reset()
        blobs, model_digest = _seal(staging, req, dek, sink)
        staging.write_state(
            {
                "params": params,
                "complete": True,
                "model_digest": model_digest,
                "blobs": [b.to_json() for b in blobs],
            }
        )
    else:
        sink.note(f"resuming with the sealed files staged in {staging.root}")
        state = staging.load_state() or {}
        model_digest = state.get("model_digest")

    policy = dict(req.policy) if req.policy is not None else None
    if policy is not None and policy.get("model_digest") not in (None, model_digest):
        raise ConfigError("the release policy names a different model_digest than this model")

    result_uploaded: list[str] = []
    skipped: list[str] = []
    to_send: list[_Blob] = []
    for b in blobs:
        status = client.blob_status(req.model_id, req.version, b.blob)
        if status is not None and status.sha256 == b.sha256 and status.size == b.size:
            skipped.append(b.blob)
        else:
            to_send.append(b)
    # data files first, the manifest last: a listing never shows a manifest without its files
    to_send.sort(key=lambda b: b.path == MANIFEST_PATH)
    sink.phase("upload", sum(b.size for b in to_send))
    for b in to_send:
        client.upload_blob(
            req.model_id, req.version, b.blob, b.local, sha256=b.sha256, progress=sink.advance
        )
        result_uploaded.append(b.blob)
    if skipped:
        sink.note(f"{len(skipped)} blob(s) already in the registry, skipped")

    sink.phase("register key", 0)
    if policy is None:
        sink.note(
            "no --policy: the KBS denies every release of this key until a policy is set "
            f"(modelseal kbs policy set {key_id} ...)"
        )
    try:
        kbs.put_key(key_id, dek, policy=policy, model_digest=model_digest)
    except KeyConflictError as exc:
        raise KeyConflictError(
            f"the KBS already holds a different key or model digest under {key_id}: publish "
            "a new --version, delete that key (modelseal kbs key delete), or resume with the "
            f"--save-key file of the earlier run ({exc})"
        ) from exc

    sink.phase("register model", 0)
    info, created = client.register(
        req.model_id, req.version, _registration(req, blobs, model_digest)
    )
    staging.remove()
    return PublishResult(
        model=info,
        key_id=key_id,
        model_digest=model_digest,
        created=created,
        uploaded_bytes=sum(b.size for b in to_send),
        uploaded=result_uploaded,
        skipped=skipped,
        resumed=resumed,
    )
