"""Which TEE is this machine? Used by the loader for ``--tee auto``.

Checks, in order: the TDX guest device, the SEV-SNP guest device, the configfs-tsm
provider (probed by creating and removing one report entry), then a TPM resource
manager. Imports no verifier code: it runs inside the TEE.
"""

from __future__ import annotations

import contextlib
import secrets
from pathlib import Path

from modelseal.errors import UnsupportedTee

_PROVIDERS = {"tdx_guest": "tdx", "sev_guest": "snp"}


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


def detect(root: str | Path = "/") -> str:
    """``"tdx"``, ``"snp"`` or ``"tpm"``; :class:`UnsupportedTee` when none is present.

    ``root`` lets tests point at a fake filesystem tree.
    """
    base = Path(root)
    if (base / "dev/tdx_guest").exists():
        return "tdx"
    if (base / "dev/sev-guest").exists():
        return "snp"
    provider = _tsm_provider(base / "sys/kernel/config/tsm/report")
    if provider in _PROVIDERS:
        return _PROVIDERS[provider]
    if (base / "dev/tpmrm0").exists():
        return "tpm"
    raise UnsupportedTee(
        "no TEE detected: no /dev/tdx_guest, /dev/sev-guest, configfs-tsm provider "
        f"({provider or 'none'}) or /dev/tpmrm0; pass --tee explicitly (e.g. mock-tdx for "
        "tests)"
    )
