"""``modelseal kbs ...``: serving the KBS and administering it."""

from __future__ import annotations

import click

from modelseal.cli._lazy import LazyGroup

KBS_COMMANDS: dict[str, str] = {
    "serve": "modelseal.cli.kbs_serve:serve",
    "migrate": "modelseal.cli.kbs_migrate:migrate",
    "get": "modelseal.cli.kbs_serve:get",
    "token": "modelseal.cli.kbs_admin:token",
    "key": "modelseal.cli.kbs_admin:key",
    "policy": "modelseal.cli.kbs_admin:policy",
    "audit": "modelseal.cli.kbs_admin:audit",
    "ita-user": "modelseal.cli.kbs_ita:ita_user",
}


@click.group(cls=LazyGroup, lazy=KBS_COMMANDS)
def kbs() -> None:
    """Key Broker Service: serve it, migrate its database, get a resource, administer keys,
    policies, audit, and the users of Intel Trust Authority logins."""
