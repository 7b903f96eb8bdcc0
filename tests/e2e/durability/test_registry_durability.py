"""``kill -9`` the registry during concurrent blob uploads and version registrations; after
every restart no partial object is visible, no record names a missing or different blob,
and every acknowledged upload and registration is there (registry_driver.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.durability import settings
from tests.e2e.durability.registry_driver import run_registry_durability
from tests.rgw import RgwServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_registry_survives_kill9(tmp_path: Path) -> None:
    _run(tmp_path, kill_points=10)


@pytest.mark.soak
def test_registry_soak(tmp_path: Path) -> None:
    _run(tmp_path, kill_points=settings.SOAK_KILLS, window=(0.2, settings.SOAK_WINDOW))


@pytest.mark.xdist_group("rgw")
def test_registry_on_s3_survives_kill9(
    tmp_path: Path, rgw: RgwServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same on the S3 store (Ceph RGW): what a killed upload leaves in the bucket is
    never visible, and an acknowledged one is never lost or replaced by a cut-off one."""
    _run(tmp_path, kill_points=4, **_s3_registry(rgw, monkeypatch))


@pytest.mark.soak
@pytest.mark.xdist_group("rgw")
def test_registry_on_s3_soak(
    tmp_path: Path, rgw: RgwServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _run(
        tmp_path,
        kill_points=settings.SOAK_KILLS,
        window=(0.2, settings.SOAK_WINDOW),
        **_s3_registry(rgw, monkeypatch),
    )


def _run(tmp_path: Path, *, kill_points: int, **options: Any) -> None:
    report = run_registry_durability(
        tmp_path, kill_points=kill_points, seed=settings.seed(), **options
    )
    print(report.summary())


def _s3_registry(rgw: RgwServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A fresh bucket; the registry and this process's checker get its credentials."""
    import boto3

    env = {k: v for k, v in rgw.env().items() if k.startswith("AWS_")}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    bucket = f"dur-{os.urandom(4).hex()}"
    boto3.client("s3", endpoint_url=rgw.endpoint).create_bucket(Bucket=bucket)
    return {"blob_store": f"s3://{bucket}/reg?endpoint={rgw.endpoint}", "env": env}
