"""The CLI entry point maps modelseal errors to exit codes without tracebacks."""

from __future__ import annotations

import click
import pytest

from modelseal import cli, errors


def _run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    code = info.value.code
    return code if isinstance(code, int) else 1


@pytest.fixture
def failing_command(monkeypatch: pytest.MonkeyPatch) -> None:
    @click.command()
    @click.argument("kind")
    def boom(kind: str) -> None:
        raise {
            "config": errors.ConfigError("bad flag"),
            "denied": errors.PolicyDenied(reasons=["secret reason"]),
            "tamper": errors.DecryptionError(),
            "disk": errors.UnsafeDestination("/var/lib is on disk"),
            "interrupt": KeyboardInterrupt(),
        }[kind]

    cli.cli.add_command(boom, "boom")
    yield
    cli.cli.commands.pop("boom", None)


@pytest.mark.parametrize(
    ("kind", "code"), [("config", 2), ("denied", 4), ("tamper", 5), ("disk", 6)]
)
@pytest.mark.usefixtures("failing_command")
def test_error_exit_codes(kind: str, code: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["boom", kind]) == code
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert "Traceback" not in err
    assert "secret reason" not in err


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["--version"]) == 0
    assert "modelseal" in capsys.readouterr().out
    assert _run(["--help"]) == 0


def test_usage_error_is_exit_2() -> None:
    assert _run(["no-such-command"]) == 2


@pytest.mark.usefixtures("failing_command")
def test_ctrl_c_exits_130(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["boom", "interrupt"]) == 130
    assert "Traceback" not in capsys.readouterr().err
