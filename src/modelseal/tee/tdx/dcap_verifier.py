"""The DCAP verification pipeline shared by the tdx, sgx and mock-tdx verifiers.

Order: decode evidence → strict quote parse → pick collateral by the PCK's FMSPC →
dcap-qvl (signatures, chains, CRLs, TCB, attributes) → CCEL replay against the RTMRs →
typed claims; the base verifier then checks REPORTDATA against the session's binding and
init-data against MRCONFIGID (TD quotes only). Every failure is an
:class:`EvidenceError` naming the reason, except missing collateral (CollateralMissing, a
BackendError: the KBS cannot decide, so it answers 503 instead of blaming the guest).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from modelseal._internal.memo import Memo
from modelseal.crypto.ecdsa_raw import verify_raw_p256
from modelseal.errors import EvidenceError
from modelseal.tee.base import Authenticated, InitDataField, Verifier
from modelseal.tee.eventlog.ccel import verify_ccel
from modelseal.tee.tdx import dcap
from modelseal.tee.tdx.claims import build_claims
from modelseal.tee.tdx.collateral import CollateralStore
from modelseal.tee.tdx.evidence import decode_evidence
from modelseal.tee.tdx.quote import (
    TEE_TYPE_SGX,
    TEE_TYPE_TDX,
    Quote,
    TdReport,
    parse_quote,
    verdict_template,
)

#: How long a remembered DCAP verdict may serve further quotes of the same template. It is
#: remembered only if dcap-qvl gives the same verdict at both ends of this window, and
#: every check dcap-qvl makes over time is an interval (validity of certificates, CRLs,
#: TCB info and QE identity), so the verdict holds at every moment in between.
VERDICT_WINDOW = 600.0
#: How many verdicts a verifier remembers; the least recently used one goes first, so a
#: busy TD's verdict survives a stream of templates seen once.
VERDICTS_MAX = 1024


class DcapQuoteVerifier(Verifier):
    """Verifies DCAP quotes of one TEE type against a trust root and a collateral store."""

    tee: ClassVar[str] = "tdx"
    #: "TDX" or "SGX": which quotes this verifier accepts
    quote_tee: ClassVar[str] = "TDX"
    report_data_field: ClassVar[str] = "the quote's REPORTDATA"
    #: Facts every claim of this verifier carries (mock-tdx: ``{"mock": true}``).
    extra_claims: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, collateral: CollateralStore, *, root_ca_der: bytes | None = None) -> None:
        self.collateral = collateral
        self.root_ca_der = root_ca_der
        # Memos keyed by the texts and DER themselves: Python caches a str's hash, and the
        # collateral text and root objects are the same ones call after call, so a lookup
        # costs a pointer compare instead of hashing tens of KiB with SHA-256 per quote.
        self._parsed: Memo[str, Any] = Memo(64)
        self._checked: Memo[tuple[str, bytes], bool] = Memo(64)
        self._chains: Memo[bytes, tuple[Any, dcap.PckInfo, bytes]] = Memo(1024)
        self._verdicts: Memo[
            tuple[str, bytes | None, bytes], tuple[float, float, dcap.DcapResult]
        ] = Memo(VERDICTS_MAX)

    @classmethod
    def evidence_from_file(cls, raw: bytes) -> Any:
        """The evidence JSON, or a binary or hex quote (the decoder takes both itself)."""
        if raw.strip()[:1] == b"{":
            return super().evidence_from_file(raw)
        return raw

    @classmethod
    def own_report_data(cls, evidence: Any) -> bytes | None:
        """REPORTDATA as the (not yet verified) quote carries it."""
        return parse_quote(decode_evidence(evidence).quote).report.report_data

    def may_block(self) -> bool:
        return self.collateral.may_fetch

    def _dcap_collateral(self, text: str) -> Any:
        """Parsed dcap-qvl collateral, memoized (parsing costs more than verifying)."""
        hit = self._parsed.get(text)
        if hit is not None:
            return hit
        parsed = dcap.load_collateral(text)
        self._parsed.put(text, parsed)
        return parsed

    def _chain_facts(self, pem: bytes) -> tuple[Any, dcap.PckInfo, bytes]:
        """Embedded-chain check and PCK facts, memoized per chain (one per platform): the
        chain's root, the PCK facts, and the root's TBS bytes (which identify the root in
        the memo of checked collateral; cryptography re-encodes them on every access)."""
        key = bytes(pem)
        hit = self._chains.get(key)
        if hit is not None:
            return hit
        root = dcap.check_embedded_chain(pem, self.root_ca_der)
        facts = (root, dcap.pck_info(pem), root.tbs_certificate_bytes)
        self._chains.put(key, facts)
        return facts

    def _dcap_verdict(self, quote: Quote, parsed: Any, text: str, now: float) -> dcap.DcapResult:
        """dcap-qvl's verdict on ``quote``, or a remembered one for its template.

        A quote whose template (:func:`verdict_template`: every byte but REPORTDATA and the
        quote signature) dcap-qvl accepted under the same collateral and root, within the
        window, needs only its own signature checked: the attestation key that must have
        made it is part of the template, certified by the QE report dcap-qvl checked.
        Anything else (another template, collateral, root or moment) is verified in full.
        """
        template = verdict_template(quote)
        key = None if template is None else (text, self.root_ca_der, template)
        if key is not None:
            hit = self._verdicts.get(key)
            if hit is not None and hit[0] <= now <= hit[1]:
                signed = quote.raw[: quote.signed_length]
                sig = quote.signature
                if not verify_raw_p256(sig.attestation_key, signed, sig.ecdsa_signature):
                    raise EvidenceError("quote signature is invalid")
                return hit[2]
        result = dcap.verify(quote.raw, parsed, now, root_ca_der=self.root_ca_der)
        if key is None:
            return result
        try:
            later = dcap.verify(
                quote.raw, parsed, now + VERDICT_WINDOW, root_ca_der=self.root_ca_der
            )
        except EvidenceError:  # something expires within the window: verify each time
            return result
        if later == result:
            self._verdicts.put(key, (now, now + VERDICT_WINDOW, result))
        return result

    def _check_type(self, quote: Quote) -> None:
        want = TEE_TYPE_TDX if self.quote_tee == "TDX" else TEE_TYPE_SGX
        if quote.header.tee_type != want:
            raise EvidenceError(f"{self.tee} verifier got a quote of another TEE type")

    def verify_quote(self, evidence: Any, *, now: float) -> Authenticated:
        """Everything but the bindings (report data, init-data): for a kind that binds
        the quote's report data itself, as Azure's binds its HCL runtime claims."""
        return self._verify_evidence(evidence, now=now)

    def _verify_evidence(self, evidence: Any, *, now: float) -> Authenticated:
        ev = decode_evidence(evidence)
        quote = parse_quote(ev.quote)
        self._check_type(quote)
        root, pck, root_tbs = self._chain_facts(quote.signature.pck_chain_pem)
        collateral = self.collateral.get(self.quote_tee, pck.fmspc, pck.ca, now)
        parsed = self._dcap_collateral(collateral.text)
        checked = (collateral.text, root_tbs)
        if self._checked.get(checked) is None:
            dcap.check_collateral_chains(collateral.text, root)
            self._checked.put(checked, True)
        result = self._dcap_verdict(quote, parsed, collateral.text, now)
        report = quote.report
        extra: dict[str, Any] = dict(self.extra_claims)
        if ev.ignored:
            extra["ignored_evidence_members"] = list(ev.ignored)
        event_claims: dict[str, str] = {}
        runtime_events: tuple[str, ...] = ()
        launch: InitDataField | None = None
        if isinstance(report, TdReport):
            if ev.cc_eventlog:
                ccel = verify_ccel(ev.cc_eventlog, report.rtmrs)
                event_claims = ccel.components.measurements()
                runtime_events = tuple(ccel.components.runtime_events)
                extra["event_log"] = {"events": ccel.events, **ccel.components.to_json()}
            if ev.aa_eventlog:
                # Runtime (attestation-agent) events extend RTMR3; the quoted RTMR3 is
                # attested either way, the text log is not interpreted.
                extra["aa_eventlog"] = "present, not interpreted"
            launch = InitDataField("MRCONFIGID", report.mr_config_id)
        claims = build_claims(
            self.tee,
            quote,
            result,
            pck,
            event_claims=event_claims,
            extra=extra,
            runtime_events=runtime_events,
        )
        return Authenticated(
            claims,
            init_data_field=launch,
            init_data_refusal="init-data binding is not supported for SGX quotes",
        )
