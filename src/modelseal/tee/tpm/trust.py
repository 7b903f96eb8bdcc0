"""Which attestation keys the KBS trusts (``--tpm-trusted-aks``: a file or a directory).

Each file may hold, in any name: PEM/DER public keys, PEM/DER certificates, or a
TPM2B_PUBLIC / TPMT_PUBLIC blob (what ``tpm2_createak -u`` / ``tpm2_readpublic -o`` write).
A key or a non-CA certificate makes that key a trusted AK; a CA certificate
(basicConstraints cA=TRUE) becomes an anchor for AK certificate chains in the evidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm

from modelseal.crypto.tpm_sig import certificate_spki, ecc_spki, normalize_public_key, rsa_spki
from modelseal.crypto.x509_pem import parse_certificates
from modelseal.errors import ConfigError, EvidenceError
from modelseal.tee.tpm.structures import Public, parse_public

MAX_FILE = 1 << 20
MAX_CHAIN = 6


def spki_of_public(public: Public) -> bytes:
    """SPKI DER of a parsed TPMT_PUBLIC."""
    try:
        if public.key_type == "rsa":
            return rsa_spki(public.rsa_n, public.rsa_e)
        return ecc_spki(public.curve, public.ecc_x, public.ecc_y)
    except ValueError as exc:
        raise EvidenceError("TPMT_PUBLIC does not hold a valid public key") from exc


def load_certificate(data: bytes) -> x509.Certificate:
    """One DER certificate from untrusted bytes; ``ValueError`` if it is not one."""
    if b"-----BEGIN" in data:
        raise ValueError("expected a DER certificate")
    return parse_certificates(data)[0]


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return bc.ca


@dataclass
class TrustStore:
    """Trusted AK keys (SPKI DER) and CA anchors for AK certificates."""

    keys: set[bytes] = field(default_factory=set)
    anchors: list[x509.Certificate] = field(default_factory=list)

    def add_blob(self, data: bytes, origin: str) -> None:
        """Add whatever ``data`` holds (see module doc); ``ConfigError`` if nothing usable."""
        if b"-----BEGIN" in data:
            if b"CERTIFICATE-----" in data:
                try:
                    certs = parse_certificates(data)
                except ValueError as exc:
                    raise ConfigError(
                        f"trusted AKs: {origin} holds a malformed certificate"
                    ) from exc
                try:
                    for cert in certs:
                        self.add_certificate(cert)
                except ValueError as exc:
                    msg = f"trusted AKs: {origin} holds a certificate with an unusable key"
                    raise ConfigError(msg) from exc
                return
            try:
                self.keys.add(normalize_public_key(data))
            except ValueError as exc:
                raise ConfigError(f"trusted AKs: {origin} holds no usable PEM key") from exc
            return
        for attempt in (self._der_cert, self._der_key):
            if attempt(data):
                return
        try:
            public = parse_public(data)
        except EvidenceError:
            public = None
        if public is not None:
            # A non-restricted key could sign forged TPMS_ATTEST bytes: refuse it as an AK.
            if not public.is_attestation_key:
                raise ConfigError(
                    f"trusted AKs: {origin} is not a restricted, TPM-resident signing key"
                )
            self.keys.add(spki_of_public(public))
            return
        raise ConfigError(
            f"trusted AKs: {origin} is neither a key, a certificate nor a TPM2B_PUBLIC"
        )

    def add_certificate(self, cert: x509.Certificate) -> None:
        if _is_ca(cert):
            self.anchors.append(cert)
        else:
            self.keys.add(certificate_spki(cert))

    def _der_cert(self, data: bytes) -> bool:
        try:
            self.add_certificate(load_certificate(data))
        except ValueError:
            return False
        return True

    def _der_key(self, data: bytes) -> bool:
        try:
            self.keys.add(normalize_public_key(data))
        except ValueError:
            return False
        return True

    @classmethod
    def load(cls, path: str | Path) -> TrustStore:
        root = Path(path)
        if not root.exists():
            raise ConfigError(f"trusted AKs: {root} does not exist")
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        store = cls()
        for file in files:
            if file.stat().st_size > MAX_FILE:
                raise ConfigError(f"trusted AKs: {file} is too large")
            store.add_blob(file.read_bytes(), str(file))
        if not store.keys and not store.anchors:
            raise ConfigError(f"trusted AKs: {root} holds no key or certificate")
        return store

    def check(self, ak_spki: bytes, chain: Sequence[bytes], now: float) -> str:
        """Why the AK is trusted (``"key"`` or ``"certificate"``); ``EvidenceError`` if not.

        ``chain`` = DER certificates from the evidence, AK certificate first.
        """
        if ak_spki in self.keys:
            return "key"
        if not chain:
            raise EvidenceError("TPM attestation key is not trusted (not a configured AK)")
        if len(chain) > MAX_CHAIN:
            raise EvidenceError("TPM AK certificate chain is too long")
        try:
            certs = [load_certificate(der) for der in chain]
            if certificate_spki(certs[0]) != ak_spki:
                raise EvidenceError("TPM AK certificate does not certify the quoting key")
            moment = datetime.fromtimestamp(now, UTC)
            current = certs[0]
            pool = certs[1:]
            for _ in range(MAX_CHAIN + 1):
                if not current.not_valid_before_utc <= moment <= current.not_valid_after_utc:
                    raise EvidenceError("TPM AK certificate chain is not valid at this time")
                for anchor in self.anchors:
                    if _issued(current, anchor):
                        if not anchor.not_valid_before_utc <= moment <= anchor.not_valid_after_utc:
                            raise EvidenceError("TPM AK trust anchor is not valid at this time")
                        return "certificate"
                parent = next((c for c in pool if _issued(current, c) and _is_ca(c)), None)
                if parent is None:
                    break
                pool.remove(parent)
                current = parent
        except ValueError as exc:
            raise EvidenceError("TPM AK certificate chain is malformed") from exc
        raise EvidenceError("TPM AK certificate does not chain to a trusted CA")


def _issued(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True
