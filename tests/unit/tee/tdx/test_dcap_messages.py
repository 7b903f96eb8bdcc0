"""Operator messages for dcap-qvl failures, on the real vectors: plain sentences that say
what failed and what to do, never Rust debug text, through the verifier, the CLI and the
KBS log line."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from modelseal import cli
from modelseal.crypto.x509_pem import pem_to_der
from modelseal.errors import BackendError, CollateralMissing, EvidenceError
from modelseal.kbs.errors_http import RCAR_ERRORS
from modelseal.tee.mock_tdx.ca import MockTdxCA
from modelseal.tee.tdx import dcap
from modelseal.tee.tdx.config import TdxConfig
from modelseal.tee.tdx.quote import parse_quote
from modelseal.tee.tdx.verifier import Verifier as TdxVerifier

QUOTE = "tdx/dcap-qvl/tdx_quote"
COLLATERAL = "tdx/dcap-qvl/tdx_quote_collateral.json"
#: a verification time after every date in the collateral (the root CRL is the last to go)
LATE = 1796538513
FRESHNESS = (
    "fetch fresher collateral (--pccs-url or a newer bundle) or, for recorded evidence, "
    "verify at the time it was made with --at UNIX_SECONDS"
)


def _plain(message: str) -> None:
    """No Rust debug syntax anywhere in the message, and short enough for the KBS log."""
    assert "{" not in message, message
    assert "}" not in message, message
    assert "UnixTime" not in message, message
    assert "Caused by" not in message, message
    assert len(message) <= 300, message


def _refusal(vectors: Path, now: float, quote: str = QUOTE) -> str:
    raw = (vectors / quote).read_bytes()
    verifier = TdxVerifier.from_config(TdxConfig(collateral=str(vectors / COLLATERAL)))
    with pytest.raises(EvidenceError) as info:
        verifier.verify(raw, expected_report_data=parse_quote(raw).report.report_data, now=now)
    message = str(info.value)
    _plain(message)
    return message


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (
            LATE,
            "collateral expired: the root CA CRL expired at 2026-04-03T11:21:57Z "
            "(verification time 2026-12-06T06:28:33Z)",
        ),
        (
            1760000000,
            "collateral expired: the TCB info expired at 2025-07-19T10:16:03Z "
            "(verification time 2025-10-09T08:53:20Z)",
        ),
        (
            1750000000,
            "collateral not yet valid: the TCB info was issued at 2025-06-19T10:16:03Z, "
            "after the verification time 2025-06-15T15:06:40Z",
        ),
    ],
)
def test_validity_window_messages(shared_vectors: Path, now: int, expected: str) -> None:
    assert _refusal(shared_vectors, now) == f"{expected}; {FRESHNESS}"


def test_qe_identity_expired_names_its_date(shared_vectors: Path) -> None:
    """dcap-qvl checks TCB info first (it expires 16 minutes earlier in the real set), so
    its QE identity message is fed to the classifier with the real collateral."""
    collateral = dcap.load_collateral((shared_vectors / COLLATERAL).read_text())
    message = dcap.classify(
        "Verification failed: QE Identity expired", now=1752920000, collateral=collateral
    )
    assert message == (
        "collateral expired: the QE identity expired at 2025-07-19T10:32:27Z "
        f"(verification time 2025-07-19T10:13:20Z); {FRESHNESS}"
    )
    _plain(message)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Verification failed: CertExpired { time: UnixTime(1796538513), "
            "not_after: UnixTime(1775215317) }",
            "collateral expired: a certificate in the chain expired at 2026-04-03T11:21:57Z "
            "(verification time 2026-12-06T06:28:33Z)",
        ),
        (
            "Verification failed: CertNotValidYet { time: UnixTime(1750000000), "
            "not_before: UnixTime(1750329147) }",
            "collateral not yet valid: a certificate in the chain is valid only from "
            "2025-06-19T10:32:27Z (verification time 2025-06-15T15:06:40Z)",
        ),
        (
            "Verification failed: CrlExpired { time: UnixTime(1796538513), "
            "next_update: UnixTime(1775215318) }",
            "collateral expired: a CRL expired at 2026-04-03T11:21:58Z "
            "(verification time 2026-12-06T06:28:33Z)",
        ),
    ],
)
def test_webpki_window_errors_without_debug_syntax(
    shared_vectors: Path, text: str, expected: str
) -> None:
    """webpki's struct variants (a CRL whose nextUpdate is in neither collateral CRL is
    "a CRL": the name is only given when it is certain)."""
    collateral = dcap.load_collateral((shared_vectors / COLLATERAL).read_text())
    message = dcap.classify(text, now=0, collateral=collateral)
    assert message == f"{expected}; {FRESHNESS}"
    _plain(message)


def test_unrecognised_window_error_still_says_what_to_do() -> None:
    message = dcap.classify(
        "Verification failed: CrlNotValidYet { time: UnixTime(0), this_update: UnixTime(60) }"
    )
    assert message == (
        "collateral not yet valid (a CRL is not valid yet): CrlNotValidYet (time "
        f"1970-01-01T00:00:00Z, this_update 1970-01-01T00:01:00Z); {FRESHNESS}"
    )
    _plain(message)


def test_unknown_struct_errors_are_flattened() -> None:
    message = dcap.classify("Verification failed: Weird { inner: Other { at: UnixTime(0) }, n: 3 }")
    assert message == (
        "quote verification failed: Weird (inner Other (at 1970-01-01T00:00:00Z), n 3)"
    )
    _plain(message)


def test_wrong_root_says_what_to_check(shared_vectors: Path, tmp_path: Path) -> None:
    """The real quote and collateral checked against a root that did not issue them."""
    ca = MockTdxCA.create(tmp_path / "ca")
    raw = (shared_vectors / QUOTE).read_bytes()
    collateral = dcap.load_collateral((shared_vectors / COLLATERAL).read_text())
    with pytest.raises(EvidenceError) as info:
        dcap.verify(
            raw, collateral, 1752919234, root_ca_der=pem_to_der(ca.root_pem_path.read_bytes())
        )
    message = str(info.value)
    assert message == (
        "certificate chain broken (CRL not signed by the trusted CA): Failed to parse root "
        "CA CRL, caused by InvalidCrlSignatureForPublicKey; the quote and its collateral "
        "must chain to the trusted root CA (Intel's production root unless another is "
        "configured)"
    )
    _plain(message)


def test_cli_quote_under_another_root_exit_4(
    shared_vectors: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """evidence-api/quote.bin chains to a pre-production root, the collateral to Intel's."""
    code, err = _cli(
        str(shared_vectors / "eventlog/evidence-api/quote.bin"),
        str(shared_vectors / COLLATERAL),
        "1752919234",
        capsys,
    )
    assert code == 4
    assert err == (
        "error: certificate chain broken: the collateral's pck crl issuer chain ends at "
        "another root than the quote's PCK chain; the quote and its collateral must chain "
        "to the trusted root CA (Intel's production root unless another is configured)\n"
    )
    _plain(err)


def test_missing_collateral_is_a_configuration_gap(shared_vectors: Path) -> None:
    """tdx_quote_6.dat's FMSPC has no bundle entry and no PCCS is set: not "retry later"."""
    raw = (shared_vectors / "tdx/trustee/tdx_quote_6.dat").read_bytes()
    verifier = TdxVerifier.from_config(TdxConfig(collateral=str(shared_vectors / "tdx")))
    with pytest.raises(CollateralMissing) as info:
        verifier.verify(raw, expected_report_data=b"", now=1763000000)
    exc = info.value
    assert isinstance(exc, BackendError)  # the KBS keeps answering 503
    assert exc.exit_code == 2
    assert "retry" not in exc.diagnostics()
    assert "--collateral" in exc.hint
    assert "--pccs-url" in exc.hint
    assert str(exc).startswith("no DCAP collateral for TDX FMSPC 00a06d080000")


def _cli(
    evidence: str, collateral: str, at: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str]:
    argv = ["--evidence", evidence, "--collateral", collateral, "--at", at]
    with pytest.raises(SystemExit) as info:
        cli.main(["evidence", "verify", "--tee", "tdx", *argv])
    code = info.value.code
    return (code if isinstance(code, int) else 1), capsys.readouterr().err


def test_cli_expired_collateral_exit_4(
    shared_vectors: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _cli(
        str(shared_vectors / QUOTE), str(shared_vectors / COLLATERAL), str(LATE), capsys
    )
    assert code == 4
    assert err == (
        "error: collateral expired: the root CA CRL expired at 2026-04-03T11:21:57Z "
        f"(verification time 2026-12-06T06:28:33Z); {FRESHNESS}\n"
    )
    _plain(err)


def test_cli_missing_collateral_exit_2(
    shared_vectors: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _cli(
        str(shared_vectors / "tdx/trustee/tdx_quote_6.dat"),
        str(shared_vectors / "tdx"),
        "1763000000",
        capsys,
    )
    assert code == 2
    assert "no DCAP collateral for TDX FMSPC 00a06d080000" in err
    assert "hint: give collateral for this platform: --collateral" in err
    assert "--pccs-url" in err
    assert "retry" not in err


def test_kbs_log_line_carries_the_whole_reason(
    shared_vectors: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The client gets a bare 401 / 503; the operator's log line has the full sentence."""
    expired = EvidenceError(_refusal(shared_vectors, LATE))
    missing = CollateralMissing("no DCAP collateral for TDX FMSPC 00a06d080000: none")
    caplog.set_level(logging.INFO, logger="modelseal.kbs")
    assert RCAR_ERRORS.respond(expired, where="attest").status_code == 401
    assert RCAR_ERRORS.respond(missing, where="attest").status_code == 503
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == f"attest refused (401): EvidenceError: {expired}"
    assert lines[0].endswith("with --at UNIX_SECONDS")
    assert lines[1] == f"attest failed: CollateralMissing: {missing}"
    assert "{" not in json.dumps(lines[0])[1:-1]
