"""``modelseal`` command line: a thin click group whose subcommands load lazily.

Each subcommand lives in its own module and calls one library function; this module maps
:class:`modelseal.errors.Error` to the exit codes listed in the README, so expected
failures never print a traceback.
"""

from __future__ import annotations

import logging
import sys

import click

from modelseal import __version__
from modelseal._internal.logs import quiet_noisy_libraries
from modelseal.cli._lazy import LazyGroup
from modelseal.errors import Error

#: command name -> "module:attribute" of a click command or group
COMMANDS: dict[str, str] = {
    "keygen": "modelseal.cli.owner:keygen",
    "seal": "modelseal.cli.owner:seal",
    "unseal": "modelseal.cli.owner:unseal",
    "inspect": "modelseal.cli.owner:inspect",
    "verify": "modelseal.cli.owner:verify",
    "kbs": "modelseal.cli.kbs:kbs",
    "registry": "modelseal.cli.registry:registry",
    "publish": "modelseal.cli.publish:publish",
    "load": "modelseal.cli.load:load",
    "mount": "modelseal.cli.mount:mount",
    "volume": "modelseal.cli.volume:volume",
    "attest": "modelseal.cli.evidence:attest",
    "evidence": "modelseal.cli.evidence:evidence",
    "quickstart": "modelseal.cli.quickstart:quickstart",
    "dev": "modelseal.cli.dev:dev",
    "gateway": "modelseal.cli.gateway:gateway",
    "request": "modelseal.cli.gateway:request",
}


@click.group(cls=LazyGroup, lazy=COMMANDS)
@click.version_option(__version__, prog_name="modelseal")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose: int) -> None:
    """Seal AI models and release their keys only to attested TEEs."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_noisy_libraries()


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the group, turning modelseal errors into exit codes."""
    try:
        rc = cli.main(args=argv, prog_name="modelseal", standalone_mode=False)
    except Error as exc:
        click.echo(f"error: {exc.diagnostics()}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    except click.exceptions.Abort as exc:
        # click turns Ctrl-C into Abort; keep the shell convention 128 + SIGINT.
        click.echo("aborted", err=True)
        sys.exit(130 if isinstance(exc.__cause__, KeyboardInterrupt) else 1)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(rc if isinstance(rc, int) else 0)
