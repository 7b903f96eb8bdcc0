"""The real Hopper vectors (tests/vectors/attestation/nvidia, from Trustee's test data)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ATTESTATION_VECTORS

NV = ATTESTATION_VECTORS / "nvidia" / "trustee"
#: inside the validity of every certificate of both chains (they end in 9999) and of the
#: real VBIOS RIM's signer (2025-09-05)
NOW = 1748736000.0  # 2025-06-01T00:00:00Z


@dataclass(frozen=True)
class Pair:
    report_file: Path
    chain_file: Path
    nonce: str
    signed_end: int
    driver: str
    vbios: str
    fwid: str

    @property
    def report(self) -> bytes:
        return bytes.fromhex(self.report_file.read_text().strip())

    @property
    def chain(self) -> bytes:
        return self.chain_file.read_bytes()


SAMPLE = Pair(
    NV / "hopperAttestationReport.txt",
    NV / "hopper_cert_chain_case1.txt",
    "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb",
    4021,
    "550.90.07",
    "96.00.9f.00.01",
    "f5c384aebb579217a2c66b17ed0f28e6a9b8d639041acd7b4721cec004f7275494ba94bb5cdfdb3055ee051762b1f75d",
)
COCO = Pair(
    NV / "hopper_coco_report1.txt",
    NV / "hopper_coco_certs1.txt",
    # Trustee's expected report data (48 bytes); the SPDM nonce holds its first 32
    "87d8e24ab336adafe228d49e83d745f6dba4ae505372b6a5704820856b343fece279b616efefc2aae21da80cf5581250",
    4033,
    "580.95.05",
    "96.00.74.00.1a",
    "f1ae7d0093a3f5689cced58045c9744f94eb2aa4ddca88135197fb41a7be45576c2881cf920e2cbcc090b1cb921f7b2d",
)
PAIRS = [SAMPLE, COCO]


@pytest.fixture(params=PAIRS, ids=["sample", "coco"])
def pair(request: pytest.FixtureRequest) -> Pair:
    p: Pair = request.param
    return p
