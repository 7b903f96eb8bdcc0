"""NVIDIA Hopper verifier: one GPU's SPDM measurement report, chain, FWID, nonce, RIMs.

Order of checks (each failure is an ``EvidenceError`` naming the reason): Trustee-shaped
device evidence (exactly one device per call; composite evidence is split per device
by the caller) -> strict report parse -> device chain (from the evidence, else the
configured ``--collateral``) path-validated to the pinned NVIDIA Device Identity CA at
``now`` -> CRLs of the offline bundle -> the leaf's FWID equals the report's FWID -> ECDSA
P-384 signature of the report under the leaf -> RIMs covering the report's driver and
VBIOS versions verified and compared; then the base verifier: the request nonce equals
the session binding (its first 32 bytes). Verification reads local material only.

Claims: ``measurements`` maps the block index (``"1"`` .. ``"64"``) to its hex value, and
``extra`` holds ``arch``, ``uuid`` and ``config`` exactly as Trustee's local verifier
names them (driver/VBIOS version, FWID, board id, measurement counts ...), plus the RIM
result, the chain and the guest-reported CC mode.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from cryptography import x509

from modelseal._internal.bounded import load_json
from modelseal._internal.encoding import hex_decode
from modelseal.errors import ConfigError, EvidenceError, FormatError
from modelseal.protocol.claims import Claims
from modelseal.tee import base
from modelseal.tee.base import Authenticated
from modelseal.tee.nvidia import NvidiaConfig, certs
from modelseal.tee.nvidia.evidence import (
    build_device,
    build_evidence,
    device_entries,
    parse_device,
)
from modelseal.tee.nvidia.report import MAX_REPORT, HopperReport, parse_report
from modelseal.tee.nvidia.rim import RimResult, RimStore, load_rims
from modelseal.tee.plugin import KindConfig

#: Evidence documents larger than this are refused before parsing.
MAX_EVIDENCE = 16 * (4 * MAX_REPORT + 16 * 1024)
#: A device chain file (five PEM certificates are about 5 KiB).
MAX_CHAIN_FILE = 64 * 1024
#: Verified device chains remembered (one per GPU a KBS sees; oldest dropped first).
CHAIN_CACHE = 256


class Verifier(base.Verifier):
    """Verifies one NVIDIA Hopper GPU's evidence; see the module docstring."""

    tee: ClassVar[str] = "nvidia"
    report_data_sizes: ClassVar[tuple[int, int]] = (32, 32)
    report_data_field: ClassVar[str] = "the GPU's SPDM request nonce"
    truncates_report_data: ClassVar[bool] = True

    def __init__(
        self,
        *,
        chain_pem: bytes | None = None,
        rims: RimStore | None = None,
        revocation: certs.Revocation | None = None,
        device_root: x509.Certificate | None = None,
    ) -> None:
        self._device_root = device_root or certs.pinned("device_root")
        self._chain_pem = chain_pem
        self._rims = rims
        self._revocation = revocation
        self._chain_cache: dict[bytes, tuple[list[x509.Certificate], float, float]] = {}

    def may_block(self) -> bool:
        return False  # local material only

    @classmethod
    def from_config(cls, config: KindConfig) -> Verifier:
        if not isinstance(config, NvidiaConfig):
            return cls()
        revocation = certs.Revocation.load(config.revocation) if config.revocation else None
        rims = None
        if config.rim:
            root = _root(config.rim_root, "--nvidia-rim-root") or certs.pinned("rim_root")
            rims = RimStore(load_rims(config.rim), root, revocation)
        return cls(
            chain_pem=_own_chain(config.collateral),
            rims=rims,
            revocation=revocation,
            device_root=_root(config.device_root, "--nvidia-device-root"),
        )

    @classmethod
    def evidence_from_file(cls, raw: bytes) -> Any:
        """The evidence JSON, or a bare report (hex text or binary) as one device."""
        text = raw.strip()
        if text[:1] == b"{":
            try:
                return load_json(text, what="NVIDIA evidence", max_bytes=MAX_EVIDENCE)
            except FormatError as exc:
                raise EvidenceError(str(exc)) from None
        try:
            report = hex_decode(text.decode("ascii"), what="NVIDIA report")
        except (UnicodeDecodeError, FormatError):
            report = raw
        return build_evidence([build_device(report, None)])

    @classmethod
    def own_report_data(cls, evidence: Any) -> bytes | None:
        """The request nonce the (not yet verified) report carries."""
        entries = device_entries(evidence)
        if len(entries) != 1:
            return None
        return parse_report(parse_device(entries[0]).report).nonce

    @classmethod
    def split_devices(cls, evidence: Any) -> list[Any]:
        """One evidence document per device (composite evidence lists several GPUs)."""
        return [build_evidence([dict(entry)]) for entry in device_entries(evidence)]

    def _verify_evidence(self, evidence: Any, *, now: float) -> Authenticated:
        entries = device_entries(evidence)
        if len(entries) != 1:
            raise EvidenceError(
                f"NVIDIA evidence lists {len(entries)} devices; verify them one at a time"
            )
        device = parse_device(entries[0])
        chain_pem = device.chain_pem if device.chain_pem is not None else self._chain_pem
        if chain_pem is None:
            raise EvidenceError(
                "NVIDIA evidence carries no device certificate chain; give it with --collateral"
            )
        try:
            report, chain, rim = self.verify_report(device.report, chain_pem, now=now)
        except (ValueError, TypeError) as exc:  # a lazily parsed certificate field
            # (pyca parses names on first access: a BIT STRING attribute is a TypeError)
            raise EvidenceError(f"malformed NVIDIA certificate: {str(exc)[:120]}") from None
        return Authenticated(
            build_claims(report, chain, rim, arch=device.arch, uuid=device.uuid, cc=device.cc_mode)
        )

    def verify_report(
        self, raw: bytes, chain_pem: bytes, *, now: float
    ) -> tuple[HopperReport, list[x509.Certificate], RimResult | None]:
        """Everything but the nonce: parse, chain, revocation, signature, FWID, RIMs."""
        report = parse_report(raw)
        chain = self._device_chain(chain_pem, now)
        if self._revocation is not None:
            self._revocation.check(chain, "GPU device", now)
        reported = report.fwid
        if reported is None or certs.fwid(chain[0]) != reported:
            raise EvidenceError("the report's FWID does not match the GPU signing certificate")
        certs.verify_signature(chain[0], report.signed_bytes, report.signature)
        rim = self._rims.check(report, now) if self._rims is not None else None
        return report, chain, rim

    def _device_chain(self, chain_pem: bytes, now: float) -> list[x509.Certificate]:
        """The verified device chain; a chain verified before is reused while ``now`` lies
        in every certificate's validity (path validation depends on nothing else), which
        saves four ECDSA verifications per report from the same GPU."""
        hit = self._chain_cache.get(chain_pem)
        if hit is not None and hit[1] <= now <= hit[2]:
            return hit[0]
        supplied = certs.load_chain(chain_pem, "NVIDIA device certificate chain")
        if len(supplied) < 2:
            raise EvidenceError(
                "NVIDIA device certificate chain must hold the signing certificate and its CAs"
            )
        chain = certs.verify_chain(
            supplied, self._device_root, now=now, what="NVIDIA device certificate chain"
        )
        start = max(c.not_valid_before_utc.timestamp() for c in chain)
        end = min(c.not_valid_after_utc.timestamp() for c in chain)
        if len(self._chain_cache) >= CHAIN_CACHE:
            self._chain_cache.pop(next(iter(self._chain_cache)))
        self._chain_cache[chain_pem] = (chain, start, end)
        return chain


def build_claims(
    report: HopperReport,
    chain: list[x509.Certificate],
    rim: RimResult | None,
    *,
    arch: str,
    uuid: str,
    cc: str | None,
) -> Claims:
    """Typed claims of a verified report (see the module docstring)."""
    extra: dict[str, Any] = {
        "arch": arch,
        "uuid": uuid,
        "config": dict(report.opaque),
        "driver_version": report.driver_version,
        "vbios_version": report.vbios_version,
        "cc_mode": cc,
        "rim": rim.to_json() if rim is not None else None,
        "chain": [certs.common_name(c) for c in chain],
    }
    return Claims(
        tee=Verifier.tee,
        debug=False,
        report_data=report.nonce,
        measurements={str(b.index): b.value.hex() for b in report.blocks},
        extra=extra,
    )


def trustee_claims(claims: Claims) -> dict[str, Any]:
    """The claims in the shape Trustee's local verifier emits for one device."""
    extra: Mapping[str, Any] = claims.extra
    return {
        "arch": extra["arch"],
        "uuid": extra["uuid"],
        "measurements": dict(claims.measurements),
        "config": dict(extra["config"]),
    }


def _read(path: str) -> bytes:
    file = Path(path)
    try:
        if file.stat().st_size > MAX_EVIDENCE:
            raise ConfigError(f"{path} is too large")
        return file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None


def _root(path: str | None, flag: str) -> x509.Certificate | None:
    """The first certificate of a configured PEM root file, or None when not configured."""
    if not path:
        return None
    try:
        return certs.load_chain(_read(path), flag)[0]
    except EvidenceError as exc:
        raise ConfigError(str(exc)) from None


def _own_chain(path: str | None) -> bytes | None:
    """The device chain a bare report is verified with, from ``--collateral``. The option
    is shared with the DCAP kinds (a collateral bundle directory or JSON file there), so
    only a small file holding PEM certificates is read as a chain; anything else is the
    other kinds' material and ignored here."""
    if not path:
        return None
    file = Path(path)
    try:
        if not file.is_file() or file.stat().st_size > MAX_CHAIN_FILE:
            return None
        data = file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    return data if b"-----BEGIN CERTIFICATE-----" in data else None
