"""The load receipt: what was loaded, how big, how long, under which attestation.

Written to ``DEST/.modelseal/receipt.json`` before the ready marker, so the inference
container (and an auditor) can check which model digest it is serving. It never contains
key material: the token id identifies the KBS decision in the audit log, not the token.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from modelseal.loader.destination import META_DIR, FileModes

RECEIPT_FORMAT = "modelseal-receipt/1"
RECEIPT_NAME = "receipt.json"
READY_NAME = "ready"


@dataclass(frozen=True)
class LoadedFile:
    """One plaintext file placed in the destination."""

    path: str
    size: int
    sealed_size: int


@dataclass
class Timings:
    """Wall-clock seconds per step, in the order they ran."""

    steps: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.steps[name] = round(self.steps.get(name, 0.0) + time.perf_counter() - start, 6)

    @property
    def total(self) -> float:
        return round(sum(self.steps.values()), 6)


@dataclass(frozen=True)
class Receipt:
    """Result of :func:`modelseal.loader.load_model`; serialized as ``receipt.json``."""

    model_id: str
    version: str | None
    format: str
    model_digest: str | None
    model_url: str
    kbs_url: str
    key_id: str
    tee: str
    token_id: str | None
    destination: str
    files: tuple[LoadedFile, ...]
    bytes: int
    sealed_bytes: int
    timings: dict[str, float]
    retries: int
    loaded_at: float
    insecure_tee: bool = False
    #: ``kbs`` (RCAR by the loader, or an ITA/CNAP transfer) or ``cdh`` (CoCo CDH)
    key_source: str = "kbs"
    #: ``{"recorded": bool, "event": ..., "detail"?: ...}`` when an Attestation Agent was
    #: asked to record the load in the runtime measurements; None when none is configured
    runtime_measurement: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["files"] = [asdict(f) for f in self.files]
        data["timings"] = {**self.timings, "total": round(sum(self.timings.values()), 6)}
        return {"format_version": RECEIPT_FORMAT, **data}

    def write(self, dest: Path, *, modes: FileModes | None = None) -> Path:
        """Write the receipt, then the ready marker (each atomically, in that order), with
        the permissions of the model files: whoever may read the model reads its receipt."""
        modes = modes or FileModes()
        meta = dest / META_DIR
        meta.mkdir(exist_ok=True)
        modes.apply_to_directory(meta)
        path = meta / RECEIPT_NAME
        text = json.dumps(self.to_json(), indent=2, sort_keys=True).encode() + b"\n"
        _atomic_write(path, text, modes)
        _atomic_write(
            meta / READY_NAME, (self.model_digest or self.model_id).encode() + b"\n", modes
        )
        return path


def _atomic_write(path: Path, data: bytes, modes: FileModes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        modes.apply_to_file(fd)
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_receipt(dest: Path) -> dict[str, Any] | None:
    """The receipt of the last completed load into ``dest``, or None."""
    try:
        data: dict[str, Any] = json.loads((dest / META_DIR / RECEIPT_NAME).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return data


def clear_ready(dest: Path) -> None:
    """Remove the ready marker first thing, so a half-replaced model is never 'ready'."""
    for name in (READY_NAME, RECEIPT_NAME):
        with suppress(FileNotFoundError):
            (dest / META_DIR / name).unlink()
