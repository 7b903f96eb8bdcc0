"""``modelseal gateway`` (in the TEE) and ``modelseal request`` (the client).

``gateway`` serves attested TLS in front of an unchanged inference server: its TLS key
lives only in memory, its certificate carries evidence binding that key and the models
named by the loader's receipts. ``request`` verifies that evidence against a policy
before it sends anything, prints the response body (exit 0), or exits 4 with the reason.
Every flag also reads ``MODELSEAL_<FLAG>``. ``gateway`` takes the servers' ``--log-format``
and ``--metrics-*`` options; its start-up lines name the metrics URL (``--metrics-port 0``
lets the kernel choose the port).
"""

from __future__ import annotations

import contextlib
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import click

from modelseal.cli._ops_options import apply_log_format, metrics_endpoint, ops_options
from modelseal.cli._tee_options import (
    attester_options,
    session_kinds,
    spec_options,
    tee_choice,
    tee_values,
    verifier_options,
)
from modelseal.errors import ConfigError
from modelseal.tee import registry

__all__ = ["gateway", "request"]

#: The opt-in flags of kinds whose evidence proves nothing (``--insecure-allow-sample``).
_INSECURE_OPT_INS = tuple(
    spec
    for kind in registry.kinds(insecure=True)
    for spec in registry.plugin(kind).config.options()
    if spec.enables
)


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--listen must be HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


@click.command()
@click.option(
    "--listen", required=True, envvar="MODELSEAL_LISTEN", help="HOST:PORT to serve TLS on."
)
@click.option(
    "--upstream",
    required=True,
    envvar="MODELSEAL_UPSTREAM",
    help="http://127.0.0.1:PORT of the unchanged inference server.",
)
@click.option(
    "--tee",
    required=True,
    envvar="MODELSEAL_TEE",
    type=tee_choice(session_kinds(registry.attestable_kinds())),
    help="TEE kind whose attester produces the evidence.",
)
@click.option(
    "--receipt",
    "receipts",
    multiple=True,
    type=click.Path(dir_okay=False),
    envvar="MODELSEAL_RECEIPT",
    help="DEST/.modelseal/receipt.json of a loaded model (repeatable): its model digest "
    "is attested.",
)
@click.option(
    "--evidence-ttl",
    default=3600,
    show_default=True,
    envvar="MODELSEAL_EVIDENCE_TTL",
    type=click.IntRange(60, 86400),
    help="Seconds certificate evidence stays valid; renewed at half this age.",
)
@click.option(
    "--max-connections",
    default=256,
    show_default=True,
    envvar="MODELSEAL_MAX_CONNECTIONS",
    type=click.IntRange(1, 10000),
    help="Client connections served at once; more are closed unread.",
)
@ops_options
@spec_options(attester_options())
@spec_options(_INSECURE_OPT_INS)
def gateway(
    listen: str,
    upstream: str,
    tee: str,
    receipts: tuple[str, ...],
    evidence_ttl: int,
    max_connections: int,
    log_format: str,
    metrics_port: int | None,
    metrics_host: str,
    metrics_token_file: Path | None,
    **options: Any,
) -> None:
    """Attested TLS reverse proxy for an inference server (runs in the TEE)."""
    from modelseal.ratls.gateway import GatewaySettings, start_gateway

    opt_ins = tee_values(options, _INSECURE_OPT_INS)
    host, port = _host_port(listen)
    endpoint = metrics_endpoint(metrics_port, metrics_host, metrics_token_file)
    apply_log_format(log_format)
    started = start_gateway(
        GatewaySettings(host, port, upstream, max_connections=max_connections, metrics=endpoint),
        kind=tee,
        attester_values=options,
        opt_in_values=opt_ins,
        receipts=[Path(r) for r in receipts],
        lifetime=evidence_ttl,
    )
    for line in started.warnings:
        click.echo(line, err=True)
    server = started.gateway
    identity = server.identity
    models = ", ".join(identity.models) or "none (no --receipt)"
    click.echo(
        f"modelseal gateway on https://{host}:{server.port} -> {upstream}\n"
        f"  tee {tee}; models: {models}\n"
        f"  TLS key in memory only; SubjectPublicKeyInfo sha256 {identity.spki_hash.hex()}",
        err=True,
    )
    if server.metrics_url is not None:
        click.echo(f"  metrics {server.metrics_url}", err=True)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


def _header(value: str) -> tuple[str, str]:
    name, sep, text = value.partition(":")
    if not sep or not name.strip():
        raise ConfigError(f"-H must be 'Name: value', got {value[:64]!r}")
    return name.strip(), text.strip()


@click.command()
@click.argument("url")
@click.option(
    "--policy",
    "policy_file",
    required=True,
    envvar="MODELSEAL_POLICY",
    type=click.Path(dir_okay=False),
    help="Policy the gateway must satisfy (the release-policy document shape).",
)
@click.option("--data", default=None, help="Request body: text, @FILE, or @- for stdin.")
@click.option(
    "-X", "--method", default=None, help="HTTP method (default: POST with --data, else GET)."
)
@click.option("-H", "--header", "headers", multiple=True, help="Extra header 'Name: value'.")
@click.option(
    "--fresh/--no-fresh",
    default=True,
    show_default=True,
    help="Also require evidence bound to a nonce and this TLS connection.",
)
@click.option("--max-age", type=float, default=None, help="Refuse evidence older than SECONDS.")
@click.option("--timeout", type=float, default=60.0, show_default=True)
@click.option("--show-claims", is_flag=True, help="Print what was attested to stderr (JSON).")
@spec_options(verifier_options())
def request(
    url: str,
    policy_file: str,
    data: str | None,
    method: str | None,
    headers: tuple[str, ...],
    fresh: bool,
    max_age: float | None,
    timeout: float,
    show_claims: bool,
    **tee_options: Any,
) -> None:
    """Send one request to an attested gateway, after verifying it against a policy."""
    import json

    from modelseal.ratls.client import Body
    from modelseal.ratls.client import request as send

    answer = send(
        url,
        policy_file=policy_file,
        out=sys.stdout.buffer,
        method=method,
        body=Body.parse(data),
        headers=[_header(h) for h in headers],
        tee_options={k: v for k, v in tee_options.items() if v not in (None, False)},
        fresh=fresh,
        max_age=max_age,
        timeout=timeout,
    )
    if show_claims and answer.attested is not None:
        click.echo(json.dumps(answer.attested.summary(), indent=2), err=True)
