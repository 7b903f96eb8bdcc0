"""``modelseal load``: the confidential model loader (Kubernetes initContainer entry point).

Every flag also reads its ``MODELSEAL_*`` variable (docs/guides/loader.md), so a Pod spec
needs only ``env:``. Exit codes: 0 ok, 2 config, 3 not found, 4 attestation/policy, 5 integrity,
6 unsafe destination, 75 transient.
"""

from __future__ import annotations

import gc
import json
import logging
import signal
import sys
from pathlib import Path
from types import FrameType

import click

from modelseal.cli._tee_options import attester_options, composite_tee_choice, spec_options
from modelseal.tee import registry


def _attester_settings(values: dict[str, str | None]) -> dict[str, object]:
    """Attester option values as loader settings: paths become ``Path``, URLs stay text."""
    kinds = {spec.name: spec.type for spec in attester_options()}
    return {
        name: (Path(value) if kinds.get(name) in ("path", "dir") else value) if value else None
        for name, value in values.items()
    }


def _relay_options() -> str:
    """The evidence relays' options and ``--tee`` values, for help texts."""
    relays = [p for p in registry.PLUGINS.values() if p.relay]
    flags = [i.option.flag for p in relays for i in p.attester_inputs]
    return ", ".join([*flags, *(f"--tee {p.name}" for p in relays)])


@click.command()
@click.option(
    "--model", envvar="MODELSEAL_MODEL", help="Registry model URL or CNAP model-info URL."
)
@click.option(
    "--dest",
    envvar="MODELSEAL_DEST",
    type=click.Path(path_type=Path),
    help="Memory-backed destination directory [default: /models].",
)
@click.option(
    "--tee",
    envvar="MODELSEAL_TEE",
    type=composite_tee_choice(registry.attestable_kinds(), "auto"),
    help="TEE kind to attest as, or 'auto' [default]; add GPUs with '+' "
    f"({registry.COMPOSITE_EXAMPLE}).",
)
@click.option("--kbs-url", envvar="MODELSEAL_KBS_URL", help="KBS base URL (else from model info).")
@click.option(
    "--kbs-ca",
    envvar="MODELSEAL_KBS_CA",
    type=click.Path(path_type=Path),
    help="PEM CA bundle for the KBS.",
)
@click.option(
    "--registry-ca",
    envvar="MODELSEAL_REGISTRY_CA",
    type=click.Path(path_type=Path),
    help="PEM CA bundle for the registry.",
)
@click.option(
    "--allow-disk/--no-allow-disk",
    envvar="MODELSEAL_ALLOW_DISK",
    default=None,
    help="Allow a disk-backed destination (plaintext on disk!).",
)
@click.option(
    "--workers",
    envvar="MODELSEAL_WORKERS",
    type=int,
    help="Parallel download/decrypt workers [default: 4].",
)
@click.option(
    "--model-digest",
    envvar="MODELSEAL_MODEL_DIGEST",
    help="Expected model digest sha256:<hex> (e.g. from init-data).",
)
@spec_options(attester_options())
@click.option(
    "--init-data",
    envvar="MODELSEAL_INIT_DATA",
    type=click.Path(path_type=Path),
    help="Init-data TOML this TEE was launched with (sent to the KBS; its model_digest is "
    "enforced).",
)
@click.option(
    "--timeout",
    envvar="MODELSEAL_TIMEOUT",
    type=float,
    help="Seconds within which each small answer (model info, header, KBS) must be complete, "
    "and the longest stall of a download [default: 30].",
)
@click.option(
    "--file-mode",
    envvar="MODELSEAL_FILE_MODE",
    help="Octal permissions of the plaintext files; directories get the matching x bits "
    "[default: 0640, directories 0750: the inference container reads the model through "
    "the pod's shared group (fsGroup)]. 0600 if it runs as the loader's user.",
)
@click.option(
    "--group",
    envvar="MODELSEAL_GROUP",
    help="Group (name or id) given to every placed file and directory, for a loader running "
    "as root next to a server of another user without fsGroup [default: unchanged].",
)
@click.option(
    "--key-source",
    envvar="MODELSEAL_KEY_SOURCE",
    type=click.Choice(["kbs", "cdh"]),
    help="Where the model key comes from: 'kbs' (attest and run RCAR with the KBS, "
    "default) or 'cdh' (the CoCo Confidential Data Hub, which attests for the pod).",
)
@click.option(
    "--cdh-url",
    envvar="MODELSEAL_CDH_URL",
    help="guest-components REST API of the CDH for --key-source cdh "
    "[default: http://127.0.0.1:8006].",
)
@click.option(
    "--measure/--no-measure",
    envvar="MODELSEAL_MEASURE",
    default=None,
    help="After the load, record the model digest in the TEE's runtime measurements "
    f"through the CoCo Attestation Agent (when {_relay_options()} or --key-source cdh "
    "gives one) [default: on].",
)
@click.option(
    "--retries",
    envvar="MODELSEAL_RETRIES",
    type=click.IntRange(min=1),
    help="Attempts per request on transient failures (unreachable KBS, CDH or registry, "
    "5xx) before exit 75 [default: 8].",
)
@click.option(
    "--metrics-textfile",
    envvar="MODELSEAL_METRICS_TEXTFILE",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write this run's metrics (bytes, result, authentication failures) to this *.prom "
    "file for the node exporter's textfile collector; counters continue across runs.",
)
@click.option("--quiet", "-q", is_flag=True, help="Print only errors (no warnings either).")
def load(
    model: str | None,
    dest: Path | None,
    tee: str | None,
    kbs_url: str | None,
    kbs_ca: Path | None,
    registry_ca: Path | None,
    allow_disk: bool | None,
    workers: int | None,
    model_digest: str | None,
    init_data: Path | None,
    timeout: float | None,
    file_mode: str | None,
    group: str | None,
    key_source: str | None,
    cdh_url: str | None,
    measure: bool | None,
    retries: int | None,
    metrics_textfile: Path | None,
    quiet: bool,
    **attester_values: str | None,
) -> None:
    """Attest, fetch the model key, decrypt the model into a memory-backed directory."""
    # httpx imports its optional command-line client (rich, pygments: ~70 ms) when it can;
    # the loader process never needs it, and the TEE image should not run it
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    if quiet:  # errors only: no retry notices, no insecure-TEE warning
        # also the package's own logger, in case something in this process gave it a level
        for name in ("", "modelseal"):
            logging.getLogger(name).setLevel(logging.ERROR)
    from modelseal.loader.destination import FileModes
    from modelseal.loader.loader import load_model
    from modelseal.loader.settings import LoaderSettings

    modes = FileModes.parse(file_mode) if file_mode else None
    if group:
        modes = (modes or FileModes()).with_group(group)
    settings = LoaderSettings.from_options(
        model=model,
        dest=dest,
        tee=tee,
        kbs_url=kbs_url,
        kbs_ca=kbs_ca,
        registry_ca=registry_ca,
        allow_disk=allow_disk,
        workers=workers,
        model_digest=model_digest,
        **_attester_settings(attester_values),
        init_data=init_data,
        timeout=timeout,
        file_modes=modes,
        key_source=key_source,
        cdh_url=cdh_url,
        measure=measure,
        retries=retries,
        metrics_textfile=metrics_textfile,
    )
    # Kubernetes stops an initContainer with SIGTERM: unwind like Ctrl-C so the private
    # temp dir (partial plaintext) is wiped before the process exits
    signal.signal(signal.SIGTERM, _interrupt)
    # the import-time heap (modules, typing objects) is permanent: freezing it
    # keeps the collector from re-scanning it during the load and, frozen again at the
    # end, from spending 0.1-0.3 s of an initContainer's exit on collections that free
    # nothing of interest (buffers and keys are wiped explicitly, not by finalizers)
    gc.freeze()
    receipt = load_model(settings)
    gc.freeze()
    if not quiet:
        summary = {
            "model": receipt.model_id,
            "version": receipt.version,
            "model_digest": receipt.model_digest,
            "files": len(receipt.files),
            "bytes": receipt.bytes,
            "tee": receipt.tee,
            "destination": receipt.destination,
            "seconds": round(sum(receipt.timings.values()), 3),
        }
        json.dump(summary, sys.stdout)
        sys.stdout.write("\n")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt
