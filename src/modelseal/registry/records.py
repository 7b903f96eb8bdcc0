"""Model records: one JSON document per model version in the registry data directory.

``<data-dir>/models/<model_id>/<version>.json`` holds a :class:`ModelRecord`. Writes go to a
temporary file that is fsynced and renamed over the target (atomic on POSIX), so a crash never
leaves a half-written record. Registered versions are immutable: registering the same version
again succeeds only with an identical registration (so a resumed publish is idempotent).
The newest version of a model is the one registered last.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from pathlib import Path

from modelseal.errors import BackendError, ConfigError, ModelNotFound
from modelseal.protocol.model_info import ModelRecord, ModelRegistration, check_name
from modelseal.protocol.wire import WireError

__all__ = ["RecordConflict", "RecordStore"]

_SUFFIX = ".json"


class RecordConflict(ConfigError):
    """The version is already registered with different content (versions are immutable)."""


class RecordStore:
    """Model records as JSON documents under ``<data_dir>/models``."""

    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir) / "models"
        self._lock = threading.Lock()
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create {self.root}: {exc.strerror}") from exc

    def _path(self, model_id: str, version: str) -> Path:
        check_name(model_id, what="model id")
        check_name(version, what="version")
        return self.root / model_id / (version + _SUFFIX)

    def _load(self, path: Path) -> ModelRecord | None:
        try:
            raw = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise BackendError(f"cannot read model record: {exc.strerror}") from exc
        try:
            return ModelRecord.from_json(raw)
        except WireError as exc:
            raise BackendError(f"corrupt model record {path.name}") from exc

    def versions(self, model_id: str) -> list[ModelRecord]:
        """Every registered version of ``model_id``, oldest first."""
        check_name(model_id, what="model id")
        folder = self.root / model_id
        try:
            names = sorted(os.listdir(folder))
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise BackendError(f"cannot list model records: {exc.strerror}") from exc
        records = []
        for name in names:
            if name.startswith(".") or not name.endswith(_SUFFIX):
                continue
            record = self._load(folder / name)
            if record is not None:
                records.append(record)
        records.sort(key=lambda r: (r.sequence, r.version))
        return records

    def get(self, model_id: str, version: str | None = None) -> ModelRecord:
        """The record of ``version``, or of the newest version; ``ModelNotFound`` otherwise."""
        if version is not None:
            record = self._load(self._path(model_id, version))
            if record is None:
                raise ModelNotFound(f"model {model_id!r} has no version {version!r}")
            return record
        records = self.versions(model_id)
        if not records:
            raise ModelNotFound(f"no model {model_id!r}")
        return records[-1]

    def exists(self, model_id: str, version: str) -> bool:
        return self._path(model_id, version).is_file()

    def model_ids(self) -> list[str]:
        try:
            return sorted(
                d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith(".")
            )
        except OSError as exc:
            raise BackendError(f"cannot list models: {exc.strerror}") from exc

    def latest_all(self) -> list[ModelRecord]:
        """The newest version of every model, by model id."""
        out = []
        for model_id in self.model_ids():
            records = self.versions(model_id)
            if records:
                out.append(records[-1])
        return out

    def register(
        self, model_id: str, version: str, registration: ModelRegistration
    ) -> tuple[ModelRecord, bool]:
        """Store a new version; returns ``(record, created)``. Identical re-registration
        returns the stored record with ``created=False``; different content raises
        :class:`RecordConflict`."""
        path = self._path(model_id, version)
        with self._lock:
            existing = self._load(path)
            if existing is not None:
                if existing.registration == registration:
                    return existing, False
                raise RecordConflict(
                    f"model {model_id!r} version {version!r} is already registered with "
                    "different content; versions are immutable (publish a new version)"
                )
            sequence = max((r.sequence for r in self.versions(model_id)), default=-1) + 1
            record = ModelRecord(
                id=model_id,
                version=version,
                registered_at=time.time(),
                sequence=sequence,
                registration=registration,
            )
            try:
                _atomic_write(path, record.to_json(indent=2))
            except OSError as exc:
                raise BackendError(f"cannot write model record: {exc.strerror}") from exc
            return record, True

    def delete(self, model_id: str, version: str) -> ModelRecord:
        """Remove one version's record and return it; ``ModelNotFound`` when absent."""
        path = self._path(model_id, version)
        with self._lock:
            record = self._load(path)
            if record is None:
                raise ModelNotFound(f"model {model_id!r} has no version {version!r}")
            try:
                path.unlink()
                with contextlib.suppress(OSError):
                    path.parent.rmdir()
            except OSError as exc:
                raise BackendError(f"cannot delete model record: {exc.strerror}") from exc
            return record


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "xb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
