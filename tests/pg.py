"""A throwaway PostgreSQL server for tests, one fresh database per test.

Needs the Debian ``postgresql-NN`` server binaries (scripts/system-packages.txt); callers
skip when :func:`bin_dir` finds none. As root the server runs as the ``postgres`` user
(PostgreSQL refuses to run as root) through ``runuser``. The server listens on 127.0.0.1
only, trusts local connections and runs with ``fsync=off``: it is test scaffolding, and a
crash of the test machine is not one of the failures these tests inject (the durability
suite kills the KBS, never PostgreSQL).
"""

from __future__ import annotations

import glob
import itertools
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.conftest import free_port

__all__ = ["PgServer", "bin_dir"]


def bin_dir() -> Path | None:
    """The newest installed ``/usr/lib/postgresql/*/bin`` holding ``initdb``, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


class PgServer:
    """``initdb`` + ``pg_ctl start`` in a fresh directory; :meth:`stop` removes it all."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        # Not under pytest's 0700 tmp root: the postgres user must be able to reach it.
        self.base = Path(tempfile.mkdtemp(prefix="modelseal-pg-"))
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                shutil.rmtree(self.base, ignore_errors=True)
                raise RuntimeError("running as root without runuser")
            shutil.chown(self.base, "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.data = self.base / "data"
        self.port = free_port()
        self._names = itertools.count(1)
        self._started = False

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [*self.as_user, str(self.bindir / tool), *args], check=True, capture_output=True
        )

    def start(self) -> PgServer:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres")
        opts = (
            f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=300"
        )
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.base / "log"),
                  "-w", "start")  # fmt: skip
        self._started = True
        return self

    def create_database(self, hint: str) -> str:
        """A new empty database (named after ``hint``, made unique); returns its URL."""
        stem = re.sub(r"[^a-z0-9_]+", "_", hint.lower())[:40].strip("_") or "db"
        name = f"t{next(self._names)}_{stem}"
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return self.url(name)

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        if self._started:
            subprocess.run(
                [*self.as_user, str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast",
                 "stop"],
                capture_output=True,
            )  # fmt: skip
            self._started = False
        shutil.rmtree(self.base, ignore_errors=True)
