"""Garbage collection of blob objects no reference names (S3 on moto, local directory):
only old unreferenced objects and abandoned uploads go, never a referenced blob or an
upload in flight; capped runs resume; a writer past its commit deadline never commits."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner

from modelseal.blobstore.base import CollectingStore, GcReport
from modelseal.blobstore.local import LocalBlobStore
from modelseal.blobstore.s3 import S3BlobStore
from modelseal.cli import cli
from modelseal.errors import BackendError, ConfigError, TransientError

moto_server = pytest.importorskip("moto.server")

#: seconds: writers commit within DEADLINE of starting, collection spares younger than GRACE.
#: S3 times have one-second resolution (an object can look up to a second older than it is)
#: and a loaded machine adds its own delays, so a "young" object must be able to age by a
#: couple of seconds before a check and still be young.
DEADLINE, GRACE = 0.5, 3.0


@pytest.fixture
def url(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    bucket = f"b{os.urandom(4).hex()}"
    return f"s3://{bucket}/reg?endpoint={endpoint}&commit-deadline={DEADLINE}"


@pytest.fixture
def store(url: str) -> Iterator[S3BlobStore]:
    s = S3BlobStore.from_url(url)
    s._client.create_bucket(Bucket=s.bucket)
    yield s
    s._client.close()


class Killed(BaseException):
    """Stands for SIGKILL between an object and its ref: nothing after it runs."""


async def _aiter(chunks: Iterable[bytes], pause: float = 0.0) -> AsyncIterator[bytes]:
    for c in chunks:
        if pause:
            await anyio.sleep(pause)
        yield c


async def _orphan(store: S3BlobStore, key: str, data: bytes) -> None:
    """An upload killed after its object, before its ref (the commit point)."""
    real = store._client.put_object

    def dies_at_the_ref(**kwargs: object) -> object:
        if str(kwargs["Key"]).endswith(".json"):
            raise Killed
        return real(**kwargs)

    store._client.put_object = dies_at_the_ref  # type: ignore[method-assign]
    try:
        with pytest.raises(Killed):
            await store.put(key, _aiter([data]))
    finally:
        store._client.put_object = real  # type: ignore[method-assign]


def _objects(store: S3BlobStore) -> set[str]:
    listed = store._client.list_objects_v2(Bucket=store.bucket, Prefix=store._join("objects"))
    return {o["Key"] for o in listed.get("Contents", [])}


async def _read_all(store: S3BlobStore | LocalBlobStore, key: str) -> bytes:
    info = await store.stat(key)
    return b"".join([c async for c in store.open_range(info, 0, info.size)])


def test_s3_collects_old_orphans_and_abandoned_uploads_only(store: S3BlobStore) -> None:
    async def main() -> None:
        assert isinstance(store, CollectingStore)
        kept = os.urandom(1000)
        await store.put("m/v1/kept", _aiter([kept]))
        await _orphan(store, "m/v1/kept", b"B" * 700)
        foreign = store._join("objects", "not-ours.txt")
        store._client.put_object(Bucket=store.bucket, Key=foreign, Body=b"x")
        abandoned = store._client.create_multipart_upload(
            Bucket=store.bucket, Key=store._join("objects", "ab" * 16)
        )
        for number, size in [(1, 1234), (2, 4321)]:  # what aborting it frees is reported
            store._client.upload_part(
                Bucket=store.bucket,
                Key=store._join("objects", "ab" * 16),
                UploadId=abandoned["UploadId"],
                PartNumber=number,
                Body=b"p" * size,
            )
        before = _objects(store)
        await anyio.sleep(GRACE + 1.2)  # S3 times have one-second resolution
        await _orphan(store, "m/v1/other", b"Y" * 10)  # young: an upload "in flight"
        dry = await store.collect_garbage(grace=GRACE, dry_run=True)
        assert (dry.orphans, dry.orphan_bytes, dry.referenced, dry.young) == (1, 700, 1, 1)
        assert (dry.stale_uploads, dry.stale_upload_bytes) == (1, 1234 + 4321)
        assert dry.resume_after is None
        assert before <= _objects(store)  # a dry run deletes nothing
        done = await store.collect_garbage(grace=GRACE)
        assert (done.orphans, done.orphan_bytes, done.referenced, done.young) == (1, 700, 1, 1)
        after = _objects(store)
        assert len(before - after) == 1  # exactly the old orphan
        assert foreign in after
        assert await _read_all(store, "m/v1/kept") == kept
        uploads = store._client.list_multipart_uploads(Bucket=store.bucket)
        assert abandoned["UploadId"] not in {u["UploadId"] for u in uploads.get("Uploads", [])}
        again = await store.collect_garbage(grace=GRACE)
        assert (again.orphans, again.stale_uploads) == (0, 0)

    anyio.run(main)


def test_s3_an_upload_whose_parts_cannot_be_listed_is_still_aborted(
    store: S3BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The part sizes only inform the report: an upload aborted by someone else between the
    listing and ``list_parts`` (NoSuchUpload) does not stop the collection."""
    from botocore.exceptions import ClientError

    key = store._join("objects", "cd" * 16)
    abandoned = store._client.create_multipart_upload(Bucket=store.bucket, Key=key)

    def gone(**kwargs: object) -> None:
        raise ClientError({"Error": {"Code": "NoSuchUpload"}}, "ListParts")

    async def main() -> None:
        await anyio.sleep(GRACE + 1.2)
        monkeypatch.setattr(store._client, "list_parts", gone)
        done = await store.collect_garbage(grace=GRACE)
        assert (done.stale_uploads, done.stale_upload_bytes) == (1, 0)
        uploads = store._client.list_multipart_uploads(Bucket=store.bucket)
        assert abandoned["UploadId"] not in {u["UploadId"] for u in uploads.get("Uploads", [])}

    anyio.run(main)


def test_s3_capped_runs_resume_until_the_listing_ends(store: S3BlobStore) -> None:
    async def main() -> None:
        for i in range(5):
            await _orphan(store, f"m/v1/o{i}", b"o" * (i + 1))
        await store.put("m/v1/kept", _aiter([b"kept"]))
        await anyio.sleep(GRACE + 1.2)
        runs, start, orphans = 0, "", 0
        while True:
            report = await store.collect_garbage(grace=GRACE, max_objects=2, start_after=start)
            assert report.scanned <= 2
            runs += 1
            orphans += report.orphans
            if report.resume_after is None:
                break
            start = report.resume_after
        assert orphans == 5
        assert runs == 3
        assert len(_objects(store)) == 1
        assert await _read_all(store, "m/v1/kept") == b"kept"

    anyio.run(main)


def test_s3_grace_shorter_than_twice_the_commit_deadline_is_refused(store: S3BlobStore) -> None:
    with pytest.raises(ConfigError, match="twice the writers' commit"):
        anyio.run(lambda: store.collect_garbage(grace=2 * DEADLINE - 0.01))


def test_s3_an_unreadable_ref_stops_collection(store: S3BlobStore) -> None:
    async def main() -> None:
        await _orphan(store, "m/v1/o", b"o")
        store._client.put_object(
            Bucket=store.bucket, Key=store._meta_key("m/v1/bad"), Body=b"{not json"
        )
        await anyio.sleep(GRACE + 1.2)
        before = _objects(store)
        with pytest.raises(BackendError, match="corrupt blob metadata"):
            await store.collect_garbage(grace=GRACE)
        assert _objects(store) == before

    anyio.run(main)


def test_s3_a_writer_past_its_commit_deadline_never_commits(store: S3BlobStore) -> None:
    """An upload slower than the commit deadline could be taken for garbage: it deletes
    its object and fails retryably, and the acknowledged blob stays."""

    async def main() -> None:
        store.commit_deadline = 60.0  # a slow server must not fail the first upload
        await store.put("m/v1/w", _aiter([b"old"]))
        before = _objects(store)
        store.commit_deadline = 0.2
        with pytest.raises(TransientError, match="commit deadline"):
            await store.put("m/v1/w", _aiter([b"n"] * 3, pause=0.1))
        assert await _read_all(store, "m/v1/w") == b"old"
        assert _objects(store) == before

    anyio.run(main)


def test_s3_collection_during_uploads_loses_nothing_acknowledged(store: S3BlobStore) -> None:
    """Collection runs nonstop while 8 writers upload and overwrite; every last acknowledged
    blob stays readable with its bytes."""

    async def main() -> None:
        acknowledged: dict[str, bytes] = {}
        await _orphan(store, "m/v1/x", b"x")
        stop = anyio.Event()
        collected = 0

        async def writer(i: int) -> None:
            for n in range(6):
                key = f"m/v1/w{i}"  # overwritten by its writer only: a known last value
                data = os.urandom(200 + n)
                try:
                    await store.put(key, _aiter([data[:100], data[100:]], pause=0.02))
                except TransientError:
                    continue  # past the deadline on a busy machine: not acknowledged
                acknowledged[key] = data

        async def collector() -> None:
            nonlocal collected
            while not stop.is_set():
                report = await store.collect_garbage(grace=GRACE)
                collected += report.orphans
                await anyio.sleep(0.05)

        async with anyio.create_task_group() as tg:
            tg.start_soon(collector)
            async with anyio.create_task_group() as writers:
                for i in range(8):
                    writers.start_soon(writer, i)
            await anyio.sleep(GRACE + 1.2)
            await store.collect_garbage(grace=GRACE)  # once everything is old
            stop.set()
        assert acknowledged
        for key, data in acknowledged.items():
            assert await _read_all(store, key) == data
        named = {store._located(i)[1] async for i in store.list_blobs()}
        assert _objects(store) == named  # the orphan and every replaced object are gone

    anyio.run(main)


def test_local_collects_old_orphans_and_stale_temp_files(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    old = time.time() - 3600

    async def main() -> None:
        kept = os.urandom(300)
        info = await store.put("m/v1/kept", _aiter([kept]))
        kept_obj = store._object_path(info.sha256)
        os.utime(kept_obj, (old, old))
        orphan = os.urandom(50)
        orphan_obj = store._object_path(hashlib.sha256(orphan).hexdigest())
        orphan_obj.parent.mkdir(exist_ok=True)
        orphan_obj.write_bytes(orphan)  # a crash between publishing and the ref
        os.utime(orphan_obj, (old, old))
        young_obj = store._object_path("f" * 64)
        young_obj.parent.mkdir(exist_ok=True)
        young_obj.write_bytes(b"young")
        stale = tmp_path / "tmp" / "dead.part"
        stale.write_bytes(b"s" * 20)
        os.utime(stale, (old, old))
        writing = tmp_path / "tmp" / "live.part"
        writing.write_bytes(b"w")
        ref_tmp = tmp_path / "refs" / "m" / ".x.ref.1.tmp"
        ref_tmp.write_text("{}")
        os.utime(ref_tmp, (old, old))

        dry = await store.collect_garbage(grace=60, dry_run=True)
        assert (dry.scanned, dry.referenced, dry.young, dry.orphans) == (3, 1, 1, 1)
        assert (dry.orphan_bytes, dry.stale_uploads, dry.stale_upload_bytes) == (50, 2, 22)
        assert orphan_obj.exists()
        assert stale.exists()
        done = await store.collect_garbage(grace=60)
        assert (done.orphans, done.stale_uploads) == (1, 2)
        assert not orphan_obj.exists()
        assert not stale.exists()
        assert not ref_tmp.exists()
        assert young_obj.exists()
        assert writing.exists()
        assert await _read_all(store, "m/v1/kept") == kept
        # the same bytes uploaded again publish their object again
        await store.put("m/v1/again", _aiter([orphan]))
        assert await _read_all(store, "m/v1/again") == orphan

    anyio.run(main)


async def _collect_capped(store: LocalBlobStore, start: str) -> GcReport:
    return await store.collect_garbage(grace=60, max_objects=2, start_after=start)


def test_local_capped_runs_resume(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    old = time.time() - 3600
    for i in range(5):
        path = store._object_path(f"{i:x}" * 64)
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"o")
        os.utime(path, (old, old))
    start, total = "", 0
    while True:
        report = anyio.run(_collect_capped, store, start)
        total += report.orphans
        if report.resume_after is None:
            break
        start = report.resume_after
    assert total == 5


def test_cli_gc_json_and_text(tmp_path: Path, url: str) -> None:
    blobs = LocalBlobStore(tmp_path / "blobs")
    orphan = blobs._object_path("a" * 64)
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"12345")
    old = time.time() - 7200
    os.utime(orphan, (old, old))
    runner = CliRunner()
    dry = runner.invoke(
        cli, ["registry", "gc", "--data-dir", str(tmp_path), "--grace", "60", "--dry-run", "--json"]
    )
    assert dry.exit_code == 0, dry.output
    summary = json.loads(dry.output)
    assert (summary["orphans"], summary["orphan_bytes"], summary["dry_run"]) == (1, 5, True)
    assert orphan.exists()
    done = runner.invoke(cli, ["registry", "gc", "--data-dir", str(tmp_path), "--grace", "60"])
    assert done.exit_code == 0, done.output
    assert "deleted 1 orphans (5 bytes)" in done.output
    assert not orphan.exists()
    # S3: the grace period is checked against the URL's commit deadline
    refused = subprocess.run(
        [sys.executable, "-c", "from modelseal.cli import main; main()", "registry", "gc",
         "--blob-store", url, "--grace", "0.1"],
        capture_output=True, text=True, check=False, env=dict(os.environ),
    )  # fmt: skip
    assert refused.returncode == 2
    assert "twice the writers' commit deadline" in refused.stderr


class _HostileParts:
    """A ``list_parts`` that pages as its server likes: the markers it returns, the sizes."""

    def __init__(self, pages: Callable[[int], dict[str, object]]) -> None:
        self.pages = pages
        self.markers: list[int] = []

    def list_parts(self, **kwargs: object) -> dict[str, object]:
        marker = kwargs["PartNumberMarker"]
        assert isinstance(marker, int)
        self.markers.append(marker)
        return self.pages(marker)


@pytest.mark.parametrize(
    ("pages", "markers", "counted"),
    [
        # pages across 2,500 parts: every page read, every size counted
        (
            lambda m: {
                "Parts": [{"Size": 1}] * min(1000, 2500 - m),
                "IsTruncated": m + 1000 < 2500,
                "NextPartNumberMarker": m + 1000,
            },
            [0, 1000, 2000],
            2500,
        ),
        # a marker that does not advance: one page, not a loop
        (
            lambda m: {"Parts": [{"Size": 7}], "IsTruncated": True, "NextPartNumberMarker": m},
            [0],
            7,
        ),
        # a listing that never ends: ten pages, S3's largest upload
        (
            lambda m: {"Parts": [{"Size": 1}], "IsTruncated": True, "NextPartNumberMarker": m + 1},
            list(range(10)),
            10,
        ),
        # sizes that are no sizes (negative, not integers, above S3's 5 GiB part) count nothing
        (
            lambda m: {
                "Parts": [{"Size": -5}, {"Size": "9"}, {}, {"Size": 3}, {"Size": (5 << 30) + 1}]
            },
            [0],
            3,
        ),
    ],
)
def test_s3_part_listing_is_bounded_against_a_hostile_server(
    pages: Callable[[int], dict[str, object]], markers: list[int], counted: int
) -> None:
    client = _HostileParts(pages)
    store = S3BlobStore(client, "bucket")  # type: ignore[arg-type]
    got = anyio.run(store._uploaded_bytes, "objects/x", "upload", 10)
    assert got == (counted, len(markers))
    assert client.markers == markers


class _HostileUploads(_HostileParts):
    """A listing of multipart uploads as a hostile server may send it: more entries than
    asked for, entries of the wrong shape or outside the prefix, and parts without end."""

    def __init__(self, uploads: list[object]) -> None:
        super().__init__(
            lambda m: {"Parts": [{"Size": 1}], "IsTruncated": True, "NextPartNumberMarker": m + 1}
        )
        self.uploads = uploads
        self.aborted: list[str] = []

    def list_multipart_uploads(self, **kwargs: object) -> dict[str, object]:
        return {"Uploads": self.uploads}

    def abort_multipart_upload(self, **kwargs: object) -> dict[str, object]:
        key = kwargs["Key"]
        assert isinstance(key, str)
        self.aborted.append(key)
        return {}


def test_s3_a_hostile_upload_listing_is_bounded_and_filtered() -> None:
    from datetime import UTC, datetime, timedelta

    now = datetime(2026, 12, 6, tzinfo=UTC)
    old = now - timedelta(days=3)
    ours = [
        {"Key": f"p/objects/{i:032x}", "UploadId": f"u{i}", "Initiated": old} for i in range(30)
    ]
    odd: list[object] = [
        "not an upload",
        {"Key": "p/objects/" + "e" * 32, "UploadId": "young", "Initiated": now},
        {"Key": "p/objects/" + "f" * 32, "UploadId": 7, "Initiated": old},
        {"Key": "p/objects/" + "f" * 32, "UploadId": "no-time"},
        {"Key": "elsewhere/" + "f" * 32, "UploadId": "outside", "Initiated": old},
        {"Key": "p/objects/not-ours", "UploadId": "foreign", "Initiated": old},
    ]
    client = _HostileUploads([*odd, *ours, *ours])  # the second copy is past the cap
    store = S3BlobStore(client, "bucket", prefix="p")  # type: ignore[arg-type]
    report = GcReport(dry_run=False, grace=3600)
    cap = len(odd) + len(ours)
    anyio.run(store._abort_stale_uploads, report, "p/objects/", now, 3600.0, cap)
    assert client.aborted == [u["Key"] for u in ours]  # each once, nothing else
    assert report.stale_uploads == 30
    # ten pages for each of the first ten uploads, then the run's budget is spent
    assert len(client.markers) == 100
    assert report.stale_upload_bytes == 100
