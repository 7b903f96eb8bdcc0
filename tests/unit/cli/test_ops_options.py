"""The operations options of the servers and the loader refuse bad settings with exit 2
before anything listens or loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelseal import cli


def _exit(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    code = info.value.code
    return (code if isinstance(code, int) else 1), capsys.readouterr().err


@pytest.mark.parametrize("server", [["kbs", "serve"], ["registry", "serve"]])
def test_metrics_off_loopback_need_a_token(
    server: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*server, "--data-dir", str(tmp_path / "d"), "--port", "9"]
    code, err = _exit([*argv, "--metrics-port", "9", "--metrics-host", "10.0.0.1"], capsys)
    assert code == 2
    assert "--metrics-token-file" in err
    short = tmp_path / "token"
    short.write_text("short\n")
    code, err = _exit([*argv, "--metrics-port", "9", "--metrics-token-file", str(short)], capsys)
    assert code == 2
    assert "at least 16" in err
    assert not (tmp_path / "d").exists(), "nothing was started"


@pytest.mark.parametrize("server", [["kbs", "serve"], ["registry", "serve"]])
def test_unknown_log_format(
    server: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _exit([*server, "--data-dir", str(tmp_path), "--log-format", "xml"], capsys)
    assert code == 2
    assert "xml" in err


def test_loader_textfile_must_be_prom(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["load", "--model", "http://127.0.0.1:9/models/m", "--dest", str(tmp_path / "m")]
    code, err = _exit([*argv, "--metrics-textfile", str(tmp_path / "loader.txt")], capsys)
    assert code == 2
    assert "*.prom" in err
    code, err = _exit([*argv, "--metrics-textfile", str(tmp_path / "no" / "x.prom")], capsys)
    assert code == 2
    assert "does not exist" in err
