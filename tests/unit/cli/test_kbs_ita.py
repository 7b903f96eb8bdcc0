"""``modelseal kbs ita-user add|list|remove`` and ``kbs serve --ita-users`` refusals.

The password never comes from argv: a prompt (asked twice), a file's first line, or
standard input. The file is written 0600 and holds scrypt hashes only; ``kbs serve``
refuses to start on a user file that is malformed or readable by others (exit 2).
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from modelseal.cli import cli, main
from modelseal.errors import ConfigError
from modelseal.kbs.ita_users import ItaUsers, hash_password
from modelseal.kbs.settings import KbsSettings

PASSWORD = "open sesame 1234"


def _run(*args: str, stdin: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["kbs", "ita-user", *args], input=stdin)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return 2 if isinstance(result.exception, ConfigError) else 1, str(result.exception)
    return result.exit_code, result.output


def test_add_list_replace_remove(tmp_path: Path) -> None:
    users = tmp_path / "users.json"
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD + "\n")
    code, out = _run("add", "alice", "--file", str(users), "--password-file", str(secret))
    assert code == 0, out
    assert os.stat(users).st_mode & 0o777 == 0o600
    assert PASSWORD.encode() not in users.read_bytes()
    # prompt (asked twice), role admin
    code, out = _run(
        "add", "bob", "--file", str(users), "--role", "admin", stdin=f"{PASSWORD}\n{PASSWORD}\n"
    )
    assert code == 0, out
    code, out = _run("list", "--file", str(users))
    assert out.splitlines() == ["alice\tpublisher\tdefault/key", "bob\tadmin\t-"]

    store = ItaUsers(users)
    alice = store.authenticate("alice", PASSWORD)
    assert alice is not None
    assert alice.namespaces == ("default/key",)
    assert store.authenticate("alice", PASSWORD[:-1] + "5") is None
    assert store.authenticate("carol", PASSWORD) is None

    code, out = _run("add", "alice", "--file", str(users), "--password-file", "-", stdin="x" * 9)
    assert code == 2
    assert "exists" in out
    code, out = _run(
        "add", "alice", "--file", str(users), "--password-file", "-", "--replace",
        stdin="another pass phrase\n",
    )  # fmt: skip
    assert code == 0, out
    assert store.authenticate("alice", PASSWORD) is None
    assert store.authenticate("alice", "another pass phrase") is not None

    code, out = _run("remove", "bob", "--file", str(users))
    assert code == 0, out
    assert set(store.load()) == {"alice"}
    code, out = _run("remove", "bob", "--file", str(users))
    assert code == 2


@pytest.mark.parametrize(
    ("extra", "stdin", "problem"),
    [
        ((), "short\n", "8 to 1024 bytes"),
        (("--role", "auditor", "--namespace", "acme"), PASSWORD, "namespaces only restrict"),
        (("--namespace", "not a namespace"), PASSWORD, "is not a namespace"),
    ],
)
def test_bad_users_are_refused(
    tmp_path: Path, extra: tuple[str, ...], stdin: str, problem: str
) -> None:
    users = tmp_path / "users.json"
    code, out = _run("add", "u", "--file", str(users), "--password-file", "-", *extra, stdin=stdin)
    assert code == 2
    assert problem in out
    assert not users.exists()


def test_the_password_is_never_an_argument() -> None:
    result = CliRunner().invoke(cli, ["kbs", "ita-user", "add", "--help"])
    assert "--password " not in result.output
    assert "--password-file" in result.output


@pytest.mark.parametrize(
    "breakage",
    [
        "mode",
        "json",
        "duplicate",
        "weak-scrypt",
        "costly-scrypt",
        "costly-r",
        "costly-p",
        "unknown-member",
        "missing",
        "fifo",
    ],
)
def test_serve_refuses_a_broken_user_file(
    tmp_path: Path, breakage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    users = tmp_path / "users.json"
    code, out = _run("add", "alice", "--file", str(users), "--password-file", "-", stdin=PASSWORD)
    assert code == 0, out
    doc = json.loads(users.read_text())
    if breakage == "mode":
        os.chmod(users, 0o644)
    elif breakage == "json":
        users.write_text("{")
    elif breakage == "duplicate":
        doc["users"].append(doc["users"][0])
        users.write_text(json.dumps(doc))
    elif breakage == "weak-scrypt":
        doc["users"][0]["scrypt"]["n"] = 16
        users.write_text(json.dumps(doc))
    elif breakage.startswith("costly-"):
        # 4 GiB and minutes of CPU for every login; just over the bounds for one parameter
        over = {
            "costly-scrypt": {"n": 1 << 20, "r": 32, "p": 16},
            "costly-r": {"n": 1 << 15, "r": 17, "p": 1},
            "costly-p": {"n": 1 << 15, "r": 8, "p": 13},
        }[breakage]
        doc["users"][0]["scrypt"].update(over)
        users.write_text(json.dumps(doc))
    elif breakage == "fifo":  # opening it must not wait for a writer
        users.unlink()
        os.mkfifo(users, 0o600)
    elif breakage == "unknown-member":
        doc["users"][0]["admin"] = True
        users.write_text(json.dumps(doc))
    else:
        users.unlink()
    with pytest.raises(ConfigError):
        KbsSettings(data_dir=tmp_path / "kbs", ita_users=users).validated()
    with pytest.raises(SystemExit) as info:
        main(["kbs", "serve", "--data-dir", str(tmp_path / "kbs"), "--ita-users", str(users)])
    assert info.value.code == 2
    assert "ITA user file" in capsys.readouterr().err


def test_scrypt_parameters_at_the_bounds_are_accepted(tmp_path: Path) -> None:
    """The bounds refuse what is over them, not the strongest settings under them."""
    users = tmp_path / "users.json"
    code, out = _run("add", "alice", "--file", str(users), "--password-file", "-", stdin=PASSWORD)
    assert code == 0, out
    doc = json.loads(users.read_text())
    doc["users"][0]["scrypt"].update({"n": 1 << 15, "r": 8, "p": 12})
    users.write_text(json.dumps(doc))
    assert ItaUsers(users).load()["alice"].p == 12
    doc["users"][0]["scrypt"].update({"n": 1 << 16, "r": 8, "p": 6})  # 64 MiB
    users.write_text(json.dumps(doc))
    assert ItaUsers(users).load()["alice"].n == 1 << 16


def test_edits_hold_the_file_lock_from_their_read_to_their_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``add`` and ``remove`` read, change and write the whole file: unless nobody else
    can edit it in between, a ``remove`` racing an ``add`` comes back (the add writes the
    user the remove took out). Every read and write of an edit finds the lock held."""
    users = tmp_path / "users.json"
    store = ItaUsers(users)
    held: list[tuple[str, bool]] = []

    def probe(what: str) -> None:
        fd = os.open(store.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held.append((what, False))
        except BlockingIOError:
            held.append((what, True))
        finally:
            os.close(fd)

    real_load, real_save = ItaUsers.load, ItaUsers.save

    def load(self: ItaUsers) -> object:
        probe("load")
        return real_load(self)

    def save(self: ItaUsers, known: object) -> None:
        probe("save")
        real_save(self, known)  # type: ignore[arg-type]

    code, out = _run("add", "mallory", "--file", str(users), "--password-file", "-", stdin=PASSWORD)
    assert code == 0, out
    monkeypatch.setattr(ItaUsers, "load", load)
    monkeypatch.setattr(ItaUsers, "save", save)
    code, out = _run("add", "bob", "--file", str(users), "--password-file", "-", stdin=PASSWORD)
    assert code == 0, out
    # the first read (is the name taken?) comes before the password and the lock
    assert held[0] == ("load", False)
    assert held[1:] == [("load", True), ("save", True)]
    held.clear()
    code, out = _run("remove", "mallory", "--file", str(users))
    assert code == 0, out
    assert held == [("load", True), ("save", True)]
    assert set(store.load()) == {"bob"}


def test_new_hashes_take_the_minimum_work_for_stored_passwords() -> None:
    """At 32 MiB (N=2**15, r=8) the usual guidance for password storage asks for p=3;
    p=1 made offline guessing of a stolen user file three times cheaper."""
    user = hash_password("alice", PASSWORD.encode())
    assert (user.n, user.r, user.p) == (1 << 15, 8, 3)
    assert user.matches(PASSWORD.encode())
    assert not user.matches((PASSWORD[:-1] + "5").encode())
