"""Owner key files: base64url, 0600, never overwritten, strict reading."""

from __future__ import annotations

import base64
import logging
import os
import stat
import subprocess
from pathlib import Path

import pytest

from modelseal.crypto.secret import SecretBytes
from modelseal.errors import ConfigError, NotFound
from modelseal.owner.keys import generate_key, read_key_file, write_key_file


def test_round_trip_and_mode(tmp_path: Path) -> None:
    key = generate_key()
    path = write_key_file(tmp_path / "k", key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_key_file(path) == key
    text = path.read_text()
    assert text.endswith("\n")
    assert "=" not in text
    assert "+" not in text
    assert "/" not in text
    assert generate_key() != key


def test_refuses_overwrite_and_missing_dir(tmp_path: Path) -> None:
    path = write_key_file(tmp_path / "k", generate_key())
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        write_key_file(path, generate_key())
    assert path.read_bytes() == before
    with pytest.raises(ConfigError, match="does not exist"):
        write_key_file(tmp_path / "no" / "k", generate_key())
    with pytest.raises(ConfigError):
        write_key_file(tmp_path / "k2", SecretBytes(b"short"))


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("not base64!\n", "base64url"),
        (base64.urlsafe_b64encode(bytes(16)).decode(), "16 bytes"),
        ("\xff", "base64url"),
        ("A" * 2000, "not a key file"),
    ],
)
def test_bad_key_files(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "k"
    path.write_text(content, encoding="latin-1")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match=match) as info:
        read_key_file(path)
    assert content.strip() not in str(info.value).replace(str(path), "")  # never echo a key


def test_missing_and_directory(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        read_key_file(tmp_path / "absent")
    with pytest.raises(ConfigError):
        read_key_file(tmp_path)


def test_warns_on_group_readable(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_key_file(tmp_path / "k", generate_key())
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        read_key_file(path)
    assert "chmod 600" in caplog.text


def test_openssl_key_files(tmp_path: Path) -> None:
    """`openssl rand -out k 32` (raw) and `openssl rand -hex 32` (hex) both read as keys."""
    raw = tmp_path / "raw.key"
    subprocess.run(["openssl", "rand", "-out", str(raw), "32"], check=True)
    assert read_key_file(raw).reveal() == raw.read_bytes()
    hexed = tmp_path / "hex.key"
    with hexed.open("w") as fh:
        subprocess.run(["openssl", "rand", "-hex", "32"], check=True, stdout=fh)
    assert read_key_file(hexed).reveal() == bytes.fromhex(hexed.read_text().strip())
    # one byte more or less than a raw key, or 63/65 hex digits, is refused
    for content in (os.urandom(31), os.urandom(33), b"ab" * 31 + b"a", b"ab" * 32 + b"a"):
        bad = tmp_path / "bad.key"
        bad.write_bytes(content)
        with pytest.raises(ConfigError):
            read_key_file(bad)
        bad.unlink()
