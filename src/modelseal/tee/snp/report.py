"""SEV-SNP ATTESTATION_REPORT (AMD SEV-SNP ABI, "ATTESTATION_REPORT structure"), strict parsing.

Versions 2, 3 and 5 are accepted (4 shares the v3 layout; anything else is refused). All
integers are little-endian. The signature covers bytes ``[0, 0x2A0)``; ``r`` and ``s`` are
72-byte little-endian integers at 0x2A0 and 0x2E8. Reserved areas must be zero: a report
whose reserved bytes are set is either from an unknown ABI revision or forged, and the
Trustee JSON form (which drops reserved bytes) could not represent it faithfully.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from modelseal.errors import EvidenceError

REPORT_SIZE = 0x4A0  # 1184
SIGNED_SIZE = 0x2A0
SUPPORTED_VERSIONS = frozenset({2, 3, 4, 5})
SIG_ALGO_ECDSA_P384_SHA384 = 1

# Reserved ranges (start, end) that must be zero, per layout version.
_RESERVED_COMMON = ((0x4C, 0x50), (0x1EB, 0x1EC), (0x1EF, 0x1F0), (0x2E8 + 72, REPORT_SIZE))
_RESERVED_V2 = ((0x188, 0x1A0), (0x1F8, SIGNED_SIZE))
_RESERVED_V3 = ((0x18B, 0x1A0), (0x1F8, SIGNED_SIZE))
_RESERVED_V5 = ((0x18B, 0x1A0), (0x208, SIGNED_SIZE))


class Product(enum.Enum):
    """AMD EPYC generation; selects the pinned ARK and the TCB_VERSION layout."""

    MILAN = "Milan"
    GENOA = "Genoa"
    TURIN = "Turin"


class SigningKey(enum.IntEnum):
    """``flags[4:2]`` (SIGNING_KEY): which endorsement key signed the report."""

    VCEK = 0
    VLEK = 1
    NONE = 7


@dataclass(frozen=True)
class TcbVersion:
    """One TCB_VERSION; ``fmc`` exists only on Turin and later."""

    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None = None
    raw: bytes = b"\x00" * 8

    @classmethod
    def decode(cls, raw: bytes, product: Product | None) -> TcbVersion:
        """Decode 8 bytes; pre-Turin: [0]=bl [1]=tee [6]=snp [7]=ucode; Turin adds [0]=fmc."""
        if product is Product.TURIN:
            return cls(
                fmc=raw[0], bootloader=raw[1], tee=raw[2], snp=raw[3], microcode=raw[7], raw=raw
            )
        return cls(bootloader=raw[0], tee=raw[1], snp=raw[6], microcode=raw[7], raw=raw)

    def encode(self, product: Product | None) -> bytes:
        """Inverse of :meth:`decode` (reserved bytes zero)."""
        if product is Product.TURIN:
            return bytes([self.fmc or 0, self.bootloader, self.tee, self.snp, 0, 0, 0]) + bytes(
                [self.microcode]
            )
        return bytes([self.bootloader, self.tee, 0, 0, 0, 0, self.snp, self.microcode])

    def components(self) -> dict[str, int]:
        """Named security patch levels (what VCEK extensions and policies talk about)."""
        out = {
            "bootloader": self.bootloader,
            "tee": self.tee,
            "snp": self.snp,
            "microcode": self.microcode,
        }
        if self.fmc is not None:
            out["fmc"] = self.fmc
        return out

    def at_least(self, other: TcbVersion) -> bool:
        """Component-wise ``self >= other`` (TCB versions are not totally ordered)."""
        mine, theirs = self.components(), other.components()
        return all(mine.get(k, 0) >= v for k, v in theirs.items())


@dataclass(frozen=True)
class FirmwareVersion:
    major: int
    minor: int
    build: int


@dataclass(frozen=True)
class AttestationReport:
    """Every field of the report, typed; ``raw`` keeps the exact bytes for the signature."""

    raw: bytes
    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: TcbVersion
    platform_info: int
    flags: int
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: TcbVersion
    cpuid_fam_id: int | None
    cpuid_mod_id: int | None
    cpuid_step: int | None
    chip_id: bytes
    committed_tcb: TcbVersion
    current_version: FirmwareVersion
    committed_version: FirmwareVersion
    launch_tcb: TcbVersion
    launch_mit_vector: int | None
    current_mit_vector: int | None
    signature_r: bytes
    signature_s: bytes
    product: Product | None

    @property
    def signed_bytes(self) -> bytes:
        return self.raw[:SIGNED_SIZE]

    @property
    def signing_key(self) -> SigningKey:
        value = (self.flags >> 2) & 0x7
        try:
            return SigningKey(value)
        except ValueError:
            raise EvidenceError(f"SNP report: unknown SIGNING_KEY value {value}") from None

    @property
    def author_key_en(self) -> bool:
        return bool(self.flags & 0x1)

    @property
    def mask_chip_key(self) -> bool:
        return bool(self.flags & 0x2)

    # Guest policy bits (ABI "GUEST_POLICY").
    @property
    def policy_abi(self) -> tuple[int, int]:
        return (self.policy >> 8) & 0xFF, self.policy & 0xFF

    @property
    def policy_smt(self) -> bool:
        return bool(self.policy >> 16 & 1)

    @property
    def policy_migrate_ma(self) -> bool:
        return bool(self.policy >> 18 & 1)

    @property
    def policy_debug(self) -> bool:
        return bool(self.policy >> 19 & 1)

    @property
    def policy_single_socket(self) -> bool:
        return bool(self.policy >> 20 & 1)


def product_from_cpuid(family: int, model: int) -> Product | None:
    """Map CPUID family/model (v3+ reports) to the product line, as AMD KDS names it."""
    if family == 0x19:
        if model <= 0x0F:
            return Product.MILAN
        if 0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF:
            return Product.GENOA
    if family == 0x1A and model <= 0x11:
        return Product.TURIN
    return None


def parse_report(raw: bytes, *, product: Product | None = None) -> AttestationReport:
    """Parse exactly one 1184-byte report; any deviation raises ``EvidenceError``.

    ``product`` is needed only for v2 reports (no CPUID fields); v2 reports come from
    pre-Turin firmware, so their TCB layout is the Milan/Genoa one either way.
    """
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise EvidenceError("SNP report must be bytes")
    raw = bytes(raw)
    if len(raw) != REPORT_SIZE:
        raise EvidenceError(f"SNP report must be {REPORT_SIZE} bytes, got {len(raw)}")
    version, guest_svn, policy = struct.unpack_from("<IIQ", raw, 0)
    if version not in SUPPORTED_VERSIONS:
        raise EvidenceError(f"SNP report version {version} is not supported (2, 3, 5)")
    vmpl, sig_algo = struct.unpack_from("<II", raw, 0x30)
    if sig_algo != SIG_ALGO_ECDSA_P384_SHA384:
        raise EvidenceError(f"SNP report signature algorithm {sig_algo} is not ECDSA P-384")
    if vmpl > 3:
        raise EvidenceError(f"SNP report VMPL {vmpl} is out of range")
    if version == 2:
        reserved = _RESERVED_COMMON + _RESERVED_V2
        fam = mod = step = None
        detected: Product | None = product if product is not Product.TURIN else None
    else:
        reserved = _RESERVED_COMMON + (_RESERVED_V5 if version >= 5 else _RESERVED_V3)
        fam, mod, step = raw[0x188], raw[0x189], raw[0x18A]
        detected = product_from_cpuid(fam, mod)
        if detected is None:
            raise EvidenceError(f"SNP report: unsupported CPU family {fam:#x} model {mod:#x}")
        if product is not None and product is not detected:
            raise EvidenceError(
                f"SNP report is from {detected.value}, certificates are for {product.value}"
            )
    for start, end in reserved:
        if any(raw[start:end]):
            raise EvidenceError(f"SNP report: reserved bytes {start:#x}..{end:#x} are not zero")
    platform_info, flags = struct.unpack_from("<QI", raw, 0x40)
    if flags >> 5:
        raise EvidenceError(f"SNP report: reserved flag bits set ({flags:#x})")
    if version >= 5:
        launch_mit, current_mit = struct.unpack_from("<QQ", raw, 0x1F8)
    else:
        launch_mit = current_mit = None

    def tcb(offset: int) -> TcbVersion:
        return TcbVersion.decode(raw[offset : offset + 8], detected)

    report = AttestationReport(
        raw=raw,
        version=version,
        guest_svn=guest_svn,
        policy=policy,
        family_id=raw[0x10:0x20],
        image_id=raw[0x20:0x30],
        vmpl=vmpl,
        signature_algo=sig_algo,
        current_tcb=tcb(0x38),
        platform_info=platform_info,
        flags=flags,
        report_data=raw[0x50:0x90],
        measurement=raw[0x90:0xC0],
        host_data=raw[0xC0:0xE0],
        id_key_digest=raw[0xE0:0x110],
        author_key_digest=raw[0x110:0x140],
        report_id=raw[0x140:0x160],
        report_id_ma=raw[0x160:0x180],
        reported_tcb=tcb(0x180),
        cpuid_fam_id=fam,
        cpuid_mod_id=mod,
        cpuid_step=step,
        chip_id=raw[0x1A0:0x1E0],
        committed_tcb=tcb(0x1E0),
        current_version=FirmwareVersion(build=raw[0x1E8], minor=raw[0x1E9], major=raw[0x1EA]),
        committed_version=FirmwareVersion(build=raw[0x1EC], minor=raw[0x1ED], major=raw[0x1EE]),
        launch_tcb=tcb(0x1F0),
        launch_mit_vector=launch_mit,
        current_mit_vector=current_mit,
        signature_r=raw[0x2A0:0x2E8],
        signature_s=raw[0x2E8:0x330],
        product=detected,
    )
    # Decoding the SIGNING_KEY here makes an unknown value a parse error, not a later one.
    _ = report.signing_key
    return report
