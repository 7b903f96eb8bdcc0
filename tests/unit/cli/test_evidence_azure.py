"""``modelseal evidence verify --tee az-snp-vtpm|az-tdx-vtpm`` on Trustee's vectors.

Exit codes: 0 with the claims as JSON, 4 (EvidenceError) with the reason for a tampered
HCL report or vTPM quote or a wrong nonce, 2 when no collateral covers a TD quote.
"""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import pytest

from modelseal import cli

AT = "1767225600"
CHALLENGE_HEX = b"challenge".hex()
PCR0_V1 = "e15c44796beabf46abcec7c57e590942041e47497e4ec27571c8b7664f48dced"


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    code = info.value.code
    out = capsys.readouterr()
    return (code if isinstance(code, int) else 1), out.out, out.err


def _verify(kind: str, path: Path, report_data: str | None) -> list[str]:
    argv = ["evidence", "verify", "--tee", kind, "--evidence", str(path), "--at", AT]
    return argv + (["--report-data", report_data] if report_data is not None else [])


def _doc(vectors: Path, kind: str, name: str = "evidence-v1.json") -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((vectors / "tpm" / f"trustee-{kind}" / name).read_text())
    return doc


def _write(tmp_path: Path, doc: dict[str, Any]) -> Path:
    path = tmp_path / "evidence.json"
    path.write_text(json.dumps(doc))
    return path


def test_snp_vector_verifies(
    shared_vectors: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, _doc(shared_vectors, "az-snp-vtpm"))
    code, out, err = _run(_verify("az-snp-vtpm", path, CHALLENGE_HEX), capsys)
    assert code == 0, err
    claims = json.loads(out)
    assert claims["tee"] == "az-snp-vtpm"
    assert claims["report_data"] == CHALLENGE_HEX
    assert claims["report_data_checked"] is True
    assert claims["measurements"]["pcr0"] == PCR0_V1
    assert claims["tcb_status"] == "UpToDate"
    # without --report-data the nonce the evidence carries is checked for consistency
    code, out, _ = _run(_verify("az-snp-vtpm", path, None), capsys)
    assert code == 0
    assert json.loads(out)["report_data_checked"] is False


def _flip_hcl(doc: dict[str, Any], offset: int) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    hcl = bytearray(base64.urlsafe_b64decode(doc["hcl_report"]))
    hcl[offset] ^= 0x01
    out["hcl_report"] = base64.urlsafe_b64encode(bytes(hcl)).decode()
    return out


def _flip_quote(doc: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    message = bytearray.fromhex(doc["tpm_quote"]["message"])
    message[-1] ^= 0x01  # the last byte of pcrDigest
    out["tpm_quote"]["message"] = message.hex()
    return out


@pytest.mark.parametrize(
    ("kind", "tamper", "reason"),
    [
        # SNP: the last byte of MEASUREMENT in the report at 0x20
        ("az-snp-vtpm", lambda d: _flip_hcl(d, 0x20 + 0xBF), "signature is invalid"),
        ("az-snp-vtpm", _flip_quote, "signature is invalid"),
        # TDX: the last byte of MRTD in the TD report at 0x20
        ("az-tdx-vtpm", lambda d: _flip_hcl(d, 0x20 + 528 + 47), "differ in mr_td"),
        ("az-tdx-vtpm", _flip_quote, "signature is invalid"),
    ],
)
def test_tampering_exits_4(
    shared_vectors: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    kind: str,
    tamper: Any,
    reason: str,
) -> None:
    path = _write(tmp_path, tamper(_doc(shared_vectors, kind)))
    code, _, err = _run(_verify(kind, path, CHALLENGE_HEX), capsys)
    assert code == 4
    assert reason in err


def test_wrong_nonce_exits_4(
    shared_vectors: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, _doc(shared_vectors, "az-snp-vtpm"))
    code, _, err = _run(_verify("az-snp-vtpm", path, b"challengf".hex()), capsys)
    assert code == 4
    assert "report data binding mismatch" in err


def test_tdx_vector_without_collateral_exits_2(
    shared_vectors: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, _doc(shared_vectors, "az-tdx-vtpm"))
    code, _, err = _run(_verify("az-tdx-vtpm", path, CHALLENGE_HEX), capsys)
    assert code == 2
    assert "00806f050000" in err


def test_malformed_evidence_exits_4(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for doc in ({"version": 7}, {"version": 1, "tpm_quote": {}}, [1, 2]):
        path = _write(tmp_path, doc)  # type: ignore[arg-type]
        code, _, err = _run(_verify("az-snp-vtpm", path, CHALLENGE_HEX), capsys)
        assert code == 4, err
