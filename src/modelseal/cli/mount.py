"""``modelseal mount``: serve a sealed model as a read-only FUSE filesystem, decrypting on read.

The model and key options are the loader's own (``modelseal load``'s option objects are
reused, so every TEE and key-source option and its ``MODELSEAL_*`` variable works the same
here); ``--sealed DIR`` replaces ``--model`` for a sealed directory on this machine.
Exit codes as for ``load``: 0 unmounted cleanly, 2 config, 3 not found, 4 attestation or
policy, 5 integrity, 75 transient.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from modelseal._internal import environment
from modelseal.cli._loader_options import loader_overrides, share_loader_options
from modelseal.cli._ops_options import apply_log_format, metrics_endpoint, ops_options


def _mib(value: int) -> int:
    return value << 20


@click.command()
@click.option(
    "--sealed",
    "sealed_dir",
    envvar="MODELSEAL_SEALED",
    type=click.Path(file_okay=False, path_type=Path),
    help="A sealed model directory on this machine instead of --model (needs --kbs-url).",
)
@click.option(
    "--mountpoint",
    envvar="MODELSEAL_MOUNTPOINT",
    required=True,
    # checked by check_mountpoint, which also clears a dead mount of ours from it (where
    # Click's own access check would fail with ENOTCONN)
    type=click.Path(file_okay=False, readable=False, path_type=Path),
    help="Empty directory to mount the plaintext model on.",
)
@click.option(
    "--ready-file",
    envvar="MODELSEAL_READY_FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Written (JSON) once the mount serves, removed at unmount: for a Kubernetes probe.",
)
@click.option(
    "--cache-mib",
    envvar="MODELSEAL_CACHE_MIB",
    type=click.IntRange(16, 1 << 20),
    default=64,
    show_default=True,
    help="Decrypted segments kept in the mount process (the page cache holds more).",
)
@click.option(
    "--readahead-mib",
    envvar="MODELSEAL_READAHEAD_MIB",
    type=click.IntRange(0, 1 << 20),
    default=32,
    show_default=True,
    help="Read-ahead window after a sequential reader (cached or in flight), in 16 MiB runs.",
)
@click.option(
    "--allow-other/--no-allow-other",
    envvar="MODELSEAL_ALLOW_OTHER",
    default=None,
    help="Let other users (another container's) read the mount [default: on as root].",
)
@click.option(
    "--background",
    envvar="MODELSEAL_BACKGROUND",
    is_flag=True,
    help="Return once the mount serves (needs --ready-file), leaving it running in a child "
    "process whose pid is printed; SIGTERM to that pid unmounts [default: foreground].",
)
@click.option("--quiet", "-q", is_flag=True, help="Print only errors.")
@ops_options
def mount(
    sealed_dir: Path | None,
    mountpoint: Path,
    ready_file: Path | None,
    cache_mib: int,
    readahead_mib: int,
    allow_other: bool | None,
    background: bool,
    quiet: bool,
    log_format: str,
    metrics_port: int | None,
    metrics_host: str,
    metrics_token_file: Path | None,
    **loader_values: Any,
) -> None:
    """Attest, fetch the model key, serve the model decrypted on read at MOUNTPOINT."""
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    if quiet:
        logging.getLogger().setLevel(logging.ERROR)
    apply_log_format(log_format)
    from modelseal.loader.measure import record_load
    from modelseal.loader.mount.opening import open_model
    from modelseal.loader.mount.serve import (
        STOP_SIGNALS,
        MountOptions,
        check_mountpoint,
        preload_binding,
        serve,
        start_metrics,
    )
    from modelseal.loader.receipt import Timings
    from modelseal.loader.settings import LoaderSettings

    settings = LoaderSettings.from_options(sealed_dir=sealed_dir, **loader_overrides(loader_values))
    options = MountOptions(
        mountpoint=mountpoint,
        ready_file=ready_file,
        cache_bytes=_mib(cache_mib),
        readahead_bytes=_mib(readahead_mib),
        workers=settings.workers,
        allow_other=os.geteuid() == 0 if allow_other is None else allow_other,
    )
    endpoint = metrics_endpoint(metrics_port, metrics_host, metrics_token_file)
    check_mountpoint(mountpoint)  # before attesting: a wrong path costs nothing
    if background:
        _background(ready_file, mountpoint)
        return
    # bound before attesting too: a port in use costs no key release and no measurement
    exporter = start_metrics(endpoint) if endpoint is not None else None
    try:
        preload_binding()
        opened = open_model(settings, Timings())
        # as a load does: later evidence then shows this model in use (a release policy
        # may require it); a failure to record is a warning, as for a load
        measured = record_load(settings, opened.manifest.digest)
        # blocked for the rest of the process: serve's watcher takes them while mounted,
        # and one arriving after the unmount must not cut the clean-up and the report short
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        stats = serve(opened, options, exporter=exporter)
    finally:
        if exporter is not None:
            exporter.close()
    if not quiet:
        report: dict[str, object] = {
            "model_digest": opened.manifest.digest,
            "unmounted": True,
            **stats,
        }
        if measured is not None:
            report["runtime_measurement"] = measured
        json.dump(report, sys.stdout)
        sys.stdout.write("\n")


def _background(ready_file: Path | None, mountpoint: Path) -> None:
    """Run this same command in the foreground in a child (own session, so the shell's
    Ctrl-C does not reach it; stderr shared for its log), wait until its ready file names
    it, print its pid. If the child ends first, exit with its code."""
    if ready_file is None:
        raise click.UsageError("--background needs --ready-file (how this process knows)")
    with contextlib.suppress(FileNotFoundError):
        ready_file.unlink()  # a marker left by a killed earlier mount proves nothing
    argv = [a for a in sys.argv[1:] if a != "--background"]
    child = subprocess.Popen(
        [sys.executable, "-c", "from modelseal.cli import main; main()", *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        env=environment.child_environment(extra={"MODELSEAL_BACKGROUND": "false"}),
        start_new_session=True,
    )
    while True:
        code = child.poll()
        if code is not None:
            sys.exit(code)
        with contextlib.suppress(FileNotFoundError, ValueError):
            if json.loads(ready_file.read_text(encoding="utf-8")).get("pid") == child.pid:
                break
        time.sleep(0.05)
    json.dump({"pid": child.pid, "mountpoint": str(mountpoint)}, sys.stdout)
    sys.stdout.write("\n")


share_loader_options(
    mount,
    # a load's metrics file counts a load's bytes; the mount reports its counters at unmount
    exclude={"metrics_textfile"},
    help_texts={
        "measure": "Once the model's manifest is authenticated, before the mount serves, "
        "record the model digest in the TEE's runtime measurements through the Attestation "
        "Agent, when one is configured (its URL, its --tee kind or --key-source cdh) "
        "[default: on].",
    },
)
