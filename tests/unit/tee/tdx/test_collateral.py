"""Collateral store: bundle directories, freshness choice, PCCS download + disk cache."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from modelseal.crypto.x509_test_ca import pem_to_der
from modelseal.errors import BackendError, ConfigError, EvidenceError
from modelseal.tee.mock_tdx.attester import Attester
from modelseal.tee.mock_tdx.ca import MockTdxCA
from modelseal.tee.mock_tdx.verifier import Verifier as MockVerifier
from modelseal.tee.tdx.collateral import _REQUIRED, CollateralStore, load_bundle, parse_collateral

NOW = time.time()


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> MockTdxCA:
    return MockTdxCA.create(tmp_path_factory.mktemp("coll") / "ca")


def test_bundle_directory_ignores_other_files(ca: MockTdxCA, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "other.json").write_text('{"a": 1}')
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "whatever-name").write_text(ca.collateral_path.read_text())
    sets = load_bundle(tmp_path)
    assert [(s.tee, s.fmspc) for s in sets] == [("TDX", "feedfacecafe")]
    with pytest.raises(ConfigError, match="no dcap-qvl collateral"):
        load_bundle(tmp_path / "notes.txt")
    with pytest.raises(ConfigError, match="does not exist"):
        load_bundle(tmp_path / "absent")


def test_fresh_set_preferred(ca: MockTdxCA, tmp_path: Path) -> None:
    old = ca.collateral(issued=NOW - 90 * 86400, next_update=NOW - 60 * 86400)
    new = ca.collateral(issued=NOW - 3600, next_update=NOW + 86400)
    (tmp_path / "a.json").write_text(json.dumps([old, new]))
    store = CollateralStore(bundle=tmp_path)
    assert store.get("TDX", "FEEDFACECAFE", "platform", NOW).fresh_at(NOW)
    # at an old time the old set is the valid one
    assert store.get("TDX", "feedfacecafe", "platform", NOW - 70 * 86400).next_update < NOW
    with pytest.raises(BackendError, match="no DCAP collateral for SGX"):
        store.get("SGX", "feedfacecafe", "platform", NOW)


class FakePccs(BaseHTTPRequestHandler):
    """A PCCS (``intel_pcs`` False) or Intel's PCS, which has no rootcacrl endpoint."""

    ca: MockTdxCA
    hits: list[str]
    intel_pcs = False

    def log_message(self, *_args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.hits.append(self.path)
        doc = self.ca.collateral(issued=NOW - 3600, next_update=NOW + 86400)
        url = urllib.parse.urlparse(self.path)
        headers: dict[str, str] = {}
        if url.path == "/sgx/certification/v4/pckcrl":
            body = bytes.fromhex(doc["pck_crl"])
            headers["SGX-PCK-CRL-Issuer-Chain"] = urllib.parse.quote(doc["pck_crl_issuer_chain"])
        elif url.path == "/sgx/certification/v4/rootcacrl" and not self.intel_pcs:
            body = doc["root_ca_crl"].encode()
        elif url.path == "/IntelSGXRootCA.der" and self.intel_pcs:
            body = bytes.fromhex(doc["root_ca_crl"])
        elif url.path == "/tdx/certification/v4/tcb":
            body = (
                '{"tcbInfo":'
                + doc["tcb_info"]
                + ',"signature":"'
                + doc["tcb_info_signature"]
                + '"}'
            ).encode()
            headers["TCB-Info-Issuer-Chain"] = urllib.parse.quote(doc["tcb_info_issuer_chain"])
        elif url.path == "/tdx/certification/v4/qe/identity":
            body = (
                '{"enclaveIdentity":'
                + doc["qe_identity"]
                + ',"signature":"'
                + doc["qe_identity_signature"]
                + '"}'
            ).encode()
            headers["SGX-Enclave-Identity-Issuer-Chain"] = urllib.parse.quote(
                doc["qe_identity_issuer_chain"]
            )
        else:
            self.send_error(404)
            return
        self.send_response(200)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextlib.contextmanager
def _serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A local HTTP server for ``handler``; shuts down within one 50 ms poll."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def pccs(ca: MockTdxCA) -> Iterator[tuple[str, list[str]]]:
    hits: list[str] = []
    with _serving(type("Handler", (FakePccs,), {"ca": ca, "hits": hits})) as url:
        yield url, hits


def test_pccs_download_cache_and_verify(
    ca: MockTdxCA, pccs: tuple[str, list[str]], tmp_path: Path
) -> None:
    url, hits = pccs
    root = pem_to_der(ca.root_pem_path.read_bytes())
    store = CollateralStore(pccs_url=url, cache_dir=tmp_path)
    verifier = MockVerifier(store, root_ca_der=root)
    ev = Attester(ca.directory).evidence(b"\x03" * 48)
    claims = verifier.verify(ev, expected_report_data=b"\x03" * 48, now=NOW)
    assert claims.tcb_status == "UpToDate"
    assert len(hits) == 4
    assert "/tdx/certification/v4/tcb?fmspc=FEEDFACECAFE" in hits
    verifier.verify(ev, expected_report_data=b"\x03" * 48, now=NOW)
    assert len(hits) == 4  # warm: in memory
    cached = list((tmp_path / "dcap-collateral").iterdir())
    assert [p.name for p in cached] == ["tdx-feedfacecafe.json"]
    # a new process (new store) uses the disk cache without asking the PCCS
    store2 = CollateralStore(pccs_url="http://127.0.0.1:9", cache_dir=tmp_path)
    MockVerifier(store2, root_ca_der=root).verify(ev, expected_report_data=b"\x03" * 48, now=NOW)
    assert len(hits) == 4


def test_pccs_unreachable_is_backend_error(tmp_path: Path) -> None:
    store = CollateralStore(pccs_url="http://127.0.0.1:9", cache_dir=tmp_path, timeout=2)
    with pytest.raises(BackendError, match="unreachable"):
        store.get("TDX", "feedfacecafe", "platform", NOW)


def test_pccs_http_error_is_backend_error(pccs: tuple[str, list[str]]) -> None:
    url, _ = pccs
    store = CollateralStore(pccs_url=url + "/nothing-here")
    with pytest.raises(BackendError, match="HTTP 404"):
        store.get("TDX", "feedfacecafe", "platform", NOW)


def test_intel_pcs_root_crl_from_distribution_point(tmp_path: Path) -> None:
    hits: list[str] = []
    holder: dict[str, Any] = {"hits": hits, "intel_pcs": True}
    handler = type("Handler", (FakePccs,), holder)
    with _serving(handler) as url:
        ca = MockTdxCA.create(tmp_path / "ca", root_crl_url=f"{url}/IntelSGXRootCA.der")
        handler.ca = ca
        store = CollateralStore(pccs_url=url)
        verifier = MockVerifier(store, root_ca_der=pem_to_der(ca.root_pem_path.read_bytes()))
        ev = Attester(ca.directory).evidence(b"\x04" * 48)
        claims = verifier.verify(ev, expected_report_data=b"\x04" * 48, now=NOW)
        assert claims.tcb_status == "UpToDate"
        assert "/IntelSGXRootCA.der" in hits


def test_no_root_crl_anywhere(ca: MockTdxCA, tmp_path: Path) -> None:
    hits: list[str] = []
    handler = type("Handler", (FakePccs,), {"ca": ca, "hits": hits, "intel_pcs": True})
    with _serving(handler) as url:
        store = CollateralStore(pccs_url=url)
        with pytest.raises(BackendError, match="root names none"):
            store.get("TDX", "feedfacecafe", "platform", NOW)


class _HugePccs(BaseHTTPRequestHandler):
    """Answers every request with more bytes than any collateral part can have (chunked)."""

    def log_message(self, *_args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        block = b"0" * (1 << 20)
        try:
            for _ in range(8):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass  # the client stopped reading at its limit


def test_pccs_response_size_is_bounded(tmp_path: Path) -> None:
    with _serving(_HugePccs) as url:
        store = CollateralStore(pccs_url=url)
        with pytest.raises(BackendError, match="answered more than"):
            store.get("TDX", "feedfacecafe", "platform", NOW)


def test_deeply_nested_collateral_file_is_ignored(ca: MockTdxCA, tmp_path: Path) -> None:
    (tmp_path / "deep.json").write_text('{"a":' * 100_000 + "1" + "}" * 100_000)
    doc = json.loads((ca.directory / "collateral.json").read_text())
    deep_inner = '{"a":' * 100_000 + "1" + "}" * 100_000
    (tmp_path / "deep-inner.json").write_text(json.dumps({**doc, "tcb_info": deep_inner}))
    assert load_bundle(tmp_path) == []


def test_deeply_nested_collateral_members_are_evidence_errors() -> None:
    """A hostile bundle or PCCS answer nesting TCB info 100,000 deep: a documented error."""
    from modelseal.errors import EvidenceError
    from modelseal.tee.tdx.collateral import _REQUIRED, parse_collateral

    doc = dict.fromkeys(_REQUIRED, "")
    doc["tcb_info"] = "[" * 100_000
    doc["qe_identity"] = "{}"
    with pytest.raises(EvidenceError, match="malformed TCB info"):
        parse_collateral(doc, source="bundle")


@pytest.mark.parametrize("date", [[], 17, None], ids=["list", "int", "null"])
def test_non_string_dates_are_evidence_errors(date: object) -> None:
    """A TCB info date that is not a string raised AttributeError (found by fuzzing)."""
    tcb = {"id": "TDX", "fmspc": "00", "issueDate": "2025-01-01T00:00:00Z", "nextUpdate": date}
    qe = {"issueDate": "2025-01-01T00:00:00Z", "nextUpdate": "2025-02-01T00:00:00Z"}
    doc = dict.fromkeys(_REQUIRED, "") | {
        "tcb_info": json.dumps(tcb),
        "qe_identity": json.dumps(qe),
    }
    with pytest.raises(EvidenceError, match="malformed TCB info"):
        parse_collateral(doc, source="test")


def _lookups(source: str) -> float:
    from prometheus_client import REGISTRY

    value = REGISTRY.get_sample_value(
        "modelseal_collateral_lookups_total", {"tee": "tdx", "source": source}
    )
    return value or 0.0


def test_lookups_are_counted_by_source(
    ca: MockTdxCA, pccs: tuple[str, list[str]], tmp_path: Path
) -> None:
    """Bundle and cache hits, a PCCS download (the miss), a stale set, nothing at all."""
    url, _ = pccs
    sources = ("bundle", "cache", "pccs", "stale", "missing", "pccs_error")
    before = {s: _lookups(s) for s in sources}
    fresh = ca.collateral(issued=NOW - 3600, next_update=NOW + 86400)
    (tmp_path / "bundle.json").write_text(json.dumps(fresh))
    bundled = CollateralStore(bundle=tmp_path / "bundle.json")
    bundled.get("TDX", "feedfacecafe", "platform", NOW)
    bundled.get("TDX", "feedfacecafe", "platform", NOW + 2 * 86400)  # past next_update
    fetching = CollateralStore(pccs_url=url, cache_dir=tmp_path / "cache")
    fetching.get("TDX", "feedfacecafe", "platform", NOW)
    fetching.get("TDX", "feedfacecafe", "platform", NOW)
    with pytest.raises(BackendError):
        CollateralStore().get("TDX", "feedfacecafe", "platform", NOW)
    with pytest.raises(BackendError):
        CollateralStore(pccs_url="http://127.0.0.1:9", timeout=2).get(
            "TDX", "feedfacecafe", "platform", NOW
        )
    delta = {s: _lookups(s) - before[s] for s in sources}
    assert delta == {
        "bundle": 1,
        "cache": 1,
        "pccs": 1,
        "stale": 1,
        "missing": 1,
        "pccs_error": 1,
    }
