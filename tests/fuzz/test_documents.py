"""Fuzz targets: the text documents a KBS accepts from operators and TEEs (release policies
in JSON or YAML, TOML init-data)."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import pytest
import yaml

from modelseal.policy.document import parse_policy_text
from modelseal.tee.initdata import parse_init_data
from modelseal.tee.sample.verifier import Verifier as SampleVerifier
from tests.conftest import ROOT
from tests.fuzz.harness import HOSTILE_TEXT, HOSTILE_TOML, Target, json_mutated, run

EXAMPLES = ROOT / "deploy" / "examples"


@cache
def _policy_doc() -> Any:
    return json.loads(
        json.dumps(yaml.safe_load((EXAMPLES / "release-policy.yaml").read_text()), default=str)
    )


HOSTILE_YAML = (
    b"a: " + b"[" * 100_000 + b"]" * 100_000,
    b"a: &a [" + b"*a," * 10 + b"]",
    b"not_after: 2027-13-45T00:00:00Z",
    b"a: !!python/object/apply:os.system ['true']",
    b"- " * 50_000 + b"x",
)


def _sample_verify(init_data: bytes) -> object:
    """The sample TEE's verifier reads the init-data claims itself."""
    evidence = {"svn": "1", "report_data": "AQID"}
    return SampleVerifier().verify(
        evidence, expected_report_data=b"\x01\x02\x03", now=0, init_data=init_data
    )


TARGETS = [
    Target(
        "policy",
        parse_policy_text,
        lambda: [
            (EXAMPLES / "release-policy.yaml").read_bytes(),
            json.dumps(_policy_doc()).encode(),
        ],
        extra=lambda: json_mutated([_policy_doc()]),
        hostile=HOSTILE_TEXT + HOSTILE_YAML,
    ),
    Target(
        "init-data",
        parse_init_data,
        lambda: [(EXAMPLES / "initdata.toml").read_bytes()],
        hostile=HOSTILE_TOML,
    ),
    Target(
        "sample-init-data",
        _sample_verify,
        lambda: [(EXAMPLES / "initdata.toml").read_bytes()],
        hostile=HOSTILE_TOML,
    ),
]

pytestmark = pytest.mark.fuzz


@pytest.mark.parametrize("target", TARGETS, ids=str)
def test_fuzz(target: Target) -> None:
    run(target)
