"""tpm2-tools as child processes: the TPM attester and the Azure vTPM attesters share this.

The TCTI follows tpm2-tools' own precedence: an explicit TCTI, else its
``TPM2TOOLS_TCTI`` variable, else the kernel's resource manager (``/dev/tpmrm0``). Every
run has a deadline, and a failure is an ``AttestationError`` naming the tool and the last
line it printed.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from modelseal._internal import environment
from modelseal.errors import AttestationError, UnsupportedTee

__all__ = ["Tpm2Tools"]

_RESOURCE_MANAGER = Path("/dev/tpmrm0")


class Tpm2Tools:
    """Runs tpm2-tools commands against one TPM with a per-command ``timeout``."""

    def __init__(self, *, tcti: str | None, timeout: float, what: str = "TPM") -> None:
        self.env = environment.child_environment()
        if tcti is not None:
            self.env["TPM2TOOLS_TCTI"] = tcti
        elif environment.variable("TPM2TOOLS_TCTI") is None:
            if not _RESOURCE_MANAGER.exists():
                raise UnsupportedTee(
                    f"no {what}: {_RESOURCE_MANAGER} is absent and no TCTI was given"
                )
            self.env["TPM2TOOLS_TCTI"] = f"device:{_RESOURCE_MANAGER}"
        self.timeout = timeout

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        try:
            proc = subprocess.run(
                list(args), env=self.env, capture_output=True, timeout=self.timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise AttestationError(f"{args[0]} timed out") from exc
        if check and proc.returncode != 0:
            detail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:]
            raise AttestationError(f"{args[0]} failed: {' '.join(detail)}")
        return proc
