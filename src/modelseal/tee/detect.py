"""Which TEE is this machine? Used by the loader for ``--tee auto``.

Asks every kind's plugin (:class:`~modelseal.tee.plugin.Detection`), in order: the guest
devices of confidential-VM kinds, the configfs-tsm provider (probed by creating and
removing one report entry), then fallback kinds (a TPM resource manager). Test-only kinds
are never detected: they must be named. Imports no verifier code: it runs inside the TEE.
"""

from __future__ import annotations

import contextlib
import secrets
from pathlib import Path

from modelseal.errors import UnsupportedTee
from modelseal.tee.plugin import Detection
from modelseal.tee.registry import PLUGINS


def _tsm_provider(report_dir: Path) -> str | None:
    if not report_dir.is_dir():
        return None
    entry = report_dir / f"modelseal-detect-{secrets.token_hex(4)}"
    try:
        entry.mkdir()
    except OSError:
        return None
    try:
        return (entry / "provider").read_text().strip()
    except OSError:
        return None
    finally:
        with contextlib.suppress(OSError):
            entry.rmdir()


def _detectable(*, fallback: bool) -> list[tuple[str, Detection]]:
    return [
        (name, p.detection)
        for name, p in PLUGINS.items()
        if p.detection is not None and not p.test_only and p.detection.fallback == fallback
    ]


def detect(root: str | Path = "/") -> str:
    """The kind of this machine's TEE; :class:`UnsupportedTee` when none is present.

    ``root`` lets tests point at a fake filesystem tree.
    """
    base = Path(root)
    primary, fallback = _detectable(fallback=False), _detectable(fallback=True)
    for name, how in primary:
        if any((base / device).exists() for device in how.devices):
            return name
    provider = _tsm_provider(base / "sys/kernel/config/tsm/report")
    for name, how in primary:
        if provider is not None and provider == how.tsm_provider:
            return name
    for name, how in fallback:
        if any((base / device).exists() for device in how.devices):
            return name
    devices = [f"/{d}" for _, how in primary + fallback for d in how.devices]
    named = ", ".join(p.name for p in PLUGINS.values() if p.test_only)
    raise UnsupportedTee(
        f"no TEE detected: no {', '.join(devices)} or configfs-tsm provider "
        f"({provider or 'none'}); pass --tee explicitly (e.g. {named} for tests)"
    )
