"""``modelseal registry serve`` (the model registry: records + sealed blobs, never keys) and
``registry gc`` (collects blob objects no reference names)."""

from __future__ import annotations

from pathlib import Path

import click

from modelseal.blobstore.base import DEFAULT_GC_MAX_OBJECTS, DEFAULT_GRACE
from modelseal.cli._ops_options import apply_log_format, metrics_endpoint, ops_options
from modelseal.registry.settings import DEFAULT_MAX_BLOB_SIZE, DEFAULT_PORT


@click.group()
def registry() -> None:
    """Model registry: serves model info and sealed blobs; holds no keys."""


@registry.command()
@click.option(
    "--data-dir",
    required=True,
    envvar="MODELSEAL_DATA_DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help="Records, upload token and (by default) blobs live here.",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    envvar="MODELSEAL_HOST",
    help="Listen address.",
)
@click.option(
    "--port",
    default=DEFAULT_PORT,
    show_default=True,
    type=click.IntRange(0, 65535),
    envvar="MODELSEAL_PORT",
    help="Listen port.",
)
@click.option(
    "--blob-store",
    default=None,
    envvar="MODELSEAL_BLOB_STORE",
    help="Blob store URL: a path, file:///path or s3://bucket/prefix?endpoint=URL "
    "(default: DATA_DIR/blobs).",
)
@click.option(
    "--redirect-blobs",
    "redirect_blobs",
    default=None,
    type=click.IntRange(10, 7 * 24 * 3600),
    envvar="MODELSEAL_REDIRECT_BLOBS",
    help="S3 store: answer blob GETs with a 307 to a presigned S3 URL valid this many "
    "seconds, so clients download from S3 directly (the registry leaves the data path).",
)
@click.option(
    "--public-url",
    default=None,
    envvar="MODELSEAL_PUBLIC_URL",
    help="Base URL clients reach this registry by (default: the URL of each request).",
)
@click.option(
    "--max-blob-size",
    default=DEFAULT_MAX_BLOB_SIZE,
    show_default=True,
    type=click.IntRange(1),
    envvar="MODELSEAL_MAX_BLOB_SIZE",
    help="Largest accepted upload in bytes.",
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    envvar="MODELSEAL_TLS_CERT",
    help="PEM certificate chain (serve HTTPS).",
)
@click.option(
    "--tls-key",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    envvar="MODELSEAL_TLS_KEY",
    help="PEM private key of --tls-cert.",
)
@ops_options
def serve(
    data_dir: Path,
    host: str,
    port: int,
    blob_store: str | None,
    redirect_blobs: int | None,
    public_url: str | None,
    max_blob_size: int,
    tls_cert: Path | None,
    tls_key: Path | None,
    log_format: str,
    metrics_port: int | None,
    metrics_host: str,
    metrics_token_file: Path | None,
) -> None:
    """Serve model records and sealed blobs over HTTP(S).

    The upload token is created on first start in DATA_DIR/upload-token (mode 0600);
    publishers pass it as --registry-token.
    """
    from modelseal.registry.server import serve as run
    from modelseal.registry.settings import RegistrySettings

    endpoint = metrics_endpoint(metrics_port, metrics_host, metrics_token_file)
    settings = RegistrySettings(
        data_dir=data_dir,
        host=host,
        port=port,
        blob_store_url=blob_store,
        redirect_blobs=redirect_blobs,
        public_url=public_url,
        max_blob_size=max_blob_size,
        tls_cert=tls_cert,
        tls_key=tls_key,
    )
    # only now that the settings hold: a refused start leaves this process's logging as is
    apply_log_format(log_format)
    run(settings, metrics_endpoint=endpoint)


@registry.command()
@click.option(
    "--data-dir",
    default=None,
    envvar="MODELSEAL_DATA_DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help="The registry's data directory (its blobs are DATA_DIR/blobs unless --blob-store).",
)
@click.option(
    "--blob-store",
    default=None,
    envvar="MODELSEAL_BLOB_STORE",
    help="Blob store URL, as given to `registry serve` (S3: with the same commit-deadline).",
)
@click.option(
    "--grace",
    default=DEFAULT_GRACE,
    show_default=True,
    type=click.FloatRange(0),
    envvar="MODELSEAL_GC_GRACE",
    help="Only objects older than this many seconds (by the store's clock) are collected; "
    "S3 needs at least twice the writers' commit-deadline.",
)
@click.option(
    "--max-objects",
    default=DEFAULT_GC_MAX_OBJECTS,
    show_default=True,
    type=click.IntRange(1),
    envvar="MODELSEAL_GC_MAX_OBJECTS",
    help="Examine at most this many objects in one run (continue with --start-after).",
)
@click.option(
    "--start-after",
    default="",
    envvar="MODELSEAL_GC_START_AFTER",
    help="Continue a capped run: the resume_after value it printed.",
)
@click.option(
    "--dry-run", is_flag=True, default=False, help="Count what would be deleted; delete nothing."
)
@click.option(
    "--json",
    "as_json",
    envvar="MODELSEAL_JSON",
    is_flag=True,
    default=False,
    help="Print the summary as one JSON object.",
)
def gc(
    data_dir: Path | None,
    blob_store: str | None,
    grace: float,
    max_objects: int,
    start_after: str,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Delete blob objects no reference names (left by a crash or a failed upload between
    writing an object and committing it) and abandoned uploads, once older than --grace.

    Safe while the registry serves: see the blob store docs for why an upload in flight is
    never touched.
    """
    import json

    import anyio

    from modelseal.blobstore.base import CollectingStore, GcReport
    from modelseal.blobstore.factory import open_blob_store
    from modelseal.errors import ConfigError

    if data_dir is None and not blob_store:
        raise ConfigError("give --data-dir DIR or --blob-store URL")
    store = open_blob_store(blob_store, default_root=(data_dir or Path(".")) / "blobs")
    if not isinstance(store, CollectingStore):
        raise ConfigError(f"{store!r} cannot collect garbage")

    async def run() -> GcReport:
        try:
            return await store.collect_garbage(
                grace=grace, dry_run=dry_run, max_objects=max_objects, start_after=start_after
            )
        finally:
            await store.aclose()

    report = anyio.run(run)
    if as_json:
        click.echo(json.dumps(report.as_dict(), sort_keys=True))
        return
    verb = "would delete" if dry_run else "deleted"
    click.echo(
        f"scanned {report.scanned} objects: {report.referenced} referenced, {report.young} "
        f"younger than {grace:g} s; {verb} {report.orphans} orphans ({report.orphan_bytes} "
        f"bytes) and {report.stale_uploads} abandoned uploads ({report.stale_upload_bytes} bytes)"
    )
    if report.resume_after is not None:
        click.echo(f"stopped at the cap: continue with --start-after {report.resume_after}")
