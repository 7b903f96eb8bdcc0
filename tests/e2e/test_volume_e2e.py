"""``modelseal volume create|open`` against a real KBS on 127.0.0.1 and the real cryptsetup.

LUKS2 is formatted on a file (no loop device needed); ``open --check`` verifies the released
key without device-mapper, which these machines lack; a real ``open`` either maps the volume
(where device-mapper exists) or says plainly that it cannot.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

from modelseal.crypto.secret import SecretBytes
from modelseal.owner.kbs_admin import KbsAdminClient
from modelseal.quickstart.services import run_cli
from tests.e2e.test_loader_e2e import SAMPLE_POLICY, TDX_ONLY_POLICY, Stack, stack

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("cryptsetup") is None, reason="needs cryptsetup-bin"),
]

__all__ = ["stack"]  # the module-scoped KBS + registry fixture, shared with the loader tests

KEY = secrets.token_bytes(32)


@pytest.fixture(scope="module")
def keys(stack: Stack) -> Stack:
    with KbsAdminClient(stack.kbs.url, stack.admin_token) as admin:
        admin.put_key("volumes/db/key", SecretBytes(KEY), SAMPLE_POLICY)
        admin.put_key("volumes/other/key", None, SAMPLE_POLICY)
        admin.put_key("volumes/tdx/key", None, TDX_ONLY_POLICY)
    return stack


def volume(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(["volume", *args, "--kbs-url", stack.kbs.url, "--tee", "sample"])


def cryptsetup_accepts(device: Path, key: bytes) -> bool:
    done = subprocess.run(
        ["cryptsetup", "open", "--test-passphrase", "--key-file", "-", str(device)],
        input=key,
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


def test_create_then_open_with_the_released_key(keys: Stack, tmp_path: Path) -> None:
    device = tmp_path / "db.luks"
    created = volume(keys, "create", "--device", str(device), "--size", "32M", "--key-id",
                     "volumes/db/key")  # fmt: skip
    assert created.returncode == 0, created.stderr
    report = json.loads(created.stdout)
    assert report["action"] == "created"
    assert report["tee"] == "sample"
    assert len(report["uuid"]) == 36
    dump = subprocess.run(["cryptsetup", "luksDump", str(device)], capture_output=True,
                          text=True, check=True).stdout  # fmt: skip
    assert "Version:       \t2" in dump
    assert "pbkdf2" in dump
    # the passphrase is exactly the KBS key: nothing else opens it
    assert cryptsetup_accepts(device, KEY)
    assert not cryptsetup_accepts(device, KEY[:-1] + bytes([KEY[-1] ^ 1]))
    checked = volume(keys, "open", "--device", str(device), "--key-id", "volumes/db/key",
                     "--check")  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)["action"] == "checked"
    # never formatted over
    again = volume(keys, "create", "--device", str(device), "--key-id", "volumes/db/key")
    assert again.returncode == 2
    assert "already holds a LUKS volume" in again.stderr
    assert cryptsetup_accepts(device, KEY)


def test_another_key_does_not_open_it_exit_5(keys: Stack, tmp_path: Path) -> None:
    device = tmp_path / "v.luks"
    assert volume(keys, "create", "--device", str(device), "--size", "32M", "--key-id",
                  "volumes/db/key").returncode == 0  # fmt: skip
    wrong = volume(keys, "open", "--device", str(device), "--key-id", "volumes/other/key",
                   "--check")  # fmt: skip
    assert wrong.returncode == 5, wrong.stderr
    assert "does not open" in wrong.stderr


def test_policy_denial_exit_4_and_nothing_formatted(keys: Stack, tmp_path: Path) -> None:
    device = tmp_path / "denied.luks"
    done = volume(keys, "create", "--device", str(device), "--size", "32M", "--key-id",
                  "volumes/tdx/key")  # fmt: skip
    assert done.returncode == 4, done.stderr
    assert subprocess.run(["cryptsetup", "isLuks", str(device)], check=False).returncode != 0


def test_open_maps_or_says_device_mapper_is_missing(keys: Stack, tmp_path: Path) -> None:
    device = tmp_path / "m.luks"
    assert volume(keys, "create", "--device", str(device), "--size", "32M", "--key-id",
                  "volumes/db/key").returncode == 0  # fmt: skip
    name = f"ms-test-{secrets.token_hex(4)}"
    opened = volume(keys, "open", "--device", str(device), "--key-id", "volumes/db/key",
                    "--name", name)  # fmt: skip
    if opened.returncode == 0:  # a machine with device-mapper (and loop devices)
        assert Path("/dev/mapper", name).exists()
        subprocess.run(["cryptsetup", "close", name], check=True)
    else:
        assert opened.returncode == 2, opened.stderr
        assert "device-mapper is not available" in opened.stderr
        assert "--check" in opened.stderr
