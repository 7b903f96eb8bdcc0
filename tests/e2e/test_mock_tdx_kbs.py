"""mock-tdx E2E: loader KbsClient → real ``modelseal kbs serve --mock-tdx-root`` → policy → key.

The KBS verifies structurally real TDX quotes through the full DCAP path (dcap-qvl with
the test root), replays the CCEL, checks init-data against MRCONFIGID, and the release
policy decides on MRTD/RTMRs and the model digest. A wrong RTMR is denied by policy
(403); a debug TD never gets that far: its quote fails verification (attestation error).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from modelseal.crypto.secret import SecretBytes
from modelseal.errors import AttestationError, PolicyDenied
from modelseal.kbs.state import KbsState
from modelseal.loader.kbs_client import KbsClient
from modelseal.tee.mock_tdx import MockTdxConfig
from modelseal.tee.mock_tdx.attester import Attester
from modelseal.tee.mock_tdx.ca import MockTdxCA
from modelseal.tee.registry import verifier_for
from tests.e2e.kbs_process import start_kbs, stop_process

pytestmark = pytest.mark.e2e

DEK = bytes(range(7, 39))
KEY = "models/tdx-demo/1"
WRONG_RTMR_KEY = "models/tdx-demo/wrong-rtmr"
DIGEST_KEY = "models/tdx-demo/with-digest"
COMPONENT_KEY = "models/tdx-demo/kernel-and-cmdline"
MODEL_DIGEST = "sha256:" + "ab" * 32
INIT_DATA = f'version = "0.1.0"\nalgorithm = "sha384"\n[data]\nmodel_digest = "{MODEL_DIGEST}"\n'


@dataclass
class Env:
    url: str
    ca_dir: Path


def _policy(**extra: object) -> dict[str, object]:
    return {"apiVersion": "modelseal/v1", "kind": "ReleasePolicy", "tee": ["mock-tdx"], **extra}


def _components(ca: MockTdxCA) -> dict[str, str]:
    """The kernel and command-line digests the verifier derives from the default boot log."""
    config = MockTdxConfig(root=str(ca.root_pem_path))
    claims = verifier_for("mock-tdx", config).verify(
        Attester(ca.directory).evidence(b"rd"), expected_report_data=b"rd", now=time.time()
    )
    return {k: claims.measurements[k] for k in ("kernel_digest", "cmdline_digest")}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("mock-tdx-kbs")
    ca = MockTdxCA.create(root / "ca")
    good = Attester(ca.directory).measurements
    state = KbsState.open(root / "kbs")
    pinned = {k: good[k] for k in ("mr_td", "rtmr0", "rtmr1", "rtmr2")}
    state.keys.put(KEY, SecretBytes(DEK), policy=_policy(measurements=[pinned]), actor="test")
    wrong = {**pinned, "rtmr1": "00" * 48}
    state.keys.put(
        WRONG_RTMR_KEY, SecretBytes(DEK), policy=_policy(measurements=[wrong]), actor="test"
    )
    state.keys.put(
        DIGEST_KEY,
        SecretBytes(DEK),
        policy=_policy(measurements=[{"mr_td": good["mr_td"]}], model_digest=MODEL_DIGEST),
        actor="test",
    )
    # a policy on measured components (event-log claims), not on registers
    components = _components(ca)
    state.keys.put(
        COMPONENT_KEY, SecretBytes(DEK), policy=_policy(measurements=[components]), actor="test"
    )
    state.close()
    url, proc = start_kbs(root / "kbs", "--mock-tdx-root", str(ca.root_pem_path))
    try:
        yield Env(url, ca.directory)
    finally:
        stop_process(proc)
        if proc.stderr:
            proc.stderr.close()


def test_policy_on_mrtd_and_rtmrs_releases_key(env: Env) -> None:
    with KbsClient(env.url, Attester(env.ca_dir), tee="mock-tdx") as client:
        assert client.get_resource(KEY).reveal() == DEK
        assert client.token_id
        with pytest.raises(PolicyDenied):
            client.get_resource(WRONG_RTMR_KEY)


def test_different_kernel_changes_rtmr_and_is_denied(env: Env) -> None:
    attester = Attester(env.ca_dir, kernel=b"a different kernel")
    with KbsClient(env.url, attester, tee="mock-tdx") as client, pytest.raises(PolicyDenied):
        client.get_resource(KEY)


def test_policy_on_measured_kernel_and_cmdline(env: Env) -> None:
    """Event-log claims feed the policy: the same kernel/cmdline releases, another is denied."""
    with KbsClient(env.url, Attester(env.ca_dir), tee="mock-tdx") as client:
        assert client.get_resource(COMPONENT_KEY).reveal() == DEK
    for other in (
        Attester(env.ca_dir, kernel=b"a different kernel"),
        Attester(env.ca_dir, cmdline="console=ttyS0 init=/bin/sh"),
    ):
        with (
            KbsClient(env.url, other, tee="mock-tdx") as client,
            pytest.raises(PolicyDenied),
        ):
            client.get_resource(COMPONENT_KEY)


def test_explicit_wrong_rtmr_denied(env: Env) -> None:
    good = Attester(env.ca_dir).measurements
    attester = Attester(env.ca_dir, measurements={**good, "rtmr2": "ee" * 48})
    with KbsClient(env.url, attester, tee="mock-tdx") as client, pytest.raises(PolicyDenied):
        client.get_resource(KEY)


def test_debug_td_denied(env: Env) -> None:
    """A debug TD never reaches the policy: verification itself refuses it (401, not 403)."""
    with (
        KbsClient(env.url, Attester(env.ca_dir, debug=True), tee="mock-tdx") as client,
        pytest.raises(AttestationError),
    ):
        client.get_resource(KEY)


def test_out_of_date_tcb_denied(env: Env) -> None:
    attester = Attester(env.ca_dir, tcb="OutOfDate")
    with KbsClient(env.url, attester, tee="mock-tdx") as client, pytest.raises(PolicyDenied):
        client.get_resource(KEY)


def test_init_data_model_digest(env: Env) -> None:
    attester = Attester(env.ca_dir, init_data=INIT_DATA)
    with KbsClient(env.url, attester, tee="mock-tdx", init_data=INIT_DATA) as client:
        assert client.get_resource(DIGEST_KEY).reveal() == DEK
    # without init-data the model digest claim is absent: denied
    with (
        KbsClient(env.url, Attester(env.ca_dir), tee="mock-tdx") as client,
        pytest.raises(PolicyDenied),
    ):
        client.get_resource(DIGEST_KEY)
    # init-data that does not match MRCONFIGID fails attestation
    forged = INIT_DATA.replace("ab", "cd")
    with (
        KbsClient(env.url, attester, tee="mock-tdx", init_data=forged) as client,
        pytest.raises(AttestationError),
    ):
        client.get_resource(DIGEST_KEY)
