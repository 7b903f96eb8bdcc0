"""``modelseal quickstart`` (= ``make run``): the whole flow on loopback, then clean up."""

from __future__ import annotations

import click

from modelseal.tee import registry


@click.command()
@click.option(
    "--tee",
    default=registry.DEVELOPMENT_KIND,
    show_default=True,
    type=click.Choice(registry.kinds(runs_without_hardware=True)),
    help="TEE to attest as, one that runs without its hardware: "
    + "; ".join(
        f"'{kind}' ({registry.plugin(kind).summary})"
        for kind in registry.kinds(runs_without_hardware=True)
    )
    + ".",
)
@click.option(
    "--tls",
    is_flag=True,
    help="Serve the model behind `modelseal gateway` (attested TLS) and classify through "
    "`modelseal request`, which verifies the gateway against a policy first.",
)
def quickstart(tee: str, tls: bool) -> None:
    """Train, publish, attest, load into tmpfs and serve a small model on 127.0.0.1."""
    from modelseal.quickstart.run import run_quickstart

    run_quickstart(tee=tee, tls=tls)
