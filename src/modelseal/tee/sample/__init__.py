"""The ``sample`` TEE: Trustee-compatible, unsigned, for development only.

Its evidence proves nothing; the KBS refuses it unless started with
``--insecure-allow-sample`` and stamps ``insecure`` into every token it issues for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from modelseal.tee.plugin import KindConfig, OptionSpec, TeePlugin, option

ALLOW = OptionSpec(
    "insecure_allow_sample",
    "DEV ONLY: accept unsigned evidence (stamped into every token).",
    type="flag",
    enables=True,
)


@dataclass(frozen=True)
class SampleConfig(KindConfig):
    """The sample verifier only needs the explicit opt-in."""

    kind: ClassVar[str] = "sample"
    allow: bool = option(ALLOW, default=False)


PLUGIN = TeePlugin(
    name=SampleConfig.kind,
    attester_module=f"{__name__}.attester",
    verifier_module=f"{__name__}.verifier",
    config=SampleConfig,
    insecure=True,
    test_only=True,
    testbed_module=f"{__name__}.testbed",
    summary="unsigned evidence, development only",
)
