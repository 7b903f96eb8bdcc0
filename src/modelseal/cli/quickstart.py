"""``modelseal quickstart`` (= ``make run``): the whole flow on loopback, then clean up."""

from __future__ import annotations

import click


@click.command()
@click.option(
    "--tee",
    default="sample",
    show_default=True,
    type=click.Choice(["sample", "mock-tdx"]),
    help="TEE to attest as: 'sample' (insecure, development only) or 'mock-tdx' (test CA, "
    "full DCAP verification path, policy on MRTD + model digest via init-data).",
)
def quickstart(tee: str) -> None:
    """Train, publish, attest, load into tmpfs and serve a small model on 127.0.0.1."""
    from modelseal.quickstart.run import run_quickstart

    run_quickstart(tee=tee)
