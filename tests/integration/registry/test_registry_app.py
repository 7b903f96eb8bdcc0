"""The registry app in-process (httpx.ASGITransport): records, blobs, auth, validation."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest

from modelseal.blobstore.local import LocalBlobStore
from modelseal.protocol.model_info import ModelInfo, ModelList
from modelseal.registry.app import create_app
from modelseal.registry.settings import RegistrySettings

pytestmark = pytest.mark.anyio

BASE = "http://registry.test"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    settings = RegistrySettings(data_dir=tmp_path / "reg", max_blob_size=1 << 20)
    app = create_app(settings, LocalBlobStore(tmp_path / "reg" / "blobs"))
    token = (tmp_path / "reg" / "upload-token").read_text().strip()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
        yield c, token


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _upload(c: httpx.AsyncClient, token: str, path: str, data: bytes) -> httpx.Response:
    return await c.put(f"/blobs/{path}", content=data, headers=_auth(token))


def _registration(files: dict[str, bytes], manifest: bytes) -> dict[str, object]:
    def rec(path: str, data: bytes) -> dict[str, object]:
        return {
            "path": path,
            "blob": path + ".sealed",
            "sealed_size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }

    return {
        "format": "modelseal/v1",
        "framework": "safetensors",
        "dtype": "float32",
        "kbs": "trustee",
        "kbs_url": "http://127.0.0.1:8080",
        "key_id": "models/m/v1",
        "model_digest": "sha256:" + "11" * 32,
        "manifest": rec("modelseal-manifest.json", manifest),
        "files": [rec(p, d) for p, d in files.items()],
    }


async def _publish(c: httpx.AsyncClient, token: str, version: str = "v1") -> dict[str, bytes]:
    files = {"a.safetensors": b"A" * 1000, "sub/b.json": b"B" * 10}
    manifest = b"M" * 300
    for path, data in [*files.items(), ("modelseal-manifest.json", manifest)]:
        r = await _upload(c, token, f"m/{version}/{path}.sealed", data)
        assert r.status_code == 201, r.text
    r = await c.put(
        f"/models/m/versions/{version}", json=_registration(files, manifest), headers=_auth(token)
    )
    assert r.status_code == 201, r.text
    return files


async def test_health(env: tuple[httpx.AsyncClient, str]) -> None:
    c, _ = env
    r = await c.get("/healthz")
    assert r.json() == {"status": "ok"}


async def test_publish_and_read_model_info(env: tuple[httpx.AsyncClient, str]) -> None:
    c, token = env
    files = await _publish(c, token)
    r = await c.get("/models/m")
    assert r.status_code == 200
    info = ModelInfo.from_json(r.content)
    assert info.id == "m"
    assert info.version == "v1"
    assert info.encrypted
    assert info.url == f"{BASE}/blobs/m/v1/"
    assert info.manifest_url == f"{BASE}/blobs/m/v1/modelseal-manifest.json.sealed"
    assert {f.path: f.sealed_size for f in info.files} == {p: len(d) for p, d in files.items()}
    for f in info.files:
        got = await c.get(f.url)
        assert got.content == files[f.path]
        assert got.headers["etag"] == f'"{f.sha256}"'
    # re-registering the same content is idempotent
    body = _registration(files, b"M" * 300)
    r = await c.put("/models/m/versions/v1", json=body, headers=_auth(token))
    assert r.status_code == 200
    # listing and versions
    await _publish(c, token, "v2")
    listed = ModelList.from_json((await c.get("/models")).content)
    assert [(m.id, m.version) for m in listed.models] == [("m", "v2")]
    assert (await c.get("/models/m")).json()["version"] == "v2"
    assert (await c.get("/models/m", params={"version": "v1"})).json()["version"] == "v1"
    versions = (await c.get("/models/m/versions")).json()["models"]
    assert [v["version"] for v in versions] == ["v1", "v2"]


async def test_registered_versions_are_immutable(env: tuple[httpx.AsyncClient, str]) -> None:
    c, token = env
    files = await _publish(c, token)
    r = await _upload(c, token, "m/v1/a.safetensors.sealed", b"evil")
    assert r.status_code == 409
    body = _registration({**files, "a.safetensors": b"changed"}, b"M" * 300)
    r = await c.put("/models/m/versions/v1", json=body, headers=_auth(token))
    assert r.status_code == 409


async def test_registration_checks_blobs(env: tuple[httpx.AsyncClient, str]) -> None:
    c, token = env
    files = {"a": b"x" * 5}
    body = _registration(files, b"M")
    r = await c.put("/models/m/versions/v1", json=body, headers=_auth(token))
    assert r.status_code == 409
    assert "not uploaded" in r.json()["detail"]
    await _upload(c, token, "m/v1/a.sealed", b"y" * 5)
    await _upload(c, token, "m/v1/modelseal-manifest.json.sealed", b"M")
    r = await c.put("/models/m/versions/v1", json=body, headers=_auth(token))
    assert r.status_code == 409
    assert "differs" in r.json()["detail"]
    assert (await c.get("/models/m")).status_code == 404


@pytest.mark.parametrize(
    "body",
    [b"{", b"[]", b'{"format": "modelseal/v1"}', b'{"files": [], "kbs": "x"}'],
)
async def test_registration_validation(env: tuple[httpx.AsyncClient, str], body: bytes) -> None:
    c, token = env
    r = await c.put("/models/m/versions/v1", content=body, headers=_auth(token))
    assert r.status_code == 422
    assert r.json()["type"].endswith("invalid-registration")


async def test_auth_required_for_writes(env: tuple[httpx.AsyncClient, str]) -> None:
    c, token = env
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {token}"}):
        r = await c.put("/blobs/m/v1/a", content=b"x", headers=headers)
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == "Bearer"
        r = await c.put("/models/m/versions/v1", content=b"{}", headers=headers)
        assert r.status_code == 401
        r = await c.delete("/models/m/versions/v1", headers=headers)
        assert r.status_code == 401
    assert (await c.head("/blobs/m/v1/a")).status_code == 404


async def test_not_found_and_invalid_names(env: tuple[httpx.AsyncClient, str]) -> None:
    c, token = env
    assert (await c.get("/models/nope")).status_code == 404
    assert (await c.get("/models/nope/versions")).status_code == 404
    assert (await c.get("/blobs/m/v1/nope")).status_code == 404
    assert (await c.get("/models/.hidden")).status_code == 400
    assert (await c.get("/models/m", params={"version": "../x"})).status_code == 400
    assert (await c.get("/blobs/m/v1/a%2F..%2F..%2Fx")).status_code == 400
    assert (await c.get("/blobs/m/v1/.ref")).status_code == 400
    r = await c.put("/blobs/m/v1/x/..%2F..%2Fy", content=b"x", headers=_auth(token))
    assert r.status_code == 400


async def test_upload_limits_and_digest(env: tuple[httpx.AsyncClient, str]) -> None:
    c, token = env
    r = await _upload(c, token, "m/v1/big", b"x" * ((1 << 20) + 1))
    assert r.status_code == 413
    data = b"payload"
    good = "sha-256=:" + base64.b64encode(hashlib.sha256(data).digest()).decode() + ":"
    bad = "sha-256=:" + base64.b64encode(hashlib.sha256(b"other").digest()).decode() + ":"
    r = await c.put("/blobs/m/v1/d", content=data, headers={**_auth(token), "Content-Digest": bad})
    assert r.status_code == 400
    assert r.json()["type"].endswith("digest-mismatch")
    assert (await c.head("/blobs/m/v1/d")).status_code == 404
    r = await c.put("/blobs/m/v1/d", content=data, headers={**_auth(token), "Content-Digest": good})
    assert r.status_code == 201
    assert r.json() == {"key": "m/v1/d", "size": 7, "sha256": hashlib.sha256(data).hexdigest()}
    r = await c.put("/blobs/m/v1/d", content=data, headers={**_auth(token), "Content-Digest": good})
    assert r.status_code == 200
    r = await c.put(
        "/blobs/m/v1/e", content=data, headers={**_auth(token), "Content-Digest": "sha-256=x"}
    )
    assert r.status_code == 400


async def test_blob_ranges_and_conditionals(env: tuple[httpx.AsyncClient, str]) -> None:
    c, token = env
    data = bytes(range(256)) * 4
    await _upload(c, token, "m/v1/r", data)
    url = "/blobs/m/v1/r"
    head = await c.head(url)
    etag = head.headers["etag"]
    assert head.status_code == 200
    assert head.headers["content-length"] == str(len(data))
    assert head.headers["accept-ranges"] == "bytes"
    assert head.headers["repr-digest"].startswith("sha-256=:")
    r = await c.get(url, headers={"Range": "bytes=10-19"})
    assert r.status_code == 206
    assert r.content == data[10:20]
    assert r.headers["content-range"] == f"bytes 10-19/{len(data)}"
    r = await c.get(url, headers={"Range": "bytes=5000-"})
    assert r.status_code == 416
    assert r.headers["content-range"] == f"bytes */{len(data)}"
    r = await c.get(url, headers={"Range": "bytes=0-1", "If-Range": etag})
    assert r.status_code == 206
    r = await c.get(url, headers={"Range": "bytes=0-1", "If-Range": '"stale"'})
    assert r.status_code == 200
    assert r.content == data
    assert (await c.get(url, headers={"If-None-Match": etag})).status_code == 304
    assert (await c.get(url, headers={"If-Match": '"stale"'})).status_code == 412
    assert (await c.get(url, headers={"If-Match": etag})).status_code == 200


async def test_delete_version_removes_record_and_blobs(env: tuple[httpx.AsyncClient, str]) -> None:
    c, token = env
    await _publish(c, token)
    r = await c.delete("/models/m/versions/v1", headers=_auth(token))
    assert r.status_code == 204
    assert (await c.get("/models/m")).status_code == 404
    assert (await c.head("/blobs/m/v1/a.safetensors.sealed")).status_code == 404
    assert (await c.delete("/models/m/versions/v1", headers=_auth(token))).status_code == 404


async def test_public_url_setting(tmp_path: Path) -> None:
    settings = RegistrySettings(data_dir=tmp_path, public_url="https://models.example/reg")
    app = create_app(settings, LocalBlobStore(tmp_path / "blobs"))
    token = (tmp_path / "upload-token").read_text().strip()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
        await _publish(c, token)
        info = ModelInfo.from_json((await c.get("/models/m")).content)
    assert info.url == "https://models.example/reg/blobs/m/v1/"


async def test_registration_waits_for_uploads_in_flight(
    env: tuple[httpx.AsyncClient, str],
) -> None:
    """A version cannot be registered while a blob is still streaming into it, so a record
    never describes a blob that an in-flight upload is about to replace."""
    c, token = env
    files = await _publish(c, token, "v0")  # reuse the helper's blobs as a template
    body = _registration(files, b"M" * 300)
    for path, data in [*files.items(), ("modelseal-manifest.json", b"M" * 300)]:
        assert (await _upload(c, token, f"m/v1/{path}.sealed", data)).status_code == 201
    started, release = anyio.Event(), anyio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield b"A" * 10
        started.set()
        await release.wait()
        yield b"A" * 990

    results: dict[str, int] = {}

    async def upload() -> None:
        r = await c.put(
            "/blobs/m/v1/a.safetensors.sealed", content=slow_body(), headers=_auth(token)
        )
        results["upload"] = r.status_code

    async with anyio.create_task_group() as tg:
        tg.start_soon(upload)
        await started.wait()
        r = await c.put("/models/m/versions/v1", json=body, headers=_auth(token))
        results["register_during_upload"] = r.status_code
        assert "in progress" in r.json()["detail"]
        release.set()
    assert results == {"upload": 200, "register_during_upload": 409}
    r = await c.put("/models/m/versions/v1", json=body, headers=_auth(token))
    assert r.status_code == 201


async def test_registration_body_limit(tmp_path: Path) -> None:
    """A record body beyond ``max_record_size`` is refused (413) before JSON parsing."""
    settings = RegistrySettings(data_dir=tmp_path, max_record_size=4096)
    app = create_app(settings, LocalBlobStore(tmp_path / "blobs"))
    token = (tmp_path / "upload-token").read_text().strip()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
        body = b'{"files": [' + b'"x",' * 2000 + b'"x"]}'
        r = await c.put("/models/m/versions/v1", content=body, headers=_auth(token))
        assert r.status_code == 413
        assert r.json()["type"].endswith("too-large")

        async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
            for _ in range(10):
                yield b" " * 1000

        r = await c.put("/models/m/versions/v1", content=chunked(), headers=_auth(token))
        assert r.status_code == 413
        assert (await c.get("/models/m")).status_code == 404
