"""The Azure HCL report: its binary layout and the runtime-claims JSON it carries.

Layout (little-endian; as the paravisor writes it into vTPM NV index ``0x01400001``)::

    0x000  header      signature "HCLA", version u32, report_size u32,
                       request_type u32 (2), status u32 (0), reserved 3 x u32 (0)
    0x020  hw_report   1184 bytes: the SEV-SNP ATTESTATION_REPORT (1184 B), or the
                       TDREPORT (1024 B) followed by 160 zero bytes
    0x4C0  igvm data   data_size u32 (= 20 + variable_data_size), version u32,
                       report_type u32 (2 = SNP, 4 = TDX), hash_type u32 (1 = SHA-256),
                       variable_data_size u32
    0x4D4  runtime-claims JSON (variable_data_size bytes), then zero padding to the
           size of the NV index (2600 bytes on today's CVMs)

The hardware report's report data starts with SHA-256(runtime-claims JSON): that is how
the hardware vouches for the JSON and therefore for the attestation key in it (the JWK
with ``kid`` ``HCLAkPub``). The JSON also carries ``user-data`` (hex), which the guest
sets through NV index ``0x01400002`` before reading the report (evidence version 2).

Nothing in the header or the padding is signed, so the parser accepts exactly what the
paravisor writes there (the values above) and nothing else: a changed byte anywhere in
the report is either refused here or breaks a signature or digest downstream.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from modelseal._internal.encoding import b64url_decode
from modelseal.crypto.tpm_sig import rsa_spki
from modelseal.errors import EvidenceError, FormatError

SIGNATURE = b"HCLA"
HEADER_SIZE = 0x20
HW_REPORT_SIZE = 1184
SNP_REPORT_SIZE = 1184
TD_REPORT_SIZE = 1024
IGVM_OFFSET = HEADER_SIZE + HW_REPORT_SIZE  # 0x4C0
IGVM_HEADER_SIZE = 20
VAR_DATA_OFFSET = IGVM_OFFSET + IGVM_HEADER_SIZE  # 0x4D4
REQUEST_TYPE = 2
REPORT_TYPE_SNP = 2
REPORT_TYPE_TDX = 4
HASH_TYPE_SHA256 = 1
#: The NV index holds 2600 bytes today; anything far larger is not an HCL report.
MAX_HCL_REPORT = 8192
AK_KID = "HCLAkPub"
USER_DATA_SIZE = 64
_JSON_DEPTH = 8


@dataclass(frozen=True)
class HclReport:
    """A parsed HCL report; ``hw_report`` is the SNP report or the TDREPORT, exactly."""

    raw: bytes
    version: int
    report_type: int
    hw_report: bytes
    runtime_data: bytes
    runtime_claims: Mapping[str, Any]

    @property
    def is_snp(self) -> bool:
        return self.report_type == REPORT_TYPE_SNP

    @property
    def runtime_data_sha256(self) -> bytes:
        """What the hardware report's report data must start with."""
        return hashlib.sha256(self.runtime_data).digest()

    def ak_spki(self) -> bytes:
        """SPKI DER of the vTPM attestation key (the ``HCLAkPub`` JWK)."""
        keys = self.runtime_claims.get("keys")
        if not isinstance(keys, list):
            raise EvidenceError("HCL runtime claims: 'keys' must be a list of JWKs")
        found = [k for k in keys if isinstance(k, Mapping) and k.get("kid") == AK_KID]
        if len(found) != 1:
            raise EvidenceError(f"HCL runtime claims must hold exactly one {AK_KID} key")
        return jwk_spki(found[0])

    def user_data(self) -> bytes | None:
        """The ``user-data`` member (64 bytes), or None when the JSON has none."""
        value = self.runtime_claims.get("user-data")
        if value is None:
            return None
        if not isinstance(value, str) or len(value) != 2 * USER_DATA_SIZE:
            raise EvidenceError(f"HCL runtime claims: user-data must be {USER_DATA_SIZE} hex bytes")
        try:
            return bytes.fromhex(value)
        except ValueError:
            raise EvidenceError("HCL runtime claims: user-data is not hex") from None

    def vm_configuration(self) -> dict[str, Any]:
        """The ``vm-configuration`` member (secure boot, TPM, VM id), scalars only."""
        value = self.runtime_claims.get("vm-configuration")
        if not isinstance(value, Mapping):
            return {}
        return {
            str(k)[:64]: v
            for k, v in value.items()
            if isinstance(v, bool | int | str) and not (isinstance(v, str) and len(v) > 256)
        }


def _b64url_int(value: Any, what: str) -> int:
    if not isinstance(value, str) or len(value) > 1024:
        raise EvidenceError(f"{AK_KID}: {what} must be a base64url string")
    try:
        raw = b64url_decode(value, what=f"{AK_KID}.{what}")
    except FormatError as exc:
        raise EvidenceError(str(exc)) from None
    return int.from_bytes(raw, "big")


def jwk_spki(jwk: Mapping[str, Any]) -> bytes:
    """SPKI DER of the RSA public JWK (Azure vTPM attestation keys are RSA-2048)."""
    if jwk.get("kty") != "RSA":
        raise EvidenceError(f"{AK_KID} must be an RSA JWK")
    n, e = _b64url_int(jwk.get("n"), "n"), _b64url_int(jwk.get("e"), "e")
    if n.bit_length() < 2048:
        raise EvidenceError(f"{AK_KID}: RSA modulus below 2048 bits")
    try:
        return rsa_spki(n, e)
    except ValueError as exc:
        raise EvidenceError(f"{AK_KID} is not a valid RSA public key") from exc


def _depth(value: Any, level: int = 0) -> int:
    if isinstance(value, Mapping):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


def parse_hcl_report(raw: bytes) -> HclReport:
    """Parse an HCL report strictly (see the module docstring); ``EvidenceError`` if odd."""
    if not VAR_DATA_OFFSET <= len(raw) <= MAX_HCL_REPORT:
        raise EvidenceError(
            f"HCL report has {len(raw)} bytes; {VAR_DATA_OFFSET}..{MAX_HCL_REPORT} expected"
        )
    if raw[:4] != SIGNATURE:
        raise EvidenceError("HCL report does not start with the signature 'HCLA'")
    version, report_size, request_type, status = struct.unpack_from("<4I", raw, 4)
    if request_type != REQUEST_TYPE or status != 0 or any(raw[0x14:HEADER_SIZE]):
        raise EvidenceError("HCL report header has an unknown request type, status or reserved")
    data_size, _igvm_version, report_type, hash_type, var_size = struct.unpack_from(
        "<5I", raw, IGVM_OFFSET
    )
    if report_type not in (REPORT_TYPE_SNP, REPORT_TYPE_TDX):
        raise EvidenceError(f"HCL report type {report_type} is neither SNP (2) nor TDX (4)")
    if hash_type != HASH_TYPE_SHA256:
        raise EvidenceError(f"HCL runtime-data hash type {hash_type} is not SHA-256 (1)")
    end = VAR_DATA_OFFSET + var_size
    if var_size == 0 or end > len(raw):
        raise EvidenceError("HCL runtime data is empty or runs past the end of the report")
    if data_size != IGVM_HEADER_SIZE + var_size or report_size != end:
        raise EvidenceError("HCL report sizes disagree with the runtime-data size")
    if any(raw[end:]):
        raise EvidenceError("HCL report has non-zero bytes after its runtime data")
    hw_size = SNP_REPORT_SIZE if report_type == REPORT_TYPE_SNP else TD_REPORT_SIZE
    hw = raw[HEADER_SIZE : HEADER_SIZE + hw_size]
    if any(raw[HEADER_SIZE + hw_size : IGVM_OFFSET]):
        raise EvidenceError("HCL report has non-zero bytes after its TD report")
    runtime = raw[VAR_DATA_OFFSET:end]
    try:
        claims = json.loads(runtime.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise EvidenceError("HCL runtime data is not UTF-8 JSON") from exc
    if not isinstance(claims, dict) or _depth(claims) > _JSON_DEPTH:
        raise EvidenceError("HCL runtime data must be a shallow JSON object")
    return HclReport(
        raw=bytes(raw),
        version=version,
        report_type=report_type,
        hw_report=bytes(hw),
        runtime_data=bytes(runtime),
        runtime_claims=claims,
    )


def build_hcl_report(
    hw_report: bytes, runtime_data: bytes, *, report_type: int, size: int = 2600, version: int = 1
) -> bytes:
    """The bytes the paravisor writes for ``hw_report`` and ``runtime_data`` (tests and
    the synthetic NV index of a software TPM use this; it is the inverse of the parser)."""
    out = bytearray(max(size, VAR_DATA_OFFSET + len(runtime_data)))
    end = VAR_DATA_OFFSET + len(runtime_data)
    struct.pack_into("<4s4I", out, 0, SIGNATURE, version, end, REQUEST_TYPE, 0)
    out[HEADER_SIZE : HEADER_SIZE + len(hw_report)] = hw_report
    struct.pack_into(
        "<5I",
        out,
        IGVM_OFFSET,
        IGVM_HEADER_SIZE + len(runtime_data),
        1,
        report_type,
        HASH_TYPE_SHA256,
        len(runtime_data),
    )
    out[VAR_DATA_OFFSET:end] = runtime_data
    return bytes(out)
