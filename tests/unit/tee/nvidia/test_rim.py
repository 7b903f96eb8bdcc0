"""RIMs: NVIDIA's real signed VBIOS RIM, and test RIMs signed by a test CA (no real driver
RIM covers the vector reports), verified and compared with the real H100 measurements."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from modelseal.crypto.x509_test_ca import P256Key, issue_crl
from modelseal.errors import EvidenceError
from modelseal.tee.nvidia import NvidiaConfig, certs
from modelseal.tee.nvidia.evidence import build_device, build_evidence
from modelseal.tee.nvidia.report import parse_report
from modelseal.tee.nvidia.rim import RimFile, RimStore, load_rims, verify_rim
from modelseal.tee.nvidia.verifier import Verifier
from tests.conftest import ATTESTATION_VECTORS
from tests.unit.cli.test_evidence import _run
from tests.unit.tee.nvidia.conftest import COCO, NOW, SAMPLE, Pair
from tests.unit.tee.nvidia.rimgen import RimCA

REAL_VBIOS_RIM = (
    ATTESTATION_VECTORS / "nvidia" / "nvtrust" / "1010_0200_882_960074001A_PROD.swidtag"
)
#: the real RIM's signer expired 2025-09-05T08:35:22Z
AFTER_EXPIRY = dt.datetime(2025, 9, 6, tzinfo=dt.UTC).timestamp()
DRIVER_INDICES = range(10, 40)  # RIM indices (block - 1) the test driver RIM covers
VBIOS_INDICES = range(0, 10)


@pytest.fixture(scope="module")
def ca() -> RimCA:
    return RimCA.create(NOW)


def _golden(pair: Pair, indices: range) -> dict[int, bytes]:
    measured = parse_report(pair.report).measurements
    return {i: measured[i + 1] for i in indices}


def _rim_dir(tmp_path: Path, ca: RimCA, pair: Pair, **changes: bytes) -> Path:
    out = tmp_path / "rims"
    out.mkdir()
    driver = _golden(pair, DRIVER_INDICES)
    vbios = _golden(pair, VBIOS_INDICES)
    for key, value in changes.items():
        kind, index = key.split("_")
        (driver if kind == "driver" else vbios)[int(index)] = value
    (out / "driver.swidtag").write_bytes(ca.sign(pair.driver, driver))
    (out / "vbios.swidtag").write_bytes(ca.sign(pair.vbios, vbios))
    (out / "README").write_text("not a RIM: skipped")
    return out


def _verifier(rims: Path, ca: RimCA, tmp_path: Path, **kw: str) -> Verifier:
    root = ca.write_root(tmp_path / "rim-root.pem")
    return Verifier.from_config(NvidiaConfig(rim=str(rims), rim_root=str(root), **kw))


def _verify(verifier: Verifier, pair: Pair) -> object:
    evidence = build_evidence([build_device(pair.report, pair.chain)])
    return verifier.verify(evidence, expected_report_data=bytes.fromhex(pair.nonce), now=NOW)


def test_matching_rims(tmp_path: Path, ca: RimCA) -> None:
    claims = _verify(_verifier(_rim_dir(tmp_path, ca, SAMPLE), ca, tmp_path), SAMPLE)
    assert claims.extra["rim"] == {  # type: ignore[attr-defined]
        "driver": "match",
        "vbios": "match",
        "driver_rim": "driver.swidtag",
        "vbios_rim": "vbios.swidtag",
    }


def test_mismatch_in_the_last_byte(tmp_path: Path, ca: RimCA) -> None:
    value = bytearray(parse_report(SAMPLE.report).measurements[12])
    value[-1] ^= 1
    rims = _rim_dir(tmp_path, ca, SAMPLE, driver_11=bytes(value))
    with pytest.raises(EvidenceError, match=r"GPU measurement 12 .* does not match RIM driver"):
        _verify(_verifier(rims, ca, tmp_path), SAMPLE)


def test_rims_for_other_versions_are_absent(tmp_path: Path, ca: RimCA) -> None:
    claims = _verify(_verifier(_rim_dir(tmp_path, ca, SAMPLE), ca, tmp_path), COCO)
    assert claims.extra["rim"]["driver"] == "absent"  # type: ignore[attr-defined]


def test_nvdec_measurement_is_skipped_when_nvdec_is_disabled(tmp_path: Path, ca: RimCA) -> None:
    assert parse_report(SAMPLE.report).nvdec0_disabled
    rims = _rim_dir(tmp_path, ca, SAMPLE, driver_35=b"\x01" * 48)
    assert _verify(_verifier(rims, ca, tmp_path), SAMPLE)


def test_both_rims_measuring_one_index(tmp_path: Path, ca: RimCA) -> None:
    value = parse_report(SAMPLE.report).measurements[12]
    rims = _rim_dir(tmp_path, ca, SAMPLE, vbios_11=value)
    with pytest.raises(EvidenceError, match="both measure index 11"):
        _verify(_verifier(rims, ca, tmp_path), SAMPLE)


def test_tampered_rim(tmp_path: Path, ca: RimCA) -> None:
    rims = _rim_dir(tmp_path, ca, SAMPLE)
    path = rims / "vbios.swidtag"
    text = path.read_text()
    path.write_text(text.replace('name="Measurement_3"', 'name="Measurement_x"'))
    with pytest.raises(EvidenceError, match="signature is invalid"):
        _verify(_verifier(rims, ca, tmp_path), SAMPLE)


def test_rim_signed_under_another_root(tmp_path: Path, ca: RimCA) -> None:
    rims = _rim_dir(tmp_path, RimCA.create(NOW), SAMPLE)
    with pytest.raises(EvidenceError, match="not the pinned root"):
        _verify(_verifier(rims, ca, tmp_path), SAMPLE)


def test_rims_need_the_pinned_nvidia_root_by_default(tmp_path: Path, ca: RimCA) -> None:
    rims = _rim_dir(tmp_path, ca, SAMPLE)
    with pytest.raises(EvidenceError, match="NVIDIA CoRIM signing Root CA"):
        _verify(Verifier.from_config(NvidiaConfig(rim=str(rims))), SAMPLE)


def test_revoked_rim_signer(tmp_path: Path, ca: RimCA) -> None:
    rims = _rim_dir(tmp_path, ca, SAMPLE)
    now = dt.datetime.fromtimestamp(NOW, dt.UTC)
    crl = tmp_path / "crls"
    crl.mkdir()

    def write(serials: list[int], name: str, key: P256Key) -> None:
        (crl / name).write_bytes(
            issue_crl(
                issuer_key=key,
                issuer_cert=ca.root,
                revoked_serials=serials,
                this_update=now - dt.timedelta(days=1),
                next_update=now + dt.timedelta(days=7),
            )
        )

    # a forged CRL (another key) listing the signer is ignored
    write([ca.leaf.serial_number], "forged.crl", P256Key.generate())
    assert _verify(_verifier(rims, ca, tmp_path, revocation=str(crl)), SAMPLE)
    root_key = ca.root_key
    write([ca.leaf.serial_number], "real.crl", root_key)
    with pytest.raises(EvidenceError, match="test RIM signer is revoked"):
        _verify(_verifier(rims, ca, tmp_path, revocation=str(crl)), SAMPLE)


def test_real_vbios_rim_verifies_and_reports_its_mismatch() -> None:
    """NVIDIA's own signed RIM for VBIOS 96.00.74.00.1A (the CoCo report's version): its
    chain and signature verify at a time its signer was valid; 11 of its 12 active values
    equal the report's, measurement 10 does not (that GPU's firmware configuration differs
    from the reference), so the report is refused."""
    rims = load_rims(REAL_VBIOS_RIM)
    assert [r.version for r in rims] == ["96.00.74.00.1a"]
    verified = verify_rim(rims[0], certs.pinned("rim_root"), now=NOW)
    assert verified.signer == "HCC RIM L4 Signer"
    assert len(verified.golden) == 12
    store = RimStore(rims, certs.pinned("rim_root"))
    with pytest.raises(EvidenceError, match=r"GPU measurement 10 .* 1010_0200_882_960074001A"):
        store.check(parse_report(COCO.report), NOW)


def test_real_vbios_rim_after_its_signer_expired() -> None:
    rims = load_rims(REAL_VBIOS_RIM)
    with pytest.raises(EvidenceError, match="does not chain"):
        verify_rim(rims[0], certs.pinned("rim_root"), now=AFTER_EXPIRY)


def test_cli_rim_dir(tmp_path: Path, ca: RimCA, capsys: pytest.CaptureFixture[str]) -> None:
    rims = _rim_dir(tmp_path, ca, SAMPLE)
    root = ca.write_root(tmp_path / "root.pem")
    argv = [
        "evidence", "verify", "--tee", "nvidia",
        "--evidence", str(SAMPLE.report_file), "--collateral", str(SAMPLE.chain_file),
        "--nonce", SAMPLE.nonce, "--rim", str(rims), "--nvidia-rim-root", str(root),
        "--at", str(NOW),
    ]  # fmt: skip
    code, out, err = _run(argv, capsys)
    assert code == 0, err
    assert json.loads(out)["extra"]["rim"]["driver"] == "match"
    (rims / "driver.swidtag").write_bytes(ca.sign(SAMPLE.driver, {11: b"\x00" * 47 + b"\x01"}))
    code, out, err = _run(argv, capsys)
    assert (code, out) == (4, "")
    assert "does not match RIM driver.swidtag" in err


def test_a_rim_that_cannot_be_canonicalized() -> None:
    """Found by fuzzing: a relative namespace URI makes canonicalization fail inside the
    signature check; that is an invalid RIM, not a crash."""
    data = REAL_VBIOS_RIM.read_bytes().replace(b'xmlns:ns0="http://', b'xmlns:ns0="http;//', 1)
    rim = RimFile(REAL_VBIOS_RIM, data, "96.00.74.00.1a")
    with pytest.raises(EvidenceError, match="signature is invalid"):
        verify_rim(rim, certs.pinned("rim_root"), now=NOW)
