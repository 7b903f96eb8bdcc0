"""The ``gpus:`` section of a release policy: validation, and evaluation against the
device claims of a composite attestation (default deny when the evidence has no GPU)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from modelseal.policy import evaluate, parse_policy
from modelseal.policy.document import PolicyInvalid
from modelseal.protocol.claims import Claims

NOW = 1_800_000_000.0
M2 = "ab" * 48
CPU = Claims(tee="tdx", debug=False, report_data=bytes(64), tcb_status="UpToDate")


def _gpu(**extra: Any) -> Claims:
    base = {
        "cc_mode": "on",
        "driver_version": "550.90.07",
        "rim": {"driver": "match", "vbios": "match"},
    }
    return Claims(
        tee="nvidia",
        debug=False,
        report_data=bytes(32),
        measurements={"2": M2, "3": "cd" * 48},
        extra={**base, **extra},
    )


def _policy(**gpus: Any) -> Any:
    return parse_policy(
        {"apiVersion": "modelseal/v1", "kind": "ReleasePolicy", "tee": ["tdx"], "gpus": gpus}
    )


def _reasons(policy: Any, *gpus: Claims) -> tuple[bool, str]:
    decision = evaluate(policy, dataclasses.replace(CPU, devices=gpus), now=NOW)
    return decision.allowed, " | ".join(decision.reasons)


def test_defaults_need_one_gpu_in_cc_mode() -> None:
    policy = _policy()
    assert policy.gpus is not None
    assert policy.to_document()["gpus"] == {"min_count": 1, "cc_mode": "on", "rim_match": False}
    assert _reasons(policy, _gpu())[0]
    allowed, why = _reasons(policy)
    assert not allowed
    assert "requires 1 attested GPU(s)" in why
    assert "carried 0" in why


def test_min_count() -> None:
    policy = _policy(min_count=2)
    assert not _reasons(policy, _gpu())[0]
    assert _reasons(policy, _gpu(), _gpu())[0]


@pytest.mark.parametrize("mode", ["devtools", "off"])
def test_cc_mode(mode: str | None) -> None:
    allowed, why = _reasons(_policy(), _gpu(cc_mode=mode))
    assert not allowed
    assert "gpu0: confidential-computing mode" in why
    assert _reasons(_policy(cc_mode="any"), _gpu(cc_mode="devtools"))[0]


def test_every_gpu_is_held_to_the_rules() -> None:
    allowed, why = _reasons(_policy(), _gpu(), _gpu(cc_mode="devtools"))
    assert not allowed
    assert why.startswith("gpu1:")


@pytest.mark.parametrize(
    "rim",
    [None, {"driver": "match", "vbios": "absent"}, {"driver": "absent", "vbios": "match"}],
)
def test_rim_match(rim: Any) -> None:
    assert _reasons(_policy(rim_match=True), _gpu())[0]
    allowed, why = _reasons(_policy(rim_match=True), _gpu(rim=rim))
    assert not allowed
    assert "RIMs did not both match" in why


def test_measurements_last_byte() -> None:
    policy = _policy(measurements=[{"2": M2.upper()}])
    assert _reasons(policy, _gpu())[0]
    other = dataclasses.replace(_gpu(), measurements={"2": M2[:-2] + "ac"})
    allowed, why = _reasons(policy, other)
    assert not allowed
    assert "gpu0: no measurements entry matched (entry 0: 2)" in why


@pytest.mark.parametrize(
    ("have", "ok"),
    [("550.90.07", True), ("550.90.6", True), ("550.100", True), ("550.89.99", False),
     ("535.1", False), ("garbage", False)],
)  # fmt: skip
def test_min_driver_version(have: str, ok: bool) -> None:
    policy = _policy(min_driver_version="550.90")
    allowed, why = _reasons(policy, _gpu(driver_version=have))
    assert allowed is ok, why


@pytest.mark.parametrize(
    ("gpus", "problem"),
    [
        ({"min_count": 0}, "min_count"),
        ({"min_count": "1"}, "min_count"),
        ({"cc_mode": "off"}, "cc_mode"),
        ({"rim_match": "yes"}, "rim_match"),
        ({"measurements": [{}]}, "empty"),
        ({"measurements": [{"2": "abc"}]}, "even-length hex"),
        ({"min_driver_version": "550.x"}, "dotted numbers"),
        ({"cpu": 1}, "cpu"),
    ],
)
def test_invalid_sections(gpus: dict[str, Any], problem: str) -> None:
    with pytest.raises(PolicyInvalid, match=problem):
        _policy(**gpus)


def test_device_claims_without_a_gpus_section_do_not_matter() -> None:
    policy = parse_policy({"apiVersion": "modelseal/v1", "kind": "ReleasePolicy", "tee": ["tdx"]})
    assert _reasons(policy, _gpu(cc_mode="off"))[0]
    assert "gpus" not in policy.to_document()


def test_a_gpu_kind_is_not_a_policy_tee() -> None:
    with pytest.raises(PolicyInvalid, match="unknown TEE kind"):
        parse_policy({"apiVersion": "modelseal/v1", "kind": "ReleasePolicy", "tee": ["nvidia"]})


def test_evidence_without_cc_mode_needs_a_policy_that_says_any() -> None:
    """guest-components' NVIDIA attester sends no ``cc_mode`` (only modelseal's adds it;
    the GPU's signed report has no such field). The verifier accepts the real report and
    claims the mode ``None``; the default ``cc_mode: on`` denies it, naming the way out,
    and ``cc_mode: any`` releases on the signed report alone."""
    import base64

    from modelseal.tee.nvidia.verifier import Verifier
    from tests.unit.tee.nvidia.conftest import COCO
    from tests.unit.tee.nvidia.conftest import NOW as VECTORS_VALID

    entry = {  # the shape guest-components sends: base64 report and chain, no cc_mode
        "arch": "HOPPER",
        "uuid": "GPU-guest-components",
        "evidence": base64.b64encode(COCO.report).decode(),
        "certificate": base64.b64encode(COCO.chain).decode(),
    }
    gpu = Verifier().verify(
        {"device_evidence_list": [entry]},
        expected_report_data=bytes.fromhex(COCO.nonce),
        now=VECTORS_VALID,
    )
    assert "cc_mode" in gpu.extra
    assert gpu.extra["cc_mode"] is None
    allowed, why = _reasons(_policy(), gpu)
    assert not allowed
    assert why == (
        "gpu0: the evidence reports no confidential-computing mode, and the policy requires "
        "'on' (cc_mode: any accepts GPUs whose attester does not report it)"
    )
    assert _reasons(_policy(cc_mode="any"), gpu)[0]
    # the other rules still apply to such a GPU
    allowed, why = _reasons(_policy(cc_mode="any", min_driver_version="580.95.6"), gpu)
    assert not allowed
    assert "older than 580.95.6" in why
