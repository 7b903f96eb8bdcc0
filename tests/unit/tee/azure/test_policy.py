"""Release policies over Azure claims: the kinds come from the plugins, measurements pin
the SNP launch digest (or MRTD) together with vTPM PCRs, TCB status is enforced."""

from __future__ import annotations

import json
from pathlib import Path

from modelseal.policy import evaluate, parse_policy
from modelseal.policy.document import TCB_CHECKED_TEES, ReleasePolicy
from modelseal.protocol.claims import Claims
from modelseal.tee.registry import build_config, verifier_for

AT = 1767225600.0
PCR0 = "e15c44796beabf46abcec7c57e590942041e47497e4ec27571c8b7664f48dced"
MEASUREMENT = (
    "6a063be9dd79f6371c842e480f8dc3b5c725961344e57130e88c5adf49e8f7f6"
    "c79b75a5eb77fc769959f4aeb2f9401e"
)


def _claims(shared_vectors: Path) -> Claims:
    doc = json.loads((shared_vectors / "tpm/trustee-az-snp-vtpm/evidence-v1.json").read_text())
    verifier = verifier_for("az-snp-vtpm", build_config("az-snp-vtpm", {}))
    return verifier.verify(doc, expected_report_data=b"challenge", now=AT)


def test_schema_names_the_azure_kinds_and_checks_their_tcb() -> None:
    enum = ReleasePolicy.model_json_schema()["properties"]["tee"]["items"]["enum"]
    assert {"az-snp-vtpm", "az-tdx-vtpm"} <= set(enum)
    assert {"az-snp-vtpm", "az-tdx-vtpm"} <= TCB_CHECKED_TEES


def test_policy_pins_measurement_and_pcr(shared_vectors: Path) -> None:
    claims = _claims(shared_vectors)
    base = {"apiVersion": "modelseal/v1", "kind": "ReleasePolicy", "tee": ["az-snp-vtpm"]}
    allow = parse_policy({**base, "measurements": [{"measurement": MEASUREMENT, "pcr0": PCR0}]})
    assert evaluate(allow, claims, now=AT).allowed
    other = PCR0[:-1] + ("0" if PCR0[-1] != "0" else "1")
    deny = parse_policy({**base, "measurements": [{"measurement": MEASUREMENT, "pcr0": other}]})
    decision = evaluate(deny, claims, now=AT)
    assert not decision.allowed
    assert "pcr0" in decision.reasons[0]
    tdx_only = parse_policy({**base, "tee": ["az-tdx-vtpm"]})
    assert not evaluate(tdx_only, claims, now=AT).allowed
