"""Owner commands: ``keygen``, ``seal``, ``unseal``, ``inspect``, ``verify``.

Each command parses flags and calls one function of :mod:`modelseal.owner`; errors are
:mod:`modelseal.errors` types that ``modelseal.cli.main`` maps to exit codes. Progress bars
(rich, the ``owner`` extra) appear only when stderr is a terminal.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from modelseal.cli._options import hide_names_option, sealed_format_options
from modelseal.errors import Error
from modelseal.owner import keys, sealing

__all__ = ["inspect", "keygen", "seal", "unseal", "verify"]


def _human(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{n} B"
        value /= 1024
    return f"{n} B"


@contextlib.contextmanager
def _progress(label: str, total: int) -> Iterator[Callable[[int], None] | None]:
    """A rich progress bar with throughput on a TTY; nothing otherwise."""
    if not sys.stderr.isatty() or total <= 0:
        yield None
        return
    try:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
    except ImportError:  # the `owner` extra is not installed: stay quiet
        yield None
        return
    from rich.console import Console

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


@contextlib.contextmanager
def _os_errors() -> Iterator[None]:
    """Turn unexpected OS errors (disk full, I/O error) into one line instead of a traceback."""
    try:
        yield
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise Error(f"{exc.strerror or exc}{where}") from exc


_key_option = click.option(
    "--key",
    "key_file",
    required=True,
    envvar="MODELSEAL_KEY",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Key file written by `modelseal keygen` (base64url, 32 bytes).",
)
_workers_option = click.option(
    "--workers",
    default=2,
    show_default=True,
    envvar="MODELSEAL_WORKERS",
    type=click.IntRange(1, 64),
    help="Threads for AES-GCM (it releases the GIL).",
)
_EXIT_CODES = (
    "Exit codes: 0 ok; 2 usage (bad flag, bad key file, DST exists without --force, DST "
    "overlapping SRC, unsupported source file); 3 SRC or key file not found; 5 wrong key or "
    "sealed data modified, truncated or not matching its manifest (nothing is written)."
)


def _output_option(text: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``-o/--output DST`` of seal and unseal (their help texts differ)."""
    return click.option(
        "-o", "--output", "dst", required=True, type=click.Path(path_type=Path), help=text
    )


_force_option = click.option(
    "--force", is_flag=True, help="Replace DST if it already exists (still atomically)."
)


@click.command()
@click.option(
    "-o",
    "--output",
    required=True,
    envvar="MODELSEAL_OUTPUT",
    type=click.Path(dir_okay=False, path_type=Path),
    help="New key file (created with mode 0600; never overwritten).",
)
def keygen(output: Path) -> None:
    """Generate a new random 32-byte model key (DEK) into a key file."""
    with keys.generate_key() as key, _os_errors():
        keys.write_key_file(output, key)
    click.echo(f"wrote a new 32-byte key to {output} (mode 0600); keep it safe")


@click.command(epilog=_EXIT_CODES)
@click.argument("src", type=click.Path(path_type=Path))
@_output_option(
    "New file or directory to write; an existing directory receives a sealed file as "
    "<name>.sealed (<name>.enc for CNAP)."
)
@_key_option
@click.option(
    "--key-id",
    envvar="MODELSEAL_KEY_ID",
    help="KBS resource path of the key, e.g. models/llama3-8b/v1 (required for v1).",
)
@sealed_format_options
@click.option("--model", envvar="MODELSEAL_MODEL_ID", help="Model id recorded in the headers.")
@click.option(
    "--model-version", envvar="MODELSEAL_MODEL_VERSION", help="Version recorded in the manifest."
)
@click.option(
    "--seal-tensors",
    "tensors",
    multiple=True,
    metavar="GLOB",
    help="Partial sealing of a .safetensors file: encrypt only tensors matching GLOB "
    "(repeatable, e.g. 'lm_head.*'); the output stays a loadable safetensors file.",
)
@click.option(
    "--seal-last-layers",
    "last_layers",
    type=click.IntRange(0),
    default=0,
    help="Partial sealing: also encrypt every tensor of the last N numbered layers.",
)
@hide_names_option
@_workers_option
@_force_option
def seal(
    src: Path,
    dst: Path,
    key_file: Path,
    key_id: str | None,
    fmt: str,
    segment_size: int,
    model: str | None,
    model_version: str | None,
    tensors: tuple[str, ...],
    last_layers: int,
    hide_names: bool,
    workers: int,
    force: bool,
) -> None:
    """Seal (encrypt) a model file or model directory SRC into -o DST.

    A directory becomes a directory of <path>.sealed files plus a sealed manifest, and the
    model digest to register at the KBS is printed. Symlinks to files are followed;
    symlinked directories, special files and non-UTF-8 names are refused; empty
    directories are not recorded. Output is atomic: DST appears only when complete.

    \b
    Example:
      modelseal seal ./llama -o ./llama.sealed --key model.key --key-id models/llama/v1
    """
    if tensors or last_layers:
        if fmt != "v1":
            raise click.UsageError("--seal-tensors/--seal-last-layers cannot be used with cnap")
        fmt = "partial"
    with keys.read_key_file(key_file) as dek, _os_errors():
        total = sealing.progress_total(src, sealed=False)
        with _progress("sealing", total) as progress:
            options = sealing.SealOptions(
                key_id=key_id,
                segment_size=segment_size,
                model=model,
                workers=workers,
                progress=progress,
                hide_names=hide_names,
            )
            result = sealing.seal(
                src,
                dst,
                dek,
                options,
                fmt="cnap" if fmt == "cnap" else "partial" if fmt == "partial" else "v1",
                version=model_version,
                overwrite=force,
                tensors=tensors,
                last_layers=last_layers,
            )
    if isinstance(result, sealing.SealedModel):
        click.echo(
            f"sealed {len(result.files)} files ({_human(result.manifest.total_size)}) "
            f"into {result.directory}"
        )
        click.echo(f"model digest: {result.model_digest}")
    else:
        click.echo(
            f"sealed {src} ({_human(result.size)}) into {result.path} [{result.format}, "
            f"{_human(result.sealed_size)}]"
        )


@click.command(epilog=_EXIT_CODES)
@click.argument("src", type=click.Path(path_type=Path))
@_output_option(
    "New file or directory to write (plaintext, mode 0600 / 0700); an existing directory "
    "receives a single file under its original name."
)
@_key_option
@_workers_option
@_force_option
def unseal(src: Path, dst: Path, key_file: Path, workers: int, force: bool) -> None:
    """Unseal (decrypt and verify) a sealed file or model directory SRC into -o DST.

    The format (v1, CNAP or partially sealed safetensors) is detected. A directory is
    checked against its sealed manifest (missing, extra, swapped or rolled-back files are
    refused, naming the file). Nothing appears at DST unless everything verified.

    \b
    Example:
      modelseal unseal ./llama.sealed -o /dev/shm/llama --key model.key
    """
    with keys.read_key_file(key_file) as dek, _os_errors():
        total = sealing.progress_total(src, sealed=True)
        with _progress("unsealing", total) as progress:
            result = sealing.unseal(
                src, dst, dek, workers=workers, progress=progress, overwrite=force
            )
    click.echo(
        f"unsealed {result.files} file(s) ({_human(result.size)}, {result.format}) "
        f"into {result.path}"
    )
    if result.model_digest:
        click.echo(f"model digest: {result.model_digest}")


@click.command()
@click.argument("src", type=click.Path(path_type=Path))
def inspect(src: Path) -> None:
    """Print the header(s) of a sealed file or directory as JSON; no key needed."""
    with _os_errors():
        info = sealing.inspect(src)
    click.echo(json.dumps(info, indent=2, sort_keys=True))


@click.command(epilog=_EXIT_CODES)
@click.argument("src", type=click.Path(path_type=Path))
@_key_option
@_workers_option
def verify(src: Path, key_file: Path, workers: int) -> None:
    """Authenticate every byte of a sealed file or directory; writes nothing."""
    with keys.read_key_file(key_file) as dek, _os_errors():
        total = sealing.progress_total(src, sealed=True)
        with _progress("verifying", total) as progress:
            result = sealing.verify(src, dek, workers=workers, progress=progress)
    click.echo(f"OK: {result.files} file(s), {_human(result.size)} authenticated ({result.format})")
    if result.model_digest:
        click.echo(f"model digest: {result.model_digest}")
