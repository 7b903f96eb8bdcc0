"""Attester and Verifier contracts shared by every TEE kind (docs/reference/evidence.md).

Evidence travels as the JSON value of Trustee's ``tee-evidence.primary_evidence`` so the
KBS stays wire-compatible with CoCo guests; each kind documents its own shape.
"""

from __future__ import annotations

import abc
import dataclasses
import hmac
import json
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, final

from modelseal.errors import EvidenceError
from modelseal.protocol.claims import Claims
from modelseal.tee.initdata import parse_init_data
from modelseal.tee.plugin import KindConfig

#: JSON value of ``primary_evidence`` as sent on the wire.
EvidenceJSON = Any


class Attester(Protocol):
    """Produces evidence inside a TEE. Raises ``AttestationError``/``UnsupportedTee``."""

    tee: ClassVar[str]

    def evidence(self, report_data: bytes) -> EvidenceJSON:
        """Evidence whose user-data field carries ``report_data`` (zero-padded)."""
        ...


#: The longest binding digest any kind's report-data field can carry (SHA-512).
MAX_REPORT_DATA = 64


@dataclass(frozen=True)
class InitDataField:
    """A launch-time field the hardware attests, set by the host from the init-data digest.

    TDX MRCONFIGID and SNP HOST_DATA hold the digest zero-padded or truncated to the
    field's size, as Trustee does; a kind whose field holds a function of the digest (the
    TPM's PCR8) overrides :meth:`expected`.
    """

    name: str
    value: bytes

    def expected(self, digest: bytes) -> bytes:
        """The value this field holds when the TEE was launched with ``digest``."""
        size = len(self.value)
        return digest[:size].ljust(size, b"\x00")


@dataclass(frozen=True)
class Authenticated:
    """What a kind's own checks established from evidence whose signature they verified.

    ``claims.report_data`` is the report-data field exactly as the evidence carries it
    (TDX/SNP/sample: 64 bytes; TPM: the quote's qualifying data); the base verifier, not
    the kind, compares it with the session's binding. ``init_data_field`` is where this
    evidence attests the init-data digest, or None with ``init_data_refusal`` saying why
    it cannot (SGX quotes, a TPM quote without a SHA-256 PCR8).
    """

    claims: Claims
    init_data_field: InitDataField | None = None
    init_data_refusal: str | None = None


class Verifier(abc.ABC):
    """Verifies evidence on the KBS side. Raises ``EvidenceError`` with a precise reason.

    A template method: :meth:`verify` is final and runs the kind's own evidence checks
    (:meth:`_verify_evidence`), then the checks every kind needs and none may forget:
    the claims are of this verifier's kind, the report data binds this session, and the
    init-data document matches its launch-time field. A kind only reports the report
    data it found and never compares the binding itself, so no kind can forget to.
    """

    #: The TEE kind name (``tdx``, ``snp``, ...); claims must carry the same name.
    tee: ClassVar[str]
    #: Smallest and largest report-data field this kind's evidence may carry.
    report_data_sizes: ClassVar[tuple[int, int]] = (64, 64)
    #: What the kind calls its report-data field (error messages name it).
    report_data_field: ClassVar[str] = "the report data"
    #: Evidence of this kind proves nothing (no hardware signature): claims are always
    #: marked insecure and init-data is reported without a launch-time binding.
    insecure: ClassVar[bool] = False
    #: The field holds the first bytes of a longer binding digest (a GPU's 32-byte SPDM
    #: nonce carries the first half of a SHA-384 digest, as Trustee and guest-components
    #: truncate it); the comparison then covers the field's full length.
    truncates_report_data: ClassVar[bool] = False

    def may_block(self) -> bool:
        """True when :meth:`verify` may wait on I/O (a collateral download), so a server
        runs it in a thread; False for pure-CPU verification, which a server runs on its
        event loop (a thread would only add a hand-off, as the GIL is held throughout).
        Kinds whose evidence is verified from local material only say False."""
        return True

    @classmethod
    @abc.abstractmethod
    def from_config(cls, config: KindConfig) -> Verifier:
        """Build from the kind's own config (built by ``registry.build_config``); raises
        ``UnsupportedTee`` when the kind is refused (e.g. not opted in)."""

    @classmethod
    def evidence_from_file(cls, raw: bytes) -> EvidenceJSON:
        """Evidence as an operator saves it to a file (``evidence verify``): the JSON a
        KBS receives; kinds with a binary form (a raw quote or report) accept it too."""
        text = raw.strip()
        try:
            return json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise EvidenceError(
                f"{cls.tee} evidence must be the JSON document a KBS receives"
            ) from exc

    @classmethod
    def split_devices(cls, evidence: EvidenceJSON) -> list[EvidenceJSON]:
        """One document per device, for a device kind whose evidence lists several
        (each is verified, bound and reported on its own); other kinds: the evidence."""
        return [evidence]

    @classmethod
    def own_report_data(cls, evidence: EvidenceJSON) -> bytes | None:
        """The report data the evidence carries, for checking it without a known binding
        (``evidence verify`` without ``--report-data``); None when it cannot be read
        before verification."""
        return None

    @final
    def verify(
        self,
        evidence: EvidenceJSON,
        *,
        expected_report_data: bytes,
        now: float,
        init_data: bytes | None = None,
    ) -> Claims:
        """Check the evidence, its kind, its binding and its init-data; return typed claims.

        ``expected_report_data`` is the binding digest (unpadded, at most 64 bytes); the
        evidence's report-data field must hold it zero-padded to the field's size.
        ``init_data`` is the raw init-data document the TEE claims to have been launched
        with; its digest must match the launch-time field. ``now`` is the verification
        time (Unix seconds) for certificate and collateral validity.
        """
        if len(expected_report_data) > MAX_REPORT_DATA:
            raise EvidenceError(
                f"expected report data is {len(expected_report_data)} bytes; "
                f"at most {MAX_REPORT_DATA} fit any report-data field"
            )
        found = self._verify_evidence(evidence, now=now)
        claims = found.claims
        if claims.tee != self.tee:
            raise EvidenceError(f"the {self.tee} verifier produced claims of kind {claims.tee!r}")
        self._check_binding(claims.report_data, expected_report_data)
        if init_data is not None:
            claims = self._bind_init_data(found, init_data)
        elif claims.init_data_digest is not None or claims.init_data:
            # Only a document checked here may reach the claims.
            claims = dataclasses.replace(claims, init_data_digest=None, init_data={})
        if self.insecure and not claims.insecure:
            claims = dataclasses.replace(claims, insecure=True)
        return claims

    @abc.abstractmethod
    def _verify_evidence(self, evidence: EvidenceJSON, *, now: float) -> Authenticated:
        """The kind's own checks: shape, signatures, chains, collateral, TCB, event logs.

        Returns the claims of authenticated evidence, with the report data as found and
        no init-data claims (:meth:`verify` adds them after checking the document).
        """

    @final
    def _check_binding(self, found: bytes, expected: bytes) -> None:
        """The report data must be this session's binding digest, zero-padded, in full."""
        low, high = self.report_data_sizes
        field = self.report_data_field
        if not low <= len(found) <= high:
            sizes = f"{low}" if low == high else f"{low}..{high}"
            raise EvidenceError(f"{field} has {len(found)} bytes; {sizes} required")
        if self.truncates_report_data:
            expected = expected[: len(found)]
        if len(expected) > len(found):
            raise EvidenceError(
                f"the {len(expected)}-byte binding digest does not fit the "
                f"{len(found)} bytes of {field}"
            )
        if not hmac.compare_digest(found, pad_report_data(expected, len(found))):
            raise EvidenceError(
                f"report data binding mismatch: {field} does not match the runtime-data "
                "binding (this session's nonce and TEE key)"
            )

    @final
    def _bind_init_data(self, found: Authenticated, raw: bytes) -> Claims:
        """Parse the init-data document and check its digest against the launch field."""
        init = parse_init_data(raw)
        field = found.init_data_field
        if field is not None:
            if not hmac.compare_digest(field.expected(init.digest), field.value):
                raise EvidenceError(
                    f"init-data binding mismatch: {field.name} is {field.value.hex()}, the "
                    f"init-data {init.algorithm} digest is {init.digest.hex()}"
                )
        elif not self.insecure:
            raise EvidenceError(
                found.init_data_refusal
                or f"init-data binding is not supported for {self.tee} evidence"
            )
        return dataclasses.replace(
            found.claims, init_data_digest=init.digest_hex, init_data=dict(init.data)
        )


def pad_report_data(data: bytes, size: int = 64) -> bytes:
    """Zero-pad (or truncate) ``data`` to a TEE's report-data field, as Trustee does."""
    return data[:size].ljust(size, b"\x00")


def close_attester(attester: Attester) -> None:
    """Release what an attester holds open, if anything (the ``aa`` relay's HTTP client);
    attesters need not have a ``close``."""
    close = getattr(attester, "close", None)
    if callable(close):
        close()
