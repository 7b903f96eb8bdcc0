"""The one module that reads or writes the process environment.

modelseal's own ``MODELSEAL_*`` variables are read by the command line (each Click option
names its variable, ``envvar=``) and, for SDK users who want the same variables, by
:meth:`modelseal.loader.settings.LoaderSettings.from_env`. Library code takes explicit
parameters and never looks at ``os.environ`` itself: a test
(``tests/unit/test_environment_one_way.py``) fails if any other module does.

The few variables the library does consult follow a precedence someone else defined, and
are listed in :data:`CONSULTED` (and in docs/reference/environment.md) so the list cannot
grow unnoticed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Final

__all__ = ["CONSULTED", "child_environment", "export", "hidden", "snapshot", "variable"]

#: variables the library reads itself, and why (documented in docs/reference/environment.md)
CONSULTED: Final[Mapping[str, str]] = {
    "XDG_CACHE_HOME": "publish: default staging directory (XDG Base Directory spec)",
    "TPM2TOOLS_TCTI": "tpm attester: the TPM to use when no TCTI is given (tpm2-tools' own "
    "variable; the attester's tcti argument wins)",
    "AAEL_PATH": "tdx attester: where the CoCo Attestation Agent writes its event log (the "
    "AA's own variable, so both read the same file; the attester's aael_path argument wins)",
    "FUSE_LIBRARY_PATH": "mount: the libfuse the mfusepy binding loads (its own variable); "
    "modelseal sets libfuse3.so.3 unless it is already set",
    "MODELSEAL_KBS_WORKER_SETTINGS": "kbs serve: internal hand-off of the validated settings "
    "to its worker processes (set by the supervisor, never by users)",
    "MODELSEAL_LOG_LEVEL": "kbs serve: the --log-level handed to its worker processes",
    "MODELSEAL_LOG_FORMAT": "kbs serve: the --log-format handed to its worker processes",
    "PROMETHEUS_MULTIPROC_DIR": "prometheus-client's own variable: kbs serve --workers N "
    "names the directory its workers write metrics to; a server refuses one that names no "
    "directory; the loader's textfile never uses it",
}


def variable(name: str) -> str | None:
    """The value of ``name``, one of :data:`CONSULTED` (None if unset or empty)."""
    if name not in CONSULTED:
        raise KeyError(f"{name} is not a variable the library consults; pass it explicitly")
    return os.environ.get(name) or None


def export(name: str, value: str) -> None:
    """Set ``name`` (one of :data:`CONSULTED`) for this process and its future children."""
    if name not in CONSULTED:
        raise KeyError(f"{name} is not a variable the library hands to its children")
    os.environ[name] = value


@contextmanager
def hidden(name: str) -> Iterator[None]:
    """``name`` (one of :data:`CONSULTED`) unset while the block runs, then restored: for an
    import that reads the environment once and must not see it."""
    if name not in CONSULTED:
        raise KeyError(f"{name} is not a variable the library consults")
    value = os.environ.pop(name, None)
    try:
        yield
    finally:
        if value is not None:
            os.environ[name] = value


def snapshot(prefix: str = "") -> dict[str, str]:
    """A copy of the variables whose names start with ``prefix`` (all of them by default),
    for :meth:`LoaderSettings.from_env` (``MODELSEAL_``) and child processes."""
    return {k: v for k, v in os.environ.items() if k.startswith(prefix)}


def child_environment(
    *,
    drop_prefixes: Iterable[str] = (),
    drop: Iterable[str] = (),
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """This process's environment for a child, without the variables starting with one of
    ``drop_prefixes`` or named in ``drop`` (case-insensitive), plus ``extra``."""
    prefixes = tuple(drop_prefixes)
    dropped = {name.lower() for name in drop}
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(prefixes) and k.lower() not in dropped
    }
    env.update(extra or {})
    return env
