"""deploy/examples/release-policy.yaml, once its placeholders are filled in, lets exactly the
guests it describes through: a TDX guest with the MRTD and an SNP guest with the launch
measurement, each carrying the model digest in its init-data."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from modelseal.policy.document import parse_policy
from modelseal.policy.evaluate import evaluate
from modelseal.protocol.claims import Claims

EXAMPLE = Path(__file__).resolve().parents[3] / "deploy" / "examples" / "release-policy.yaml"
MR_TD = "ab" * 48
SNP_MEASUREMENT = "cd" * 48
DIGEST = "sha256:" + "ef" * 32


def _filled() -> dict:  # type: ignore[type-arg]
    text = (
        EXAMPLE.read_text()
        .replace("REPLACE_WITH_THE_MRTD_OF_YOUR_KATA_TDX_FIRMWARE", MR_TD)
        .replace("REPLACE_WITH_THE_SNP_LAUNCH_MEASUREMENT_OF_YOUR_KATA_SNP_GUEST", SNP_MEASUREMENT)
        .replace("sha256:REPLACE_WITH_THE_DIGEST_PRINTED_BY_modelseal_publish", DIGEST)
    )
    assert "REPLACE" not in text
    document: dict = yaml.safe_load(text)  # type: ignore[type-arg]
    return document


def _claims(tee: str, name: str, value: str, digest: str = DIGEST) -> Claims:
    return Claims(
        tee=tee,
        debug=False,
        report_data=bytes(64),
        tcb_status="UpToDate",
        measurements={name: value},
        init_data={"model_digest": digest},
    )


@pytest.mark.parametrize(
    ("tee", "name", "value"), [("tdx", "mr_td", MR_TD), ("snp", "measurement", SNP_MEASUREMENT)]
)
def test_each_named_tee_kind_can_match(tee: str, name: str, value: str) -> None:
    policy = parse_policy(_filled())
    assert evaluate(policy, _claims(tee, name, value), now=0).allowed
    # full-length values differing in the last byte are refused
    assert not evaluate(policy, _claims(tee, name, value[:-1] + "0"), now=0).allowed
    assert not evaluate(policy, _claims(tee, name, value, DIGEST[:-1] + "0"), now=0).allowed
