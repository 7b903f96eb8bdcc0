"""Where a KBS keeps its KEKs: the data directory's ``kek`` file, a PKCS#11 token, or both
while moving from one to the other.

Every store has the same life cycle, which :class:`~modelseal.kbs.keys.KeyService` drives:
an *active* KEK; during a rotation a *next* KEK, created first, under which every row is
re-wrapped in one transaction; then the next KEK is *promoted* and the old one is gone. A
process that starts with a next KEK present finishes the interrupted rotation.

In a token the states are object labels: ``OBJ`` (active), ``OBJ.next`` and, for the
instant of a promotion, ``OBJ.retired``. Promotion relabels active → retired, next →
active, then destroys retired; each step is one attribute write, and :meth:`TokenKeks.ensure`
completes a promotion that a crash interrupted (it only ever runs after the rotation's
commit, so the retired KEK is provably unused).

:class:`KekSources` moves a deployment between stores: the *primary* store receives every
new KEK; the *previous* store (the old ``kek`` file when a token is configured, or a token
named with ``--kek-previous-uri``) is still read, so the KBS serves on, and the next KEK
rotation re-wraps every key into the primary store and then deletes the previous KEK.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from modelseal.crypto.kek import Kek
from modelseal.crypto.pkcs11_kek import Pkcs11Kek, Pkcs11Token
from modelseal.errors import BackendError, ConfigError

__all__ = ["KEK_LOCK_FILE", "KekSources", "KekStore", "TokenKeks", "data_dir_lock"]

log = logging.getLogger(__name__)

KEK_LOCK_FILE = "kek.lock"
#: Tries at creating the first KEK when other KBS processes race for it (see ensure)
_CREATE_ATTEMPTS = 8


@contextlib.contextmanager
def data_dir_lock(path: Path) -> Iterator[None]:
    """Exclusive across every process on this data directory for one rotation (the kernel
    drops it if the holder dies, so a crash never leaves it held)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class KekStore(Protocol):
    """One place KEKs live. Mutating calls run under :meth:`rotation_lock`."""

    def describe(self) -> str: ...

    def rotation_lock(self) -> contextlib.AbstractContextManager[None]: ...

    def has_active(self) -> bool: ...

    def recover(self) -> None:
        """Complete what a crash interrupted in the store itself (before anything loads)."""
        ...

    def ensure(self) -> bool:
        """Create the active KEK unless one exists; True when this call created it."""
        ...

    def load(self) -> Kek: ...

    def load_next(self) -> Kek | None: ...

    def create_next(self) -> Kek:
        """The next KEK (reusing one a crashed rotation left, so it can finish)."""
        ...

    def on_disk(self) -> list[Kek]:
        """The active and (mid-rotation) next KEK: what a ring reloads on a miss."""
        ...

    def promote_next(self, new: Kek) -> None: ...

    def discard_next(self, new: Kek) -> None:
        """Forget ``new`` (the database provably names it nowhere)."""
        ...

    def retire_active(self) -> None:
        """Delete the active KEK (after every row moved to another store)."""
        ...


class TokenKeks:
    """KEKs as non-extractable AES objects in a PKCS#11 token (see the module doc)."""

    def __init__(self, token: Pkcs11Token, label: str, lock_path: Path) -> None:
        self._token = token
        self._lock_path = lock_path
        self._active, self._next, self._retired = label, label + ".next", label + ".retired"

    def describe(self) -> str:
        return f"pkcs11:token={self._token.uri.token};object={self._active}"

    def rotation_lock(self) -> contextlib.AbstractContextManager[None]:
        return data_dir_lock(self._lock_path)

    def _one(self, label: str) -> Pkcs11Kek | None:
        found = self._token.find(label)
        if len(found) > 1:
            raise ConfigError(
                f"{len(found)} objects are labelled {label!r} in {self.describe()}; "
                "modelseal expects at most one"
            )
        return found[0] if found else None

    def has_active(self) -> bool:
        return self._one(self._active) is not None or self._one(self._retired) is not None

    def recover(self) -> None:
        with self.rotation_lock():
            self._repair()

    def ensure(self) -> bool:
        """Create the first KEK unless the token holds one.

        The rotation lock only covers this data directory; replicas on other machines that
        share the token and start at the same moment could each create one. So after
        creating, look again: if another KEK appeared, destroy ours (never theirs) and use
        theirs; if two creators see each other, both back off a random moment and retry,
        so exactly one KEK survives whatever the interleaving.
        """
        with self.rotation_lock():
            self._repair()
            for _ in range(_CREATE_ATTEMPTS):
                if self._token.find(self._active) or self._one(self._next) is not None:
                    return False
                kek = self._token.generate(self._active)
                if not [k for k in self._token.find(self._active) if k.id != kek.id]:
                    log.info("generated a new KEK %s in %s", kek.id, self.describe())
                    return True
                self._token.destroy(kek)
                log.warning("another KBS created the first KEK at the same time; using it")
                time.sleep(random.uniform(0.05, 0.5))  # noqa: S311 (timing only, not a secret)
        raise BackendError(
            f"could not create the first KEK in {self.describe()}: other KBS processes "
            "kept creating theirs at the same moment; start one KBS first"
        )

    def _repair(self) -> None:
        """Finish a promotion a crash interrupted (see the module doc)."""
        retired = self._one(self._retired)
        if retired is None:
            return
        active = self._one(self._active)
        if active is None:
            nxt = self._one(self._next)
            if nxt is None:  # only the retired KEK: the relabel to retired was the last step
                self._token.relabel(retired, self._active)
                return
            self._token.relabel(nxt, self._active)
        self._token.destroy(retired)
        log.warning("finished an interrupted KEK promotion in %s", self.describe())

    def load(self) -> Kek:
        kek = self._one(self._active)
        if kek is None:
            raise ConfigError(f"no KEK labelled {self._active!r} in {self.describe()}")
        return kek

    def load_next(self) -> Kek | None:
        return self._one(self._next)

    def create_next(self) -> Kek:
        return self._one(self._next) or self._token.generate(self._next)

    def on_disk(self) -> list[Kek]:
        return [k for k in (self._one(self._active), self._one(self._next)) if k is not None]

    def promote_next(self, new: Kek) -> None:
        nxt = self._one(self._next)
        if nxt is None or nxt.id != new.id:
            active = self._one(self._active)
            if active is not None and active.id == new.id:
                return  # another process promoted it
            raise ConfigError(f"the KEK {new.id} to promote is not in {self.describe()}")
        old = self._one(self._active)
        if old is not None:
            self._token.relabel(old, self._retired)
        self._token.relabel(nxt, self._active)
        if old is not None:
            self._token.destroy(old)

    def discard_next(self, new: Kek) -> None:
        nxt = self._one(self._next)
        if nxt is not None and nxt.id == new.id:
            self._token.destroy(nxt)

    def retire_active(self) -> None:
        active = self._one(self._active)
        if active is not None:
            self._token.destroy(active)


class KekSources:
    """The primary store (new KEKs) and, while moving away from it, a previous store."""

    def __init__(self, primary: KekStore, previous: KekStore | None = None) -> None:
        self.primary = primary
        self.previous = previous

    def describe(self) -> str:
        return self.primary.describe()

    def rotation_lock(self) -> contextlib.AbstractContextManager[None]:
        return self.primary.rotation_lock()

    def has_active(self) -> bool:
        return self.primary.has_active() or (
            self.previous is not None and self.previous.has_active()
        )

    def recover(self) -> None:
        self.primary.recover()
        if self.previous is not None:
            self.previous.recover()

    def ensure(self) -> bool:
        """Create a KEK in the primary store only when no store holds one: a KBS pointed at
        a new store keeps serving under the previous KEK until the next rotation."""
        if self.previous is not None and self.previous.has_active():
            return False
        return self.primary.ensure()

    def load(self) -> Kek:
        if self.primary.has_active() or self.previous is None:
            return self.primary.load()
        return self.previous.load()

    def load_next(self) -> Kek | None:
        return self.primary.load_next()

    def create_next(self) -> Kek:
        return self.primary.create_next()

    def on_disk(self) -> list[Kek]:
        keks = self.primary.on_disk()
        if self.previous is not None:
            keks += self.previous.on_disk()
        return keks

    def promote_next(self, new: Kek) -> None:
        self.primary.promote_next(new)

    def discard_next(self, new: Kek) -> None:
        self.primary.discard_next(new)

    def retire_active(self) -> None:
        self.primary.retire_active()

    def retire_previous(self, still_used: Callable[[Kek], bool]) -> str | None:
        """After a rotation into the primary store, delete the previous store's KEK if the
        database provably no longer names it; returns its id when it was deleted."""
        if self.previous is None or not self.previous.has_active():
            return None
        old = self.previous.load()
        if still_used(old):
            return None
        self.previous.retire_active()
        log.warning("retired KEK %s from %s", old.id, self.previous.describe())
        return old.id
