"""Real SEV-SNP reports (tests/vectors/attestation) reproduce expected.json; tampering fails."""

from __future__ import annotations

import base64
import json
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from modelseal.errors import EvidenceError
from modelseal.tee.snp import certs as amd
from modelseal.tee.snp.evidence import CertEntry, build_evidence
from modelseal.tee.snp.report import Product, parse_report
from modelseal.tee.snp.verifier import Verifier

# go-sev-guest verifies at 2022-09-24T01:00Z; the VLEK expires 2025-12-10, so the
# documented verification time for every pair is 2025-06-01T00:00:00Z.
VERIFY_AT = datetime(2025, 6, 1, tzinfo=UTC).timestamp()
REPORT_SIZE = 1184


def _expected(vectors: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((vectors / "expected.json").read_text())
    return data


def _pairs(vectors: Path) -> list[tuple[str, dict[str, Any]]]:
    return sorted(_expected(vectors)["snp_reports"].items())


def _verifier(vectors: Path, entry: dict[str, Any], max_vmpl: int = 3) -> Verifier:
    certs = amd.load_cert_source(vectors / entry["key"])
    certs += amd.load_cert_source(vectors / entry["chain"])
    return Verifier(certs, max_vmpl=max_vmpl)


def test_every_report_verifies_and_matches_expected_fields(shared_vectors: Path) -> None:
    pairs = _pairs(shared_vectors)
    assert len(pairs) == 3
    for name, entry in pairs:
        raw = (shared_vectors / name).read_bytes()
        report, signer, chain = _verifier(shared_vectors, entry).verify_report(raw, now=VERIFY_AT)
        assert entry["signature_valid"] is True
        f = entry["fields"]
        assert report.version == f["version"]
        assert report.guest_svn == f["guest_svn"]
        assert report.policy == f["policy"]
        assert report.family_id.hex() == f["family_id"]
        assert report.image_id.hex() == f["image_id"]
        assert report.vmpl == f["vmpl"]
        assert report.signature_algo == f["signature_algo"]
        assert report.platform_info == f["platform_info"]
        assert report.flags == f["flags"]
        assert report.report_data.hex() == f["report_data"]
        assert report.measurement.hex() == f["measurement"]
        assert report.host_data.hex() == f["host_data"]
        assert report.id_key_digest.hex() == f["id_key_digest"]
        assert report.author_key_digest.hex() == f["author_key_digest"]
        assert report.report_id.hex() == f["report_id"]
        assert report.report_id_ma.hex() == f["report_id_ma"]
        assert report.chip_id.hex() == f["chip_id"]
        cpuid = [report.cpuid_fam_id or 0, report.cpuid_mod_id or 0, report.cpuid_step or 0]
        assert bytes(cpuid).hex() == f["cpuid_fam_mod_step"]
        cv, mv = report.current_version, report.committed_version
        assert [cv.build, cv.minor, cv.major] == f["current_build_minor_major"]
        assert [mv.build, mv.minor, mv.major] == f["committed_build_minor_major"]
        assert report.current_tcb.raw.hex() == f["current_tcb_bytes"]
        assert report.reported_tcb.raw.hex() == f["reported_tcb_bytes"]
        assert report.committed_tcb.raw.hex() == f["committed_tcb_bytes"]
        assert report.launch_tcb.raw.hex() == f["launch_tcb_bytes"]
        assert report.product is Product.MILAN
        assert signer == ("VLEK" if f["flags"] == 4 else "VCEK")
        assert chain[-1] == "ARK-Milan"


def test_documented_tcb_values(shared_vectors: Path) -> None:
    spl = {
        "snp/go-sev-guest/attestation.bin": (2, 0, 5, 68),
        "snp/trustee/test-report.bin": (3, 0, 8, 115),
        "snp/trustee/test-vlek-report.bin": (4, 0, 24, 217),
    }
    for name, entry in _pairs(shared_vectors):
        report = parse_report((shared_vectors / name).read_bytes(), product=Product.MILAN)
        t = report.reported_tcb
        assert (t.bootloader, t.tee, t.snp, t.microcode) == spl[name]
        vek = amd.load_cert_source(shared_vectors / entry["key"])[0]
        assert amd.cert_tcb(vek.cert, Product.MILAN).components() == t.components()


def test_full_verify_through_trustee_json(shared_vectors: Path) -> None:
    for name, entry in _pairs(shared_vectors):
        raw = (shared_vectors / name).read_bytes()
        report = parse_report(raw, product=Product.MILAN)
        vek_der = (shared_vectors / entry["key"]).read_bytes()
        kind = "VLEK" if report.flags == 4 else "VCEK"
        evidence = build_evidence(raw, [CertEntry(kind, vek_der)])
        evidence = json.loads(json.dumps(evidence))  # what actually travels
        claims = Verifier(max_vmpl=3).verify(
            evidence, expected_report_data=report.report_data, now=VERIFY_AT
        )
        assert claims.tee == "snp"
        assert claims.measurements["measurement"] == entry["fields"]["measurement"]
        assert claims.measurements["host_data"] == entry["fields"]["host_data"]
        assert claims.report_data == report.report_data
        # debug bit 19 of the guest policy
        assert claims.debug is bool(entry["fields"]["policy"] & (1 << 19))
        # VLEK report: reported TCB (snp 0x18 ucode 0xd9) is below committed (0xdb)
        expected_status = "OutOfDate" if kind == "VLEK" else "UpToDate"
        assert claims.tcb_status == expected_status


def test_go_sev_guest_report_is_debug(shared_vectors: Path) -> None:
    name, entry = "snp/go-sev-guest/attestation.bin", _expected(shared_vectors)["snp_reports"]
    raw = (shared_vectors / name).read_bytes()
    claims = _verifier(shared_vectors, entry[name]).verify(
        build_evidence(raw),
        expected_report_data=bytes.fromhex("0102030405"),
        now=datetime(2022, 9, 24, 1, tzinfo=UTC).timestamp(),
    )
    assert claims.debug is True
    assert claims.extra["policy"]["debug_allowed"] is True
    assert claims.extra["policy"]["smt_allowed"] is True
    assert claims.extra["policy"]["migrate_ma"] is False
    assert claims.measurements["migrate_ma"] == "00"


def test_vmpl_above_zero_refused_by_default(shared_vectors: Path) -> None:
    name = "snp/trustee/test-vlek-report.bin"
    entry = _expected(shared_vectors)["snp_reports"][name]
    raw = (shared_vectors / name).read_bytes()
    with pytest.raises(EvidenceError, match="VMPL 1"):
        _verifier(shared_vectors, entry, max_vmpl=0).verify_report(raw, now=VERIFY_AT)


def test_vlek_expired_after_documented_date(shared_vectors: Path) -> None:
    name = "snp/trustee/test-vlek-report.bin"
    entry = _expected(shared_vectors)["snp_reports"][name]
    raw = (shared_vectors / name).read_bytes()
    late = datetime(2025, 12, 11, tzinfo=UTC).timestamp()
    with pytest.raises(EvidenceError, match="VLEK certificate expired"):
        _verifier(shared_vectors, entry).verify_report(raw, now=late)


def test_report_data_binding_mismatch(shared_vectors: Path) -> None:
    name = "snp/trustee/test-report.bin"
    entry = _expected(shared_vectors)["snp_reports"][name]
    raw = (shared_vectors / name).read_bytes()
    report = parse_report(raw, product=Product.MILAN)
    wrong = bytes([report.report_data[0] ^ 1]) + report.report_data[1:32]
    with pytest.raises(EvidenceError, match="REPORT_DATA"):
        _verifier(shared_vectors, entry).verify(
            build_evidence(raw), expected_report_data=wrong, now=VERIFY_AT
        )
    # The 32-byte digest, zero-padded, is the binding (Trustee's regularization).
    claims = _verifier(shared_vectors, entry).verify(
        build_evidence(raw), expected_report_data=report.report_data[:32], now=VERIFY_AT
    )
    assert claims.report_data == report.report_data


def test_host_data_vs_init_data(shared_vectors: Path) -> None:
    name = "snp/trustee/test-report.bin"
    entry = _expected(shared_vectors)["snp_reports"][name]
    raw = (shared_vectors / name).read_bytes()
    report = parse_report(raw, product=Product.MILAN)
    init_data = b'algorithm = "sha256"\nversion = "0.1.0"\n[data]\nmodel = "x"\n'
    with pytest.raises(EvidenceError, match="HOST_DATA"):
        _verifier(shared_vectors, entry).verify(
            build_evidence(raw),
            expected_report_data=report.report_data,
            now=VERIFY_AT,
            init_data=init_data,
        )


def test_negative_vceks_rejected_for_documented_reason(shared_vectors: Path) -> None:
    negatives = _expected(shared_vectors)["snp_negative"]
    assert len(negatives) == 2
    for name, reason in negatives.items():
        assert "signature invalid under SEV-Milan" in reason
        bad = amd.load_cert_source(shared_vectors / name)[0]
        assert bad.role == "VCEK"
        assert bad.product is Product.MILAN
        with pytest.raises(EvidenceError, match="VCEK certificate signature invalid"):
            amd.verify_chain(bad, [], Product.MILAN, VERIFY_AT)


def test_turin_vcek_chains_to_pinned_turin_root(shared_vectors: Path) -> None:
    vcek = amd.load_cert_source(shared_vectors / "snp/virtee-sev/vcek_turin.der")[0]
    assert vcek.role == "VCEK"
    assert vcek.product is Product.TURIN
    chain = amd.verify_chain(
        vcek,
        amd.load_cert_source(shared_vectors / "snp/virtee-sev/cert_chain_turin.pem"),
        Product.TURIN,
        datetime(2025, 1, 1, tzinfo=UTC).timestamp(),
    )
    assert chain == ["SEV-VCEK", "SEV-Turin", "ARK-Turin"]
    tcb = amd.cert_tcb(vcek.cert, Product.TURIN)
    assert tcb.fmc == 0
    assert tcb.microcode == 9
    assert amd.hwid(vcek.cert) is not None
    assert len(amd.hwid(vcek.cert) or b"") == 8


def test_vcek_against_asvk_fails(shared_vectors: Path) -> None:
    vcek = amd.load_cert_source(shared_vectors / "snp/trustee/test-vcek.der")[0]
    asvk = amd.pinned(Product.MILAN)["ASVK"]
    with pytest.raises(ValueError):
        vcek.cert.verify_directly_issued_by(asvk)


def test_vector_chain_files_equal_pinned_roots(shared_vectors: Path) -> None:
    for product in Product:
        pem = shared_vectors / f"snp/trustee/{product.value.lower()}_ask_ark_asvk.pem"
        roles = {c.role: c.cert for c in amd.load_cert_source(pem)}
        assert roles == amd.pinned(product)


def test_azure_hcl_embedded_snp_reports(shared_vectors: Path) -> None:
    """The SNP reports inside the Azure HCL reports (Milan v2, Milan v3, Genoa v3)."""
    base = shared_vectors / "tpm/trustee-az-snp-vtpm"
    now = datetime(2025, 6, 1, tzinfo=UTC).timestamp()
    hcl = (base / "hcl-report.bin").read_bytes()
    report, _, chain = Verifier(amd.load_cert_source(base / "vcek.pem")).verify_report(
        hcl[0x20 : 0x20 + REPORT_SIZE], now=now
    )
    assert report.measurement.hex().startswith("9ac48fcac8a2d88aeeff8d427ad4f2be")
    assert report.report_data.hex().startswith("b3fbad6514c83caeb0380882145e49f7")
    assert chain[-1] == "ARK-Milan"
    for name, expected_tcb, product in (
        ("evidence-genoa.json", "0a00000000001754", Product.GENOA),
        ("evidence-v0.json", "04000000000018db", Product.MILAN),
    ):
        doc = json.loads((base / name).read_text())
        raw = bytes(doc["report"])[0x20 : 0x20 + REPORT_SIZE]
        vek = amd.load_cert_source(base / "vcek-genoa.pem") if product is Product.GENOA else []
        if not vek:
            vek = [amd.classify(c) for c in amd.load_certificates(doc["vcek"].encode())]
        report, _, chain = Verifier(vek).verify_report(raw, now=now)
        assert report.reported_tcb.raw.hex() == expected_tcb
        assert report.product is product
        assert chain[-1] == f"ARK-{product.value}"
    v1 = json.loads((base / "evidence-v1.json").read_text())
    hcl1 = base64.urlsafe_b64decode(v1["hcl_report"] + "=" * (-len(v1["hcl_report"]) % 4))
    r1 = parse_report(hcl1[0x20 : 0x20 + REPORT_SIZE])
    assert r1.measurement.hex().startswith("6a063be9dd79f6371c842e480f8dc3b5")


def _sampled_positions(rng: random.Random, size: int, n: int) -> list[int]:
    return sorted(rng.sample(range(size), n))


def test_any_signed_byte_mutation_is_rejected(shared_vectors: Path) -> None:
    name = "snp/trustee/test-report.bin"
    entry = _expected(shared_vectors)["snp_reports"][name]
    raw = (shared_vectors / name).read_bytes()
    verifier = _verifier(shared_vectors, entry)
    rng = random.Random(42)
    # Byte 42 is the one trustee's own test mutates.
    for pos in [42, *_sampled_positions(rng, 0x330, 60)]:
        bad = bytearray(raw)
        bad[pos] = (bad[pos] + 1) % 256
        with pytest.raises(EvidenceError):
            verifier.verify_report(bytes(bad), now=VERIFY_AT)


def test_any_chain_byte_mutation_is_rejected(shared_vectors: Path) -> None:
    name = "snp/go-sev-guest/attestation.bin"
    entry = _expected(shared_vectors)["snp_reports"][name]
    raw = (shared_vectors / name).read_bytes()
    der = (shared_vectors / entry["key"]).read_bytes()
    rng = random.Random(7)
    rejected = 0
    for pos in _sampled_positions(rng, len(der), 40):
        bad = bytearray(der)
        bad[pos] ^= 0x01
        try:
            cert = amd.load_certificate(bytes(bad))
        except ValueError:
            rejected += 1
            continue
        with pytest.raises(EvidenceError):
            Verifier([amd.classify(cert)]).verify_report(raw, now=VERIFY_AT)
        rejected += 1
    assert rejected == 40


def test_registry_builds_verifier_from_a_cert_directory(
    shared_vectors: Path, tmp_path: Path
) -> None:
    """``--snp-certs DIR``: file names do not matter; DER and PEM are classified by content."""
    from modelseal.errors import ConfigError
    from modelseal.tee.registry import verifier_for
    from modelseal.tee.snp import SnpConfig

    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "a").write_bytes((shared_vectors / "snp/trustee/test-vcek.der").read_bytes())
    (certs / "b.txt").write_bytes(
        (shared_vectors / "snp/trustee/milan_ask_ark_asvk.pem").read_bytes()
    )
    name = "snp/trustee/test-report.bin"
    raw = (shared_vectors / name).read_bytes()
    verifier = verifier_for("snp", SnpConfig(certs=str(certs)))
    report = parse_report(raw, product=Product.MILAN)
    claims = verifier.verify(
        build_evidence(raw), expected_report_data=report.report_data, now=VERIFY_AT
    )
    assert claims.measurements["chip_id"] == report.chip_id.hex()
    assert claims.extra["chain"] == ["SEV-VCEK", "SEV-Milan", "ARK-Milan"]
    (certs / "junk").write_bytes(b"not a certificate")
    with pytest.raises(ConfigError, match="junk"):
        verifier_for("snp", SnpConfig(certs=str(certs)))


def test_foreign_ark_in_evidence_is_refused(shared_vectors: Path) -> None:
    """An evidence chain may not bring its own root: only the pinned ARK anchors trust."""
    name = "snp/trustee/test-report.bin"
    raw = (shared_vectors / name).read_bytes()
    vcek = (shared_vectors / "snp/trustee/test-vcek.der").read_bytes()
    genoa_ark = amd.pinned(Product.GENOA)["ARK"]
    fake = amd.AmdCert("ARK", Product.MILAN, genoa_ark)
    with pytest.raises(EvidenceError, match="not the pinned AMD root"):
        Verifier([amd.classify(amd.load_certificate(vcek)), fake]).verify_report(raw, now=VERIFY_AT)
    # The VCEK alone (no chain at all) verifies against the packaged ASK and pinned ARK.
    report, _, chain = Verifier([amd.classify(amd.load_certificate(vcek))]).verify_report(
        raw, now=VERIFY_AT
    )
    assert chain == ["SEV-VCEK", "SEV-Milan", "ARK-Milan"]
    assert report.vmpl == 0


def test_mutated_ask_in_the_chain_is_rejected(shared_vectors: Path) -> None:
    """Any flipped byte of an ASK supplied with the evidence fails the chain."""
    name = "snp/trustee/test-report.bin"
    raw = (shared_vectors / name).read_bytes()
    vcek = amd.load_cert_source(shared_vectors / "snp/trustee/test-vcek.der")
    pem = (shared_vectors / "snp/trustee/milan_ask_ark_asvk.pem").read_text()
    first_block = pem.split("-----END CERTIFICATE-----")[0].split("-----\n", 1)[1]
    ask_der = base64.b64decode("".join(first_block.split()))
    ask = amd.classify(amd.load_certificate(ask_der))
    assert ask.role == "ASK"
    Verifier([*vcek, ask]).verify_report(raw, now=VERIFY_AT)
    rng = random.Random(11)
    for pos in _sampled_positions(rng, len(ask_der), 30):
        bad = bytearray(ask_der)
        bad[pos] ^= 0x10
        try:
            cert = amd.classify(amd.load_certificate(bytes(bad)))
        except (ValueError, EvidenceError):
            continue
        if cert.role != "ASK":
            continue  # renamed: simply not used as this chain's ASK
        with pytest.raises(EvidenceError):
            Verifier([*vcek, cert]).verify_report(raw, now=VERIFY_AT)


def test_evidence_vcek_with_unknown_version_is_an_evidence_error(shared_vectors: Path) -> None:
    """pyca's InvalidVersion for a supplied certificate becomes the verifier's typed error."""
    raw = (shared_vectors / "snp/trustee/test-report.bin").read_bytes()
    vcek = bytearray((shared_vectors / "snp/trustee/test-vcek.der").read_bytes())
    at = vcek.find(bytes([0xA0, 0x03, 0x02, 0x01, 0x02]))
    vcek[at + 4] = 7
    evidence = build_evidence(raw, [CertEntry("VCEK", bytes(vcek))])
    with pytest.raises(EvidenceError, match="not DER"):
        Verifier().verify(evidence, expected_report_data=b"", now=VERIFY_AT)
