"""SNP and TPM evidence verification latency, for ``bench/evidence_bench.py`` to report.

``measure()`` returns ``[(kind, milliseconds), ...]`` (median of warm runs, certificates
and trusted keys already loaded, i.e. what a running KBS pays per attestation):

* ``snp`` — Trustee-shaped SNP evidence (real Milan report + VCEK from
  ``tests/vectors/attestation``): JSON re-encoding, strict parse, VCEK <- ASK <- pinned ARK chain,
  ECDSA P-384 report signature, TCB/hwID, REPORT_DATA. Skipped when the vectors are absent.
* ``tpm`` — a fresh swtpm quote (ECDSA P-256 AK, 24 SHA-256 PCRs): evidence parse, AK trust,
  signature, nonce, PCR digest. Falls back to the trustee RSA vector without swtpm.
* ``tpm+eventlog`` — the GCE quote (RSA-2048) with its 24 KB TCG2 log replayed.
* ``az-snp-vtpm`` — Trustee's Azure SEV-SNP evidence (version 1): HCL report, vTPM quote
  (RSA-2048), the SNP report through the ``snp`` verifier, the runtime-claims binding.

Also runnable alone: ``python -m bench.evidence_snp_tpm`` prints the table.
"""

from __future__ import annotations

import base64
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "tests" / "vectors" / "attestation"
RUNS = 200


def _median_ms(fn: Callable[[], object], runs: int = RUNS) -> float:
    fn()  # warm caches (pinned roots, imports)
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def _snp() -> float | None:
    from datetime import UTC, datetime

    from modelseal.tee.snp import certs as amd
    from modelseal.tee.snp.evidence import CertEntry, build_evidence
    from modelseal.tee.snp.report import Product, parse_report
    from modelseal.tee.snp.verifier import Verifier

    report_path = VECTORS / "snp/trustee/test-report.bin"
    if not report_path.is_file():
        return None
    raw = report_path.read_bytes()
    vcek = (VECTORS / "snp/trustee/test-vcek.der").read_bytes()
    evidence = json.loads(json.dumps(build_evidence(raw, [CertEntry("VCEK", vcek)])))
    binding = parse_report(raw, product=Product.MILAN).report_data
    verifier = Verifier(amd.load_cert_source(VECTORS / "snp/trustee/milan_ask_ark_asvk.pem"))
    now = datetime(2025, 6, 1, tzinfo=UTC).timestamp()
    return _median_ms(lambda: verifier.verify(evidence, expected_report_data=binding, now=now))


def _tpm_swtpm() -> float | None:
    if shutil.which("swtpm") is None or shutil.which("tpm2_quote") is None:
        return None
    from tests.unit.tee.tpm.swtpm import running_swtpm

    from modelseal.tee.tpm.attester import Attester
    from modelseal.tee.tpm.trust import TrustStore
    from modelseal.tee.tpm.verifier import Verifier

    with tempfile.TemporaryDirectory() as tmp, running_swtpm(Path(tmp) / "state") as tcti:
        binding = b"\x5a" * 48
        evidence = Attester(tcti=tcti, event_log=None).evidence(binding)
    store = TrustStore()
    store.add_blob(base64.b64decode(evidence["ak_tpm_public"]), "ak")
    verifier = Verifier(store)
    now = time.time()
    return _median_ms(lambda: verifier.verify(evidence, expected_report_data=binding, now=now))


def _tpm_vector() -> float | None:
    from modelseal.tee.tpm.trust import TrustStore
    from modelseal.tee.tpm.verifier import Verifier

    path = VECTORS / "tpm/trustee/tpm_evidence.json"
    if not path.is_file():
        return None
    doc: dict[str, Any] = json.loads(path.read_text())
    store = TrustStore()
    store.add_blob(base64.b64decode(doc["ak_public"]), "ak")
    verifier = Verifier(store)
    nonce = base64.b64decode(doc["tpm_quote"]["message"])[40:88]
    return _median_ms(lambda: verifier.verify(doc, expected_report_data=nonce, now=time.time()))


def _tpm_eventlog() -> float | None:
    from modelseal.tee.tpm.quote import verify_quote
    from modelseal.tee.tpm.structures import parse_public, parse_signature
    from modelseal.tee.tpm.trust import spki_of_public

    path = VECTORS / "tpm/go-tpm-tools/gce-cos-85-nonce9009.extracted.json"
    if not path.is_file():
        return None
    gce = json.loads(path.read_text())
    log = (VECTORS / "tpm/go-tpm-tools/gce-cos-85-nonce9009.eventlog.bin").read_bytes()
    spki = spki_of_public(parse_public(bytes.fromhex(gce["ak_pub_tpmt_public"])))
    quote = gce["quotes"][1]
    message = bytes.fromhex(quote["tpms_attest"])
    signature = bytes.fromhex(quote["tpmt_signature"])
    pcrs = [bytes.fromhex(quote["pcrs"][str(i)]) for i in range(24)]

    def run() -> object:
        return verify_quote(spki, message, parse_signature(signature), pcrs, event_log=log)

    return _median_ms(run, runs=50)


def _az_snp() -> float | None:
    from modelseal.tee.registry import build_config, verifier_for

    path = VECTORS / "tpm/trustee-az-snp-vtpm/evidence-v1.json"
    if not path.is_file():
        return None
    doc: dict[str, Any] = json.loads(path.read_text())
    verifier = verifier_for("az-snp-vtpm", build_config("az-snp-vtpm", {}))
    now = 1_767_225_600.0  # 2026-01-01, inside the VCEK's validity
    return _median_ms(lambda: verifier.verify(doc, expected_report_data=b"challenge", now=now))


def measure() -> list[tuple[str, float]]:
    """(kind, median ms) for every measurement whose inputs are available here."""
    out: list[tuple[str, float]] = []
    snp = _snp()
    if snp is not None:
        out.append(("snp", snp))
    tpm = _tpm_swtpm()
    if tpm is not None:
        out.append(("tpm", tpm))
    else:
        vector = _tpm_vector()
        if vector is not None:
            out.append(("tpm (RSA vector)", vector))
    logged = _tpm_eventlog()
    if logged is not None:
        out.append(("tpm+eventlog", logged))
    azure = _az_snp()
    if azure is not None:
        out.append(("az-snp-vtpm", azure))
    return out


def main() -> None:
    for kind, ms in measure():
        print(f"{kind:20s} {ms:8.3f} ms")


if __name__ == "__main__":
    main()
