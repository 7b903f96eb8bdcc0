"""DER encoding of Intel's SGX extension (OID 1.2.840.113741.1.13.1) for mock PCK certs.

Structure (Intel "SGX PCK Certificate and CRL Profile"): a SEQUENCE of (OID, value)
pairs — PPID (16-byte OCTET STRING); TCB = SEQUENCE of 16 CPUSVN components (INTEGER),
PCESVN (INTEGER) and CPUSVN (16-byte OCTET STRING); PCE-ID (2 bytes); FMSPC (6 bytes);
SGX type (ENUMERATED). dcap-qvl reads FMSPC/CPUSVN/PCESVN from here to select and match
the TCB level, so the mock must encode it exactly.
"""

from __future__ import annotations

SGX_EXTENSION_OID = "1.2.840.113741.1.13.1"


def _len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _tlv(tag: int, value: bytes) -> bytes:
    return bytes([tag]) + _len(len(value)) + value


def _oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    body = bytearray([40 * parts[0] + parts[1]])
    for part in parts[2:]:
        chunk = [part & 0x7F]
        part >>= 7
        while part:
            chunk.append(0x80 | (part & 0x7F))
            part >>= 7
        body.extend(reversed(chunk))
    return _tlv(0x06, bytes(body))


def _int(value: int) -> bytes:
    raw = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big")
    return _tlv(0x02, raw)


def _seq(*items: bytes) -> bytes:
    return _tlv(0x30, b"".join(items))


def _pair(oid: str, value: bytes) -> bytes:
    return _seq(_oid(oid), value)


def sgx_extension(
    *, ppid: bytes, cpu_svn: bytes, pce_svn: int, pce_id: bytes, fmspc: bytes, sgx_type: int = 0
) -> bytes:
    """DER value of the SGX extension."""
    if len(ppid) != 16 or len(cpu_svn) != 16 or len(pce_id) != 2 or len(fmspc) != 6:
        raise ValueError("bad SGX extension field sizes")
    base = SGX_EXTENSION_OID
    tcb = [_pair(f"{base}.2.{i + 1}", _int(cpu_svn[i])) for i in range(16)]
    tcb.append(_pair(f"{base}.2.17", _int(pce_svn)))
    tcb.append(_pair(f"{base}.2.18", _tlv(0x04, cpu_svn)))
    return _seq(
        _pair(f"{base}.1", _tlv(0x04, ppid)),
        _pair(f"{base}.2", _seq(*tcb)),
        _pair(f"{base}.3", _tlv(0x04, pce_id)),
        _pair(f"{base}.4", _tlv(0x04, fmspc)),
        _pair(f"{base}.5", _tlv(0x0A, bytes([sgx_type]))),
    )
