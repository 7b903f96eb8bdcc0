"""``modelseal volume create|open`` against a real KBS on 127.0.0.1 and the real cryptsetup.

LUKS2 is formatted on a file (no loop device needed); ``open --check`` verifies the released
key without device-mapper, which these machines lack; a real ``open`` either maps the volume
(where device-mapper exists) or says plainly that it cannot.
"""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from modelseal.crypto.secret import SecretBytes
from modelseal.owner.kbs_admin import KbsAdminClient
from modelseal.quickstart.services import MODELSEAL, child_env, run_cli
from tests.conftest import free_port
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


def _create(device: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(["volume", "create", "--device", str(device), "--key-id", "volumes/db/key",
                    *args])  # fmt: skip


_UNUSED = "http://127.0.0.1:9"
USAGE_ERRORS = {
    "no-kbs-url": ["--tee", "sample"],
    "gpu-alone": ["--tee", "nvidia", "--kbs-url", _UNUSED],
    "not-http": ["--tee", "sample", "--kbs-url", "ftp://kbs"],
    "no-init-data": ["--tee", "sample", "--kbs-url", _UNUSED, "--init-data", "/nonexistent"],
    "bad-key-id": ["--tee", "sample", "--kbs-url", _UNUSED, "--key-id", "not-a-path"],
    "too-small": ["--tee", "sample", "--kbs-url", _UNUSED, "--size", "31M"],
}


@pytest.mark.parametrize("args", USAGE_ERRORS.values(), ids=USAGE_ERRORS.keys())
def test_a_usage_error_creates_nothing(tmp_path: Path, args: list[str]) -> None:
    device = tmp_path / "v.luks"
    done = _create(device, "--size", "32M", *args)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_failure_after_creation_removes_the_created_file(keys: Stack, tmp_path: Path) -> None:
    """The KBS unreachable (exit 75) or the release denied (exit 4) after --size made the
    file: the file is gone again."""
    device = tmp_path / "v.luks"
    unreachable = _create(device, "--size", "32M", "--tee", "sample", "--retries", "1",
                          "--kbs-url", f"http://127.0.0.1:{free_port()}")  # fmt: skip
    assert unreachable.returncode == 75, unreachable.stderr
    assert not device.exists()
    denied = volume(keys, "create", "--device", str(device), "--size", "32M", "--key-id",
                    "volumes/tdx/key")  # fmt: skip
    assert denied.returncode == 4, denied.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_file_that_existed_before_is_never_removed_nor_resized(
    keys: Stack, tmp_path: Path
) -> None:
    device = tmp_path / "mine.img"
    content = secrets.token_bytes(4096)
    device.write_bytes(content)
    # --size only ever creates a new file
    exists = volume(keys, "create", "--device", str(device), "--size", "32M", "--key-id",
                    "volumes/db/key")  # fmt: skip
    assert exists.returncode == 2, exists.stderr
    assert "creates a new file only" in exists.stderr
    # a failure on a device given without --size leaves it where it was
    unreachable = _create(device, "--tee", "sample", "--retries", "1",
                          "--kbs-url", f"http://127.0.0.1:{free_port()}")  # fmt: skip
    assert unreachable.returncode == 75, unreachable.stderr
    assert device.read_bytes() == content


def test_sigterm_while_waiting_for_the_kbs_removes_the_created_file(tmp_path: Path) -> None:
    """A KBS that accepts the connection and never answers: the file exists, the process
    waits; SIGTERM (a supervisor giving up) ends it with the file removed."""
    device = tmp_path / "v.luks"
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        process = subprocess.Popen(
            [*MODELSEAL, "volume", "create", "--device", str(device), "--size", "32M",
             "--key-id", "volumes/db/key", "--tee", "sample", "--retries", "1",
             "--kbs-url", f"http://127.0.0.1:{port}", "--timeout", "120"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(),
        )  # fmt: skip
        try:
            conn, _ = silent.accept()  # the file is created before the KBS is asked
            with conn:
                assert device.exists()
                process.send_signal(signal.SIGTERM)
                _, err = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode == 130, err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
