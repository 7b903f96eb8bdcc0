"""``modelseal volume create|open``: LUKS2 volumes unlocked by a key the KBS releases only
after attestation (docs/guides/mount.md, "Encrypted volumes").

The TEE, KBS and key options are ``modelseal load``'s own option objects. Exit codes: 0 ok,
2 config (no cryptsetup, no device-mapper, already formatted), 3 key not found, 4
attestation or policy denied, 5 the released key does not open the volume, 75 transient.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import click

from modelseal.cli._loader_options import loader_overrides, share_loader_options

#: ``modelseal load`` options about a model or its load, which a volume has not
_MODEL_ONLY = frozenset(
    {"model", "registry_ca", "workers", "model_digest", "measure", "metrics_textfile"}
)
#: the shared options whose ``load`` help speaks of a model
_HELP = {
    "kbs_url": "KBS base URL (required unless --key-source cdh).",
    "timeout": "Seconds within which each KBS or CDH answer must be complete [default: 30].",
    "key_source": "Where the volume key comes from: 'kbs' (attest and run RCAR with the KBS, "
    "default) or 'cdh' (the CoCo Confidential Data Hub, which attests for the pod).",
    "init_data": "Init-data TOML this TEE was launched with (sent to the KBS with the evidence).",
    "retries": "Attempts per request on transient failures (unreachable KBS or CDH, 5xx) "
    "before exit 75 [default: 8].",
}


def _settings(values: dict[str, Any]) -> Any:
    from modelseal.loader.settings import LoaderSettings

    return LoaderSettings.for_key(**loader_overrides(values))


def _size(text: str | None) -> int | None:
    if text is None:
        return None
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    scale = units.get(text[-1:].upper(), 1)
    digits = text[:-1] if text[-1:].upper() in units else text
    if not digits.isdigit() or int(digits) * scale < 32 << 20:
        raise click.BadParameter("a size like 64M or 10G, at least 32M", param_hint="--size")
    return int(digits) * scale


_device = click.option(
    "--device",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Block device or file holding the volume.",
)
_key_id = click.option(
    "--key-id",
    envvar="MODELSEAL_VOLUME_KEY_ID",
    required=True,
    help="KBS resource path of the volume key (e.g. volumes/db/key).",
)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@click.group()
def volume() -> None:
    """LUKS2 volumes whose passphrase the KBS releases only to an attested TEE."""


@volume.command("create")
@_device
@_key_id
@click.option(
    "--size",
    help="Create DEVICE as a new file of this size first (e.g. 1G, at least 32M); it is "
    "removed again if the volume cannot be created.",
)
def create(device: Path, key_id: str, size: str | None, **loader_values: Any) -> None:
    """Attest, obtain the key, format DEVICE as LUKS2 (the key goes to cryptsetup on a pipe).

    Every setting is checked before anything is created; a DEVICE file this command created
    with --size is removed again when a later step fails."""
    from modelseal.loader.volume import create_volume

    # a supervisor's SIGTERM unwinds like Ctrl-C, so a file created with --size is removed
    signal.signal(signal.SIGTERM, _interrupt)
    result = create_volume(_settings(loader_values), device, key_id, size=_size(size))
    json.dump(result.to_json(), sys.stdout)
    sys.stdout.write("\n")


@volume.command("open")
@_device
@_key_id
@click.option("--name", help="Map the volume as /dev/mapper/NAME.")
@click.option(
    "--check",
    is_flag=True,
    help="Only verify that the released key opens DEVICE (needs no device-mapper).",
)
def open_(device: Path, key_id: str, name: str | None, check: bool, **loader_values: Any) -> None:
    """Attest, obtain the key, open DEVICE (or --check it)."""
    from modelseal.loader.volume import open_volume

    result = open_volume(_settings(loader_values), device, key_id, name=name, check=check)
    json.dump(result.to_json(), sys.stdout)
    sys.stdout.write("\n")


# the loader's TEE, KBS and key options, shared with ``modelseal load``
for _command in (create, open_):
    share_loader_options(_command, exclude=_MODEL_ONLY, help_texts=_HELP)
