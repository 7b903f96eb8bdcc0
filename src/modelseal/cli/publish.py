"""``modelseal publish``: seal, upload, register key and model in one resumable command."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

import click

from modelseal.cli._options import hide_names_option, sealed_format_options
from modelseal.cli._tee_options import aliased, deprecated_alias

__all__ = ["publish"]


class _RichProgress:
    """Progress bars on a TTY (stderr), one line per phase otherwise."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._task: Any = None
        if sys.stderr.isatty():
            try:
                from rich.console import Console
                from rich.progress import (
                    BarColumn,
                    DownloadColumn,
                    Progress,
                    TextColumn,
                    TimeRemainingColumn,
                    TransferSpeedColumn,
                )
            except ImportError:  # the owner extra is absent: plain lines
                return
            self._bar = Progress(
                TextColumn("[bold]{task.description:<14}"),
                BarColumn(),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )

    def __enter__(self) -> _RichProgress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            if et is None:
                self._finish()
            self._bar.stop()

    def _finish(self) -> None:
        if self._task is not None:
            task = next(t for t in self._bar.tasks if t.id == self._task)
            self._bar.update(self._task, completed=task.total)

    def phase(self, name: str, total: int) -> None:
        if self._bar is None:
            click.echo(f"{name}...", err=True)
            return
        self._finish()
        # steps without a byte count (KBS and registry calls) show as one unit of work
        self._task = self._bar.add_task(name, total=max(total, 1))

    def advance(self, n: int) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.advance(self._task, n)

    def note(self, text: str) -> None:
        if self._bar is not None:
            self._bar.console.print(text)
        else:
            click.echo(text, err=True)


@click.command()
@click.argument("src", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--registry",
    "registry_url",
    required=True,
    envvar="MODELSEAL_REGISTRY",
    help="Registry base URL (modelseal registry serve).",
)
@click.option(
    "--kbs-url",
    "kbs_url",
    envvar="MODELSEAL_KBS_URL",
    help="KBS base URL (its admin API registers the key).  [required]",
)
@deprecated_alias(
    "--kbs", "--kbs-url", "kbs_url", envvar="MODELSEAL_KBS", new_envvar="MODELSEAL_KBS_URL"
)
@click.option(
    "--token",
    required=True,
    envvar="MODELSEAL_TOKEN",
    help="KBS admin bearer token (modelseal kbs token).",
)
@click.option(
    "--model-id",
    required=True,
    envvar="MODELSEAL_MODEL_ID",
    help="Model id: [A-Za-z0-9_][A-Za-z0-9_.-]*.",
)
@click.option(
    "--version",
    default="v1",
    show_default=True,
    envvar="MODELSEAL_VERSION",
    help="Model version (immutable once published).",
)
@click.option(
    "--policy",
    "policy_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    envvar="MODELSEAL_POLICY",
    help="Release policy (YAML or JSON); without one the KBS denies every release.",
)
@click.option(
    "--registry-token",
    envvar="MODELSEAL_REGISTRY_TOKEN",
    help="Registry upload token (content of <registry data dir>/upload-token).",
)
@click.option(
    "--key-id",
    default=None,
    envvar="MODELSEAL_KEY_ID",
    help="KBS key id repo/type/tag  [default: models/<model-id>/<version>]",
)
@sealed_format_options
@hide_names_option
@click.option(
    "--save-key",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="MODELSEAL_SAVE_KEY",
    help="Keep the data key in this file (0600) so an interrupted publish can "
    "resume; an existing file is used as the key.",
)
@click.option(
    "--kbs-public-url",
    default=None,
    envvar="MODELSEAL_KBS_PUBLIC_URL",
    help="KBS URL loaders use, written into the model info  [default: --kbs-url]",
)
@click.option("--name", default=None, help="Model name in the model info [default: model id].")
@click.option("--framework", default=None, help="e.g. safetensors, onnx, pytorch [guessed].")
@click.option("--target", default=None, help="e.g. text-generation, object-detection.")
@click.option("--dtype", default=None, help="e.g. float16, int8.")
@click.option(
    "--staging-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="MODELSEAL_STAGING_DIR",
    help="Where sealed files wait for upload  "
    "[default: ~/.cache/modelseal/publish/<model>/<version>]",
)
@click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True)
@click.option(
    "--kbs-ca",
    type=click.Path(dir_okay=False, exists=True),
    envvar="MODELSEAL_KBS_CA",
    help="PEM CA bundle for an https KBS URL.",
)
@click.option(
    "--registry-ca",
    type=click.Path(dir_okay=False, exists=True),
    envvar="MODELSEAL_REGISTRY_CA",
    help="PEM CA bundle for an https registry URL.",
)
@deprecated_alias(
    "--ca",
    "--kbs-ca and --registry-ca",
    "ca",
    envvar="MODELSEAL_CA",
    new_envvar="MODELSEAL_KBS_CA and MODELSEAL_REGISTRY_CA",
    type=click.Path(dir_okay=False, exists=True),
)
def publish(
    src: Path,
    registry_url: str,
    kbs_url: str | None,
    token: str,
    model_id: str,
    version: str,
    policy_file: Path | None,
    registry_token: str | None,
    key_id: str | None,
    segment_size: int,
    save_key: Path | None,
    fmt: str,
    hide_names: bool,
    kbs_public_url: str | None,
    name: str | None,
    framework: str | None,
    target: str | None,
    dtype: str | None,
    staging_dir: Path | None,
    workers: int,
    kbs_ca: str | None,
    registry_ca: str | None,
) -> None:
    """Seal SRC (a file or model directory) with a fresh key, upload it to the registry,
    register the key with its release policy and the model digest in the KBS, then register
    the model. Prints the model info JSON.

    Re-running after a failure resumes only with --save-key (same key, staged ciphertext,
    uploaded blobs skipped); without it a re-run starts over with a new key.
    """
    from modelseal.owner.kbs_admin import KbsAdminClient
    from modelseal.owner.publish import PublishRequest
    from modelseal.owner.publish import publish as run
    from modelseal.policy.document import parse_policy_text

    kbs_url = aliased("kbs_url", kbs_url)
    if not kbs_url:
        raise click.UsageError("Missing option '--kbs-url'.")
    # the retired --ca named one bundle for both servers
    kbs_ca = aliased("ca", kbs_ca)
    registry_ca = aliased("ca", registry_ca)
    policy = None
    if policy_file is not None:
        policy = parse_policy_text(policy_file.read_bytes()).to_document()
    request = PublishRequest(
        source=src,
        registry_url=registry_url,
        kbs_url=kbs_url,
        model_id=model_id,
        version=version,
        registry_token=registry_token,
        key_id=key_id,
        policy=policy,
        segment_size=segment_size,
        save_key=save_key,
        format="cnap" if fmt == "cnap" else "v1",
        public_kbs_url=kbs_public_url,
        name=name,
        framework=framework,
        target=target,
        dtype=dtype,
        staging_dir=staging_dir,
        workers=workers,
        verify=registry_ca or True,
        hide_names=hide_names,
    )
    with KbsAdminClient(kbs_url, token, verify=kbs_ca or True) as kbs, _RichProgress() as progress:
        result = run(request, kbs, progress=progress)
    state = "published" if result.created else "already published (nothing changed)"
    click.echo(
        f"{model_id} {version} {state}: key {result.key_id}, "
        f"{len(result.uploaded)} blob(s) uploaded ({result.uploaded_bytes} bytes), "
        f"{len(result.skipped)} skipped",
        err=True,
    )
    click.echo(json.dumps(result.model.to_data(), indent=2))
