"""``modelseal kbs token|key|policy|audit``: administer a KBS.

``token`` reads the admin credential from the KBS data directory and prints a short-lived
bearer token; every other command talks to a running KBS through
:class:`modelseal.owner.kbs_admin.KbsAdminClient`. Most flags also read ``MODELSEAL_<FLAG>``
(docs/reference/environment.md lists them).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from modelseal.cli._tee_options import aliased, deprecated_alias
from modelseal.crypto.secret import SecretBytes
from modelseal.errors import ConfigError, IntegrityError

if TYPE_CHECKING:
    from modelseal.owner.kbs_admin import KbsAdminClient
    from modelseal.protocol.admin import AuditVerifyResponse

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["audit", "key", "policy", "token"]


def _kbs_opt(func: F) -> F:
    func = deprecated_alias(
        "--kbs", "--kbs-url", "kbs_url", envvar="MODELSEAL_KBS", new_envvar="MODELSEAL_KBS_URL"
    )(func)
    return click.option(
        "--kbs-url",
        "kbs_url",
        default=None,
        envvar="MODELSEAL_KBS_URL",
        help="KBS base URL, e.g. https://kbs.example:8080.",
    )(func)


_token_option = click.option(
    "--token",
    "token_value",
    envvar="MODELSEAL_TOKEN",
    default=None,
    help="Admin bearer token (prefer --token-file or MODELSEAL_TOKEN).",
)
_token_file_option = click.option(
    "--token-file",
    envvar="MODELSEAL_TOKEN_FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="File holding the admin bearer token.",
)


def _ca_option(func: F) -> F:
    ca_type = click.Path(exists=True, dir_okay=False)
    func = deprecated_alias(
        "--cacert",
        "--kbs-ca",
        "kbs_ca",
        envvar="MODELSEAL_KBS_CACERT",
        new_envvar="MODELSEAL_KBS_CA",
        type=ca_type,
    )(func)
    return click.option(
        "--kbs-ca",
        envvar="MODELSEAL_KBS_CA",
        type=ca_type,
        default=None,
        help="PEM CA bundle to verify the KBS's TLS certificate.",
    )(func)


def _connection(func: F) -> F:
    for option in (_ca_option, _token_file_option, _token_option, _kbs_opt):
        func = option(func)
    return func


def _client(
    kbs_url: str | None, token_value: str | None, token_file: Path | None, kbs_ca: str | None
) -> KbsAdminClient:
    from modelseal.owner.kbs_admin import KbsAdminClient

    kbs_url = aliased("kbs_url", kbs_url)
    kbs_ca = aliased("kbs_ca", kbs_ca)
    if not kbs_url:
        raise click.UsageError("Missing option '--kbs-url'.")

    if token_value is None and token_file is not None:
        raw_token = _read_limited(token_file, 8192, "token file")
        if len(raw_token) > 8192:
            raise ConfigError(f"token file {token_file} is too large to hold a token")
        try:
            token_value = raw_token.decode("ascii").strip()
        except UnicodeDecodeError:
            raise ConfigError(f"token file {token_file} is not ASCII text") from None
    if not token_value:
        raise ConfigError(
            "an admin token is required: --token, --token-file or MODELSEAL_TOKEN "
            "(mint one with `modelseal kbs token --data-dir DIR`)"
        )
    return KbsAdminClient(kbs_url, token_value, verify=kbs_ca if kbs_ca else True)


def _read_limited(path: Path, limit: int, what: str) -> bytes:
    """At most ``limit + 1`` bytes of ``path`` (the caller rejects the extra byte).

    Reading a bounded amount keeps ``--key-file /dev/zero`` or a huge file from eating
    memory; the limits are far above any real key, token or policy.
    """
    try:
        with path.open("rb") as fh:
            return fh.read(limit + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None


def _print(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True))


# --- token ---------------------------------------------------------------------------------


@click.command()
@click.option(
    "--data-dir",
    envvar="MODELSEAL_DATA_DIR",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The KBS data directory (holds admin-credential).",
)
@click.option(
    "--role",
    envvar="MODELSEAL_ROLE",
    type=click.Choice(["admin", "publisher", "auditor"]),
    default="admin",
    show_default=True,
    help="Role the token grants.",
)
@click.option(
    "--ttl",
    envvar="MODELSEAL_TTL",
    type=click.IntRange(1, 86400),
    default=900,
    show_default=True,
    help="Lifetime in seconds (at most one day).",
)
@click.option(
    "--subject",
    envvar="MODELSEAL_SUBJECT",
    default="operator",
    show_default=True,
    help="Name recorded as the actor in the audit log.",
)
@click.option(
    "--namespace",
    "namespaces",
    multiple=True,
    envvar="MODELSEAL_NAMESPACES",
    help="Publisher tokens: a namespace the token may manage (repo or repo/type, e.g. "
    "'models/llama'; repeat for several; '*' for every key). Required with --role publisher.",
)
def token(data_dir: Path, role: str, ttl: int, subject: str, namespaces: tuple[str, ...]) -> None:
    """Print a short-lived admin bearer token signed with the data dir's admin credential."""
    from modelseal.kbs.admin_auth import load_admin_credential, mint_admin_token

    if not subject or len(subject) > 128 or not subject.isprintable():
        raise ConfigError("--subject must be 1-128 printable characters")
    key = load_admin_credential(data_dir)
    try:
        click.echo(
            mint_admin_token(
                key, role=role, ttl=ttl, subject=subject, namespaces=namespaces, now=time.time()
            )
        )
    finally:
        key.wipe()


# --- key -----------------------------------------------------------------------------------


@click.group()
def key() -> None:
    """Register, list, revoke and delete model keys; rotate the KEK."""


def _read_key_file(path: Path) -> SecretBytes:
    """A key file: base64url text (``modelseal keygen``) or raw 16/24/32 bytes."""
    from modelseal._internal.encoding import b64url_decode
    from modelseal.errors import FormatError

    data = _read_limited(path, 1024, "key file")
    if len(data) > 1024:
        raise ConfigError(f"{path} is too large to be a key file")
    try:
        text = data.decode("ascii").strip()
        decoded = b64url_decode(text, what="key file")
        if len(decoded) in (16, 24, 32):
            return SecretBytes(decoded)
    except (UnicodeDecodeError, FormatError):
        pass
    if len(data) in (16, 24, 32):
        return SecretBytes(data)
    raise ConfigError(f"{path} is not a key file (base64url text of 32 bytes, or raw bytes)")


def _read_policy(path: Path) -> dict[str, Any]:
    from modelseal.policy.document import MAX_POLICY_BYTES, parse_policy_text

    return parse_policy_text(_read_limited(path, MAX_POLICY_BYTES, "policy file")).to_document()


@key.command("put")
@click.argument("key_id")
@_connection
@click.option(
    "--key-file",
    envvar="MODELSEAL_KEY_FILE",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Import this key (base64url text from `modelseal keygen`, or raw bytes).",
)
@click.option(
    "--generate",
    envvar="MODELSEAL_GENERATE",
    is_flag=True,
    default=False,
    help="Let the KBS generate a random 32-byte key.",
)
@click.option(
    "--policy",
    "policy_file",
    envvar="MODELSEAL_POLICY",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Release policy file (YAML or JSON).",
)
@click.option(
    "--model-digest",
    envvar="MODELSEAL_MODEL_DIGEST",
    default=None,
    help="sha256:<hex> digest of the sealed model this key belongs to.",
)
def key_put(
    key_id: str,
    kbs_url: str | None,
    token_value: str | None,
    token_file: Path | None,
    kbs_ca: str | None,
    key_file: Path | None,
    generate: bool,
    policy_file: Path | None,
    model_digest: str | None,
) -> None:
    """Register KEY_ID (repo/type/tag) with --key-file or --generate."""
    if (key_file is None) == (not generate):
        raise ConfigError("give exactly one of --key-file or --generate")
    policy_doc = _read_policy(policy_file) if policy_file is not None else None
    dek = _read_key_file(key_file) if key_file is not None else None
    try:
        with _client(kbs_url, token_value, token_file, kbs_ca) as client:
            info = client.put_key(key_id, dek, policy=policy_doc, model_digest=model_digest)
    finally:
        if dek is not None:
            dek.wipe()
    _print(info.model_dump())
    if policy_doc is None and info.policy_digest is None:
        click.echo(
            f"note: {key_id} has no release policy, so every release is denied; "
            f"set one with `modelseal kbs policy set {key_id} --file FILE`",
            err=True,
        )


@key.command("list")
@_connection
@click.option(
    "--model-digest",
    envvar="MODELSEAL_MODEL_DIGEST",
    default=None,
    help="Only keys bound to this sha256:<hex> model digest.",
)
def key_list(
    kbs_url: str | None,
    token_value: str | None,
    token_file: Path | None,
    kbs_ca: str | None,
    model_digest: str | None,
) -> None:
    """List keys (metadata only, never key bytes)."""
    with _client(kbs_url, token_value, token_file, kbs_ca) as client:
        keys = client.list_keys(model_digest=model_digest)
    _print([k.model_dump() for k in keys])


@key.command("get")
@click.argument("key_id")
@_connection
def key_get(
    key_id: str,
    kbs_url: str | None,
    token_value: str | None,
    token_file: Path | None,
    kbs_ca: str | None,
) -> None:
    """Show one key's metadata."""
    with _client(kbs_url, token_value, token_file, kbs_ca) as client:
        _print(client.get_key(key_id).model_dump())


@key.command("revoke")
@click.argument("key_id")
@_connection
def key_revoke(
    key_id: str,
    kbs_url: str | None,
    token_value: str | None,
    token_file: Path | None,
    kbs_ca: str | None,
) -> None:
    """Revoke KEY_ID: every later release is denied (admin role)."""
    with _client(kbs_url, token_value, token_file, kbs_ca) as client:
        _print(client.revoke_key(key_id).model_dump())


@key.command("delete")
@click.argument("key_id")
@_connection
def key_delete(
    key_id: str,
    kbs_url: str | None,
    token_value: str | None,
    token_file: Path | None,
    kbs_ca: str | None,
) -> None:
    """Delete KEY_ID from the KBS (admin role). Models sealed with it become unreadable."""
    with _client(kbs_url, token_value, token_file, kbs_ca) as client:
        _print(client.delete_key(key_id).model_dump())


@key.command("rotate-kek")
@_connection
def key_rotate_kek(
    kbs_url: str | None, token_value: str | None, token_file: Path | None, kbs_ca: str | None
) -> None:
    """Generate a new KEK and re-wrap every stored key under it (admin role)."""
    with _client(kbs_url, token_value, token_file, kbs_ca) as client:
        _print(client.rotate_kek().model_dump())


# --- policy --------------------------------------------------------------------------------


@click.group()
def policy() -> None:
    """Set and show per-key release policies."""


@policy.command("set")
@click.argument("key_id")
@_connection
@click.option(
    "--file",
    "policy_file",
    envvar="MODELSEAL_FILE",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Release policy file (YAML or JSON).",
)
def policy_set(
    key_id: str,
    kbs_url: str | None,
    token_value: str | None,
    token_file: Path | None,
    kbs_ca: str | None,
    policy_file: Path,
) -> None:
    """Validate and set KEY_ID's release policy."""
    doc = _read_policy(policy_file)
    with _client(kbs_url, token_value, token_file, kbs_ca) as client:
        _print(client.set_policy(key_id, doc).model_dump())


@policy.command("get")
@click.argument("key_id")
@_connection
def policy_get(
    key_id: str,
    kbs_url: str | None,
    token_value: str | None,
    token_file: Path | None,
    kbs_ca: str | None,
) -> None:
    """Print KEY_ID's normalized release policy and its digest."""
    with _client(kbs_url, token_value, token_file, kbs_ca) as client:
        _print(client.get_policy(key_id).model_dump())


# --- audit ---------------------------------------------------------------------------------


@click.command()
@_kbs_opt
@_token_option
@_token_file_option
@_ca_option
@click.option(
    "--data-dir",
    envvar="MODELSEAL_DATA_DIR",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Read the log from this KBS data directory instead of --kbs-url (no server needed).",
)
@click.option(
    "--database-url",
    envvar="MODELSEAL_DATABASE_URL",
    default=None,
    help="With --data-dir: the KBS's PostgreSQL URL (default: the data dir's SQLite).",
)
@click.option(
    "--kek-uri",
    envvar="MODELSEAL_KEK_URI",
    default=None,
    help="With --data-dir: the pkcs11: URI of the KBS's KEK token (default: the kek file).",
)
@click.option(
    "--verify",
    "do_verify",
    envvar="MODELSEAL_VERIFY",
    is_flag=True,
    default=False,
    help="Verify the whole hash chain here and on the KBS; exit 5 if it is broken.",
)
@click.option(
    "--after",
    envvar="MODELSEAL_AFTER",
    type=click.IntRange(0),
    default=0,
    help="Only rows with a larger seq.",
)
@click.option(
    "--limit",
    envvar="MODELSEAL_LIMIT",
    type=click.IntRange(1),
    default=None,
    help="At most N rows.",
)
@click.option(
    "--json",
    "as_json",
    envvar="MODELSEAL_JSON",
    is_flag=True,
    default=False,
    help="Print rows as a JSON array (with hashes) instead of one line each.",
)
def audit(
    kbs_url: str | None,
    token_value: str | None,
    token_file: Path | None,
    kbs_ca: str | None,
    data_dir: Path | None,
    database_url: str | None,
    kek_uri: str | None,
    do_verify: bool,
    after: int,
    limit: int | None,
    as_json: bool,
) -> None:
    """Print the KBS audit log, or verify its hash chain (--verify)."""
    from modelseal.protocol.admin import AuditEntryModel, AuditVerifyResponse, verify_audit_chain

    kbs_url = aliased("kbs_url", kbs_url)
    if (kbs_url is None) == (data_dir is None):
        raise ConfigError("give exactly one of --kbs-url URL (with a token) or --data-dir DIR")
    entries: list[AuditEntryModel] = []
    if data_dir is not None:
        from modelseal.kbs.state import offline_audit_entries, offline_audit_verify

        if do_verify:
            result = offline_audit_verify(data_dir, database_url, kek_uri=kek_uri)
            _finish_verify(AuditVerifyResponse(**result.to_json()), None)
            return
        found = offline_audit_entries(
            data_dir, database_url, after=after, limit=limit, kek_uri=kek_uri
        )
        entries = [AuditEntryModel(**row.to_json()) for row in found]
    else:
        with _client(kbs_url, token_value, token_file, kbs_ca) as client:
            if do_verify:
                rows = list(client.iter_audit())
                _finish_verify(verify_audit_chain(rows), client.audit_verify())
                return
            for entry in client.iter_audit(after=after):
                entries.append(entry)
                if limit is not None and len(entries) >= limit:
                    break
    if as_json:
        _print([e.model_dump() for e in entries])
        return
    out = sys.stdout
    for e in entries:
        out.write(
            f"{e.seq:>6} {e.time} {e.decision:<5} {e.action:<16} {e.key_id or '-':<32} "
            f"{e.tee or '-':<8} {e.actor}"
            + (f"  [{'; '.join(e.reasons)}]" if e.reasons else "")
            + "\n"
        )


def _finish_verify(local: AuditVerifyResponse, remote: AuditVerifyResponse | None) -> None:
    """Print both verdicts; IntegrityError (exit 5) naming the first bad row if either failed."""
    result = {"local": local.model_dump()}
    if remote is not None:
        result["kbs"] = remote.model_dump()
    _print(result)
    for verdict in (local, remote):
        if verdict is not None and not verdict.ok:
            raise IntegrityError(
                f"audit log verification failed at row {verdict.first_bad_seq}: {verdict.reason}"
            )
