"""Verified SNP claims feed the release policy through the KBS attestation service."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from modelseal._internal.clock import FixedClock
from modelseal.kbs.attestation import AttestationService
from modelseal.policy.document import ReleasePolicy, parse_policy
from modelseal.policy.evaluate import evaluate
from modelseal.protocol.claims import Claims
from modelseal.tee.registry import build_configs
from modelseal.tee.snp.evidence import build_evidence
from modelseal.tee.snp.report import Product, parse_report

VERIFY_AT = datetime(2025, 6, 1, tzinfo=UTC).timestamp()


def _claims(vectors: Path, tmp_path: Path, report: str, key: str, chain: str) -> Claims:
    certs = tmp_path / report.replace("/", "_")
    certs.mkdir()
    (certs / "1").write_bytes((vectors / key).read_bytes())
    (certs / "2").write_bytes((vectors / chain).read_bytes())
    service = AttestationService(
        build_configs({"snp_certs": str(certs)}), clock=FixedClock(VERIFY_AT)
    )
    raw = (vectors / report).read_bytes()
    binding = parse_report(raw, product=Product.MILAN).report_data
    return service.verify("snp", build_evidence(raw), expected_report_data=binding, init_data=None)


def _policy(**fields: Any) -> ReleasePolicy:
    doc = {"apiVersion": "modelseal/v1", "kind": "ReleasePolicy", "tee": ["snp"], **fields}
    return parse_policy(json.loads(json.dumps(doc)))


def test_measurement_policy_allows_and_other_measurement_denies(
    shared_vectors: Path, tmp_path: Path
) -> None:
    claims = _claims(
        shared_vectors,
        tmp_path,
        "snp/trustee/test-report.bin",
        "snp/trustee/test-vcek.der",
        "snp/trustee/milan_ask_ark_asvk.pem",
    )
    good = claims.measurements["measurement"]
    allowed = evaluate(_policy(measurements=[{"measurement": good}]), claims, now=0)
    assert allowed.allowed, allowed.reasons
    other = _policy(measurements=[{"measurement": "00" * 48}])
    assert not evaluate(other, claims, now=0).allowed
    pinned_tcb = _policy(measurements=[{"measurement": good, "tcb_microcode": "73"}])
    assert evaluate(pinned_tcb, claims, now=0).allowed


def test_debug_guest_denied_by_default(shared_vectors: Path, tmp_path: Path) -> None:
    claims = _claims(
        shared_vectors,
        tmp_path,
        "snp/go-sev-guest/attestation.bin",
        "snp/go-sev-guest/vcek.der",
        "snp/go-sev-guest/trust_ask_ark_milan.pem",
    )
    assert claims.debug is True
    decision = evaluate(_policy(), claims, now=0)
    assert not decision.allowed
    assert any("debug" in r for r in decision.reasons)
    assert evaluate(_policy(debug=True), claims, now=0).allowed


def test_other_tee_kind_policy_denies(shared_vectors: Path, tmp_path: Path) -> None:
    claims = _claims(
        shared_vectors,
        tmp_path,
        "snp/trustee/test-report.bin",
        "snp/trustee/test-vcek.der",
        "snp/trustee/milan_ask_ark_asvk.pem",
    )
    tdx_only = parse_policy({"apiVersion": "modelseal/v1", "kind": "ReleasePolicy", "tee": ["tdx"]})
    assert not evaluate(tdx_only, claims, now=0).allowed


@pytest.mark.parametrize("status", ["UpToDate", "OutOfDate"])
def test_tcb_status_is_what_the_policy_sees(status: str) -> None:
    claims = Claims(tee="snp", debug=False, report_data=bytes(64), tcb_status=status)
    assert evaluate(_policy(), claims, now=0).allowed is (status == "UpToDate")
