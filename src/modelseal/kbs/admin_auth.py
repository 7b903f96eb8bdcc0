"""Admin bearer tokens: short-lived HS256 JWTs signed with the data dir's admin credential.

The KBS writes ``admin-credential`` (32 random bytes, 0600) on first start; only someone
who can read the data directory can mint tokens (``modelseal kbs token``). Tokens carry
roles; verification checks ``alg`` (exactly HS256), signature, ``aud``, ``iss``, ``iat``,
``nbf``, ``exp`` (with a small clock-skew leeway) and a maximum lifetime.

Roles:

* ``admin``     everything;
* ``publisher`` put keys (generate/import), set and read policies, bind model digests,
  list keys and models - what ``modelseal publish`` needs; no revoke, delete or rotate -
  and only for keys in the token's namespaces (below);
* ``auditor``   read-only: list keys/models/policies, read and verify the audit log.

Tenants: a publisher token names the namespaces it may manage (claim ``ns``). A namespace
is the first one or two segments of a key id (``acme`` covers ``acme/*/*``; ``models/llama``
covers ``models/llama/*``); ``*`` covers every key and must be asked for explicitly. The
admin credential's holder decides a publisher identity's namespaces when minting its token,
so no publisher can widen its own reach; a publisher token without ``ns`` is refused.
"""

from __future__ import annotations

import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path

from modelseal.crypto.jose.jwt import ClaimRules, sign_hs256, verify_hs256
from modelseal.crypto.kek import create_secret_file, read_secret_file
from modelseal.crypto.secret import SecretBytes
from modelseal.errors import AuthorizationError, ConfigError, TokenError

__all__ = [
    "ADMIN_CREDENTIAL_FILE",
    "ALL_NAMESPACES",
    "AUDIENCE",
    "DEFAULT_TTL",
    "ISSUER",
    "MAX_TTL",
    "ROLES",
    "AdminPrincipal",
    "ensure_admin_credential",
    "load_admin_credential",
    "mint_admin_token",
    "parse_namespaces",
    "verify_admin_token",
]

ADMIN_CREDENTIAL_FILE = "admin-credential"
CREDENTIAL_SIZE = 32
ISSUER = "modelseal-kbs"
AUDIENCE = "modelseal-kbs-admin"
ROLES = ("admin", "publisher", "auditor")
DEFAULT_TTL = 900
MAX_TTL = 24 * 3600
LEEWAY = 30
MAX_TOKEN_LEN = 4096
#: Every key, for a publisher token that is meant to be unrestricted.
ALL_NAMESPACES = "*"
MAX_NAMESPACES = 64
_SEGMENT = r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}"
_NAMESPACE_RE = re.compile(rf"{_SEGMENT}(/{_SEGMENT})?")


def parse_namespaces(values: Iterable[object]) -> frozenset[str]:
    """Validated namespaces; ValueError names the first bad one."""
    found = []
    for value in values:
        if not isinstance(value, str) or not (
            value == ALL_NAMESPACES or _NAMESPACE_RE.fullmatch(value)
        ):
            raise ValueError(f"{str(value)[:80]!r} is not a namespace (repo or repo/type)")
        found.append(value)
    if not found or len(found) > MAX_NAMESPACES:
        raise ValueError(f"give 1 to {MAX_NAMESPACES} namespaces")
    return frozenset(found)


@dataclass(frozen=True)
class AdminPrincipal:
    """Who called the admin API: the token's subject, roles and id (for the audit log)."""

    subject: str
    roles: frozenset[str]
    token_id: str
    #: The namespaces a publisher-only token may manage; None when not restricted.
    namespaces: frozenset[str] | None = None

    @property
    def actor(self) -> str:
        return f"admin:{self.subject}"

    def covers(self, key_id: str) -> bool:
        """True when this caller may manage (and read) the key ``key_id``: whole segments
        only, so ``acme`` does not cover ``acme2/...``."""
        if self.namespaces is None or ALL_NAMESPACES in self.namespaces:
            return True
        repo, _, rest = key_id.partition("/")
        kind = rest.partition("/")[0]
        return repo in self.namespaces or f"{repo}/{kind}" in self.namespaces

    def require(self, allowed: frozenset[str]) -> None:
        """AuthorizationError (HTTP 403) unless one of the token's roles is ``allowed``."""
        if not (self.roles & allowed):
            raise AuthorizationError("this token's role may not perform this operation")


def ensure_admin_credential(data_dir: Path) -> SecretBytes:
    """Create the admin credential once and return it (refusing loose permissions)."""
    path = data_dir / ADMIN_CREDENTIAL_FILE
    create_secret_file(path, size=CREDENTIAL_SIZE)
    return load_admin_credential(data_dir)


def load_admin_credential(data_dir: Path) -> SecretBytes:
    """Read the credential without creating it: minting needs an existing KBS data dir."""
    path = Path(data_dir) / ADMIN_CREDENTIAL_FILE
    if not (path.exists() or path.is_symlink()):
        raise ConfigError(
            f"no admin credential in {data_dir}; start the KBS once with this --data-dir"
        )
    return read_secret_file(path, size=CREDENTIAL_SIZE, what="admin credential")


def _credential_id(key: SecretBytes) -> str:
    return hmac.new(key.reveal(), b"modelseal admin credential id", sha256).hexdigest()[:16]


def mint_admin_token(
    key: SecretBytes,
    *,
    role: str = "admin",
    ttl: int = DEFAULT_TTL,
    subject: str = "operator",
    namespaces: Iterable[str] = (),
    now: float,
) -> str:
    """A compact JWS (HS256) for ``role`` valid for ``ttl`` seconds from ``now``;
    a publisher token names its ``namespaces`` (see the module doc)."""
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    namespaces = list(namespaces)
    ns: list[str] = []
    if role == "publisher":
        try:
            ns = sorted(parse_namespaces(namespaces))
        except ValueError as exc:
            raise ConfigError(
                f"a publisher token needs its namespaces (--namespace acme, or '*' for "
                f"every key): {exc}"
            ) from None
    elif namespaces:
        raise ConfigError(f"namespaces only restrict publisher tokens, not {role}")
    if not subject or len(subject) > 128 or not subject.isprintable():
        raise ConfigError("the token subject must be 1-128 printable characters")
    if not 1 <= ttl <= MAX_TTL:
        raise ConfigError(f"token lifetime must be between 1 and {MAX_TTL} seconds")
    iat = int(now)
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": subject,
        "roles": [role],
        **({"ns": ns} if role == "publisher" else {}),
        "iat": iat,
        "nbf": iat,
        "exp": iat + ttl,
        "jti": secrets.token_urlsafe(16),
    }
    return sign_hs256(claims, key, kid=_credential_id(key))


_RULES = ClaimRules(
    issuer=ISSUER,
    audience=AUDIENCE,
    leeway=LEEWAY,
    audience_lists=False,
    max_lifetime=MAX_TTL,
    what="admin token",
)


def verify_admin_token(token: str, key: SecretBytes, *, now: float) -> AdminPrincipal:
    """Check an admin token; TokenError (HTTP 401) on any problem, never says which key.

    The JWS and registered-claim rules (HS256 only, header members, integer times with
    leeway, exact ``aud``/``iss``, lifetime cap) belong to
    :func:`~modelseal.crypto.jose.jwt.verify_hs256`; the roles and subject are checked here.
    """
    claims = verify_hs256(token, key, rules=_RULES, now=now, max_chars=MAX_TOKEN_LEN)
    roles = claims.get("roles")
    if (
        not isinstance(roles, list)
        or not roles
        or not all(isinstance(r, str) and r in ROLES for r in roles)
    ):
        raise TokenError("admin token roles are missing or unknown")
    sub, jti = claims.get("sub"), claims.get("jti")
    if not isinstance(sub, str) or not sub or len(sub) > 128 or not sub.isprintable():
        raise TokenError("admin token subject is missing or not printable")
    if not isinstance(jti, str) or not jti:
        raise TokenError("admin token has no id")
    namespaces: frozenset[str] | None = None
    if "admin" not in roles and "publisher" in roles:
        ns = claims.get("ns")
        try:
            namespaces = parse_namespaces(ns if isinstance(ns, list) else [None])
        except ValueError:
            raise TokenError("publisher token names no valid namespaces") from None
    return AdminPrincipal(
        subject=sub, roles=frozenset(roles), token_id=jti[:64], namespaces=namespaces
    )
