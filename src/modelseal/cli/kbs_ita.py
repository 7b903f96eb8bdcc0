"""``modelseal kbs ita-user``: the users of Intel Trust Authority password logins.

``kbs serve --ita-users FILE`` lets ITA clients log in at ``POST /kbs/v1/token``; these
commands keep FILE (scrypt hashes, mode 0600). The password is read from a prompt, or
from ``--password-file`` (``-`` for standard input), never from the command line.
"""

from __future__ import annotations

import sys
from collections.abc import Collection
from pathlib import Path

import click

from modelseal.errors import ConfigError

_FILE = click.option(
    "--file",
    "users_file",
    envvar="MODELSEAL_ITA_USERS",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The user file `kbs serve --ita-users` reads (created, mode 0600).",
)


@click.group("ita-user")
def ita_user() -> None:
    """Users of the Intel Trust Authority compatible login (POST /kbs/v1/token)."""


def _read_password(password_file: str | None) -> bytes:
    """The password: first line of a file or stdin (``-``), else an interactive prompt."""
    from modelseal.kbs.ita_users import MAX_PASSWORD

    if password_file is None:
        text = click.prompt("Password", hide_input=True, confirmation_prompt=True)
        return str(text).encode()
    try:
        if password_file == "-":  # noqa: S105 - "-" names standard input
            raw = sys.stdin.buffer.read(MAX_PASSWORD + 2)
        else:
            with open(password_file, "rb") as fh:
                raw = fh.read(MAX_PASSWORD + 2)
    except OSError as exc:
        raise ConfigError(f"cannot read the password file: {exc.strerror}") from None
    line = raw.split(b"\n", 1)[0].rstrip(b"\r")
    if len(line) > MAX_PASSWORD:
        raise ConfigError(f"the password is longer than {MAX_PASSWORD} bytes")
    return line


@ita_user.command("add")
@_FILE
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(["admin", "publisher", "auditor"]),
    default="publisher",
    show_default=True,
    help="Role of the tokens the user gets (publisher: create policies and keys; admin: "
    "also delete them).",
)
@click.option(
    "--namespace",
    "namespaces",
    multiple=True,
    help="Publisher users: a namespace the user may manage (default: default/key, where "
    "ITA keys live).",
)
@click.option(
    "--password-file",
    default=None,
    help="Read the password from this file's first line ('-': standard input) instead of a prompt.",
)
@click.option("--replace", is_flag=True, help="Replace an existing user of that name.")
def add(
    users_file: Path,
    name: str,
    role: str,
    namespaces: tuple[str, ...],
    password_file: str | None,
    replace: bool,
) -> None:
    """Add user NAME (or change its password with --replace)."""
    from modelseal.kbs.ita_users import ItaUsers, hash_password

    users = ItaUsers(users_file)

    def refuse_existing(known: Collection[str]) -> None:
        if name in known and not replace:
            raise ConfigError(f"user {name!r} exists; pass --replace to change it")

    refuse_existing(users.load_or_empty())  # before asking for a password in vain
    password = _read_password(password_file)  # outside the lock: a prompt may take a while
    with users.editing():
        known = users.load_or_empty()
        refuse_existing(known)
        known[name] = hash_password(name, password, role=role, namespaces=namespaces)
        users.save(known)
    click.echo(f"{'replaced' if replace else 'added'} user {name} ({role}) in {users_file}")


@ita_user.command("remove")
@_FILE
@click.argument("name")
def remove(users_file: Path, name: str) -> None:
    """Remove user NAME (its tokens stay valid until they expire, at most 5 minutes)."""
    from modelseal.kbs.ita_users import ItaUsers

    users = ItaUsers(users_file)
    with users.editing():
        known = users.load()
        if known.pop(name, None) is None:
            raise ConfigError(f"no user {name!r} in {users_file}")
        users.save(known)
    click.echo(f"removed user {name} from {users_file}")


@ita_user.command("list")
@_FILE
def list_users(users_file: Path) -> None:
    """List the users with their roles and namespaces (never the hashes)."""
    from modelseal.kbs.ita_users import ItaUsers

    for user in ItaUsers(users_file).load().values():
        click.echo(f"{user.name}\t{user.role}\t{','.join(user.namespaces) or '-'}")
