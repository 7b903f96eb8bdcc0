"""``modelseal attest`` / ``evidence verify`` / ``evidence replay`` through the real entry point."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from modelseal import cli
from modelseal._internal.encoding import b64_decode
from modelseal.tee.mock_tdx.ca import MockTdxCA

RD = "ab" * 48
INIT = b'version = "0.1.0"\nalgorithm = "sha256"\n[data]\nmodel_digest = "sha256:00"\n'


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    code = info.value.code
    out = capsys.readouterr()
    return (code if isinstance(code, int) else 1), out.out, out.err


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "ca"
    MockTdxCA.create(path)
    return path


@pytest.fixture
def mock_evidence(ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    init = tmp_path / "init.toml"
    init.write_bytes(INIT)
    code, out, _ = _run(
        [
            "attest",
            "--tee",
            "mock-tdx",
            "--report-data",
            RD,
            "--mock-tdx-dir",
            str(ca_dir),
            "--init-data",
            str(init),
        ],
        capsys,
    )
    assert code == 0
    path = tmp_path / "evidence.json"
    path.write_text(out)
    return path


def _verify(ca_dir: Path, evidence: Path, *extra: str) -> list[str]:
    return [
        "evidence",
        "verify",
        "--tee",
        "mock-tdx",
        "--evidence",
        str(evidence),
        "--mock-tdx-root",
        str(ca_dir / "root-ca.pem"),
        *extra,
    ]


def test_attest_and_verify_mock(
    ca_dir: Path, mock_evidence: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    init = tmp_path / "init.toml"
    code, out, err = _run(
        _verify(ca_dir, mock_evidence, "--report-data", RD, "--init-data", str(init)), capsys
    )
    assert code == 0, err
    claims: dict[str, Any] = json.loads(out)
    assert claims["tee"] == "mock-tdx"
    assert claims["tcb_status"] == "UpToDate"
    assert claims["init_data"] == {"model_digest": "sha256:00"}
    assert claims["report_data_checked"] is True
    assert set(claims["measurements"]) >= {"mr_td", "rtmr0", "rtmr3", "kernel_digest"}


def test_binary_and_hex_quote_input(
    ca_dir: Path, mock_evidence: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    quote = b64_decode(json.loads(mock_evidence.read_text())["quote"])
    for name, data in (
        ("q.bin", quote),
        ("q.hex", quote.hex().encode()),
        ("q0x.hex", b"0x" + quote.hex().encode() + b"\n"),
    ):
        path = tmp_path / name
        path.write_bytes(data)
        code, out, err = _run(_verify(ca_dir, path), capsys)
        assert code == 0, (name, err)
        assert json.loads(out)["report_data_checked"] is False


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        (["--report-data", "cd" * 48], "binding mismatch"),
        (["--at", str(time.time() + 500 * 86400)], "collateral expired"),
        (["--at", str(time.time() - 5 * 86400)], "collateral not yet valid"),
    ],
)
def test_rejections_exit_4(
    ca_dir: Path,
    mock_evidence: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    reason: str,
) -> None:
    code, out, err = _run(_verify(ca_dir, mock_evidence, *extra), capsys)
    assert code == 4
    assert reason in err
    assert out == ""


def test_tcb_status_policy(
    ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from modelseal.tee.mock_tdx.attester import Attester

    path = tmp_path / "old.json"
    path.write_text(json.dumps(Attester(ca_dir, tcb="OutOfDate").evidence(b"")))
    code, _, err = _run(_verify(ca_dir, path), capsys)
    assert code == 4
    assert "TCB status OutOfDate not accepted" in err
    assert "MOCK-SA-00001" in err
    code, out, _ = _run(_verify(ca_dir, path, "--tcb-status", "any"), capsys)
    assert code == 0
    assert json.loads(out)["advisories"] == ["MOCK-SA-00001", "MOCK-SA-00002"]


def test_debug_rejected(ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from modelseal.tee.mock_tdx.attester import Attester

    path = tmp_path / "debug.json"
    path.write_text(json.dumps(Attester(ca_dir, debug=True).evidence(b"")))
    code, _, err = _run(_verify(ca_dir, path), capsys)
    assert code == 4
    assert "debug TEE" in err


def test_mock_refused_without_root(mock_evidence: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(
        ["evidence", "verify", "--tee", "mock-tdx", "--evidence", str(mock_evidence)], capsys
    )
    assert code == 4
    assert "trusted only when" in err


def test_usage_errors(mock_evidence: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(
        ["evidence", "verify", "--tee", "tpm", "--evidence", str(mock_evidence)], capsys
    )
    assert code == 2
    assert "--tpm-trusted-aks (file or directory of trusted attestation keys" in err
    assert "is required for --tee tpm" in err
    tpm = ["evidence", "verify", "--tee", "tpm", "--evidence", str(mock_evidence)]
    code, _, err = _run([*tpm, "--tpm-trusted-aks", str(mock_evidence)], capsys)
    assert code == 2
    assert "--report-data is required" in err
    # the older spelling still works, with a note naming the new one
    code, _, err = _run([*tpm, "--collateral", str(mock_evidence)], capsys)
    assert code == 2
    assert "--report-data is required" in err
    assert "--collateral for --tee tpm is deprecated; use --tpm-trusted-aks" in err
    code, _, err = _run([*tpm, "--mock-tdx-root", str(mock_evidence)], capsys)
    assert code == 2
    assert "--mock-tdx-root do not apply to --tee tpm" in err
    code, _, err = _run(
        ["evidence", "verify", "--tee", "nope", "--evidence", str(mock_evidence)], capsys
    )
    assert code == 2
    assert "nope" in err
    code, _, err = _run(["attest", "--tee", "mock-tdx", "--report-data", "zz"], capsys)
    assert code == 2
    assert "hex" in err
    code, _, _ = _run(["attest", "--tee", "sample", "--mock-tdx-dir", "/tmp/x"], capsys)
    assert code == 2


def test_vector_verify_and_reasons(
    shared_vectors: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["evidence", "verify", "--tee", "tdx"]
    ok = [
        *base,
        "--evidence",
        str(shared_vectors / "tdx/dcap-qvl/tdx-quote.hex"),
        "--collateral",
        str(shared_vectors / "tdx/dcap-qvl/tdx_quote_collateral.json"),
        "--at",
        "1752919234",
    ]
    code, _, err = _run(ok, capsys)
    assert code == 4
    assert "TCB level not supported" in err
    code, out, err = _run(
        [
            *base,
            "--evidence",
            str(shared_vectors / "tdx/dcap-qvl/tdx_quote"),
            "--collateral",
            str(shared_vectors / "tdx"),
            "--at",
            "1752919234",
        ],
        capsys,
    )
    assert code == 0, err
    assert json.loads(out)["measurements"]["mr_td"].startswith("91eb2b44")
    code, _, err = _run(
        [
            *base,
            "--evidence",
            str(shared_vectors / "tdx/trustee/tdx_quote_4.dat"),
            "--collateral",
            str(shared_vectors / "tdx/go-tdx-guest"),
            "--at",
            "1688173200",
        ],
        capsys,
    )
    assert code == 4
    assert "debug TEE" in err
    code, out, err = _run(
        [
            "evidence",
            "verify",
            "--tee",
            "sgx",
            "--tcb-status",
            "ConfigurationAndSWHardeningNeeded",
            "--evidence",
            str(shared_vectors / "sgx/dcap-qvl/sgx_quote"),
            "--collateral",
            str(shared_vectors / "sgx/dcap-qvl"),
            "--at",
            "1752919277",
        ],
        capsys,
    )
    assert code == 0, err
    assert json.loads(out)["advisories"] == ["INTEL-SA-00289", "INTEL-SA-00615"]


def test_replay(shared_vectors: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expected = json.loads((shared_vectors / "expected.json").read_text())
    rel = "eventlog/go-tdx-guest/ccel_data.dat"
    code, out, _ = _run(["evidence", "replay", "--eventlog", str(shared_vectors / rel)], capsys)
    assert code == 0
    doc = json.loads(out)
    assert doc["kind"] == "ccel"
    for i in range(4):
        assert doc[f"rtmr{i}"] == expected["ccel_rtmr_replay"][rel][f"rtmr{i}"]
    rel = "eventlog/go-tpm-tools/rhel8-uefi.bin"
    code, out, _ = _run(
        ["evidence", "replay", "--kind", "tcg2", "--eventlog", str(shared_vectors / rel)], capsys
    )
    assert code == 0
    doc = json.loads(out)
    for bank, pcrs in expected["tcg2_pcr_replay"][rel].items():
        for index, value in pcrs.items():
            assert doc["pcrs"][bank][index] == value


def test_replay_malformed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "junk"
    path.write_bytes(b"junk")
    code, _, err = _run(["evidence", "replay", "--eventlog", str(path)], capsys)
    assert code == 4
    assert "event log" in err


def test_attest_auto_without_tee(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from modelseal.tee import detect as detect_module

    real = detect_module.detect
    monkeypatch.setattr(detect_module, "detect", lambda: real(tmp_path))
    code, out, err = _run(["attest"], capsys)
    assert code == 4
    assert "no TEE detected" in err
    assert out == ""


def test_evidence_from_stdin(
    ca_dir: Path,
    mock_evidence: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import io
    import sys as _sys

    monkeypatch.setattr(_sys, "stdin", io.TextIOWrapper(io.BytesIO(mock_evidence.read_bytes())))
    code, out, err = _run(
        [
            "evidence",
            "verify",
            "--tee",
            "mock-tdx",
            "--evidence",
            "-",
            "--mock-tdx-root",
            str(ca_dir / "root-ca.pem"),
        ],
        capsys,
    )
    assert code == 0, err
    assert json.loads(out)["tee"] == "mock-tdx"


# --- SNP and TPM: binary/hex evidence, collateral directories with arbitrary names -----------

#: Documented verification time for the SNP vectors (the VLEK expires 2025-12-10).
SNP_AT = "1748736000"  # 2025-06-01T00:00:00Z
#: Verification time for the Trustee TPM vector (no certificate validity involved).
TPM_AT = "1767225600"  # 2026-01-01T00:00:00Z


def _snp_collateral(vectors: Path, dest: Path, vcek: str, *, pem: bool) -> Path:
    """VCEK (DER or PEM) and the Milan ASK/ARK chain under names that mean nothing."""
    import base64
    import textwrap

    dest.mkdir()
    der = (vectors / vcek).read_bytes()
    body = "\n".join(textwrap.wrap(base64.b64encode(der).decode(), 64))
    leaf = f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n".encode()
    leaf = leaf if pem else der
    (dest / "blob-1").write_bytes(leaf)
    (dest / "zz.txt").write_bytes((vectors / "snp/trustee/milan_ask_ark_asvk.pem").read_bytes())
    return dest


def _snp_verify(evidence: Path, collateral: Path, *extra: str) -> list[str]:
    return [
        "evidence",
        "verify",
        "--tee",
        "snp",
        "--evidence",
        str(evidence),
        "--snp-certs",
        str(collateral),
        "--at",
        SNP_AT,
        *extra,
    ]


@pytest.mark.parametrize("pem", [False, True], ids=["vcek-der", "vcek-pem"])
def test_snp_binary_and_hex_report_with_collateral_directory(
    shared_vectors: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], pem: bool
) -> None:
    expected = json.loads((shared_vectors / "expected.json").read_text())
    fields = expected["snp_reports"]["snp/trustee/test-report.bin"]["fields"]
    collateral = _snp_collateral(
        shared_vectors, tmp_path / "c", "snp/trustee/test-vcek.der", pem=pem
    )
    report = (shared_vectors / "snp/trustee/test-report.bin").read_bytes()
    for name, data in (
        ("r.bin", report),
        ("r.hex", report.hex().encode()),
        ("r0x.hex", b"0x" + report.hex().upper().encode() + b"\n"),
    ):
        path = tmp_path / name
        path.write_bytes(data)
        code, out, err = _run(_snp_verify(path, collateral), capsys)
        assert code == 0, (name, err)
        claims = json.loads(out)
        assert claims["tee"] == "snp"
        assert claims["debug"] is False
        assert claims["measurements"]["measurement"] == fields["measurement"]
        assert claims["report_data"] == fields["report_data"]
        assert claims["report_data_checked"] is False
    code, out, err = _run(
        _snp_verify(tmp_path / "r.bin", collateral, "--report-data", fields["report_data"]), capsys
    )
    assert code == 0, err
    assert json.loads(out)["report_data_checked"] is True


def test_snp_rejections_exit_4(
    shared_vectors: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = _snp_collateral(
        shared_vectors, tmp_path / "good", "snp/trustee/test-vcek.der", pem=False
    )
    report = tmp_path / "r.bin"
    report.write_bytes((shared_vectors / "snp/trustee/test-report.bin").read_bytes())
    code, out, err = _run(_snp_verify(report, good, "--report-data", "00" * 64), capsys)
    assert (code, out) == (4, "")
    assert "REPORT_DATA does not match" in err
    broken = _snp_collateral(
        shared_vectors, tmp_path / "broken", "snp/trustee/test-vcek-invalid-new.der", pem=False
    )
    code, out, err = _run(_snp_verify(report, broken), capsys)
    assert (code, out) == (4, "")
    assert "VCEK certificate signature invalid under the ASK" in err  # chain broken
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = _run(_snp_verify(report, empty), capsys)
    assert code == 4
    assert "no VCEK certificate" in err
    debug = tmp_path / "debug.bin"
    debug.write_bytes((shared_vectors / "snp/go-sev-guest/attestation.bin").read_bytes())
    dbg = tmp_path / "dbg"
    dbg.mkdir()
    (dbg / "a").write_bytes((shared_vectors / "snp/go-sev-guest/vcek.der").read_bytes())
    (dbg / "b").write_bytes(
        (shared_vectors / "snp/go-sev-guest/trust_ask_ark_milan.pem").read_bytes()
    )
    code, _, err = _run(_snp_verify(debug, dbg), capsys)
    assert code == 4
    assert "debug TEE" in err
    code, out, err = _run(_snp_verify(debug, dbg, "--allow-debug"), capsys)
    assert code == 0, err
    assert json.loads(out)["debug"] is True


def _tpm_evidence(vectors: Path, tmp_path: Path) -> tuple[Path, Path, str]:
    """The Trustee TPM quote, its AK public key in a directory under an arbitrary name."""
    doc = json.loads((vectors / "tpm/trustee/tpm_evidence.json").read_text())
    expected = json.loads((vectors / "expected.json").read_text())
    nonce = expected["tpm_quotes"]["tpm/trustee/tpm_evidence.json"]["extra_data"][:96]
    aks = tmp_path / "aks"
    aks.mkdir()
    (aks / "whatever.bin").write_bytes(b64_decode(doc["ak_public"]))
    evidence = tmp_path / "tpm.json"
    evidence.write_text(json.dumps(doc))
    return evidence, aks, nonce


def _tpm_verify(evidence: Path, aks: Path, nonce: str) -> list[str]:
    return [
        "evidence",
        "verify",
        "--tee",
        "tpm",
        "--evidence",
        str(evidence),
        "--tpm-trusted-aks",
        str(aks),
        "--report-data",
        nonce,
        "--at",
        TPM_AT,
    ]


def test_tpm_collateral_directory_and_rejections(
    shared_vectors: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    evidence, aks, nonce = _tpm_evidence(shared_vectors, tmp_path)
    code, out, err = _run(_tpm_verify(evidence, aks, nonce), capsys)
    assert code == 0, err
    claims = json.loads(out)
    assert claims["tee"] == "tpm"
    assert claims["measurements"]["pcr17"] == "ff" * 32
    assert claims["report_data_checked"] is True
    # the AK as a PEM file given directly (not a directory) works as well
    import base64
    import textwrap

    der = (aks / "whatever.bin").read_bytes()
    body = "\n".join(textwrap.wrap(base64.b64encode(der).decode(), 64))
    pem = tmp_path / "ak.pem"
    pem.write_text(f"-----BEGIN PUBLIC KEY-----\n{body}\n-----END PUBLIC KEY-----\n")
    code, _, err = _run(_tpm_verify(evidence, pem, nonce), capsys)
    assert code == 0, err
    code, out, err = _run(_tpm_verify(evidence, aks, "01" * 48), capsys)
    assert (code, out) == (4, "")
    assert "nonce" in err  # binding mismatch
    other = tmp_path / "other"
    other.mkdir()  # another key (an end-entity certificate's key) is not this AK
    (other / "k").write_bytes((shared_vectors / "snp/go-sev-guest/vcek.der").read_bytes())
    code, _, err = _run(_tpm_verify(evidence, other, nonce), capsys)
    assert code == 4
    assert "attestation key is not trusted" in err


def test_mock_tdx_chain_broken_under_another_root(
    mock_evidence: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other-ca"
    MockTdxCA.create(other)
    code, out, err = _run(_verify(other, mock_evidence), capsys)
    assert (code, out) == (4, "")
    assert "certificate chain broken" in err


def test_tdx_hex_quote_with_renamed_collateral(
    shared_vectors: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A directory whose names mean nothing, other files ignored; window edges name the reason."""
    collateral = tmp_path / "c"
    collateral.mkdir()
    (collateral / "x").write_bytes(
        (shared_vectors / "tdx/dcap-qvl/tdx_quote_collateral.json").read_bytes()
    )
    (collateral / "notes.txt").write_text("not collateral")
    quote = tmp_path / "q"
    quote.write_text((shared_vectors / "tdx/dcap-qvl/tdx_quote").read_bytes().hex())

    def verify(at: str) -> tuple[int, str, str]:
        argv = ["evidence", "verify", "--tee", "tdx", "--evidence", str(quote)]
        return _run([*argv, "--collateral", str(collateral), "--at", at], capsys)

    code, out, err = verify("1752919234")
    assert code == 0, err
    assert json.loads(out)["tcb_status"] == "UpToDate"
    code, out, err = verify("1752919235")
    assert (code, out) == (4, "")
    assert "collateral expired" in err
