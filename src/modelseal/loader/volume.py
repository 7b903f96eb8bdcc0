"""LUKS2 volumes whose passphrase is a key the KBS releases only to an attested TEE.

``create`` formats a device (or a file) as LUKS2 and ``open`` maps it (or, with ``check``,
only verifies that the released key opens it: what works without device-mapper). The key is
a KBS resource like a model key (``key_id``, a policy, an audit record per release), obtained
with the loader's attestation and key release, and reaches ``cryptsetup`` only on a pipe
(``--key-file -``): never in argv, the environment or a file. The volume's master key is
cryptsetup's own; the released key only unlocks its keyslot.

The keyslot uses PBKDF2 at cryptsetup's minimum iteration count rather than the default
Argon2id: the passphrase is 32 uniformly random bytes, so no key-stretching adds strength,
and Argon2id's memory cost (up to 1 GiB by default) is a real cost inside a small TEE.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from modelseal.crypto.secret import SecretBytes
from modelseal.errors import ConfigError, DecryptionError, FormatError
from modelseal.loader.attest import KeyRelease, read_init_data, resolve_tee
from modelseal.loader.fetch import RetryPolicy
from modelseal.loader.loader import ReleaseFn, obtain_key
from modelseal.loader.receipt import Timings
from modelseal.loader.settings import KEY_SOURCE_CDH, LoaderSettings
from modelseal.protocol.kbs import resource_path
from modelseal.protocol.model_info import KBS_TRUSTEE, ModelInfo, check_name

__all__ = ["VolumeResult", "create_volume", "open_volume"]

#: cryptsetup's exit code for "no key available with this passphrase"
_WRONG_KEY = 2
_PBKDF = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]
#: seconds one cryptsetup run may take (formatting writes only the header and keyslots)
_TIMEOUT = 120.0
_UUID = re.compile(r"^[0-9a-fA-F-]{36}$")


@dataclass(frozen=True)
class VolumeResult:
    """What ``modelseal volume`` reports (no secret)."""

    device: str
    key_id: str
    tee: str
    action: str
    uuid: str | None = None
    name: str | None = None

    def to_json(self) -> dict[str, object]:
        return {k: v for k, v in vars(self).items() if v is not None}


def _cryptsetup() -> str:
    tool = shutil.which("cryptsetup")
    if tool is None:
        raise ConfigError("cryptsetup not found: install it (Debian: cryptsetup-bin)")
    return tool


def _run(args: list[str], key: SecretBytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run cryptsetup; the key, if any, goes to its standard input and nowhere else."""
    passphrase = key.reveal() if key is not None else None
    try:
        return subprocess.run(
            [_cryptsetup(), *args],
            input=passphrase,
            capture_output=True,
            timeout=_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ConfigError(f"cryptsetup {args[0]} did not finish in {_TIMEOUT:.0f} s") from None
    finally:
        del passphrase


def _fail(action: str, device: Path, done: subprocess.CompletedProcess[bytes]) -> ConfigError:
    text = done.stderr.decode("utf-8", "replace").strip()
    if "device-mapper" in text:
        return ConfigError(
            f"cannot map {device}: device-mapper is not available on this machine (dm_mod); "
            "`modelseal volume open --check` verifies the key without it"
        )
    last = text.splitlines()[-1][:300] if text else f"exit {done.returncode}"
    return ConfigError(f"cryptsetup {action} {device} failed: {last}")


def _is_luks(device: Path) -> bool:
    return _run(["isLuks", str(device)]).returncode == 0


def _check_device(device: Path) -> None:
    try:
        mode = os.stat(device).st_mode
    except FileNotFoundError:
        raise ConfigError(f"no such device or file: {device}") from None
    if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
        raise ConfigError(f"{device} is neither a block device nor a regular file")


def _check_settings(settings: LoaderSettings, key_id: str) -> LoaderSettings:
    """Everything that can be checked before a file is created or a key released: the key
    id, the key source's configuration, the TEE kind (``auto`` resolved here), the
    init-data document and cryptsetup itself. Returns the settings with the TEE resolved."""
    try:
        resource_path(key_id)
    except FormatError as exc:
        raise ConfigError(f"--key-id: {exc}") from None
    _cryptsetup()
    if settings.key_source == KEY_SOURCE_CDH:
        return settings  # the CDH attests for the pod and knows its KBS
    if not settings.kbs_url:
        raise ConfigError("a volume key comes from the KBS: pass --kbs-url (or --key-source cdh)")
    read_init_data(settings)
    return settings.with_overrides(tee=resolve_tee(settings))


def _release(settings: LoaderSettings, key_id: str, release: ReleaseFn | None) -> KeyRelease:
    """Attest and obtain the volume key from the KBS or the CDH (the loader's sequence and
    retries)."""
    info = ModelInfo(
        id="volume",
        url=settings.kbs_url or settings.cdh_url,
        encrypted=True,
        kbs=KBS_TRUSTEE,
        kbs_url=settings.kbs_url,
        key_id=key_id,
    )
    key = obtain_key(settings, info, Timings(), release, RetryPolicy(attempts=settings.retries))
    if len(key.dek) < 16:
        key.dek.wipe()
        raise ConfigError(f"the KBS resource {key_id!r} is too short to be a volume key")
    return key


def _create_file(device: Path, size: int) -> None:
    """A new ``size``-byte file at ``device``; never an existing one (``O_EXCL``)."""
    try:
        fd = os.open(device, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise ConfigError(f"{device} exists: --size creates a new file only") from None
    except OSError as exc:
        raise ConfigError(f"cannot create {device}: {exc.strerror}") from None
    try:
        os.ftruncate(fd, size)
    except OSError as exc:
        os.close(fd)
        device.unlink(missing_ok=True)
        raise ConfigError(f"cannot size {device} to {size} bytes: {exc.strerror}") from None
    os.close(fd)


def create_volume(
    settings: LoaderSettings,
    device: Path,
    key_id: str,
    *,
    size: int | None = None,
    release: ReleaseFn | None = None,
) -> VolumeResult:
    """Format ``device`` as LUKS2 with the released key (``size``: create it as a new file
    of that many bytes first). An existing LUKS volume is never formatted over.

    The settings are checked before anything is created; a file created here is removed
    again if any later step fails (the KBS unreachable, the release denied, cryptsetup
    failing, an interrupt), so a failed run leaves the machine as it found it. A device
    that existed before is never removed."""
    settings = _check_settings(settings, key_id)
    created = False
    if size is not None:
        _create_file(device, size)
        created = True
    try:
        return _format(settings, device, key_id, release)
    except BaseException:
        if created:
            device.unlink(missing_ok=True)
        raise


def _format(
    settings: LoaderSettings, device: Path, key_id: str, release: ReleaseFn | None
) -> VolumeResult:
    _check_device(device)
    if _is_luks(device):
        raise ConfigError(f"{device} already holds a LUKS volume; refusing to format over it")
    key = _release(settings, key_id, release)
    try:
        args = ["luksFormat", "--type", "luks2", "--batch-mode", "--key-file", "-", *_PBKDF]
        done = _run([*args, str(device)], key.dek)
    finally:
        key.dek.wipe()
    if done.returncode != 0:
        raise _fail("luksFormat", device, done)
    uuid = _run(["luksUUID", str(device)]).stdout.decode("ascii", "replace").strip()
    return VolumeResult(
        str(device), key_id, key.tee, "created", uuid=uuid if _UUID.match(uuid) else None
    )


def open_volume(
    settings: LoaderSettings,
    device: Path,
    key_id: str,
    *,
    name: str | None,
    check: bool = False,
    release: ReleaseFn | None = None,
) -> VolumeResult:
    """Map ``device`` as ``/dev/mapper/<name>`` with the released key, or with ``check``
    only verify that the key opens it (no device-mapper needed)."""
    if not check:
        if name is None:
            raise ConfigError("pass --name (the /dev/mapper name) or --check")
        check_name(name, what="volume name")
    settings = _check_settings(settings, key_id)
    _check_device(device)
    if not _is_luks(device):
        raise ConfigError(f"{device} is not a LUKS volume")
    key = _release(settings, key_id, release)
    args = ["open", "--type", "luks2", "--key-file", "-"]
    args += ["--test-passphrase", str(device)] if check else [str(device), str(name)]
    try:
        done = _run(args, key.dek)
    finally:
        key.dek.wipe()
    if done.returncode == _WRONG_KEY and b"No key available" in done.stderr:
        raise DecryptionError(f"the key {key_id!r} released by the KBS does not open {device}")
    if done.returncode != 0:
        raise _fail("open", device, done)
    return VolumeResult(str(device), key_id, key.tee, "checked" if check else "opened", name=name)
