"""``modelseal quickstart`` (= ``make run``): the whole flow on loopback, then clean up."""

from __future__ import annotations

import click

from modelseal.tee import registry


@click.command()
@click.option(
    "--tee",
    default=registry.DEVELOPMENT_KIND,
    show_default=True,
    type=click.Choice([name for name, p in registry.PLUGINS.items() if p.testbed_module]),
    help="TEE to attest as, one that runs without its hardware: "
    + "; ".join(
        f"'{name}' ({p.summary})" for name, p in registry.PLUGINS.items() if p.testbed_module
    )
    + ".",
)
def quickstart(tee: str) -> None:
    """Train, publish, attest, load into tmpfs and serve a small model on 127.0.0.1."""
    from modelseal.quickstart.run import run_quickstart

    run_quickstart(tee=tee)
