"""KbsSettings validation: every misconfiguration is a ConfigError naming the flag."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelseal.errors import ConfigError
from modelseal.kbs.settings import KbsSettings, is_loopback


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"])
def test_loopback(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.1", "example.com", "::"])
def test_not_loopback(host: str) -> None:
    assert not is_loopback(host)


def test_defaults(tmp_path: Path) -> None:
    s = KbsSettings(data_dir=tmp_path).validated()
    assert s.host == "127.0.0.1"
    assert s.token_ttl == 300
    assert s.signing_key_path == tmp_path / "token-signing-key.pem"
    assert not s.tls
    assert s.accepts_insecure is False
    assert all(not c.enabled() for c in s.tee_configs().values() if c.opt_in_flags())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"host": "0.0.0.0"}, "plain HTTP"),
        ({"port": 0}, "--port"),
        ({"port": 70000}, "--port"),
        ({"tls_cert": Path("/nonexistent")}, "together"),
        ({"tls_cert": Path("/nonexistent"), "tls_key": Path("/nonexistent")}, "--tls-cert"),
        ({"token_ttl": 0}, "--token-ttl"),
        ({"session_ttl": 100000}, "--session-ttl"),
        ({"tee_options": {"mock_tdx_root": "/nonexistent.pem"}}, "--mock-tdx-root"),
        ({"tee_options": {"pccs_url": "ftp://x"}}, "--pccs-url"),
        ({"tee_options": {"no_such_option": "x"}}, "unknown TEE option"),
        ({"max_body_bytes": 10}, "--max-body-bytes"),
    ],
)
def test_invalid(tmp_path: Path, kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        KbsSettings(data_dir=tmp_path, **kwargs).validated()  # type: ignore[arg-type]


def test_data_dir_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        KbsSettings(data_dir=f).validated()


def test_public_http_needs_explicit_flag(tmp_path: Path) -> None:
    assert KbsSettings(data_dir=tmp_path, host="0.0.0.0", insecure_http=True).validated()


def test_tls(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("c")
    key.write_text("k")
    s = KbsSettings(data_dir=tmp_path, host="0.0.0.0", tls_cert=cert, tls_key=key).validated()
    assert s.tls
