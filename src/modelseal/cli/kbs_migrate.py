"""``modelseal kbs migrate``: upgrade the KBS database schema to this release's head.

Run it once per database when a release says its schema changed, with the KBS stopped or
before rolling out replicas of the new release (old replicas keep working only as long as
the revision they expect is the one in the database). ``kbs serve`` refuses a database
behind head and names this command; an empty database needs no migration, ``kbs serve``
creates it at head.
"""

from __future__ import annotations

from pathlib import Path

import click

from modelseal.errors import ConfigError

__all__ = ["migrate"]


@click.command()
@click.option(
    "--data-dir",
    required=True,
    envvar="MODELSEAL_DATA_DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help="The KBS data directory (holds kbs.sqlite3 unless --database-url is given).",
)
@click.option(
    "--database-url",
    envvar="MODELSEAL_DATABASE_URL",
    default=None,
    help="postgresql://... of the KBS's database (default: SQLite in the data dir).",
)
def migrate(data_dir: Path, database_url: str | None) -> None:
    """Upgrade the KBS database to the schema of this release (safe to rerun)."""
    from modelseal.kbs.db import Database, sqlite_url
    from modelseal.kbs.schema import head
    from modelseal.kbs.schema import migrate as run

    if database_url is None and not (data_dir / "kbs.sqlite3").is_file():
        raise ConfigError(
            f"{data_dir} has no kbs.sqlite3: nothing to migrate (`modelseal kbs serve` "
            "creates a new database at the current schema); pass --database-url for PostgreSQL"
        )
    db = Database(database_url or sqlite_url(data_dir))
    try:
        where = "sqlite" if db.is_sqlite else "postgresql"
        click.echo(f"{where} database, schema head of this release: {head()}")
        for line in run(db).lines():
            click.echo(line)
    finally:
        db.dispose()
