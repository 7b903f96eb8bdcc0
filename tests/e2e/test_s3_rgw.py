"""The S3 blob store's contract (tests/unit/blobstore/test_s3.py, written against moto's
mock) run against a real S3 server: Ceph RGW on loopback (tests/rgw.py).

Every test here is in one xdist group, so a run starts one RGW cluster."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from modelseal.blobstore.s3 import S3BlobStore
from tests.rgw import RgwServer
from tests.unit.blobstore.test_s3 import (  # the same tests, collected again here
    test_hostile_metadata_in_the_bucket_is_a_backend_error,
    test_limits_and_digest_keep_the_old_blob,
    test_missing_and_invalid,
    test_replaced_blob_is_not_mixed_into_a_read,
    test_small_and_multipart_roundtrip,
)

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("rgw")]

__all__ = [
    "test_hostile_metadata_in_the_bucket_is_a_backend_error",
    "test_limits_and_digest_keep_the_old_blob",
    "test_missing_and_invalid",
    "test_replaced_blob_is_not_mixed_into_a_read",
    "test_small_and_multipart_roundtrip",
]


@pytest.fixture
def store(rgw: RgwServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3BlobStore]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", rgw.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", rgw.secret_key)
    bucket = f"b{os.urandom(4).hex()}"
    s = S3BlobStore.from_url(f"s3://{bucket}/reg/prefix?endpoint={rgw.endpoint}")
    s._client.create_bucket(Bucket=bucket)
    s.part_size = 5 << 20
    yield s
    s._client.close()
