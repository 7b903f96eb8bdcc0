"""TPM 2.0 wire structures parsed by hand (TPM 2.0 Library Part 2), big-endian, strict.

Only what attestation needs: TPMS_ATTEST (quote), TPMT_SIGNATURE, TPMT_PUBLIC /
TPM2B_PUBLIC (RSA and ECC keys) and TPML_PCR_SELECTION. Every parser consumes its input
exactly and turns any malformed byte into ``EvidenceError``; nothing here imports a TSS.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from modelseal.errors import EvidenceError

TPM_GENERATED_VALUE = 0xFF544347
TPM_ST_ATTEST_QUOTE = 0x8018

ALG_RSA = 0x0001
ALG_SHA1 = 0x0004
ALG_SHA256 = 0x000B
ALG_SHA384 = 0x000C
ALG_SHA512 = 0x000D
ALG_NULL = 0x0010
ALG_RSASSA = 0x0014
ALG_RSAPSS = 0x0016
ALG_ECDSA = 0x0018
ALG_ECC = 0x0023

#: TPM_ALG_ID -> (name, digest size)
HASH_ALGS: dict[int, tuple[str, int]] = {
    ALG_SHA1: ("sha1", 20),
    ALG_SHA256: ("sha256", 32),
    ALG_SHA384: ("sha384", 48),
    ALG_SHA512: ("sha512", 64),
}
HASH_IDS = {name: alg for alg, (name, _) in HASH_ALGS.items()}
SIG_SCHEMES = {ALG_RSASSA: "rsassa", ALG_RSAPSS: "rsapss", ALG_ECDSA: "ecdsa"}
#: TPM_ECC_CURVE -> name
ECC_CURVES = {0x0003: "p256", 0x0004: "p384", 0x0005: "p521"}

# TPMA_OBJECT bits an attestation key must have.
ATTR_FIXED_TPM = 1 << 1
ATTR_SENSITIVE_DATA_ORIGIN = 1 << 5
ATTR_RESTRICTED = 1 << 16
ATTR_SIGN = 1 << 18

MAX_PCR = 24
MAX_STRUCT = 16 * 1024


class Reader:
    """Cursor over big-endian TPM bytes; every overrun is an ``EvidenceError``."""

    def __init__(self, data: bytes, what: str) -> None:
        if len(data) > MAX_STRUCT:
            raise EvidenceError(f"{what} is too large ({len(data)} bytes)")
        self._data = data
        self._pos = 0
        self._what = what

    def take(self, n: int) -> bytes:
        if n < 0 or self._pos + n > len(self._data):
            raise EvidenceError(f"{self._what} is truncated")
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        value: int = struct.unpack(">H", self.take(2))[0]
        return value

    def u32(self) -> int:
        value: int = struct.unpack(">I", self.take(4))[0]
        return value

    def u64(self) -> int:
        value: int = struct.unpack(">Q", self.take(8))[0]
        return value

    def tpm2b(self, max_size: int = 1024) -> bytes:
        size = self.u16()
        if size > max_size:
            raise EvidenceError(f"{self._what}: sized buffer of {size} bytes is too large")
        return self.take(size)

    def end(self) -> None:
        if self._pos != len(self._data):
            raise EvidenceError(f"{self._what} has {len(self._data) - self._pos} trailing bytes")


def hash_name(alg: int, what: str) -> str:
    try:
        return HASH_ALGS[alg][0]
    except KeyError:
        raise EvidenceError(f"{what}: unsupported hash algorithm {alg:#06x}") from None


@dataclass(frozen=True)
class PcrSelection:
    """One bank of a TPML_PCR_SELECTION: hash name and selected indices (ascending)."""

    bank: str
    indices: tuple[int, ...]


def _pcr_selection(r: Reader) -> list[PcrSelection]:
    count = r.u32()
    if count > 8:
        raise EvidenceError("PCR selection lists too many banks")
    out = []
    for _ in range(count):
        bank = hash_name(r.u16(), "PCR selection")
        size = r.u8()
        if not 3 <= size <= 4:
            raise EvidenceError(f"PCR selection bitmap of {size} bytes is not supported")
        bitmap = r.take(size)
        indices = tuple(i for i in range(size * 8) if bitmap[i // 8] >> (i % 8) & 1 and i < MAX_PCR)
        if any(bitmap[i // 8] >> (i % 8) & 1 for i in range(MAX_PCR, size * 8)):
            raise EvidenceError("PCR selection names a PCR above 23")
        out.append(PcrSelection(bank, indices))
    return out


@dataclass(frozen=True)
class Attest:
    """A parsed TPMS_ATTEST of type ATTEST_QUOTE."""

    qualified_signer: bytes
    extra_data: bytes
    clock: int
    reset_count: int
    restart_count: int
    safe: bool
    firmware_version: int
    pcr_select: tuple[PcrSelection, ...]
    pcr_digest: bytes


def parse_attest(data: bytes) -> Attest:
    """Parse TPMS_ATTEST (the signed message of TPM2_Quote) strictly."""
    r = Reader(data, "TPMS_ATTEST")
    if r.u32() != TPM_GENERATED_VALUE:
        raise EvidenceError("TPMS_ATTEST magic is not TPM_GENERATED_VALUE")
    kind = r.u16()
    if kind != TPM_ST_ATTEST_QUOTE:
        raise EvidenceError(f"TPMS_ATTEST type {kind:#06x} is not ATTEST_QUOTE")
    signer = r.tpm2b(2 + 64)
    extra = r.tpm2b(64)
    clock, resets, restarts, safe = r.u64(), r.u32(), r.u32(), r.u8()
    if safe > 1:
        raise EvidenceError("TPMS_CLOCK_INFO.safe is not a boolean")
    firmware = r.u64()
    selection = _pcr_selection(r)
    digest = r.tpm2b(64)
    r.end()
    return Attest(
        qualified_signer=signer,
        extra_data=extra,
        clock=clock,
        reset_count=resets,
        restart_count=restarts,
        safe=bool(safe),
        firmware_version=firmware,
        pcr_select=tuple(selection),
        pcr_digest=digest,
    )


@dataclass(frozen=True)
class Signature:
    """A parsed TPMT_SIGNATURE: scheme (rsassa/rsapss/ecdsa), hash, and the value(s)."""

    scheme: str
    hash: str
    value: bytes = b""
    r: bytes = b""
    s: bytes = b""


def parse_signature(data: bytes) -> Signature:
    """Parse TPMT_SIGNATURE; only RSASSA, RSAPSS and ECDSA are accepted."""
    r = Reader(data, "TPMT_SIGNATURE")
    alg = r.u16()
    scheme = SIG_SCHEMES.get(alg)
    if scheme is None:
        raise EvidenceError(f"TPMT_SIGNATURE algorithm {alg:#06x} is not supported")
    digest = hash_name(r.u16(), "TPMT_SIGNATURE")
    if scheme == "ecdsa":
        sig_r, sig_s = r.tpm2b(66), r.tpm2b(66)
        r.end()
        return Signature(scheme, digest, r=sig_r, s=sig_s)
    value = r.tpm2b(512)
    r.end()
    return Signature(scheme, digest, value=value)


@dataclass(frozen=True)
class Public:
    """A parsed TPMT_PUBLIC of an RSA or ECC key, plus its TPM name."""

    raw: bytes
    key_type: str
    name_alg: str
    attributes: int
    rsa_n: int = 0
    rsa_e: int = 0
    curve: str = ""
    ecc_x: bytes = b""
    ecc_y: bytes = b""

    @property
    def name(self) -> bytes:
        """TPM name = nameAlg (u16) || H_nameAlg(TPMT_PUBLIC)."""
        digest = hashlib.new(self.name_alg, self.raw).digest()
        return struct.pack(">H", HASH_IDS[self.name_alg]) + digest

    @property
    def is_attestation_key(self) -> bool:
        """Restricted signing key that never leaves the TPM (what an AK must be)."""
        need = ATTR_FIXED_TPM | ATTR_SENSITIVE_DATA_ORIGIN | ATTR_RESTRICTED | ATTR_SIGN
        return self.attributes & need == need


def _scheme(r: Reader) -> None:
    if r.u16() != ALG_NULL:
        hash_name(r.u16(), "TPMT_PUBLIC scheme")


def parse_public(data: bytes) -> Public:
    """Parse a TPMT_PUBLIC, or a TPM2B_PUBLIC (size-prefixed) as tpm2_createak writes."""
    if len(data) >= 2 and struct.unpack(">H", data[:2])[0] == len(data) - 2:
        data = data[2:]
    r = Reader(data, "TPMT_PUBLIC")
    key_type = r.u16()
    name_alg = hash_name(r.u16(), "TPMT_PUBLIC nameAlg")
    attributes = r.u32()
    r.tpm2b(64)  # authPolicy
    if r.u16() != ALG_NULL:  # symmetric: a signing key has none
        raise EvidenceError("TPMT_PUBLIC of a signing key must have a NULL symmetric algorithm")
    _scheme(r)
    if key_type == ALG_RSA:
        bits, exponent = r.u16(), r.u32()
        modulus = r.tpm2b(512)
        r.end()
        if len(modulus) * 8 != bits or bits < 2048:
            raise EvidenceError("TPMT_PUBLIC RSA modulus size is wrong or below 2048 bits")
        return Public(
            raw=data,
            key_type="rsa",
            name_alg=name_alg,
            attributes=attributes,
            rsa_n=int.from_bytes(modulus, "big"),
            rsa_e=exponent or 65537,
        )
    if key_type == ALG_ECC:
        curve_id = r.u16()
        curve = ECC_CURVES.get(curve_id)
        if curve is None:
            raise EvidenceError(f"TPMT_PUBLIC ECC curve {curve_id:#06x} is not supported")
        _scheme(r)  # kdf
        x, y = r.tpm2b(66), r.tpm2b(66)
        r.end()
        return Public(
            raw=data,
            key_type="ecc",
            name_alg=name_alg,
            attributes=attributes,
            curve=curve,
            ecc_x=x,
            ecc_y=y,
        )
    raise EvidenceError(f"TPMT_PUBLIC key type {key_type:#06x} is not RSA or ECC")


def pcr_digest(values: list[bytes], hash_alg: str) -> bytes:
    """pcrDigest of a quote: H_signhash(concatenation of the selected PCR values)."""
    return hashlib.new(hash_alg, b"".join(values)).digest()
