"""``modelseal dev guest-components`` answers as api-server-rest does, byte for byte.

The expected bodies, status codes and content types are those of guest-components'
``api-server-rest/src/router.rs`` (its own unit tests check the same strings); the AA part
is a mock-tdx TD whose runtime measurements replay from the event log it serves.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import httpx
import pytest

from modelseal.dev.guest_components import (
    ApiServer,
    GuestComponents,
    decode_runtime_data,
    kbs_url_from_init_data,
    split_nth_slash,
)
from modelseal.errors import FormatError
from modelseal.tee.eventlog.ccel import verify_ccel
from modelseal.tee.mock_tdx.attester import Attester
from modelseal.tee.sample.attester import Attester as SampleAttester
from modelseal.tee.tdx.quote import TdReport, parse_quote
from tests.conftest import free_port

pytestmark = pytest.mark.anyio

EXAMPLE_INIT_DATA = Path(__file__).resolve().parents[3] / "deploy" / "examples" / "initdata.toml"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gc-ca")
    Attester(path)  # creates the test CA once for the module
    return path


def _guest(ca_dir: Path, **options: object) -> GuestComponents:
    # a KBS nobody listens on: CDH fetches fail as an unreachable KBS does
    settings: dict[str, object] = {
        "tee": "mock-tdx",
        "kbs_url": f"http://127.0.0.1:{free_port()}",
        "timeout": 2.0,
    }
    settings.update(options)
    attester = settings.pop("attester", None) or Attester(ca_dir)
    return GuestComponents(attester, **settings)  # type: ignore[arg-type]


@pytest.fixture
def guest(ca_dir: Path) -> GuestComponents:
    return _guest(ca_dir)


async def _call(
    guest: GuestComponents,
    method: str,
    path: str,
    *,
    client: tuple[str, int] = ("127.0.0.1", 5000),
    **options: object,
) -> httpx.Response:
    transport = httpx.ASGITransport(app=ApiServer(guest), client=client)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8006") as http:
        return await http.request(method, path, **options)  # type: ignore[arg-type]


def _report(response: httpx.Response) -> TdReport:
    evidence = json.loads(response.content)
    report = parse_quote(base64.b64decode(evidence["quote"])).report
    assert isinstance(report, TdReport)
    return report


# --- the router's fixed answers -----------------------------------------------------------


async def test_info_is_compact_json_in_field_order(guest: GuestComponents) -> None:
    r = await _call(guest, "GET", "/info")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert list(json.loads(r.content)) == ["version", "tee", "feature"]
    assert json.loads(r.content)["tee"] == "mock-tdx"
    assert b" " not in r.content


async def test_info_without_attestation_has_no_tee(ca_dir: Path) -> None:
    r = await _call(_guest(ca_dir, features="resource"), "GET", "/info")
    assert list(json.loads(r.content)) == ["version", "feature"]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
async def test_info_is_get_only(guest: GuestComponents, method: str) -> None:
    r = await _call(guest, method, "/info")
    assert (r.status_code, r.content) == (405, b"Method Not Allowed")
    assert "content-type" not in r.headers


async def test_a_peer_off_loopback_is_forbidden(guest: GuestComponents) -> None:
    r = await _call(guest, "GET", "/info", client=("10.0.0.1", 5000))
    assert (r.status_code, r.content) == (403, b"Forbidden")


@pytest.mark.parametrize("path", ["/", "/unknown", "/foo/bar", "/aa", "/cdh"])
async def test_unknown_paths_are_404(guest: GuestComponents, path: str) -> None:
    r = await _call(guest, "GET", path)
    assert (r.status_code, r.content) == (404, b"URL NOT FOUND")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/aa/token?token_type=kbs"),
        ("GET", "/aa/evidence?runtime_data=aGVsbG8"),
        ("GET", "/aa/additional-evidence?runtime_data=aGVsbG8"),
        ("POST", "/aa/aael"),
        ("GET", "/aa/unknown-route"),
    ],
)
async def test_aa_routes_without_the_attestation_feature(
    ca_dir: Path, method: str, path: str
) -> None:
    r = await _call(_guest(ca_dir, features="resource"), method, path)
    assert (r.status_code, r.content) == (404, b"Attestation Feature Not Enabled")


@pytest.mark.parametrize("path", ["/cdh/resource/default/key/test", "/cdh/unknown/foo/bar"])
async def test_cdh_routes_without_the_resource_feature(ca_dir: Path, path: str) -> None:
    r = await _call(_guest(ca_dir, features="attestation", kbs_url=None), "GET", path)
    assert (r.status_code, r.content) == (404, b"Resource Feature Not Enabled")


@pytest.mark.parametrize(
    "path",
    [
        "/aa/evidence",
        "/aa/evidence?encoding=base64",
        "/aa/evidence?runtime_data=eHh4eA&encoding=hex",
        "/aa/evidence?runtime_data=!!!&encoding=base64",
        "/aa/token",
    ],
)
async def test_bad_queries_are_400(guest: GuestComponents, path: str) -> None:
    r = await _call(guest, "GET", path)
    assert (r.status_code, r.content) == (400, b"BAD REQUEST")


async def test_aa_routes_only_answer_their_method(guest: GuestComponents) -> None:
    for method, path in (("POST", "/aa/evidence?runtime_data=x"), ("GET", "/aa/aael")):
        r = await _call(guest, method, path)
        assert (r.status_code, r.content) == (404, b"URL NOT FOUND")


# --- the Attestation Agent ------------------------------------------------------------------


async def test_evidence_binds_the_runtime_data_bytes(guest: GuestComponents) -> None:
    digest = hashlib.sha384(b"binding").digest()
    encoded = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    r = await _call(guest, "GET", f"/aa/evidence?runtime_data={encoded}&encoding=base64")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/octet-stream"
    assert _report(r).report_data == digest + bytes(16)


async def test_legacy_runtime_data_is_the_query_text(guest: GuestComponents) -> None:
    r = await _call(guest, "GET", "/aa/evidence?runtime_data=xxxx")
    assert _report(r).report_data == b"xxxx" + bytes(60)


async def test_an_empty_runtime_data_value_is_kept(guest: GuestComponents) -> None:
    # form_urlencoded keeps "runtime_data=" as an empty value: evidence over no bytes
    r = await _call(guest, "GET", "/aa/evidence?runtime_data=")
    assert r.status_code == 200
    assert _report(r).report_data == bytes(64)


async def test_additional_evidence_is_empty_without_devices(guest: GuestComponents) -> None:
    r = await _call(guest, "GET", "/aa/additional-evidence?runtime_data=eHh4eA&encoding=base64")
    assert (r.status_code, r.content) == (200, b"")


async def test_aael_extends_rtmr3_and_the_log_replays(guest: GuestComponents) -> None:
    before = _report(await _call(guest, "GET", "/aa/evidence?runtime_data=a")).rtmrs
    event = {"domain": "modelseal.dev", "operation": "LoadModel", "content": "sha256:" + "ab" * 32}
    r = await _call(guest, "POST", "/aa/aael", json=event)
    assert (r.status_code, r.content) == (200, b'{"success":"true"}')
    assert r.headers["content-type"] == "application/json"
    evidence = await _call(guest, "GET", "/aa/evidence?runtime_data=a")
    report = _report(evidence)
    assert report.rtmrs[:3] == before[:3]
    assert report.rtmrs[3] != before[3]
    log = base64.b64decode(json.loads(evidence.content)["cc_eventlog"])
    replayed = verify_ccel(log, report.rtmrs)
    assert replayed.components.runtime_events == [" ".join(event.values())]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "invalid JSON"),
        (b"[]", "expected a JSON object"),
        (b'{"domain": "d", "operation": "o"}', "`content`"),
        (b'{"domain": 1, "operation": "o", "content": "c"}', "`domain`"),
    ],
)
async def test_aael_bodies_that_are_not_events(
    guest: GuestComponents, body: bytes, reason: str
) -> None:
    r = await _call(guest, "POST", "/aa/aael", content=body)
    assert r.status_code == 500
    assert r.content.startswith(b"Illegal AAEL eventry format: ")
    assert reason.encode() in r.content


async def test_aael_refuses_a_newline_in_content(guest: GuestComponents) -> None:
    event = {"domain": "d", "operation": "o", "content": "two\nlines"}
    r = await _call(guest, "POST", "/aa/aael", json=event)
    assert (r.status_code, r.content) == (500, b"ttrpc request error")


async def test_aael_when_the_agent_keeps_no_event_log(ca_dir: Path) -> None:
    event = {"domain": "d", "operation": "o", "content": "c"}
    r = await _call(_guest(ca_dir, eventlog=False), "POST", "/aa/aael", json=event)
    assert r.content == (
        b'{"success":"false","message": "Attestation Agent does not enable eventlog recording"}'
    )


async def test_aael_on_a_platform_without_runtime_registers(ca_dir: Path) -> None:
    guest = _guest(ca_dir, attester=SampleAttester(), tee="sample")
    r = await _call(
        guest, "POST", "/aa/aael", json={"domain": "d", "operation": "o", "content": "c"}
    )
    assert r.content == (
        b'{"success":"false","message": "The platform does not support runtime measurement"}'
    )


async def test_unknown_token_types_fail_like_the_agent(guest: GuestComponents) -> None:
    r = await _call(guest, "GET", "/aa/token?token_type=coco_as")
    assert (r.status_code, r.content) == (500, b"ttrpc request error")


# --- the Confidential Data Hub --------------------------------------------------------------


@pytest.mark.parametrize("path", ["/cdh/resource/default/key/test", "/cdh/resource/a/b"])
async def test_failed_resources_say_only_ttrpc_request_error(
    guest: GuestComponents, path: str
) -> None:
    # the KBS is unreachable or the path is not repo/type/tag: the reason stays in the log
    r = await _call(guest, "GET", path)
    assert (r.status_code, r.content) == (500, b"ttrpc request error")


async def test_cdh_paths_other_than_resource_are_404(guest: GuestComponents) -> None:
    r = await _call(guest, "GET", "/cdh/secret/a/b/c")
    assert (r.status_code, r.content) == (404, b"URL NOT FOUND")


# --- helpers as api-server-rest defines them -------------------------------------------------


def test_split_nth_slash_matches_the_rust_helper() -> None:
    path = "/cdh/resource/default/"
    assert split_nth_slash(path, 0) is None
    assert split_nth_slash(path, 1) == ("", "/cdh/resource/default/")
    assert split_nth_slash(path, 2) == ("/cdh", "/resource/default/")
    assert split_nth_slash(path, 3) == ("/cdh/resource", "/default/")
    assert split_nth_slash(path, 4) == ("/cdh/resource/default", "/")
    assert split_nth_slash(path, 5) is None


def test_decode_runtime_data_matches_the_rust_helper() -> None:
    assert decode_runtime_data("hello", None) == b"hello"
    assert decode_runtime_data("cmVwb3J0", "base64") == b"report"
    for value, encoding in (("data", "hex"), ("!!!", "base64"), ("cmVwb3J0==", "base64")):
        with pytest.raises(FormatError):
            decode_runtime_data(value, encoding)


def test_the_kbs_url_comes_from_the_example_init_data() -> None:
    text = EXAMPLE_INIT_DATA.read_text()
    assert kbs_url_from_init_data(text) == "https://modelseal-kbs.modelseal.svc:8080"
    assert kbs_url_from_init_data('version = "0.1.0"\nalgorithm = "sha384"\n[data]\n') is None
