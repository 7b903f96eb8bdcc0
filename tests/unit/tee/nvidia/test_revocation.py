"""Offline revocation of GPU device chains: CRLs and OCSP responses from a bundle."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from modelseal.crypto.x509_test_ca import issue_crl, issue_ocsp_response
from modelseal.errors import ConfigError, EvidenceError
from modelseal.tee.nvidia import NvidiaConfig
from modelseal.tee.nvidia.evidence import build_device, build_evidence
from modelseal.tee.nvidia.verifier import Verifier
from tests.unit.tee.nvidia.mockgpu import MockGpu

NONCE = bytes(range(32))


@pytest.fixture(scope="module")
def gpu() -> MockGpu:
    return MockGpu()


def _now(gpu: MockGpu) -> dt.datetime:
    return gpu.leaf.not_valid_before_utc + dt.timedelta(days=2)


def _verify(gpu: MockGpu, tmp_path: Path, bundle: Path) -> object:
    root = gpu.write_root(tmp_path / "root.pem")
    verifier = Verifier.from_config(NvidiaConfig(device_root=str(root), revocation=str(bundle)))
    evidence = build_evidence([build_device(gpu.report(NONCE), gpu.chain_pem)])
    return verifier.verify(evidence, expected_report_data=NONCE, now=_now(gpu).timestamp())


def _ocsp(gpu: MockGpu, *, revoked: bool) -> bytes:
    now = _now(gpu)
    return issue_ocsp_response(
        issuer_key=gpu.root_key,
        issuer_cert=gpu.root,
        cert=gpu.leaf,
        revoked=revoked,
        this_update=now - dt.timedelta(hours=1),
        next_update=now + dt.timedelta(days=1),
    )


def _forged(response: bytes) -> bytes:
    """A "revoked" answer whose signature (the last bytes of the DER) no longer verifies."""
    return response[:-1] + bytes([response[-1] ^ 1])


def _crl(gpu: MockGpu, serials: list[int], *, days: int = 7) -> bytes:
    now = _now(gpu)
    return issue_crl(
        issuer_key=gpu.root_key,
        issuer_cert=gpu.root,
        revoked_serials=serials,
        this_update=now - dt.timedelta(days=1),
        next_update=now + dt.timedelta(days=days),
    )


def _bundle(tmp_path: Path, **files: bytes) -> Path:
    out = tmp_path / "bundle"
    out.mkdir()
    for name, data in files.items():
        (out / name).write_bytes(data)
    return out


def test_good_answers_and_forgeries_do_not_revoke(gpu: MockGpu, tmp_path: Path) -> None:
    bundle = _bundle(
        tmp_path,
        good_ocsp=_ocsp(gpu, revoked=False),
        forged_ocsp=_forged(_ocsp(gpu, revoked=True)),
        crl=_crl(gpu, [gpu.leaf.serial_number + 1]),
    )
    assert _verify(gpu, tmp_path, bundle)


def test_ocsp_revoked_leaf(gpu: MockGpu, tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, ocsp=_ocsp(gpu, revoked=True))
    with pytest.raises(EvidenceError, match=r"test GPU FMC LF is revoked \(OCSP\)"):
        _verify(gpu, tmp_path, bundle)


def test_crl_revoked_leaf(gpu: MockGpu, tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, crl=_crl(gpu, [gpu.leaf.serial_number]))
    with pytest.raises(EvidenceError, match="test GPU FMC LF is revoked"):
        _verify(gpu, tmp_path, bundle)


def test_expired_crl(gpu: MockGpu, tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, crl=_crl(gpu, [], days=-1))
    with pytest.raises(EvidenceError, match="refresh the revocation bundle"):
        _verify(gpu, tmp_path, bundle)


def test_a_bundle_file_that_is_neither(gpu: MockGpu, tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, junk=b"not revocation data")
    with pytest.raises(ConfigError, match="neither a CRL nor an OCSP response"):
        _verify(gpu, tmp_path, bundle)
