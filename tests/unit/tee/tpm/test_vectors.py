"""Real TPM 2.0 quotes and TCG2 logs from tests/vectors/attestation reproduce expected.json."""

from __future__ import annotations

import base64
import copy
import json
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from modelseal.crypto.tpm_sig import rsa_spki
from modelseal.errors import EvidenceError
from modelseal.tee.eventlog import parse_event_log
from modelseal.tee.eventlog.replay import replay_tcg2
from modelseal.tee.tpm.quote import verify_quote
from modelseal.tee.tpm.structures import HASH_IDS, parse_attest, parse_public, parse_signature
from modelseal.tee.tpm.trust import TrustStore, spki_of_public
from modelseal.tee.tpm.verifier import Verifier

NOW = datetime(2026, 1, 1, tzinfo=UTC).timestamp()


def _expected(vectors: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((vectors / "expected.json").read_text())
    return data


def _trustee(vectors: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((vectors / "tpm/trustee/tpm_evidence.json").read_text())
    return doc


def _trustee_verifier(doc: dict[str, Any]) -> Verifier:
    store = TrustStore()
    store.add_blob(base64.b64decode(doc["ak_public"]), "ak_public")
    return Verifier(store)


def test_trustee_tpm_evidence(shared_vectors: Path) -> None:
    exp = _expected(shared_vectors)["tpm_quotes"]["tpm/trustee/tpm_evidence.json"]
    doc = _trustee(shared_vectors)
    extra = bytes.fromhex(exp["extra_data"])
    # The nonce is the 48-byte binding digest zero-padded to 64 bytes.
    claims = _trustee_verifier(doc).verify(doc, expected_report_data=extra[:48], now=NOW)
    assert exp["signature_valid"] is True
    assert claims.tee == "tpm"
    assert claims.debug is False
    assert claims.tcb_status is None
    assert claims.report_data == extra
    assert len([k for k in claims.measurements if k.startswith("pcr")]) == 24
    for i in range(24):
        want = "ff" * 32 if 17 <= i <= 22 else "00" * 32
        assert claims.measurements[f"pcr{i}"] == want
    attest = parse_attest(base64.b64decode(doc["tpm_quote"]["message"]))
    assert attest.pcr_digest.hex() == exp["pcr_digest"]
    assert attest.reset_count == 2
    assert attest.restart_count == 0
    assert attest.clock == 1913548331
    assert claims.extra["signature"] == "rsassa-sha256"


def test_trustee_wrong_nonce_rejected(shared_vectors: Path) -> None:
    doc = _trustee(shared_vectors)
    with pytest.raises(EvidenceError, match="nonce"):
        _trustee_verifier(doc).verify(doc, expected_report_data=b"\x01" * 48, now=NOW)


def test_untrusted_ak_rejected(shared_vectors: Path) -> None:
    doc = _trustee(shared_vectors)
    gce = json.loads(
        (shared_vectors / "tpm/go-tpm-tools/gce-cos-85-nonce9009.extracted.json").read_text()
    )
    store = TrustStore()
    store.add_blob(bytes.fromhex(gce["ak_pub_tpmt_public"]), "gce ak")
    with pytest.raises(EvidenceError, match="not trusted"):
        Verifier(store).verify(doc, expected_report_data=b"", now=NOW)


def test_trustee_pcr_or_signature_tamper_rejected(shared_vectors: Path) -> None:
    doc = _trustee(shared_vectors)
    verifier = _trustee_verifier(doc)
    nonce = bytes.fromhex(
        _expected(shared_vectors)["tpm_quotes"]["tpm/trustee/tpm_evidence.json"]["extra_data"]
    )
    bad_pcr = copy.deepcopy(doc)
    bad_pcr["tpm_quote"]["pcrs"][0] = "01" + bad_pcr["tpm_quote"]["pcrs"][0][2:]
    with pytest.raises(EvidenceError, match="PCR digest"):
        verifier.verify(bad_pcr, expected_report_data=nonce, now=NOW)
    rng = random.Random(5)
    for field in ("message", "signature"):
        raw = base64.b64decode(doc["tpm_quote"][field])
        for pos in rng.sample(range(len(raw)), 25):
            bad = copy.deepcopy(doc)
            mutated = bytearray(raw)
            mutated[pos] ^= 0x04
            bad["tpm_quote"][field] = base64.b64encode(bytes(mutated)).decode()
            with pytest.raises(EvidenceError):
                verifier.verify(bad, expected_report_data=nonce, now=NOW)


def _gce(vectors: Path, name: str = "gce-cos-85-nonce9009") -> dict[str, Any]:
    path = vectors / f"tpm/go-tpm-tools/{name}.extracted.json"
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def _gce_store(vectors: Path) -> TrustStore:
    store = TrustStore.load(vectors / "tpm/go-tpm-tools/tpm_ek_root_1.cer")
    store.add_blob((vectors / "tpm/go-tpm-tools/tpm_ek_intermediate_2.crt").read_bytes(), "i2")
    return store


def test_gce_attestation_three_banks_with_event_log(shared_vectors: Path) -> None:
    exp = _expected(shared_vectors)
    quotes_exp = exp["tpm_quotes"]["tpm/go-tpm-tools/gce-cos-85-nonce9009.pb"]
    replay_exp = exp["tcg2_pcr_replay"]["tpm/go-tpm-tools/gce-cos-85-nonce9009.eventlog.bin"]
    gce = _gce(shared_vectors)
    public = parse_public(bytes.fromhex(gce["ak_pub_tpmt_public"]))
    assert public.key_type == "rsa"
    assert public.is_attestation_key
    spki = spki_of_public(public)
    cert = bytes.fromhex(gce["ak_cert_der"])
    assert _gce_store(shared_vectors).check(spki, [cert], NOW) == "certificate"
    log = (shared_vectors / "tpm/go-tpm-tools/gce-cos-85-nonce9009.eventlog.bin").read_bytes()
    banks = []
    for quote in gce["quotes"]:
        pcrs = [bytes.fromhex(quote["pcrs"][str(i)]) for i in range(24)]
        verified = verify_quote(
            spki,
            bytes.fromhex(quote["tpms_attest"]),
            parse_signature(bytes.fromhex(quote["tpmt_signature"])),
            pcrs,
            nonce_ok=bytes.fromhex(quotes_exp["extra_data"]),
            event_log=log,
        )
        banks.append(verified.bank)
        assert verified.signature.scheme == "rsassa"
        assert verified.signature.hash == "sha256"
        if verified.bank in replay_exp:
            replayed = {str(i): v.hex() for i, v in verified.replayed.items()}
            assert replayed == replay_exp[verified.bank]
    assert banks == quotes_exp["banks"]
    sha256 = {str(i): v for i, v in gce["quotes"][1]["pcrs"].items()}
    assert sha256["0"] == "0f35c214608d93c7a6e68ae7359b4a8be5a0e99eea9107ece427c4dea4e439cf"
    assert sha256["4"] == "d690bdac2aa8b73a1d718cb91990df07d0747b07ea57b3b2d0f0d511f0d90491"


def test_gce_attestation_through_the_verifier(shared_vectors: Path) -> None:
    """Evidence in our JSON shape: AK certificate chain instead of a configured key."""
    gce = _gce(shared_vectors)
    quote = gce["quotes"][1]
    spki = spki_of_public(parse_public(bytes.fromhex(gce["ak_pub_tpmt_public"])))
    log = (shared_vectors / "tpm/go-tpm-tools/gce-cos-85-nonce9009.eventlog.bin").read_bytes()
    evidence = {
        "ak_public": base64.b64encode(spki).decode(),
        "ak_tpm_public": base64.b64encode(bytes.fromhex(gce["ak_pub_tpmt_public"])).decode(),
        "ak_certs": [base64.b64encode(bytes.fromhex(gce["ak_cert_der"])).decode()],
        "tpm_quote": {
            "message": base64.b64encode(bytes.fromhex(quote["tpms_attest"])).decode(),
            "signature": base64.b64encode(bytes.fromhex(quote["tpmt_signature"])).decode(),
            "pcrs": [quote["pcrs"][str(i)] for i in range(24)],
        },
        "event_log": base64.b64encode(log).decode(),
    }
    verifier = Verifier(_gce_store(shared_vectors))
    # The GCE nonce is 2 bytes: below the 32-byte minimum a binding digest needs.
    with pytest.raises(EvidenceError, match=r"32\.\.64"):
        verifier.verify(evidence, expected_report_data=bytes.fromhex("9009"), now=NOW)
    # The chain is rejected outside the AK certificate's validity window.
    with pytest.raises(EvidenceError, match="not valid at this time"):
        verifier.verify(evidence, expected_report_data=b"", now=datetime(2060, 1, 1).timestamp())
    # Without the CA anchors the AK is not trusted.
    with pytest.raises(EvidenceError, match="does not chain"):
        Verifier(TrustStore(anchors=[])).verify(evidence, expected_report_data=b"", now=NOW)
    # A wrong event log (another machine's) no longer replays to the quoted PCRs.
    other = (shared_vectors / "eventlog/go-tpm-tools/rhel8-uefi.bin").read_bytes()
    with pytest.raises(EvidenceError, match="does not replay"):
        verify_quote(
            spki,
            bytes.fromhex(quote["tpms_attest"]),
            parse_signature(bytes.fromhex(quote["tpmt_signature"])),
            [bytes.fromhex(quote["pcrs"][str(i)]) for i in range(24)],
            event_log=other,
        )


def _jwk_spki(hcl: bytes, kid: str = "HCLAkPub") -> bytes:
    start = 0x4D4
    claims = json.loads(hcl[start:].split(b"\x00", 1)[0])
    key = next(k for k in claims["keys"] if k["kid"] == kid)

    def num(v: str) -> int:
        return int.from_bytes(base64.urlsafe_b64decode(v + "=" * (-len(v) % 4)), "big")

    return rsa_spki(num(key["n"]), num(key["e"]))


def _raw_rsassa(sig_hex: str) -> Any:
    from modelseal.tee.tpm.structures import Signature

    return Signature("rsassa", "sha256", value=bytes.fromhex(sig_hex))


@pytest.mark.parametrize("kind", ["trustee-az-snp-vtpm", "trustee-az-tdx-vtpm"])
def test_azure_vtpm_quotes(shared_vectors: Path, kind: str) -> None:
    exp = _expected(shared_vectors)["tpm_quotes"][f"tpm/{kind}/tpm-quote-v1.json"]
    base = shared_vectors / "tpm" / kind
    spki = _jwk_spki((base / "hcl-report.bin").read_bytes())
    quote = json.loads((base / "tpm-quote-v1.json").read_text())
    verified = verify_quote(
        spki,
        bytes.fromhex(quote["message"]),
        _raw_rsassa(quote["signature"]),
        [bytes.fromhex(p) for p in quote["pcrs"]],
        nonce_ok=exp["extra_data_ascii"].encode(),
    )
    assert verified.pcrs[0].hex() == exp["pcr0"]
    bad = bytearray(bytes.fromhex(quote["signature"]))
    bad[10] ^= 1
    with pytest.raises(EvidenceError, match="signature"):
        verify_quote(
            spki,
            bytes.fromhex(quote["message"]),
            _raw_rsassa(bytes(bad).hex()),
            [bytes.fromhex(p) for p in quote["pcrs"]],
        )


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@pytest.mark.parametrize(
    "name", ["evidence-v0.json", "evidence-v1.json", "evidence-v2.json", "evidence-genoa.json"]
)
def test_azure_snp_vtpm_evidence_quotes(shared_vectors: Path, name: str) -> None:
    exp = _expected(shared_vectors)["tpm_quotes"][f"tpm/trustee-az-snp-vtpm/{name}"]
    doc = json.loads((shared_vectors / "tpm/trustee-az-snp-vtpm" / name).read_text())
    quote = doc["quote"] if "quote" in doc else doc["tpm_quote"]
    if "report" in doc:
        hcl = bytes(doc["report"])
        message, signature = bytes(quote["message"]), bytes(quote["signature"])
        pcrs = [bytes(p) for p in quote["pcrs"]]
    else:
        hcl = _b64url(doc["hcl_report"])
        message, signature = bytes.fromhex(quote["message"]), bytes.fromhex(quote["signature"])
        pcrs = [bytes.fromhex(p) for p in quote["pcrs"]]
    nonce = (
        exp["extra_data_ascii"].encode()
        if "extra_data_ascii" in exp
        else bytes.fromhex(exp["extra_data"])
    )
    from modelseal.tee.tpm.structures import Signature

    verified = verify_quote(
        _jwk_spki(hcl),
        message,
        Signature("rsassa", "sha256", value=signature),
        pcrs,
        nonce_ok=nonce,
    )
    assert verified.pcrs[0].hex() == exp["pcr0"]


@pytest.mark.parametrize(
    "log",
    [
        "eventlog/go-tpm-tools/ubuntu-2404-amd-sevsnp.bin",
        "eventlog/go-tpm-tools/cos-101-amd-sev.bin",
        "eventlog/go-tpm-tools/rhel8-uefi.bin",
        "tpm/go-tpm-tools/gce-cos-85-nonce9009.eventlog.bin",
    ],
)
def test_tcg2_replays_match_expected(shared_vectors: Path, log: str) -> None:
    expected = _expected(shared_vectors)["tcg2_pcr_replay"][log]
    parsed = parse_event_log((shared_vectors / log).read_bytes())
    for bank, pcrs in expected.items():
        replayed = replay_tcg2(parsed, HASH_IDS[bank])
        for index, value in pcrs.items():
            assert replayed[int(index)].hex() == value


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _proto(data: bytes) -> list[tuple[int, Any]]:
    """Minimal protobuf wire decoding (varint and length-delimited fields only)."""
    out: list[tuple[int, Any]] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 2:
            size, pos = _varint(data, pos)
            value, pos = data[pos : pos + size], pos + size
        else:
            raise AssertionError(f"unexpected wire type {wire}")
        out.append((number, value))
    return out


@pytest.mark.parametrize(
    ("name", "nonce"), [("gce-cos-85-nonce9009.pb", "9009"), ("gce-cos-85-no-nonce.pb", "")]
)
def test_gce_protobuf_attestations(shared_vectors: Path, name: str, nonce: str) -> None:
    """go-tpm-tools Attestation protos: AK (TPMT_PUBLIC) + cert, 3 quotes, event log."""
    exp = _expected(shared_vectors)["tpm_quotes"][f"tpm/go-tpm-tools/{name}"]
    assert exp["extra_data"] == nonce
    top = _proto((shared_vectors / "tpm/go-tpm-tools" / name).read_bytes())
    ak = next(v for n, v in top if n == 1)
    cert = next(v for n, v in top if n == 6)
    log = next(v for n, v in top if n == 3)
    spki = spki_of_public(parse_public(ak))
    assert _gce_store(shared_vectors).check(spki, [cert], NOW) == "certificate"
    banks = []
    for quote in (v for n, v in top if n == 2):
        fields = dict(_proto(quote))
        pcr_map = {}
        for number, entry in _proto(fields[3]):
            if number == 2:
                kv = dict(_proto(entry))
                pcr_map[kv.get(1, 0)] = kv[2]
        verified = verify_quote(
            spki,
            fields[1],
            parse_signature(fields[2]),
            [pcr_map[i] for i in range(24)],
            nonce_ok=bytes.fromhex(nonce),
            event_log=log,
        )
        banks.append(verified.bank)
        assert sorted(verified.replayed) == list(range(10))
    assert banks == ["sha1", "sha256", "sha384"]
