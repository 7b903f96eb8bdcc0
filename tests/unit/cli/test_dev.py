"""``modelseal dev guest-components``: argument handling through the real entry point (the
server itself is exercised by the CoCo e2e tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelseal import cli


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    code = info.value.code
    return (code if isinstance(code, int) else 1), capsys.readouterr().err


BASE = ["dev", "guest-components", "--tee", "mock-tdx"]


def test_it_binds_loopback_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [*BASE, "--mock-tdx-dir", str(tmp_path / "ca"), "--kbs-url", "http://127.0.0.1:9"]
    code, err = _run([*argv, "--host", "0.0.0.0"], capsys)
    assert code == 2
    assert "loopback" in err


def test_the_cdh_needs_a_kbs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run([*BASE, "--mock-tdx-dir", str(tmp_path / "ca")], capsys)
    assert code == 2
    assert "KBS URL" in err


def test_the_kbs_url_may_come_from_init_data_only_as_http(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    init = tmp_path / "init.toml"
    init.write_text(
        'version = "0.1.0"\nalgorithm = "sha384"\n[data]\n'
        "\"cdh.toml\" = '''\n[kbc]\nname = \"cc_kbc\"\nurl = \"file:///etc/passwd\"\n'''\n"
    )
    argv = [*BASE, "--mock-tdx-dir", str(tmp_path / "ca"), "--init-data", str(init)]
    code, err = _run(argv, capsys)
    assert code == 2
    assert "[kbc] url" in err


def test_relays_cannot_play_the_td(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(["dev", "guest-components", "--tee", "aa"], capsys)
    assert code == 2
    assert "Invalid value for '--tee'" in err
