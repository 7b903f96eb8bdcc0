"""``modelseal registry serve``: the model registry (records + sealed blobs, never keys)."""

from __future__ import annotations

from pathlib import Path

import click

from modelseal.registry.settings import DEFAULT_MAX_BLOB_SIZE, DEFAULT_PORT


@click.group()
def registry() -> None:
    """Model registry: serves model info and sealed blobs; holds no keys."""


@registry.command()
@click.option(
    "--data-dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Records, upload token and (by default) blobs live here.",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--blob-store",
    default=None,
    help="Blob store URL: a path, file:///path or s3://bucket/prefix?endpoint=URL "
    "(default: DATA_DIR/blobs).",
)
@click.option(
    "--public-url",
    default=None,
    help="Base URL clients reach this registry by (default: the URL of each request).",
)
@click.option(
    "--max-blob-size",
    default=DEFAULT_MAX_BLOB_SIZE,
    show_default=True,
    type=click.IntRange(1),
    help="Largest accepted upload in bytes.",
)
@click.option("--tls-cert", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--tls-key", type=click.Path(dir_okay=False, exists=True, path_type=Path))
def serve(
    data_dir: Path,
    host: str,
    port: int,
    blob_store: str | None,
    public_url: str | None,
    max_blob_size: int,
    tls_cert: Path | None,
    tls_key: Path | None,
) -> None:
    """Serve model records and sealed blobs over HTTP(S).

    The upload token is created on first start in DATA_DIR/upload-token (mode 0600);
    publishers pass it as --registry-token.
    """
    from modelseal.registry.server import serve as run
    from modelseal.registry.settings import RegistrySettings

    settings = RegistrySettings(
        data_dir=data_dir,
        host=host,
        port=port,
        blob_store_url=blob_store,
        public_url=public_url,
        max_blob_size=max_blob_size,
        tls_cert=tls_cert,
        tls_key=tls_key,
    )
    run(settings)
