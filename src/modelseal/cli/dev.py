"""``modelseal dev ...``: stand-ins for platform services, for development and tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from modelseal.cli._tee_options import attester_options, session_kinds, spec_options, tee_choice
from modelseal.tee import registry


@click.group()
def dev() -> None:
    """Development stand-ins for platform services (loopback only, never production)."""


@dev.command("guest-components")
@click.option("--host", default="127.0.0.1", show_default=True, help="Loopback address.")
@click.option("--port", default=8006, show_default=True, type=int)
@click.option(
    "--features",
    default="all",
    show_default=True,
    type=click.Choice(["resource", "attestation", "all"]),
    help="As api-server-rest --features: CDH resources, AA attestation, or both.",
)
@click.option(
    "--tee",
    required=True,
    envvar="MODELSEAL_TEE",
    type=tee_choice(
        k for k in session_kinds(registry.attestable_kinds()) if not registry.plugin(k).relay
    ),
    help="TEE kind whose attester plays the TD (a test kind on a machine without one).",
)
@click.option(
    "--kbs-url",
    envvar="MODELSEAL_KBS_URL",
    help='KBS of the CDH [default: [kbc] url of the init-data\'s "cdh.toml"].',
)
@click.option("--kbs-ca", envvar="MODELSEAL_KBS_CA", help="PEM CA bundle for the KBS.")
@click.option(
    "--init-data",
    "init_data_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Init-data TOML the TD was launched with (a test attester puts its digest into "
    "the launch field; the CDH sends it to the KBS).",
)
@click.option(
    "--eventlog/--no-eventlog",
    default=True,
    show_default=True,
    help="Whether the AA records runtime measurements (AA enable_eventlog).",
)
@click.option("--log-level", default="info", show_default=True)
@spec_options(attester_options())
def guest_components(
    host: str,
    port: int,
    features: str,
    tee: str,
    kbs_url: str | None,
    kbs_ca: str | None,
    init_data_file: Path | None,
    eventlog: bool,
    log_level: str,
    **attester_values: Any,
) -> None:
    """Serve guest-components' REST API (CDH resources, AA evidence, token, runtime
    measurements) on loopback, backed by a real KBS and one of this build's attesters."""
    from modelseal.dev.guest_components import (
        GuestComponents,
        kbs_url_from_init_data,
        serve,
    )

    init_data = init_data_file.read_text(encoding="utf-8") if init_data_file else None
    if kbs_url is None and init_data is not None:
        kbs_url = kbs_url_from_init_data(init_data)
    keywords = registry.attester_keywords(tee, attester_values, init_data=init_data)
    guest = GuestComponents(
        registry.attester_for(tee, **keywords),
        tee=tee,
        kbs_url=kbs_url,
        features=features,
        init_data=init_data,
        kbs_ca=kbs_ca,
        eventlog=eventlog,
    )
    click.echo(f"guest-components REST API on http://{host}:{port} ({features}, {tee})", err=True)
    serve(guest, host=host, port=port, log_level=log_level)
