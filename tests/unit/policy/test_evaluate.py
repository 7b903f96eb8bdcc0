"""Policy evaluation on typed claims: default deny, every rule, reasons for the audit log."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelseal.policy import TEE_KINDS, evaluate, parse_policy
from modelseal.policy.document import PolicyInvalid
from modelseal.protocol.claims import Claims

NOW = datetime(2026, 11, 22, tzinfo=UTC).timestamp()
MRTD = "ab" * 48
RTMR1 = "01" * 48
DIGEST = "sha256:" + "ef" * 32
BASE: dict[str, Any] = {"apiVersion": "modelseal/v1", "kind": "ReleasePolicy", "tee": ["tdx"]}
TDX = Claims(
    tee="tdx",
    debug=False,
    report_data=b"",
    tcb_status="UpToDate",
    measurements={"mr_td": MRTD, "rtmr1": RTMR1},
    init_data={"model_digest": DIGEST, "namespace": "prod"},
)


def decide(
    patch: dict[str, Any], claims: Claims = TDX, now: float = NOW
) -> tuple[bool, tuple[str, ...]]:
    d = evaluate(parse_policy({**BASE, **patch}), claims, now=now)
    return d.allowed, d.reasons


def test_no_policy_denies() -> None:
    d = evaluate(None, TDX, now=NOW)
    assert not d.allowed
    assert d.verdict == "deny"
    assert "default deny" in d.reasons[0]


def test_minimal_policy_allows_matching_tee() -> None:
    allowed, reasons = decide({})
    assert allowed
    assert "met" in reasons[0]


def test_wrong_tee() -> None:
    allowed, reasons = decide({"tee": ["snp"]})
    assert not allowed
    assert "tee 'tdx'" in reasons[0]


def test_sample_needs_insecure_kbs() -> None:
    sample = Claims(tee="sample", debug=False, report_data=b"", tcb_status="UpToDate")
    assert not decide({"tee": ["sample"]}, sample)[0]
    assert decide({"tee": ["sample"]}, dataclasses.replace(sample, insecure=True))[0]
    # a policy that does not list sample never accepts it, insecure or not
    assert not decide({"tee": ["tdx"]}, dataclasses.replace(sample, insecure=True))[0]


def test_debug() -> None:
    dbg = dataclasses.replace(TDX, debug=True)
    allowed, reasons = decide({}, dbg)
    assert not allowed
    assert "debug" in reasons[0]
    assert decide({"debug": True}, dbg)[0]


def test_tcb_status() -> None:
    old = dataclasses.replace(TDX, tcb_status="OutOfDate")
    assert not decide({}, old)[0]
    assert decide({"tcb_status": ["UpToDate", "OutOfDate"]}, old)[0]
    missing = dataclasses.replace(TDX, tcb_status=None)
    allowed, reasons = decide({}, missing)
    assert not allowed
    assert "no TCB status" in reasons[0]


def test_tcb_status_not_checked_for_tpm() -> None:
    tpm = Claims(tee="tpm", debug=False, report_data=b"", measurements={"pcr7": "00" * 32})
    assert decide({"tee": ["tpm"]}, tpm)[0]


def test_measurements_any_of_all_must_match_case_insensitive() -> None:
    assert decide({"measurements": [{"mr_td": MRTD.upper(), "rtmr1": RTMR1}]})[0]
    assert decide({"measurements": [{"mr_td": "00" * 48}, {"mr_td": MRTD}]})[0]
    allowed, reasons = decide({"measurements": [{"mr_td": MRTD, "rtmr1": "02" * 48}]})
    assert not allowed
    assert "entry 0: rtmr1" in reasons[0]
    allowed, reasons = decide({"measurements": [{"rtmr3": "00" * 48}]})
    assert not allowed
    upper = dataclasses.replace(TDX, measurements={"MR_TD": MRTD.upper()})
    assert decide({"measurements": [{"mr_td": MRTD}]}, upper)[0]


def test_init_data_exact() -> None:
    assert decide({"init_data": {"namespace": "prod"}})[0]
    allowed, reasons = decide({"init_data": {"namespace": "dev"}})
    assert not allowed
    assert "namespace" in reasons[0]
    allowed, reasons = decide({"init_data": {"image": "x"}})
    assert "missing" in reasons[0]


def test_model_digest_from_init_data() -> None:
    assert decide({"model_digest": DIGEST.upper()})[0]
    allowed, reasons = decide({"model_digest": "sha256:" + "00" * 32})
    assert not allowed
    assert "model digest" in reasons[0]
    no_claim = dataclasses.replace(TDX, init_data={})
    assert not decide({"model_digest": DIGEST}, no_claim)[0]


def test_model_digest_from_runtime_attested_models() -> None:
    # a serving TEE attests its models at run time: they, not init-data, decide
    policy = parse_policy({**BASE, "model_digest": DIGEST})
    no_claim = dataclasses.replace(TDX, init_data={})
    other = DIGEST[:-1] + ("0" if DIGEST[-1] != "0" else "1")
    assert evaluate(policy, no_claim, now=NOW, attested_models=[other, DIGEST]).allowed
    denied = evaluate(policy, TDX, now=NOW, attested_models=[other])
    assert not denied.allowed
    assert "not among the attested models" in denied.reasons[0]
    assert not evaluate(policy, TDX, now=NOW, attested_models=[]).allowed


def test_not_after() -> None:
    policy = {"not_after": "2026-11-22T00:00:10Z"}
    assert decide(policy, now=NOW + 9)[0]
    allowed, reasons = decide(policy, now=NOW + 10)
    assert not allowed
    assert "expired" in reasons[0]


def test_all_reasons_are_collected() -> None:
    bad = dataclasses.replace(TDX, tee="snp", debug=True, tcb_status="OutOfDate", init_data={})
    allowed, reasons = decide({"measurements": [{"mr_td": "00" * 48}], "model_digest": DIGEST}, bad)
    assert not allowed
    assert len(reasons) == 5


claims_strategy = st.builds(
    Claims,
    tee=st.sampled_from([*TEE_KINDS, "azure", ""]),
    debug=st.booleans(),
    report_data=st.just(b""),
    tcb_status=st.none() | st.sampled_from(["UpToDate", "OutOfDate", "Revoked"]),
    measurements=st.dictionaries(
        st.sampled_from(["mr_td", "rtmr0", "rtmr1"]),
        st.binary(min_size=1, max_size=4).map(bytes.hex),
    ),
    init_data=st.dictionaries(st.sampled_from(["model_digest", "ns"]), st.text(max_size=8)),
    insecure=st.booleans(),
)


@settings(deadline=None)
@given(claims_strategy, st.lists(st.sampled_from(TEE_KINDS), min_size=1, unique=True))
def test_allow_implies_every_rule_holds(claims: Claims, tees: list[str]) -> None:
    d = evaluate(parse_policy({**BASE, "tee": tees}), claims, now=NOW)
    if d.allowed:
        assert claims.tee in tees
        assert not claims.debug
        assert claims.tee != "sample" or claims.insecure
        if claims.tee in ("tdx", "snp", "sgx", "mock-tdx"):
            assert claims.tcb_status == "UpToDate"
    else:
        assert d.reasons


@settings(deadline=None)
@given(claims_strategy)
def test_default_deny_always(claims: Claims) -> None:
    assert not evaluate(None, claims, now=NOW).allowed


@settings(deadline=None)
@given(claims_strategy, st.binary(min_size=1, max_size=4).map(bytes.hex))
def test_measurement_mismatch_always_denies(claims: Claims, want: str) -> None:
    policy = parse_policy({**BASE, "tee": list(TEE_KINDS), "measurements": [{"mr_td": want}]})
    d = evaluate(policy, claims, now=NOW)
    if claims.measurements.get("mr_td") != want:
        assert not d.allowed


LOADED = dataclasses.replace(
    TDX, runtime_events=("other.domain PullImage nginx", f"modelseal.dev LoadModel {DIGEST}")
)


def test_loaded_models_require_the_recorded_load() -> None:
    assert decide({"loaded_models": [DIGEST]}, LOADED)[0]
    allowed, reasons = decide({"loaded_models": [DIGEST]}, TDX)
    assert not allowed
    assert any(DIGEST in r and "no load" in r for r in reasons)
    # a digest that differs in its last character was not loaded
    assert not decide({"loaded_models": [DIGEST[:-1] + "0"]}, LOADED)[0]
    # every listed model must have been loaded
    assert not decide({"loaded_models": [DIGEST, "sha256:" + "12" * 32]}, LOADED)[0]


def test_runtime_events_must_all_be_present() -> None:
    assert decide({"runtime_events": ["other.domain PullImage nginx"]}, LOADED)[0]
    assert not decide({"runtime_events": ["other.domain PullImage nginy"]}, LOADED)[0]


def test_runtime_rules_validate_and_normalize() -> None:
    policy = parse_policy({**BASE, "loaded_models": [DIGEST.upper().replace("SHA256", "sha256")]})
    assert policy.loaded_models == (DIGEST,)
    assert policy.to_document()["loaded_models"] == [DIGEST]
    for bad in (
        {"loaded_models": ["ef" * 32]},
        {"loaded_models": [DIGEST, DIGEST]},
        {"runtime_events": ["no-spaces"]},
        {"runtime_events": ["a b c\nd"]},
    ):
        with pytest.raises(PolicyInvalid):
            parse_policy({**BASE, **bad})
