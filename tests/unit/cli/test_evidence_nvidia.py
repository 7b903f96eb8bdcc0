"""``modelseal evidence verify --tee nvidia`` on the real Hopper reports, through the real
entry point: claims JSON on success, exit 4 with the reason otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.unit.cli.test_evidence import _run
from tests.unit.tee.nvidia.conftest import COCO, NOW, NV, SAMPLE, Pair


def _argv(report: Path, chain: Path, *extra: str) -> list[str]:
    return [
        "evidence",
        "verify",
        "--tee",
        "nvidia",
        "--evidence",
        str(report),
        "--collateral",
        str(chain),
        "--at",
        str(NOW),
        *extra,
    ]


@pytest.mark.parametrize("pair", [SAMPLE, COCO], ids=["sample", "coco"])
def test_both_reports_print_their_claims(pair: Pair, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(_argv(pair.report_file, pair.chain_file, "--nonce", pair.nonce), capsys)
    assert code == 0, err
    claims = json.loads(out)
    assert claims["tee"] == "nvidia"
    assert claims["report_data_checked"] is True
    assert claims["extra"]["driver_version"] == pair.driver
    assert claims["extra"]["vbios_version"] == pair.vbios
    assert claims["extra"]["config"]["fwid"] == pair.fwid


def test_sample_claims_are_trustees(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(_argv(SAMPLE.report_file, SAMPLE.chain_file), capsys)
    assert code == 0, err
    claims = json.loads(out)
    assert claims["report_data_checked"] is False  # the report's own nonce, unchecked
    expected = json.loads((NV / "hopperAttestationReport-claims.txt").read_text())
    assert claims["measurements"] == expected["measurements"]
    assert claims["extra"]["config"] == expected["config"]


def test_flipped_last_signed_byte_exits_4(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = bytearray(SAMPLE.report)
    raw[SAMPLE.signed_end - 1] ^= 1
    report = tmp_path / "report.txt"
    report.write_text(raw.hex())
    code, out, err = _run(_argv(report, SAMPLE.chain_file, "--nonce", SAMPLE.nonce), capsys)
    assert (code, out) == (4, "")
    assert "signature is invalid" in err


def test_wrong_nonce_exits_4(capsys: pytest.CaptureFixture[str]) -> None:
    nonce = SAMPLE.nonce[:-2] + ("00" if SAMPLE.nonce[-2:] != "00" else "01")
    code, out, err = _run(_argv(SAMPLE.report_file, SAMPLE.chain_file, "--nonce", nonce), capsys)
    assert (code, out) == (4, "")
    assert "binding mismatch" in err


@pytest.mark.parametrize(
    "chain",
    ["hopper_cert_chain_case2.txt", "hopper_cert_chain_case3.txt", "hopper_coco_certs1.txt"],
)
def test_bad_chains_exit_4(chain: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(_argv(SAMPLE.report_file, NV / chain, "--nonce", SAMPLE.nonce), capsys)
    assert (code, out) == (4, "")
    assert err.strip()


def test_nonce_and_report_data_together_are_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = _run(
        _argv(SAMPLE.report_file, SAMPLE.chain_file, "--nonce", "00", "--report-data", "00"),
        capsys,
    )
    assert code == 2
    assert "not both" in err


def test_composite_tee_values_of_load() -> None:
    import click

    from modelseal.cli._tee_options import composite_tee_choice

    choice = composite_tee_choice(["tdx", "mock-tdx", "nvidia"], "auto")
    assert choice.convert("tdx+nvidia", None, None) == "tdx+nvidia"
    assert choice.convert("auto+nvidia", None, None) == "auto+nvidia"
    assert choice.convert("tdx", None, None) == "tdx"
    for bad in ("nvidia", "nvidia+tdx", "tdx+mock-tdx", "tdx+gpu", "tdx+nvidia+nvidia"):
        with pytest.raises(click.BadParameter):
            choice.convert(bad, None, None)
    # a GPU is offered only after a CPU kind, never as a session TEE of its own
    assert "nvidia" not in choice.choices
    assert choice.devices == ("nvidia",)


@pytest.mark.parametrize("command", ["load", "mount", "volume create", "volume open"])
def test_session_tee_help_offers_cpu_kinds_and_gpu_compositions(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every command that attests a session lists CPU kinds and ``+nvidia`` in --help and
    refuses ``--tee nvidia`` with exit 2 before doing anything."""
    argv = command.split()
    code, out, _ = _run([*argv, "--help"], capsys)
    assert code == 0
    metavar = out.split("--tee ", 1)[1].split()[0]
    assert metavar.startswith("[auto|tdx|snp|")
    assert metavar.endswith("][+nvidia]")
    assert "|nvidia|" not in metavar
    code, _, err = _run([*argv, "--tee", "nvidia"], capsys)
    assert code == 2
    assert "'nvidia' is a device TEE: name the CPU TEE first" in err


def test_attest_nvidia_prints_device_evidence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``modelseal attest --tee nvidia`` over NVML (a fake here), then ``evidence verify``
    of what it printed against the test device root."""
    import sys

    from modelseal.crypto.x509_pem import cert_pem
    from tests.unit.tee.nvidia.fakenvml import FakeNvml
    from tests.unit.tee.nvidia.mockgpu import MockGpu

    gpu = MockGpu()
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml([gpu]))
    nonce = "5a" * 32
    code, out, err = _run(["attest", "--tee", "nvidia", "--report-data", nonce], capsys)
    assert code == 0, err
    evidence = tmp_path / "gpu.json"
    evidence.write_text(out)
    root = tmp_path / "root.pem"
    root.write_bytes(cert_pem(gpu.root))
    verify = ["evidence", "verify", "--tee", "nvidia", "--evidence", str(evidence)]
    code, out, err = _run([*verify, "--nvidia-device-root", str(root), "--nonce", nonce], capsys)
    assert code == 0, err
    assert json.loads(out)["extra"]["cc_mode"] == "on"
    # the pinned NVIDIA root does not accept the test GPU
    code, out, err = _run([*verify, "--nonce", nonce], capsys)
    assert (code, out) == (4, "")
    assert "not the pinned root" in err or "does not chain" in err


def test_attest_composes_a_cpu_tee_and_gpus(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``modelseal attest --tee mock-tdx+nvidia``: the CPU TEE's evidence and the GPUs',
    both bound to ``--report-data``, each verifying as its own kind."""
    import sys
    import time

    from modelseal.tee.mock_tdx.ca import MockTdxCA
    from modelseal.tee.nvidia.verifier import Verifier
    from tests.unit.cli.test_evidence import RD, _verify
    from tests.unit.tee.nvidia.fakenvml import FakeNvml
    from tests.unit.tee.nvidia.mockgpu import MockGpu

    gpu = MockGpu()
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml([gpu]))
    ca_dir = tmp_path / "ca"
    MockTdxCA.create(ca_dir)
    argv = ["attest", "--tee", "mock-tdx+nvidia", "--report-data", RD]
    code, out, err = _run([*argv, "--mock-tdx-dir", str(ca_dir)], capsys)
    assert code == 0, err
    evidence = json.loads(out)
    assert set(evidence) == {"primary_evidence", "additional_evidence"}
    assert list(evidence["additional_evidence"]) == ["nvidia"]
    (part,) = Verifier.split_devices(evidence["additional_evidence"]["nvidia"])
    claims = Verifier(device_root=gpu.root).verify(
        part, expected_report_data=bytes.fromhex(RD), now=time.time()
    )
    assert claims.extra["cc_mode"] == "on"
    primary = tmp_path / "primary.json"
    primary.write_text(json.dumps(evidence["primary_evidence"]))
    code, out, err = _run(_verify(ca_dir, primary, "--report-data", RD), capsys)
    assert code == 0, err
    assert json.loads(out)["tee"] == "mock-tdx"
    # a GPU is a device TEE: it follows a CPU TEE and never stands first
    code, _, err = _run(["attest", "--tee", "nvidia+mock-tdx", "--report-data", RD], capsys)
    assert code == 2
    assert "not a device TEE kind" in err


@pytest.mark.parametrize("command", ["kbs get x/y/z", "gateway", "dev guest-components"])
def test_other_session_commands_refuse_a_gpu_alone(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``kbs get``, the attested-TLS gateway and the guest-components stand-in attest a
    session (or play a TD) as one kind: a GPU is not among their choices."""
    argv = command.split()
    code, out, _ = _run([*argv, "--help"], capsys)
    assert code == 0
    metavar = out.split("--tee ", 1)[1].split()[0]
    assert "sample" in metavar
    assert "nvidia" not in metavar
    code, _, err = _run([*argv, "--tee", "nvidia"], capsys)
    assert code == 2
    assert "'nvidia' is not one of" in err
