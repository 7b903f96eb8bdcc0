"""The S3 blob store's contract (tests/unit/blobstore/test_s3.py, written against moto's
mock) run against a real S3 server: Ceph RGW on loopback (tests/rgw.py).

Every test here is in one xdist group, so a run starts one RGW cluster."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelseal.blobstore.s3 import S3BlobStore
from tests.e2e.test_registry_http import RegistryServer
from tests.rgw import RgwServer, rgw_store
from tests.unit.blobstore.test_s3 import (  # the same tests, collected again here
    test_an_overwrite_cut_off_before_its_metadata_keeps_the_old_blob,
    test_hostile_metadata_in_the_bucket_is_a_backend_error,
    test_limits_and_digest_keep_the_old_blob,
    test_missing_and_invalid,
    test_refs_of_the_old_layout_and_delete,
    test_replaced_blob_is_not_mixed_into_a_read,
    test_small_and_multipart_roundtrip,
)

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("rgw")]

__all__ = [
    "test_an_overwrite_cut_off_before_its_metadata_keeps_the_old_blob",
    "test_hostile_metadata_in_the_bucket_is_a_backend_error",
    "test_limits_and_digest_keep_the_old_blob",
    "test_missing_and_invalid",
    "test_refs_of_the_old_layout_and_delete",
    "test_replaced_blob_is_not_mixed_into_a_read",
    "test_small_and_multipart_roundtrip",
]


@pytest.fixture
def store(rgw: RgwServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3BlobStore]:
    with rgw_store(rgw, monkeypatch, "reg/prefix") as s:
        s.part_size = 5 << 20
        yield s


@contextlib.contextmanager
def _published_on_s3(
    rgw: RgwServer, tmp_path: Path, model_id: str, files: dict[str, bytes]
) -> Iterator[tuple[RegistryServer, Any, str]]:
    """``files`` published as ``model_id`` to ``registry serve --blob-store s3://...
    --redirect-blobs`` on RGW (with a KBS); yields the registry, an S3 client, the bucket."""
    import boto3

    from tests.e2e.test_publish_e2e import SAMPLE_POLICY, _publish, start_kbs
    from tests.e2e.test_registry_http import start_registry

    bucket = f"models-{os.urandom(4).hex()}"
    s3 = boto3.client(
        "s3",
        endpoint_url=rgw.endpoint,
        aws_access_key_id=rgw.access_key,
        aws_secret_access_key=rgw.secret_key,
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket=bucket)
    s3_env = {k: v for k, v in rgw.env().items() if k.startswith("AWS_")}
    registry = start_registry(
        tmp_path / "registry",
        "--blob-store", f"s3://{bucket}/sealed?endpoint={rgw.endpoint}",
        "--redirect-blobs", "300",
        env=s3_env,
    )  # fmt: skip
    kbs = start_kbs(tmp_path / "kbs")
    try:
        src = tmp_path / "model"
        src.mkdir()
        for rel, data in files.items():
            (src / rel).write_bytes(data)
        policy = tmp_path / "policy.json"
        policy.write_text(json.dumps(SAMPLE_POLICY))
        done = _publish(
            registry, kbs.url, kbs.token, src, "--model-id", model_id, "--policy", str(policy),
            staging=tmp_path / "staging",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        yield registry, s3, bucket
    finally:
        kbs.stop()
        registry.stop()


def test_a_model_on_s3_loads_from_s3_directly(rgw: RgwServer, tmp_path: Path) -> None:
    """``registry serve --blob-store s3://... --redirect-blobs``: publish a model, then the
    loader and the FUSE mount get 307s to presigned S3 URLs and read the sealed bytes from
    RGW itself; the registry (behind a counting relay) carries JSON and redirects only."""
    from modelseal.loader.loader import load_model
    from modelseal.loader.settings import LoaderSettings
    from tests.e2e.tcp_proxy import ThrottlingProxy
    from tests.e2e.test_mount_e2e import start_mount

    files = {"model.safetensors": os.urandom(20 << 20) + b"tail", "config.json": b"{}"}
    with _published_on_s3(rgw, tmp_path, "ons3", files) as (registry, _s3, bucket):
        port = int(registry.url.rsplit(":", 1)[1])
        with ThrottlingProxy(("127.0.0.1", port), bytes_per_second=1 << 40) as relay:
            # a blob GET through the registry is a redirect to a presigned S3 URL
            blob = httpx.get(f"{relay.url}/models/ons3").json()["files"][0]["url"]
            first = httpx.get(blob.replace(registry.url, relay.url), headers={"Range": "bytes=0-3"})
            assert first.status_code == 307
            assert first.headers["location"].startswith(f"{rgw.endpoint}/{bucket}/sealed/")
            dest = tmp_path / "dest"
            settings = LoaderSettings(
                model=f"{relay.url}/models/ons3", tee="sample", dest=dest, allow_disk=True
            )
            receipt = load_model(settings)
            through_registry = relay.downstream_bytes
            for rel, data in files.items():
                assert (dest / rel).read_bytes() == data
            assert receipt.model_digest
            # the 20 MiB went from RGW to the loader; the registry sent JSON and redirects
            assert through_registry < 256 << 10, through_registry
            # the FUSE mount reads its segments from S3 the same way
            mount = start_mount(
                tmp_path / "mount", "--model", f"{relay.url}/models/ons3", "--tee", "sample"
            )
            try:
                for rel, data in files.items():
                    assert (mount.mountpoint / rel).read_bytes() == data
            finally:
                code, _out, err = mount.stop()
            assert code == 0, err
            assert relay.downstream_bytes - through_registry < 256 << 10


def test_an_object_swapped_behind_a_redirect_is_refused(rgw: RgwServer, tmp_path: Path) -> None:
    """Presigned URLs name the object, not its version: bytes written to the bucket between
    the registry's 307 and the loader's GET are what the loader reads. It refuses them,
    because the sealed format authenticates every byte it reads, wherever from: a
    same-length object differing in its last byte, and another sealed file of the same
    model (valid on its own), are both refused with a documented error; the original loads."""
    from modelseal.errors import DecryptionError, IntegrityError
    from modelseal.loader.loader import load_model
    from modelseal.loader.settings import LoaderSettings

    files = {
        "model.safetensors": os.urandom(1 << 20) + b"tail",
        "tokenizer.bin": os.urandom(1 << 20),
    }
    with _published_on_s3(rgw, tmp_path, "swapped", files) as (registry, s3, bucket):
        blob_url = httpx.get(f"{registry.url}/models/swapped").json()["files"][0]["url"]
        assert httpx.get(blob_url, headers={"Range": "bytes=0-3"}).status_code == 307

        def object_of(name: str) -> str:
            """The S3 key of the object the registry's ref for sealed file ``name`` names."""
            (ref,) = [
                o["Key"]
                for o in s3.list_objects_v2(Bucket=bucket, Prefix="sealed/meta/")["Contents"]
                if o["Key"].endswith(f"/{name}.sealed.json")
            ]
            meta = json.loads(s3.get_object(Bucket=bucket, Key=ref)["Body"].read())
            return f"sealed/objects/{meta['object']}"

        target, other = object_of("model.safetensors"), object_of("tokenizer.bin")
        original = s3.get_object(Bucket=bucket, Key=target)["Body"].read()
        flipped = original[:-1] + bytes([original[-1] ^ 1])
        sibling = s3.get_object(Bucket=bucket, Key=other)["Body"].read()

        def load(name: str) -> Path:
            dest = tmp_path / name
            load_model(
                LoaderSettings(
                    model=f"{registry.url}/models/swapped", tee="sample", dest=dest, allow_disk=True
                )
            )
            return dest

        refusals = (
            ("flipped", flipped, DecryptionError, "authentication failed"),
            ("sibling", sibling, IntegrityError, "holds the sealed data of 'tokenizer.bin'"),
        )
        for name, swapped, error, message in refusals:
            s3.put_object(Bucket=bucket, Key=target, Body=swapped)  # behind the registry's back
            with pytest.raises(error, match=message) as refused:
                load(name)
            assert refused.value.exit_code == 5
            assert not (tmp_path / name / "model.safetensors").exists()

        s3.put_object(Bucket=bucket, Key=target, Body=original)
        dest = load("restored")
        for rel, data in files.items():
            assert (dest / rel).read_bytes() == data
