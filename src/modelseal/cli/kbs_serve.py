"""``modelseal kbs serve`` and ``modelseal kbs get`` (diagnostic RCAR client)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from modelseal.cli._ops_options import apply_log_format, metrics_endpoint, ops_options
from modelseal.cli._tee_options import (
    aliased,
    attester_options,
    deprecated_alias,
    session_kinds,
    spec_options,
    tee_choice,
    verifier_options,
)
from modelseal.errors import ConfigError
from modelseal.tee import registry

if TYPE_CHECKING:
    from modelseal.crypto.secret import SecretBytes

_LEVELS = ("debug", "info", "warning", "error")


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


@click.command()
@click.option(
    "--data-dir",
    required=True,
    envvar="MODELSEAL_DATA_DIR",
    help="KBS state: SQLite database, KEK, token-signing key, admin credential.",
)
@click.option(
    "--database-url",
    envvar="MODELSEAL_DATABASE_URL",
    default=None,
    help="postgresql://... for N replicas (default: SQLite in the data dir).",
)
@click.option(
    "--kek-uri",
    envvar="MODELSEAL_KEK_URI",
    default=None,
    help="Where KEKs live: 'file' (the data dir, default) or a pkcs11: URI (RFC 7512) of an "
    "HSM token, with pin-source=file:/path.",
)
@click.option(
    "--kek-previous-uri",
    envvar="MODELSEAL_KEK_PREVIOUS_URI",
    default=None,
    help="A KEK store being moved away from ('file' or pkcs11:...): still read; the next "
    "`kbs key rotate-kek` moves every key out of it and deletes its KEK.",
)
@click.option(
    "--host",
    envvar="MODELSEAL_HOST",
    default="127.0.0.1",
    show_default=True,
    help="Listen address.",
)
@click.option(
    "--port",
    envvar="MODELSEAL_PORT",
    type=int,
    default=8080,
    show_default=True,
    help="Listen port.",
)
@click.option(
    "--tls-cert", envvar="MODELSEAL_TLS_CERT", default=None, help="PEM certificate chain."
)
@click.option("--tls-key", envvar="MODELSEAL_TLS_KEY", default=None, help="PEM private key.")
@click.option(
    "--insecure-http",
    envvar="MODELSEAL_INSECURE_HTTP",
    is_flag=True,
    help="Allow plain HTTP on a non-loopback address (behind a TLS proxy).",
)
@spec_options(verifier_options())
@click.option(
    "--allow-cnap-oneshot",
    envvar="MODELSEAL_ALLOW_CNAP_ONESHOT",
    is_flag=True,
    help="Serve CNAP's replayable nonce-less key transfer.",
)
@click.option(
    "--ita-users",
    envvar="MODELSEAL_ITA_USERS",
    default=None,
    help="User file (`modelseal kbs ita-user add`) enabling Intel Trust Authority password "
    "logins at POST /kbs/v1/token.",
)
@click.option(
    "--token-ttl",
    envvar="MODELSEAL_TOKEN_TTL",
    type=float,
    default=300.0,
    show_default=True,
    help="Attestation token lifetime in seconds.",
)
@click.option(
    "--session-ttl",
    envvar="MODELSEAL_SESSION_TTL",
    type=float,
    default=300.0,
    show_default=True,
    help="RCAR session (nonce) lifetime in seconds.",
)
@click.option(
    "--token-signing-key",
    envvar="MODELSEAL_TOKEN_SIGNING_KEY",
    default=None,
    help="P-256 PEM key shared by replicas (default: created in the data dir).",
)
@click.option(
    "--audience",
    envvar="MODELSEAL_AUDIENCE",
    default="modelseal-kbs",
    show_default=True,
    help="Token 'aud' (the KBS identity).",
)
@click.option(
    "--max-body-bytes",
    envvar="MODELSEAL_MAX_BODY_BYTES",
    type=int,
    default=2 * 1024 * 1024,
    show_default=True,
    help="Largest accepted request body.",
)
@click.option(
    "--workers",
    envvar="MODELSEAL_WORKERS",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Server processes sharing the port (SQLite or PostgreSQL).",
)
@click.option(
    "--log-level",
    envvar="MODELSEAL_LOG_LEVEL",
    default="info",
    show_default=True,
    type=click.Choice(_LEVELS),
    help="Log level of the KBS and its workers.",
)
@ops_options
def serve(
    data_dir: str,
    database_url: str | None,
    kek_uri: str | None,
    kek_previous_uri: str | None,
    host: str,
    port: int,
    tls_cert: str | None,
    tls_key: str | None,
    insecure_http: bool,
    allow_cnap_oneshot: bool,
    ita_users: str | None,
    token_ttl: float,
    session_ttl: float,
    token_signing_key: str | None,
    audience: str,
    max_body_bytes: int,
    workers: int,
    log_level: str,
    log_format: str,
    metrics_port: int | None,
    metrics_host: str,
    metrics_token_file: Path | None,
    **tee_options: Any,
) -> None:
    """Serve the Key Broker Service (Trustee KBS protocol 0.4 + admin API).

    Each TEE kind's options (collateral, trusted keys, test roots, opt-ins) come from
    the kind's own config; a kind that needs material refuses evidence until it is given.
    """
    from modelseal.kbs.settings import KbsSettings

    endpoint = metrics_endpoint(metrics_port, metrics_host, metrics_token_file)
    logging.getLogger("modelseal").setLevel(log_level.upper())
    settings = KbsSettings(
        data_dir=Path(data_dir),
        database_url=database_url,
        kek_uri=kek_uri,
        kek_previous_uri=kek_previous_uri,
        host=host,
        port=port,
        tls_cert=_path(tls_cert),
        tls_key=_path(tls_key),
        insecure_http=insecure_http,
        tee_options=tee_options,
        allow_cnap_oneshot=allow_cnap_oneshot,
        ita_users=_path(ita_users),
        token_ttl=token_ttl,
        session_ttl=session_ttl,
        token_signing_key=_path(token_signing_key),
        audience=audience,
        max_body_bytes=max_body_bytes,
    ).validated()
    from modelseal.kbs.server import serve as run

    scheme = "https" if settings.tls else "http"
    click.echo(f"modelseal KBS on {scheme}://{settings.host}:{settings.port}", err=True)
    for kind in settings.insecure_kinds():
        click.echo(f"WARNING: INSECURE {kind} TEE accepted (unsigned evidence)", err=True)
    if settings.ita_users is not None:
        click.echo(f"Intel Trust Authority logins for the users in {settings.ita_users}", err=True)
    from modelseal._internal import environment

    environment.export("MODELSEAL_LOG_LEVEL", log_level)  # for the worker processes
    # only now that the settings hold: a refused start leaves this process's logging as is
    apply_log_format(log_format)
    run(settings, workers=workers, metrics_endpoint=endpoint)


@click.command()
@click.argument("resource_path")
@click.option("--kbs-url", "kbs_url", envvar="MODELSEAL_KBS_URL", help="KBS base URL (required).")
@deprecated_alias(
    "--kbs", "--kbs-url", "kbs_url", envvar="MODELSEAL_KBS", new_envvar="MODELSEAL_KBS_URL"
)
@click.option(
    "--tee",
    default=registry.DEVELOPMENT_KIND,
    show_default=True,
    envvar="MODELSEAL_TEE",
    type=tee_choice(session_kinds(registry.attestable_kinds())),
    help="TEE kind whose attester produces the evidence.",
)
@click.option(
    "--key-alg",
    default="ECDH-ES+A256KW-P256",
    show_default=True,
    type=click.Choice(
        ["ECDH-ES+A256KW-P256", "ECDH-ES+A256KW-P384", "ECDH-ES+A256KW-P521", "RSA-OAEP-256"]
    ),
)
@click.option(
    "--kbs-ca",
    default=None,
    envvar="MODELSEAL_KBS_CA",
    help="CA bundle that signs the KBS's TLS certificate.",
)
@deprecated_alias(
    "--cacert", "--kbs-ca", "kbs_ca", envvar="MODELSEAL_KBS_CACERT", new_envvar="MODELSEAL_KBS_CA"
)
@click.option(
    "--init-data",
    "init_data_file",
    default=None,
    type=click.Path(dir_okay=False),
    help="TOML init-data document this TEE was launched with.",
)
@click.option(
    "-o",
    "--output",
    default=None,
    type=click.Path(dir_okay=False),
    help="Write the raw resource bytes to this new file (mode 0600).",
)
@click.option(
    "--key-source",
    default="kbs",
    show_default=True,
    envvar="MODELSEAL_KEY_SOURCE",
    type=click.Choice(["kbs", "cdh"]),
    help="'kbs': attest and run RCAR with --kbs-url; 'cdh': ask the CoCo Confidential "
    "Data Hub at --cdh-url.",
)
@click.option(
    "--cdh-url",
    default="http://127.0.0.1:8006",
    show_default=True,
    envvar="MODELSEAL_CDH_URL",
    help="guest-components REST API of the CDH (--key-source cdh).",
)
@spec_options(attester_options())
def get(
    resource_path: str,
    kbs_url: str | None,
    tee: str,
    key_alg: str,
    kbs_ca: str | None,
    init_data_file: str | None,
    output: str | None,
    key_source: str,
    cdh_url: str,
    **attester_values: Any,
) -> None:
    """Attest and fetch RESOURCE_PATH (repo/type/tag, kbs:///repo/type/tag or a UUID key
    id); print a summary, never the key."""
    from modelseal.keystore.paths import normalize_key_id
    from modelseal.loader.kbs_client import KbsClient
    from modelseal.tee.aa.rest import ApiServerClient
    from modelseal.tee.base import close_attester

    kbs_url = aliased("kbs_url", kbs_url)
    kbs_ca = aliased("kbs_ca", kbs_ca)
    path = normalize_key_id(resource_path)
    if key_source == "cdh":
        with ApiServerClient(cdh_url) as cdh:
            secret = cdh.resource(path)
        _summarize(secret, path, None, output)
        return
    if not kbs_url:
        raise click.UsageError("Missing option '--kbs-url'.")
    init_data = Path(init_data_file).read_text(encoding="utf-8") if init_data_file else None
    keywords = registry.attester_keywords(tee, attester_values, init_data=init_data)
    attester = registry.attester_for(tee, **keywords)
    try:
        wire = registry.evidence_kind(tee, attester)
        with KbsClient(
            kbs_url, attester, tee=wire, key_alg=key_alg, verify=kbs_ca or True,
            init_data=init_data,
        ) as client:  # fmt: skip
            secret = client.get_resource(path)
            _summarize(secret, path, client.token_id, output)
    finally:
        close_attester(attester)


def _summarize(secret: SecretBytes, path: str, token_id: str | None, output: str | None) -> None:
    """Print size and SHA-256 of a fetched resource, write its bytes only to a new file."""
    try:
        value = secret.reveal()
        if output:
            try:
                fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError as exc:
                raise ConfigError(f"{output} exists; refusing to overwrite it") from exc
            with os.fdopen(fd, "wb") as fh:
                fh.write(value)
        summary = {
            "resource": path,
            "bytes": len(value),
            "sha256": hashlib.sha256(value).hexdigest(),
            "token_id": token_id,
            "written_to": output,
        }
        del value
    finally:
        secret.wipe()
    click.echo(json.dumps(summary, indent=2))
