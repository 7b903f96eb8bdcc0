"""Password logins for Intel Trust Authority KBS clients (``POST /kbs/v1/token``), opt-in.

modelseal's own admin access is a short-lived bearer JWT minted from the data directory
(``modelseal kbs token``); ITA's scripts instead log in with a user name and password.
``kbs serve --ita-users FILE`` accepts those logins for the users in FILE, which
``modelseal kbs ita-user add`` writes (mode 0600)::

    {"version": 1, "users": [{"name": "kbsadmin", "role": "publisher",
      "namespaces": ["default/key"],
      "scrypt": {"n": 32768, "r": 8, "p": 3, "salt": "<b64>", "hash": "<b64>"}}]}

Passwords are hashed with scrypt (``cryptography``'s implementation, 16-byte random salt,
32-byte output) and checked with its constant-time ``verify``. An unknown user name costs
the same scrypt run against a throw-away hash, so the answer time does not tell which
names exist. A login returns an ordinary admin token (:mod:`modelseal.kbs.admin_auth`)
with the user's role and namespaces; the file is re-read at every login, so ``ita-user
add`` and ``remove`` take effect without a restart.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelseal._internal.bounded import load_json
from modelseal._internal.encoding import b64_decode, b64_encode
from modelseal.crypto.kek import fsync_dir
from modelseal.crypto.password import scrypt_hash, scrypt_matches
from modelseal.errors import ConfigError, FormatError
from modelseal.kbs.admin_auth import ROLES, parse_namespaces
from modelseal.kbs.kek_stores import data_dir_lock

__all__ = [
    "MAX_NAME",
    "SUBJECT_PREFIX",
    "ItaUser",
    "ItaUsers",
    "MIN_PASSWORD",
    "hash_password",
]

#: ITA's own bounds on passwords are 8..72 bytes (bcrypt's limit); scrypt has none, so
#: modelseal keeps the minimum and allows longer pass phrases.
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
MAX_FILE = 1024 * 1024
MAX_USERS = 1000
#: scrypt cost: 2**15 x 8 x 128 bytes = 32 MiB, run p=3 times (about 0.2 s of CPU) per
#: login: at this memory, p=1 is a third of the usual minimum work for stored passwords
SCRYPT_N, SCRYPT_R, SCRYPT_P, HASH_LEN, SALT_LEN = 1 << 15, 8, 3, 32, 16
#: bounds on the parameters a user file may give: every login of that user (and anyone
#: guessing the name) costs this, unauthenticated, so a file edited to N=2**20, r=32,
#: p=16 (4 GiB and minutes of CPU per login) is refused instead of served. Twice the
#: default memory and four times its work leave room for stronger settings later.
MAX_SCRYPT_MEMORY = 2 * 128 * SCRYPT_N * SCRYPT_R
MAX_SCRYPT_WORK = 4 * SCRYPT_N * SCRYPT_R * SCRYPT_P
MIN_SCRYPT_N = 1 << 10
#: the role of a new user: creates policies and keys under default/key, as ITA's scripts do
DEFAULT_ROLE = "publisher"
DEFAULT_NAMESPACES = ("default/key",)
#: a login's token names the user ``ita:<name>``; token subjects are at most 128 characters,
#: so a longer name could log in with the right password and still get no token
SUBJECT_PREFIX = "ita:"
MAX_NAME = 128 - len(SUBJECT_PREFIX)


def _valid_name(name: str) -> bool:
    return 1 <= len(name) <= MAX_NAME and name.isprintable() and not name.isspace()


@dataclass(frozen=True)
class ItaUser:
    name: str
    role: str
    namespaces: tuple[str, ...]
    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "namespaces": list(self.namespaces),
            "scrypt": {
                "n": self.n,
                "r": self.r,
                "p": self.p,
                "salt": b64_encode(self.salt),
                "hash": b64_encode(self.digest),
            },
        }

    @classmethod
    def from_json(cls, value: Any) -> ItaUser:
        if not isinstance(value, dict) or set(value) != {"name", "role", "namespaces", "scrypt"}:
            raise FormatError("a user is {name, role, namespaces, scrypt}")
        name, role, ns, kdf = value["name"], value["role"], value["namespaces"], value["scrypt"]
        if not isinstance(name, str) or not _valid_name(name):
            raise FormatError(f"a user name is 1-{MAX_NAME} printable characters")
        if role not in ROLES or not isinstance(ns, list):
            raise FormatError(f"user {name!r}: unknown role or namespaces not a list")
        if role == "publisher":
            try:
                parse_namespaces(ns)
            except ValueError as exc:
                raise FormatError(f"user {name!r}: {exc}") from None
        elif ns:
            raise FormatError(f"user {name!r}: namespaces only restrict publishers")
        if not isinstance(kdf, dict) or set(kdf) != {"n", "r", "p", "salt", "hash"}:
            raise FormatError(f"user {name!r}: scrypt is {{n, r, p, salt, hash}}")
        n, r, p = kdf["n"], kdf["r"], kdf["p"]
        if not all(type(v) is int for v in (n, r, p)) or not (
            n >= MIN_SCRYPT_N
            and n & (n - 1) == 0
            and r >= 1
            and p >= 1
            and 128 * n * r <= MAX_SCRYPT_MEMORY
            and n * r * p <= MAX_SCRYPT_WORK
        ):
            raise FormatError(f"user {name!r}: scrypt parameters out of range")
        salt = b64_decode(str(kdf["salt"]), what="salt")
        digest = b64_decode(str(kdf["hash"]), what="hash")
        if len(salt) < 16 or len(digest) != HASH_LEN:
            raise FormatError(f"user {name!r}: salt or hash has the wrong length")
        return cls(name, role, tuple(ns), n, r, p, salt, digest)

    def matches(self, password: bytes) -> bool:
        """Constant-time check of ``password`` (scrypt's own ``verify``)."""
        return scrypt_matches(password, self.digest, salt=self.salt, n=self.n, r=self.r, p=self.p)


def hash_password(
    name: str, password: bytes, *, role: str = DEFAULT_ROLE, namespaces: tuple[str, ...] = ()
) -> ItaUser:
    """A new user record for ``password`` (fresh salt)."""
    if not _valid_name(name):
        raise ConfigError(f"a user name is 1-{MAX_NAME} printable characters")
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise ConfigError(f"a password is {MIN_PASSWORD} to {MAX_PASSWORD} bytes long")
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    if role == "publisher":
        try:
            namespaces = tuple(sorted(parse_namespaces(namespaces or DEFAULT_NAMESPACES)))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    elif namespaces:
        raise ConfigError(f"namespaces only restrict publisher users, not {role}")
    salt = secrets.token_bytes(SALT_LEN)
    digest = scrypt_hash(password, salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, length=HASH_LEN)
    return ItaUser(name, role, namespaces, SCRYPT_N, SCRYPT_R, SCRYPT_P, salt, digest)


#: stands in for an unknown user, so that a login for it costs one scrypt run too
_DECOY = ItaUser(
    "", DEFAULT_ROLE, DEFAULT_NAMESPACES, SCRYPT_N, SCRYPT_R, SCRYPT_P, bytes(16), bytes(32)
)


class ItaUsers:
    """The user file of ``kbs serve --ita-users``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, ItaUser]:
        """Every user; ConfigError when the file is missing, too open or malformed."""
        try:
            # O_NONBLOCK: a FIFO in the file's place must not hang the start or a login
            # (waiting for a writer); it is then refused as not a regular file
            fd = os.open(
                self.path,
                os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY,
            )
        except OSError as exc:
            raise ConfigError(f"ITA user file {self.path}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ConfigError(f"ITA user file {self.path} is not a regular file")
            if stat.S_IMODE(st.st_mode) & 0o077:
                raise ConfigError(
                    f"ITA user file {self.path} is readable by others (chmod 600 {self.path})"
                )
            data = fh.read(MAX_FILE + 1)
        try:
            doc = load_json(data, what="ITA user file", max_bytes=MAX_FILE, max_depth=6)
            if (
                not isinstance(doc, dict)
                or doc.get("version") != 1
                or set(doc)
                != {
                    "version",
                    "users",
                }
            ):
                raise FormatError('expected {"version": 1, "users": [...]}')
            users = doc["users"]
            if not isinstance(users, list) or len(users) > MAX_USERS:
                raise FormatError(f"users must be a list of at most {MAX_USERS}")
            found: dict[str, ItaUser] = {}
            for value in users:
                user = ItaUser.from_json(value)
                if user.name in found:
                    raise FormatError(f"user {user.name!r} is listed twice")
                found[user.name] = user
        except FormatError as exc:
            raise ConfigError(f"ITA user file {self.path}: {exc}") from None
        return found

    def load_or_empty(self) -> dict[str, ItaUser]:
        if not (self.path.exists() or self.path.is_symlink()):
            return {}
        return self.load()

    def authenticate(self, name: str, password: str) -> ItaUser | None:
        """The user when ``password`` is theirs, else None, in about the same time for
        unknown names (one scrypt run either way)."""
        user = self.load().get(name)
        ok = (user or _DECOY).matches(password.encode("utf-8", "surrogatepass"))
        return user if ok and user is not None else None

    @property
    def lock_path(self) -> Path:
        """The lock file of :meth:`editing`, next to the user file."""
        return self.path.with_name(f".{self.path.name}.lock")

    @contextlib.contextmanager
    def editing(self) -> Iterator[None]:
        """Exclusive among editors of this file (``ita-user add`` and ``remove``) from
        their read to their write: two edits at once would otherwise each write what they
        read, and a ``remove`` racing an ``add`` would come back (the user it removed
        written again by the add). Logins only read and never wait for it."""
        try:
            with data_dir_lock(self.lock_path):
                yield
        except OSError as exc:
            raise ConfigError(
                f"cannot lock the ITA user file {self.path}: {exc.strerror}"
            ) from None

    def save(self, users: dict[str, ItaUser]) -> None:
        """Write the file atomically, mode 0600 (temporary file, fsync, rename)."""
        body = json.dumps(
            {"version": 1, "users": [u.to_json() for u in users.values()]}, indent=2
        ).encode()
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(8)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(body + b"\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        fsync_dir(self.path.parent.resolve())
