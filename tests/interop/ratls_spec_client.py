"""An attested-TLS verifier written from docs/reference/ratls.md alone.

It imports nothing from modelseal: it is what a TNG, rats-rs or Trustee user would write
from the normative page, so that a gap in the page shows up as a test that cannot pass
without reading the implementation. It connects with pyOpenSSL (Python's ``ssl`` has no
RFC 5705 exporter), reads the ``tcg-dice-tagged-evidence`` extension, checks the claims
buffer's key binding and the quote's report-data binding, parses the TDX quote (header,
TD report, ECDSA signature data with the PCK chain) and verifies its signatures up to a
root certificate the caller trusts, then fetches fresh evidence on the same connection and
checks its nonce and ``tls-exporter`` bindings.
"""

# ruff: noqa: TID251 - an independent verifier uses the primitives directly

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import itertools
import json
import secrets
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from OpenSSL import SSL

EVIDENCE_OID = x509.ObjectIdentifier("2.23.133.5.4.9")
TAG_INTEL_QUOTE = 0x1A7501
TAG_ENVELOPE = 0x6D736C01
MAX_EVIDENCE = 1 << 20
MAX_CLAIMS = 16
MAX_MODELS = 64
MAX_MODEL_CHARS = 128
MAX_WINDOW = 24 * 3600
CLOCK_SKEW = 60
HASH_ALGS = {1: hashlib.sha256, 7: hashlib.sha384, 8: hashlib.sha512}
EXPORTER_LABEL = b"EXPORTER-Channel-Binding"
WELL_KNOWN = "/.well-known/modelseal-attestation"

# Intel TDX quote layout (Intel TDX DCAP Quoting Library API, quote format v4/v5)
HEADER_LEN = 48
TD_REPORT_10_LEN = 584
TD_REPORT_15_LEN = 648
TEE_TYPE_TDX = 0x81
ATT_KEY_ECDSA_P256 = 2
QE_REPORT_LEN = 384
CERT_TYPE_QE_REPORT = 6
CERT_TYPE_PCK_CHAIN = 5


class RefusedError(Exception):
    """The gateway's evidence does not verify; the message says which check failed."""


@dataclass
class TdReport:
    """The fields of a TDX TD report (quote body) a policy reads."""

    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmr: list[bytes]
    report_data: bytes


@dataclass
class Quote:
    """A parsed TDX ECDSA quote."""

    version: int
    signed: bytes  # header and body: what the attestation key signed
    report: TdReport
    signature: bytes  # r || s
    attestation_key: bytes  # x || y
    qe_report: bytes
    qe_report_signature: bytes
    qe_auth_data: bytes
    pck_chain: list[x509.Certificate]


@dataclass
class Claims:
    """The claims buffer, decoded; ``raw`` is what the report data hashes."""

    raw: bytes
    values: dict[str, bytes]
    iat: int
    exp: int
    models: list[str]


@dataclass
class Verified:
    """What one evidence buffer proved."""

    tag: int
    claims: Claims
    quote: Quote


@dataclass
class Result:
    """The certificate's evidence and, if fetched, the fresh evidence of one connection."""

    certificate: Verified
    fresh: Verified | None = None
    exporter: bytes = b""


def _decode_cbor(data: bytes, what: str) -> Any:
    """One definite-length CBOR item, no duplicate map keys, no trailing bytes."""
    fp = io.BytesIO(data)
    decoder = cbor2.CBORDecoder(
        fp, read_size=1, allow_indefinite=False, allow_duplicate_keys=False, max_depth=8
    )
    try:
        item = decoder.decode()
    except (cbor2.CBORDecodeError, ValueError) as exc:
        raise RefusedError(f"{what}: not well-formed CBOR ({exc})") from None
    if fp.tell() != len(data):
        raise RefusedError(f"{what}: trailing bytes after the CBOR item")
    return item


def decode_evidence_buffer(data: bytes) -> tuple[int, bytes, bytes]:
    """``#6.<tag>([evidence: bstr, claims-buffer: bstr])`` -> (tag, evidence, claims)."""
    if len(data) > MAX_EVIDENCE:
        raise RefusedError("evidence buffer over 1 MiB")
    item = _decode_cbor(data, "evidence buffer")
    if not isinstance(item, cbor2.CBORTag) or item.tag not in (TAG_INTEL_QUOTE, TAG_ENVELOPE):
        raise RefusedError("evidence buffer: not one of the documented tags")
    value = item.value
    if not (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, bytes) for v in value)
    ):
        raise RefusedError("evidence buffer: not [bstr, bstr]")
    return item.tag, value[0], value[1]


def decode_claims(raw: bytes, *, now: float, max_age: float | None = None) -> Claims:
    """Decode and bound the claims buffer (section 2) and check its time window (step 5)."""
    values = _decode_cbor(raw, "claims buffer")
    if not isinstance(values, dict) or len(values) > MAX_CLAIMS:
        raise RefusedError("claims buffer: not a map of at most 16 claims")
    for key, value in values.items():
        if not isinstance(key, str) or not isinstance(value, bytes):
            raise RefusedError("claims buffer: a key is not text or a value not a byte string")
    for name in ("pubkey-hash", "modelseal-iat", "modelseal-exp", "modelseal-models"):
        if name not in values:
            raise RefusedError(f"claims buffer: no {name}")
    times = []
    for name in ("modelseal-iat", "modelseal-exp"):
        if len(values[name]) != 8:
            raise RefusedError(f"{name}: not 8 bytes")
        times.append(int.from_bytes(values[name], "big"))
    iat, exp = times
    if not (iat <= now + CLOCK_SKEW and now < exp and exp - iat <= MAX_WINDOW and iat < exp):
        raise RefusedError("evidence outside its validity window")
    if max_age is not None and now - iat > max_age:
        raise RefusedError("evidence older than max_age")
    models = _decode_cbor(values["modelseal-models"], "modelseal-models")
    if (
        not isinstance(models, (list, tuple))
        or len(models) > MAX_MODELS
        or not all(isinstance(m, str) and len(m) <= MAX_MODEL_CHARS for m in models)
    ):
        raise RefusedError("modelseal-models: not a list of at most 64 short strings")
    models = list(models)
    if models != sorted(set(models)):
        raise RefusedError("modelseal-models: not sorted and unique")
    return Claims(raw=raw, values=values, iat=iat, exp=exp, models=models)


def check_pubkey_hash(claims: Claims, certificate: x509.Certificate) -> None:
    """Step 3: ``pubkey-hash`` is ``[alg, hash]`` over the certificate's DER SPKI."""
    entry = _decode_cbor(claims.values["pubkey-hash"], "pubkey-hash")
    if not (
        isinstance(entry, (list, tuple))
        and len(entry) == 2
        and isinstance(entry[0], int)
        and isinstance(entry[1], bytes)
    ):
        raise RefusedError("pubkey-hash: not [int, bstr]")
    alg = HASH_ALGS.get(entry[0])
    if alg is None:
        raise RefusedError("pubkey-hash: unknown hash algorithm")
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if not hmac.compare_digest(alg(spki).digest(), entry[1]):
        raise RefusedError("pubkey-hash does not match the certificate's key")


def _take(data: bytes, offset: int, size: int) -> tuple[bytes, int]:
    if offset + size > len(data):
        raise RefusedError("quote: truncated")
    return data[offset : offset + size], offset + size


def _certification_data(data: bytes, offset: int, kind: int, what: str) -> tuple[bytes, int]:
    """Certification data: type (u16 LE), size (u32 LE), that many bytes."""
    head, offset = _take(data, offset, 6)
    cert_type, cert_size = struct.unpack("<HI", head)
    if cert_type != kind:
        raise RefusedError(f"quote: certification data is not {what}")
    return _take(data, offset, cert_size)


def parse_td_report(body: bytes) -> TdReport:
    """The TD report (TDX 1.0 layout; a TDX 1.5 body has 64 more bytes at its end)."""
    sizes = [16, 48, 48, 8, 8, 8, 48, 48, 48, 48, 48, 48, 48, 48, 64]
    fields = []
    offset = 0
    for size in sizes:
        value, offset = _take(body, offset, size)
        fields.append(value)
    return TdReport(*fields[:10], rtmr=fields[10:14], report_data=fields[14])


def parse_quote(data: bytes) -> Quote:
    """A TDX ECDSA-P256 quote, v4 or v5, with QE report certification data and PCK chain."""
    header, offset = _take(data, 0, HEADER_LEN)
    version, att_key_type, tee_type = struct.unpack_from("<HHI", header)
    if version not in (4, 5) or att_key_type != ATT_KEY_ECDSA_P256 or tee_type != TEE_TYPE_TDX:
        raise RefusedError(f"quote: not a TDX ECDSA quote (v{version}, tee {tee_type:#x})")
    if version == 4:
        body, offset = _take(data, offset, TD_REPORT_10_LEN)
    else:
        head, offset = _take(data, offset, 6)
        body_type, body_size = struct.unpack("<HI", head)
        if (body_type, body_size) not in ((2, TD_REPORT_10_LEN), (3, TD_REPORT_15_LEN)):
            raise RefusedError("quote: unknown v5 body")
        body, offset = _take(data, offset, body_size)
    signed = data[:offset]
    size_bytes, offset = _take(data, offset, 4)
    (sig_len,) = struct.unpack("<I", size_bytes)
    sig_data, end = _take(data, offset, sig_len)
    if end != len(data):
        raise RefusedError("quote: trailing bytes after the signature data")
    signature, o = _take(sig_data, 0, 64)
    attestation_key, o = _take(sig_data, o, 64)
    qe_data, o = _certification_data(sig_data, o, CERT_TYPE_QE_REPORT, "a QE report")
    if o != len(sig_data):
        raise RefusedError("quote: trailing bytes in the signature data")
    qe_report, q = _take(qe_data, 0, QE_REPORT_LEN)
    qe_report_signature, q = _take(qe_data, q, 64)
    auth_size, q = _take(qe_data, q, 2)
    qe_auth_data, q = _take(qe_data, q, struct.unpack("<H", auth_size)[0])
    chain_pem, q = _certification_data(qe_data, q, CERT_TYPE_PCK_CHAIN, "a PCK chain")
    if q != len(qe_data):
        raise RefusedError("quote: trailing bytes in the QE certification data")
    try:
        chain = x509.load_pem_x509_certificates(chain_pem.rstrip(b"\0"))
    except ValueError:
        raise RefusedError("quote: PCK chain is not PEM") from None
    return Quote(
        version=version,
        signed=signed,
        report=parse_td_report(body),
        signature=signature,
        attestation_key=attestation_key,
        qe_report=qe_report,
        qe_report_signature=qe_report_signature,
        qe_auth_data=qe_auth_data,
        pck_chain=chain,
    )


def _ecdsa_verify(key: ec.EllipticCurvePublicKey, raw_sig: bytes, message: bytes) -> None:
    r = int.from_bytes(raw_sig[:32], "big")
    s = int.from_bytes(raw_sig[32:], "big")
    key.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))


def _check_chain(chain: list[x509.Certificate], root: x509.Certificate, now: float) -> None:
    """Each certificate signed by the next, the last one ``root`` itself, all valid now."""
    der = serialization.Encoding.DER
    if len(chain) < 2 or chain[-1].public_bytes(der) != root.public_bytes(der):
        raise RefusedError("quote: certificate chain does not end at the trusted root")
    for cert, issuer in itertools.pairwise(chain):
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            raise RefusedError("quote: certificate chain signature does not verify") from None
    for cert in chain:
        valid = cert.not_valid_before_utc.timestamp() <= now <= cert.not_valid_after_utc.timestamp()
        if not valid:
            raise RefusedError("quote: a chain certificate is not valid now")


def verify_quote_signatures(quote: Quote, root: x509.Certificate, *, now: float) -> None:
    """DCAP's signature checks: PCK chain to ``root``, QE report, key binding, quote.

    The collateral's identities are :func:`verify_identities`.
    """
    chain = quote.pck_chain
    _check_chain(chain, root, now)
    pck_key = chain[0].public_key()
    if not isinstance(pck_key, ec.EllipticCurvePublicKey):
        raise RefusedError("quote: PCK key is not ECDSA")
    try:
        _ecdsa_verify(pck_key, quote.qe_report_signature, quote.qe_report)
    except InvalidSignature:
        raise RefusedError("quote: QE report signature does not verify") from None
    qe_report_data = quote.qe_report[320:384]
    expected = hashlib.sha256(quote.attestation_key + quote.qe_auth_data).digest() + bytes(32)
    if not hmac.compare_digest(qe_report_data, expected):
        raise RefusedError("quote: QE report does not bind the attestation key")
    try:
        att_key = ec.EllipticCurvePublicKey.from_encoded_point(
            ec.SECP256R1(), b"\x04" + quote.attestation_key
        )
        _ecdsa_verify(att_key, quote.signature, quote.signed)
    except (ValueError, InvalidSignature):
        raise RefusedError("quote: signature does not verify") from None


def _signed_json(
    text: str, signature_hex: str, issuer_chain_pem: str, root: x509.Certificate, now: float
) -> dict[str, Any]:
    """Intel PCS JSON: ``r || s`` (hex) over the exact text, by the first certificate of a
    chain that ends at ``root``."""
    chain = x509.load_pem_x509_certificates(issuer_chain_pem.encode())
    _check_chain(chain, root, now)
    signer = chain[0].public_key()
    if not isinstance(signer, ec.EllipticCurvePublicKey):
        raise RefusedError("collateral: signer key is not ECDSA")
    try:
        _ecdsa_verify(signer, bytes.fromhex(signature_hex), text.encode())
    except (ValueError, InvalidSignature):
        raise RefusedError("collateral: signature does not verify") from None
    value: dict[str, Any] = json.loads(text)
    return value


def _masked_equal(found: bytes, expected_hex: str, mask_hex: str) -> bool:
    expected, mask = bytes.fromhex(expected_hex), bytes.fromhex(mask_hex)
    return len(found) == len(expected) == len(mask) and all(
        f & m == e & m for f, e, m in zip(found, expected, mask, strict=True)
    )


def verify_identities(
    quote: Quote, collateral: dict[str, str], root: x509.Certificate, *, now: float
) -> None:
    """The QE and TDX module identities of DCAP collateral (dcap-qvl's JSON shape).

    The QE report must come from the enclave the QE identity names (MRSIGNER, ISVPRODID,
    masked MISCSELECT and ATTRIBUTES, an ISVSVN of an ``UpToDate`` level) and the TD's SEAM
    module from the signer the TCB info names (MRSIGNERSEAM, masked SEAMATTRIBUTES). The
    platform's TCB level (SGX components and PCE SVN from the PCK certificate's extension,
    TDX components from ``tee_tcb_svn``) is not evaluated here.
    """
    qe = _signed_json(
        collateral["qe_identity"],
        collateral["qe_identity_signature"],
        collateral["qe_identity_issuer_chain"],
        root,
        now,
    )
    tcb = _signed_json(
        collateral["tcb_info"],
        collateral["tcb_info_signature"],
        collateral["tcb_info_issuer_chain"],
        root,
        now,
    )
    report = quote.qe_report
    miscselect, attributes, mrsigner = report[16:20], report[48:64], report[128:160]
    isvprodid, isvsvn = struct.unpack_from("<HH", report, 256)
    if (
        qe.get("id") != "TD_QE"
        or not hmac.compare_digest(mrsigner, bytes.fromhex(qe["mrsigner"]))
        or isvprodid != qe["isvprodid"]
        or not _masked_equal(miscselect, qe["miscselect"], qe["miscselectMask"])
        or not _masked_equal(attributes, qe["attributes"], qe["attributesMask"])
    ):
        raise RefusedError("quote: the QE is not the one the QE identity names")
    up_to_date = [lv["tcb"]["isvsvn"] for lv in qe["tcbLevels"] if lv["tcbStatus"] == "UpToDate"]
    if not any(isvsvn >= level for level in up_to_date):
        raise RefusedError("quote: the QE's ISVSVN is below every UpToDate level")
    module = tcb["tdxModule"]
    if tcb.get("id") != "TDX" or not hmac.compare_digest(
        quote.report.mr_signer_seam, bytes.fromhex(module["mrsigner"])
    ):
        raise RefusedError("quote: the SEAM module's signer is not the one TCB info names")
    if not _masked_equal(
        quote.report.seam_attributes, module["attributes"], module["attributesMask"]
    ):
        raise RefusedError("quote: the SEAM attributes are not the ones TCB info names")


def verify_evidence_buffer(
    data: bytes,
    certificate: x509.Certificate,
    *,
    root: x509.Certificate | None,
    now: float,
    max_age: float | None = None,
) -> Verified:
    """Steps 2, 3, 5 and 6 of section 5 for one evidence buffer."""
    tag, evidence, claims_raw = decode_evidence_buffer(data)
    if tag != TAG_INTEL_QUOTE:
        raise RefusedError("evidence is not a TDX quote")
    claims = decode_claims(claims_raw, now=now, max_age=max_age)
    check_pubkey_hash(claims, certificate)
    quote = parse_quote(evidence)
    expected = hashlib.sha256(claims_raw).digest() + bytes(32)
    if not hmac.compare_digest(quote.report.report_data, expected):
        raise RefusedError("report data is not SHA-256 of the claims buffer")
    if root is not None:
        verify_quote_signatures(quote, root, now=now)
    return Verified(tag=tag, claims=claims, quote=quote)


def verify_fresh(
    data: bytes,
    certificate: x509.Certificate,
    *,
    root: x509.Certificate | None,
    nonce: bytes,
    exporter: bytes,
    now: float,
) -> Verified:
    """Fresh evidence: all of the certificate's checks, plus step 4's two bindings."""
    verified = verify_evidence_buffer(data, certificate, root=root, now=now)
    if not hmac.compare_digest(verified.claims.values.get("nonce", b""), nonce):
        raise RefusedError("fresh evidence: nonce is not ours")
    if not hmac.compare_digest(verified.claims.values.get("tls-exporter", b""), exporter):
        raise RefusedError("fresh evidence: tls-exporter is not this connection's")
    return verified


def check_policy(verified: Verified, *, mr_td: bytes, model: str | None) -> None:
    """The part of a client policy this verifier knows: MRTD and one model digest."""
    if not hmac.compare_digest(verified.quote.report.mr_td, mr_td):
        raise RefusedError("mr_td is not the expected one")
    if model is not None and model not in verified.claims.models:
        raise RefusedError("model digest is not among the attested models")


def _read_response(conn: SSL.Connection, deadline: float) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length body (all this endpoint sends)."""
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        if time.monotonic() > deadline or len(buffer) > 65536:
            raise RefusedError("fresh evidence: no response head")
        chunk = conn.recv(65536)
        if not chunk:
            raise RefusedError("fresh evidence: connection closed")
        buffer += chunk
    head, _, body = buffer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" not in headers:
        raise RefusedError("fresh evidence: response without Content-Length")
    length = int(headers["content-length"])
    if length > MAX_EVIDENCE:
        raise RefusedError("fresh evidence over 1 MiB")
    while len(body) < length:
        if time.monotonic() > deadline:
            raise RefusedError("fresh evidence: body timed out")
        chunk = conn.recv(65536)
        if not chunk:
            raise RefusedError("fresh evidence: connection closed mid-body")
        body += chunk
    return status, headers, body[:length]


def get_fresh(
    conn: SSL.Connection, host: str, nonce_query: str, timeout: float = 10.0
) -> tuple[int, dict[str, str], bytes]:
    """Send the well-known request (nonce already encoded) and read the answer."""
    request = (
        f"GET {WELL_KNOWN}?nonce={nonce_query} HTTP/1.1\r\n"
        f"Host: {host}\r\nAccept: application/cbor\r\n\r\n"
    )
    conn.sendall(request.encode("ascii"))
    return _read_response(conn, time.monotonic() + timeout)


def nonce_param(nonce: bytes) -> str:
    """base64url without padding (section 4)."""
    return base64.urlsafe_b64encode(nonce).rstrip(b"=").decode("ascii")


def connect(host: str, port: int, timeout: float = 10.0) -> SSL.Connection:
    """A TLS 1.3 connection that accepts any certificate (trust comes from the evidence)."""
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_verify(SSL.VERIFY_NONE)
    sock = socket.create_connection((host, port), timeout)
    # blocking OpenSSL calls, each bounded by the socket's receive and send timeouts
    sock.setblocking(True)
    bound = struct.pack("ll", int(timeout), 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, bound)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, bound)
    conn = SSL.Connection(ctx, sock)
    conn.set_tlsext_host_name(host.encode("ascii"))
    conn.set_connect_state()
    conn.do_handshake()
    if conn.get_protocol_version_name() != "TLSv1.3":
        raise RefusedError("not TLS 1.3")
    return conn


def peer_evidence(conn: SSL.Connection) -> tuple[x509.Certificate, bytes]:
    """Step 1: the handshake's certificate and its ``tcg-dice-tagged-evidence`` extnValue."""
    peer = conn.get_peer_certificate(as_cryptography=True)
    if peer is None:
        raise RefusedError("no peer certificate")
    try:
        ext = peer.extensions.get_extension_for_oid(EVIDENCE_OID)
    except x509.ExtensionNotFound:
        raise RefusedError("carries no attestation evidence") from None
    if ext.critical or not isinstance(ext.value, x509.UnrecognizedExtension):
        raise RefusedError("evidence extension is critical or not opaque")
    # section 1: a self-signed ECDSA P-256 certificate (rats-rs checks the self-signature)
    key = peer.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise RefusedError("certificate key is not ECDSA P-256")
    try:
        peer.verify_directly_issued_by(peer)
    except (ValueError, TypeError, InvalidSignature):
        raise RefusedError("certificate is not self-signed") from None
    return peer, ext.value.value


def verify_connection(
    conn: SSL.Connection,
    *,
    host: str,
    root: x509.Certificate | None,
    mr_td: bytes,
    model: str | None,
    fresh: bool = True,
    nonce: bytes | None = None,
    expected_nonce: bytes | None = None,
    max_age: float | None = None,
) -> Result:
    """Section 5 on an established connection; ``expected_nonce`` lets a test lie to itself."""
    now = time.time()
    certificate, extension = peer_evidence(conn)
    result = Result(
        certificate=verify_evidence_buffer(
            extension, certificate, root=root, now=now, max_age=max_age
        )
    )
    for name in ("nonce", "tls-exporter"):
        if name in result.certificate.claims.values:
            raise RefusedError(f"certificate evidence carries {name}")
    check_policy(result.certificate, mr_td=mr_td, model=model)
    if not fresh:
        return result
    nonce = secrets.token_bytes(32) if nonce is None else nonce
    expected_nonce = nonce if expected_nonce is None else expected_nonce
    status, headers, body = get_fresh(conn, host, nonce_param(nonce))
    if status != 200 or headers.get("content-type") != "application/cbor":
        raise RefusedError(f"fresh evidence: HTTP {status} {headers.get('content-type')}")
    exporter = conn.export_keying_material(EXPORTER_LABEL, 32)
    verified = verify_fresh(
        body, certificate, root=root, nonce=expected_nonce, exporter=exporter, now=time.time()
    )
    check_policy(verified, mr_td=mr_td, model=model)
    result.fresh = verified
    result.exporter = exporter
    return result
