"""A throwaway SoftHSM2 token store for tests.

Needs Debian's ``softhsm2`` (scripts/system-packages.txt); callers skip when
:func:`module_path` finds none. SoftHSM2 reads its token directory from the file named by
``SOFTHSM2_CONF`` once, when a process loads the module, and does not see tokens made
later by ``softhsm2-util``: so a test process gets ONE token, made before anything loads
the module, and tests tell their KEKs apart by the URI's ``object`` label. Subprocesses
(``kbs serve``) load the module afresh and may use tokens made at any time.
"""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SoftHsm", "module_path"]

_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
)


def module_path() -> str | None:
    """The installed SoftHSM2 PKCS#11 module, or None."""
    if shutil.which("softhsm2-util") is None:
        return None
    return next((p for p in _CANDIDATES if Path(p).exists()), None)


@dataclass
class SoftHsm:
    """A SoftHSM2 configuration in a fresh directory; :meth:`token` makes tokens in it."""

    module: str
    base: Path

    @classmethod
    def create(cls, module: str) -> SoftHsm:
        base = Path(tempfile.mkdtemp(prefix="modelseal-softhsm-"))
        (base / "tokens").mkdir()
        (base / "softhsm2.conf").write_text(
            f"directories.tokendir = {base / 'tokens'}\nobjectstore.backend = file\n"
            "log.level = ERROR\nslots.removable = false\n"
        )
        return cls(module, base)

    @property
    def conf(self) -> Path:
        return self.base / "softhsm2.conf"

    def env(self) -> dict[str, str]:
        return {**os.environ, "SOFTHSM2_CONF": str(self.conf)}

    def token(self, label: str) -> Path:
        """Initialise a token ``label`` with a random user PIN; returns its 0600 PIN file."""
        pin = secrets.token_hex(8)
        pin_file = self.base / f"{label}.pin"
        fd = os.open(pin_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(pin + "\n")
        subprocess.run(
            [
                "softhsm2-util",
                "--init-token",
                "--free",
                "--label",
                label,
                "--pin",
                pin,
                "--so-pin",
                secrets.token_hex(8),
            ],
            check=True,
            capture_output=True,
            env=self.env(),
        )
        return pin_file

    def uri(self, token: str, pin_file: Path, obj: str = "modelseal-kek") -> str:
        return (
            f"pkcs11:token={token};object={obj}?module-path={self.module}"
            f"&pin-source=file:{pin_file}"
        )

    def remove(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)


_objects = itertools.count(1)


def unique_object() -> str:
    """An object label no other test of this process uses."""
    return f"kek-{os.getpid()}-{next(_objects)}"
