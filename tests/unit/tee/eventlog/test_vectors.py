"""CCEL and TCG2 vectors: replayed RTMRs/PCRs, component claims, negative replays."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest

from modelseal.errors import EvidenceError
from modelseal.tee.eventlog import (
    ccel,
    check_registers,
    extract_components,
    parse_event_log,
    replay_ccel,
    replay_tcg2,
)
from modelseal.tee.eventlog.ccel import parse_ccel_table, verify_ccel
from modelseal.tee.eventlog.tcg import ALG_SHA1, ALG_SHA256, ALG_SHA384
from modelseal.tee.tdx.quote import parse_quote

BANKS = {"sha1": ALG_SHA1, "sha256": ALG_SHA256, "sha384": ALG_SHA384}


def _expected(vectors: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((vectors / "expected.json").read_text())
    return data


def test_ccel_replays(shared_vectors: Path) -> None:
    cases = _expected(shared_vectors)["ccel_rtmr_replay"]
    checked = 0
    for rel, exp in cases.items():
        if "+" in rel:  # CCEL + IMA combination, covered below
            continue
        rtmrs = replay_ccel(parse_event_log((shared_vectors / rel).read_bytes()))
        for i in range(4):
            assert rtmrs[i].hex() == exp[f"rtmr{i}"], (rel, i)
        checked += 1
    assert checked == 7


def test_ccel_plus_ima_matches_quote(shared_vectors: Path) -> None:
    """evidence-api: RTMR2 = CCEL replay extended with the IMA template hash."""
    import hashlib

    exp = _expected(shared_vectors)["ccel_rtmr_replay"][
        "eventlog/evidence-api/ccel_data.bin+ima_log.bin"
    ]
    rtmrs = replay_ccel(
        parse_event_log((shared_vectors / "eventlog/evidence-api/ccel_data.bin").read_bytes())
    )
    ima = (shared_vectors / "eventlog/evidence-api/ima_log.bin").read_text().split()
    rtmr2 = hashlib.sha384(rtmrs[2] + bytes.fromhex(ima[1])).digest()
    assert rtmr2.hex() == exp["rtmr2"]
    quote = parse_quote((shared_vectors / "eventlog/evidence-api/quote.bin").read_bytes())
    assert quote.td_report.rtmr2 == rtmr2
    assert quote.td_report.rtmr0 == rtmrs[0]


def test_go_tdx_guest_end_to_end(shared_vectors: Path) -> None:
    base = shared_vectors / "eventlog/go-tdx-guest"
    quote = parse_quote((base / "cos-113-tdx-quote.dat").read_bytes())
    result = verify_ccel((base / "ccel_data.dat").read_bytes(), quote.td_report.rtmrs)
    assert result.rtmrs[3] == bytes(48)
    assert quote.td_report.report_data == (base / "nonce.dat").read_bytes()
    assert result.components.cmdline is not None
    assert result.components.cmdline.startswith("/syslinux/vmlinuz.A init=")
    table = parse_ccel_table((base / "ccel_table.dat").read_bytes())
    assert table.cc_type == 2
    # the same log does not match a quote from another boot
    other = parse_quote((shared_vectors / "tdx/dcap-qvl/tdx_quote").read_bytes())
    with pytest.raises(EvidenceError, match="does not replay to the quoted RTMR0"):
        verify_ccel((base / "ccel_data.dat").read_bytes(), other.td_report.rtmrs)


def test_trustee_negative_replays(shared_vectors: Path) -> None:
    """trustee's asserted failures: a changed reference value is reported with both values."""
    gcp = replay_ccel(
        parse_event_log((shared_vectors / "eventlog/trustee/CCEL_data_gcp").read_bytes())
    )
    wrong = bytes.fromhex(gcp[0].hex()[:-2] + "4d")
    with pytest.raises(
        EvidenceError, match=r"RTMR0: replayed 3300.*ba862b304f, quoted .*ba862b304d"
    ):
        check_registers(gcp, {0: wrong, 1: gcp[1]}, names="RTMR", only={0, 1})
    data = replay_ccel(
        parse_event_log((shared_vectors / "eventlog/trustee/CCEL_data").read_bytes())
    )
    wrong1 = bytes.fromhex("2" + data[1].hex()[1:])
    with pytest.raises(EvidenceError, match="RTMR1: replayed 0fa3be56"):
        check_registers(data, {0: data[0], 1: wrong1}, names="RTMR", only={0, 1})


def test_tcg2_replays(shared_vectors: Path) -> None:
    cases = _expected(shared_vectors)["tcg2_pcr_replay"]
    assert len(cases) >= 4
    for rel, banks in cases.items():
        log = parse_event_log((shared_vectors / rel).read_bytes())
        for bank, pcrs in banks.items():
            replayed = replay_tcg2(log, BANKS[bank])
            for index, value in pcrs.items():
                assert replayed[int(index)].hex() == value, (rel, bank, index)


def test_tcg2_components(shared_vectors: Path) -> None:
    log = parse_event_log(
        (shared_vectors / "eventlog/go-tpm-tools/ubuntu-2404-amd-sevsnp.bin").read_bytes()
    )
    comp = extract_components(log, ALG_SHA256)
    assert comp.cmdline == (
        "/vmlinuz-6.8.0-1010-gcp root=PARTUUID=8270f3c9-b4e4-4345-80ee-5a62db7ebf3f ro "
        "console=ttyS0,115200 panic=-1"
    )
    assert comp.efi_applications == [
        "724de6844dd0fe618ba5776c7bca0728be38a6544e24e44ef259b987b7abce80",
        "5e8cb75acdf8e09e5fc14cc2d6ce0c2288af208976d97309851c661e91ec1e03",
    ]
    cos = parse_event_log(
        (shared_vectors / "eventlog/go-tpm-tools/cos-101-amd-sev.bin").read_bytes()
    )
    assert extract_components(cos, ALG_SHA256).efi_applications == [
        "c7ac5d44444affd8d4a7c5d3dea0ce20a71e05812fc18777a428d092f78ae3ff",
        "c5d3b47de11a9a2a4a15ef5cb7202d7800a10609c0dcecc46e3e963d476b76ce",
        "af4161084115c9d5c1872f4473fe974b535e3a9a767688293720ac2cc6f7f9a3",
        "af4161084115c9d5c1872f4473fe974b535e3a9a767688293720ac2cc6f7f9a3",
    ]


def test_ovmf_components(shared_vectors: Path) -> None:
    log = parse_event_log((shared_vectors / "eventlog/trustee/CCEL_data_ovmf").read_bytes())
    comp = extract_components(log, ALG_SHA384)
    assert comp.kernel_digest == comp.efi_applications[-1]
    assert comp.cmdline_digest
    assert comp.initrd_digest


def test_attestation_agent_runtime_events(shared_vectors: Path) -> None:
    log = parse_event_log((shared_vectors / "eventlog/trustee/CCEL_AAEL_alibabacloud").read_bytes())
    comp = extract_components(log, ALG_SHA384)
    assert comp.runtime_events == [
        "coco.com some-operation some-content",
        'coco.com some-operation {"key": "value", "nested-key": {"sub-key": "value"}}',
    ]


def test_td_shim_payload_components(shared_vectors: Path) -> None:
    """trustee CCEL_data (td-shim): payload and its command line, as trustee parses them."""
    expected = json.loads(
        (shared_vectors / "tdx/trustee/parse_tdx_claims_expected.json").read_text()
    )
    digests = {
        e["details"].get("string"): e["digests"][0]["digest"]
        for e in expected["uefi_event_logs"]
        if e.get("details")
    }
    log = parse_event_log((shared_vectors / "eventlog/trustee/CCEL_data").read_bytes())
    comp = extract_components(log, ALG_SHA384)
    assert comp.kernel_digest == digests["td_payload"]
    assert comp.cmdline == "root=/dev/vda1 console=hvc0 rw"
    assert comp.cmdline_digest == digests["td_payload_info root=/dev/vda1 console=hvc0 rw"]
    assert comp.to_json()["runtime_events"] == []


def test_trustee_parsed_quote_claims(shared_vectors: Path) -> None:
    """tdx_quote_4.dat parsed as trustee's claims.rs test expects (body, header, attributes)."""
    from modelseal.tee.tdx.claims import td_attributes

    expected = json.loads(
        (shared_vectors / "tdx/trustee/parse_tdx_claims_expected.json").read_text()
    )
    quote = parse_quote((shared_vectors / "tdx/trustee/tdx_quote_4.dat").read_bytes())
    body, report = expected["quote"]["body"], quote.td_report
    names = {"mrsigner_seam": "mr_signer_seam", "tcb_svn": "tee_tcb_svn"}
    for key, value in body.items():
        if key.startswith("rtmr_"):
            assert report.rtmrs[int(key[-1])].hex() == value
        else:
            assert getattr(report, names.get(key, key)).hex() == value, key
    header = expected["quote"]["header"]
    assert quote.header.qe_vendor_id.hex() == header["vendor_id"]
    assert quote.header.user_data.hex() == header["user_data"]
    assert quote.header.version.to_bytes(2, "little").hex() == header["version"]
    attrs = td_attributes(report.td_attributes)
    want = expected["td_attributes"]
    assert attrs["debug"] is want["debug"]
    assert attrs["sept_ve_disable"] is want["septve_disable"]
    assert attrs["pks"] is want["protection_keys"]
    assert attrs["key_locker"] is want["key_locker"]
    assert attrs["perfmon"] is want["perfmon"]


def test_a_remembered_replay_is_still_compared_with_each_quote(shared_vectors: Path) -> None:
    """verify_ccel remembers a log's replay, never a verdict: the same log bytes checked
    against RTMRs that differ in the last byte fail every time, and each result owns its
    lists."""
    base = shared_vectors / "eventlog/go-tdx-guest"
    log = (base / "ccel_data.dat").read_bytes()
    rtmrs = parse_quote((base / "cos-113-tdx-quote.dat").read_bytes()).td_report.rtmrs
    first = verify_ccel(log, rtmrs)
    for reg in range(3):
        wrong = list(rtmrs)
        wrong[reg] = rtmrs[reg][:-1] + bytes([rtmrs[reg][-1] ^ 1])
        with pytest.raises(EvidenceError, match=f"does not replay to the quoted RTMR{reg}"):
            verify_ccel(log, tuple(wrong))
    second = verify_ccel(log, rtmrs)
    assert second.rtmrs == first.rtmrs
    assert second.components == first.components
    replayed, applications = dict(first.rtmrs), list(first.components.efi_applications)
    first.components.efi_applications.append("changed by a caller")
    first.components.runtime_events.append("changed by a caller")
    first.rtmrs[0] = bytes(48)
    third = verify_ccel(log, rtmrs)
    assert third.rtmrs == replayed
    assert third.components.efi_applications == applications
    assert "changed by a caller" not in third.components.runtime_events


def test_only_a_log_that_matched_its_quote_is_remembered_and_within_a_byte_budget(
    shared_vectors: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer sending logs that fail their quote (or are never checked) must not fill the
    process-wide replay memo: each remembered replay holds components that grow with its
    log, so what is kept is also bounded by the logs' total size."""
    base = shared_vectors / "eventlog/go-tdx-guest"
    log = (base / "ccel_data.dat").read_bytes()
    rtmrs = parse_quote((base / "cos-113-tdx-quote.dat").read_bytes()).td_report.rtmrs
    monkeypatch.setattr(ccel, "_REPLAYS", OrderedDict())
    monkeypatch.setattr(ccel, "_replays_bytes", 0)
    wrong = (rtmrs[0][:-1] + bytes([rtmrs[0][-1] ^ 1]), *rtmrs[1:])
    with pytest.raises(EvidenceError):
        verify_ccel(log, wrong)
    verify_ccel(log, None)
    assert len(ccel._REPLAYS) == 0
    verify_ccel(log, rtmrs)
    assert len(ccel._REPLAYS) == 1
    assert ccel._replays_bytes == len(log)
    monkeypatch.setattr(ccel, "_REPLAYS_MAX_BYTES", len(log) - 1)
    monkeypatch.setattr(ccel, "_REPLAYS", OrderedDict())
    monkeypatch.setattr(ccel, "_replays_bytes", 0)
    verify_ccel(log, rtmrs)
    assert len(ccel._REPLAYS) == 0
    assert ccel._replays_bytes == 0
