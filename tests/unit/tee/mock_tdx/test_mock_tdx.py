"""mock-tdx: the full DCAP path with a test CA, positive and every negative case."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelseal._internal.encoding import b64_decode, b64_encode
from modelseal.crypto.x509_test_ca import pem_to_der
from modelseal.errors import ConfigError, EvidenceError, UnsupportedTee
from modelseal.tee import registry
from modelseal.tee.mock_tdx import MockTdxConfig
from modelseal.tee.mock_tdx.attester import Attester
from modelseal.tee.mock_tdx.ca import MOCK_ADVISORIES, MockTdxCA
from modelseal.tee.mock_tdx.verifier import Verifier as MockVerifier
from modelseal.tee.tdx.collateral import CollateralStore
from modelseal.tee.tdx.config import TdxConfig
from modelseal.tee.tdx.quote import parse_quote

RD = bytes(range(48))
INIT_DATA = b'version = "0.1.0"\nalgorithm = "sha384"\n[data]\nmodel_digest = "sha256:abcd"\n'


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mock") / "ca"
    MockTdxCA.create(path)
    return path


def _verifier(ca_dir: Path, **kw: Any) -> Any:
    return registry.verifier_for("mock-tdx", MockTdxConfig(root=str(ca_dir / "root-ca.pem"), **kw))


def _verify(ca_dir: Path, evidence: Any, **kw: Any) -> Any:
    now = kw.pop("now", time.time())
    rd = kw.pop("report_data", RD)
    return _verifier(ca_dir).verify(evidence, expected_report_data=rd, now=now, **kw)


def test_ca_directory_permissions(ca_dir: Path) -> None:
    assert stat.S_IMODE(ca_dir.stat().st_mode) == 0o700
    for key in ca_dir.glob("*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    with pytest.raises(ConfigError, match="already holds"):
        MockTdxCA.create(ca_dir)
    loaded = MockTdxCA.load(ca_dir)
    assert loaded.platform["fmspc"] == "feedfacecafe"


def test_positive_full_path(ca_dir: Path) -> None:
    attester = registry.attester_for("mock-tdx", ca_dir=str(ca_dir))
    claims = _verify(ca_dir, attester.evidence(RD))
    assert claims.tee == "mock-tdx"
    assert claims.debug is False
    assert claims.tcb_status == "UpToDate"
    assert claims.advisories == ()
    assert claims.report_data == RD + bytes(16)
    assert claims.extra["mock"] is True
    assert claims.extra["fmspc"] == "feedfacecafe"
    assert isinstance(attester, Attester)
    for name, value in attester.measurements.items():
        assert claims.measurements[name] == value
    # the CCEL replays to the RTMRs and yields component claims
    assert claims.measurements["kernel_digest"]
    assert claims.extra["event_log"]["cmdline"] == "console=hvc0 root=/dev/vda1 ro"


def test_unknown_evidence_members_recorded(ca_dir: Path) -> None:
    ev = {**Attester(ca_dir).evidence(RD), "device_evidence": "opaque"}
    claims = _verify(ca_dir, ev)
    assert claims.extra["ignored_evidence_members"] == ["device_evidence"]


def test_quote_v5(ca_dir: Path) -> None:
    ev = Attester(ca_dir, quote_version=5).evidence(RD)
    claims = _verify(ca_dir, ev)
    assert claims.extra["quote_version"] == 5
    assert claims.measurements["mr_service_td"] == "00" * 48


def test_explicit_measurements(ca_dir: Path) -> None:
    rtmr = {"rtmr0": "11" * 48, "mr_td": "22" * 48}
    attester = Attester(ca_dir, measurements=rtmr)
    claims = _verify(ca_dir, attester.evidence(RD))
    assert claims.measurements["rtmr0"] == "11" * 48
    assert claims.measurements["mr_td"] == "22" * 48
    assert "kernel_digest" not in claims.measurements  # no event log with explicit RTMRs
    with pytest.raises(ConfigError):
        Attester(ca_dir, measurements={"rtmr9": "00" * 48})
    with pytest.raises(ConfigError):
        Attester(ca_dir, measurements={"rtmr0": "00"})


def test_unsupported_without_root(ca_dir: Path) -> None:
    with pytest.raises(UnsupportedTee, match="explicitly"):
        registry.verifier_for("mock-tdx", MockTdxConfig())


def test_wrong_root_rejected(ca_dir: Path, tmp_path: Path) -> None:
    other = MockTdxCA.create(tmp_path / "other")
    ev = Attester(ca_dir).evidence(RD)
    verifier = registry.verifier_for(
        "mock-tdx",
        MockTdxConfig(root=str(other.root_pem_path), collateral=str(ca_dir / "collateral.json")),
    )
    with pytest.raises(EvidenceError, match="certificate chain broken"):
        verifier.verify(ev, expected_report_data=RD, now=time.time())


def test_real_tdx_verifier_refuses_mock_quotes(ca_dir: Path) -> None:
    ev = Attester(ca_dir).evidence(RD)
    verifier = registry.verifier_for("tdx", TdxConfig(collateral=str(ca_dir)))
    with pytest.raises(EvidenceError, match="certificate chain broken"):
        verifier.verify(ev, expected_report_data=RD, now=time.time())


def _mutate_quote(ev: dict[str, Any], pos: int) -> dict[str, Any]:
    quote = bytearray(b64_decode(ev["quote"]))
    quote[pos] ^= 0x40
    return {**ev, "quote": b64_encode(bytes(quote))}


def test_bad_signatures_rejected(ca_dir: Path) -> None:
    ev = Attester(ca_dir).evidence(RD)
    quote = parse_quote(b64_decode(ev["quote"]))
    qe_start = quote.signed_length + 4 + 128 + 6
    cases = {
        "quote signature invalid": [100, 300, 632 - 1, quote.signed_length + 4 + 3],
        "QE report": [qe_start + 10, qe_start + 384 + 5],
    }
    for reason, positions in cases.items():
        for pos in positions:
            with pytest.raises(EvidenceError, match=reason):
                _verify(ca_dir, _mutate_quote(ev, pos))
    # every sampled position anywhere in the quote is rejected
    for pos in range(0, len(quote.raw), 97):
        with pytest.raises(EvidenceError):
            _verify(ca_dir, _mutate_quote(ev, pos))


def test_expired_and_future_collateral(ca_dir: Path) -> None:
    ev = Attester(ca_dir).evidence(RD)
    with pytest.raises(EvidenceError, match=r"^collateral expired"):
        _verify(ca_dir, ev, now=time.time() + 400 * 86400)
    with pytest.raises(EvidenceError, match=r"^collateral not yet valid"):
        _verify(ca_dir, ev, now=time.time() - 2 * 86400)


@pytest.mark.parametrize("revoke", ["revoke_pck", "revoke_pck_ca"])
def test_revoked_in_crl(ca_dir: Path, tmp_path: Path, revoke: str) -> None:
    ca = MockTdxCA.load(ca_dir)
    now = time.time()
    doc = ca.collateral(issued=now - 60, next_update=now + 3600, **{revoke: True})
    path = tmp_path / "revoked.json"
    path.write_text(json.dumps(doc))
    verifier = _verifier(ca_dir, collateral=str(path))
    with pytest.raises(EvidenceError, match=r"^certificate revoked"):
        verifier.verify(Attester(ca_dir).evidence(RD), expected_report_data=RD, now=now)


def test_debug_td_rejected(ca_dir: Path) -> None:
    attester = Attester(ca_dir, debug=True)
    quote = parse_quote(b64_decode(attester.evidence(RD)["quote"]))
    assert quote.td_report.debug is True
    with pytest.raises(EvidenceError, match=r"^debug TEE"):
        _verify(ca_dir, attester.evidence(RD))


def test_binding_mismatch(ca_dir: Path) -> None:
    ev = Attester(ca_dir).evidence(RD)
    with pytest.raises(EvidenceError, match="binding mismatch"):
        _verify(ca_dir, ev, report_data=b"\x01" * 48)


def test_out_of_date_tcb_reports_advisories(ca_dir: Path) -> None:
    claims = _verify(ca_dir, Attester(ca_dir, tcb="OutOfDate").evidence(RD))
    assert claims.tcb_status == "OutOfDate"
    assert list(claims.advisories) == MOCK_ADVISORIES


def test_init_data_binding(ca_dir: Path) -> None:
    ev = Attester(ca_dir, init_data=INIT_DATA).evidence(RD)
    claims = _verify(ca_dir, ev, init_data=INIT_DATA)
    assert claims.init_data == {"model_digest": "sha256:abcd"}
    assert claims.init_data_digest
    assert len(claims.init_data_digest) == 96
    assert claims.measurements["mr_config_id"] == claims.init_data_digest
    with pytest.raises(EvidenceError, match="init-data binding mismatch"):
        _verify(ca_dir, ev, init_data=INIT_DATA.replace(b"abcd", b"abce"))
    with pytest.raises(EvidenceError, match="init-data binding mismatch"):
        _verify(ca_dir, Attester(ca_dir).evidence(RD), init_data=INIT_DATA)


def test_tampered_event_log_rejected(ca_dir: Path) -> None:
    ev = Attester(ca_dir, kernel=b"kernel A").evidence(RD)
    other = Attester(ca_dir, kernel=b"kernel B").evidence(RD)
    forged = {**ev, "cc_eventlog": other["cc_eventlog"]}
    with pytest.raises(EvidenceError, match="does not replay to the quoted RTMR1"):
        _verify(ca_dir, forged)


def test_ca_dir_is_a_parameter_not_the_environment(
    ca_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The library takes the directory explicitly; ``MODELSEAL_MOCK_TDX_DIR`` is read by
    the command line (``--mock-tdx-dir``) and ``LoaderSettings.from_env`` only."""
    monkeypatch.setenv("MODELSEAL_MOCK_TDX_DIR", str(ca_dir))
    with pytest.raises(ConfigError, match="--mock-tdx-dir"):
        Attester()
    assert Attester(ca_dir).ca.directory == ca_dir


def test_ca_created_on_demand(tmp_path: Path) -> None:
    target = tmp_path / "fresh"
    Attester(target)
    assert (target / "root-ca.pem").is_file()
    assert os.access(target / "collateral.json", os.R_OK)


def test_extra_bundle_does_not_hide_ca_collateral(ca_dir: Path, tmp_path: Path) -> None:
    """A KBS with a real TDX bundle and --mock-tdx-root still finds the mock collateral."""
    (tmp_path / "unrelated.json").write_text('{"not": "collateral"}')
    verifier = _verifier(ca_dir, collateral=str(tmp_path))
    claims = verifier.verify(
        Attester(ca_dir).evidence(RD), expected_report_data=RD, now=time.time()
    )
    assert claims.tcb_status == "UpToDate"


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_quote_mutation_rejected(ca_dir: Path, data: st.DataObject) -> None:
    ev = _good_evidence(ca_dir)
    quote = b64_decode(ev["quote"])
    pos = data.draw(st.integers(0, len(quote) - 1))
    xor = data.draw(st.integers(1, 255))
    with pytest.raises(EvidenceError):
        _verify(ca_dir, _mutate_quote_xor(ev, pos, xor))


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_collateral_mutation_rejected(
    ca_dir: Path, tmp_path: Path, data: st.DataObject
) -> None:
    doc = json.loads((ca_dir / "collateral.json").read_text())
    key = data.draw(st.sampled_from(sorted(doc)))
    value: str = doc[key]
    if key.endswith(("_crl", "_signature")):
        blob = bytearray(bytes.fromhex(value))
        blob[data.draw(st.integers(0, len(blob) - 1))] ^= data.draw(st.integers(1, 255))
        doc[key] = blob.hex()
    else:  # swap one digit for another: JSON/PEM stay well-formed, only the bytes differ
        digits = [i for i, c in enumerate(value) if c.isdigit()]
        i = data.draw(st.sampled_from(digits))
        doc[key] = (
            value[:i] + str((int(value[i]) + data.draw(st.integers(1, 9))) % 10) + value[i + 1 :]
        )
    path = tmp_path / f"mut-{data.draw(st.integers(0, 10**9))}.json"
    path.write_text(json.dumps(doc))
    root = pem_to_der((ca_dir / "root-ca.pem").read_bytes())
    # the mutated file is the only collateral this verifier knows; a document whose dates
    # no longer parse is refused when loading (ConfigError), everything else by the checks
    evidence = _good_evidence(ca_dir)

    def check() -> None:
        verifier = MockVerifier(CollateralStore(bundle=path), root_ca_der=root)
        verifier.verify(evidence, expected_report_data=RD, now=time.time())

    with pytest.raises((EvidenceError, ConfigError)):
        check()


_EVIDENCE: dict[str, Any] = {}


def _good_evidence(ca_dir: Path) -> Any:
    """One valid evidence document per test run (quoting costs a signature + collateral)."""
    if "ev" not in _EVIDENCE:
        _EVIDENCE["ev"] = Attester(ca_dir).evidence(RD)
    return _EVIDENCE["ev"]


def _mutate_quote_xor(ev: dict[str, Any], pos: int, xor: int) -> dict[str, Any]:
    quote = bytearray(b64_decode(ev["quote"]))
    quote[pos] ^= xor
    return {**ev, "quote": b64_encode(bytes(quote))}


def test_pck_crl_with_unknown_version_is_malformed_collateral(ca_dir: Path, tmp_path: Path) -> None:
    """Regression (found by the mutation test): pyca's InvalidVersion is not a crash."""
    doc = json.loads((ca_dir / "collateral.json").read_text())
    crl = bytearray(bytes.fromhex(doc["pck_crl"]))
    at = crl.find(bytes([0x02, 0x01, 0x01]))  # tbsCertList version INTEGER 1 (v2)
    crl[at + 2] = 0
    path = tmp_path / "bad-version.json"
    path.write_text(json.dumps({**doc, "pck_crl": crl.hex()}))
    root = pem_to_der((ca_dir / "root-ca.pem").read_bytes())
    verifier = MockVerifier(CollateralStore(bundle=path), root_ca_der=root)
    with pytest.raises(EvidenceError, match="malformed collateral: PCK CRL"):
        verifier.verify(_good_evidence(ca_dir), expected_report_data=RD, now=time.time())
