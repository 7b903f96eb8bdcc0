"""AMD CRLs revoke an ASK/ASVK (or a VEK); forged CRLs are ignored, never trusted.

AMD's ARK private key is of course unavailable, so the chain here is a test PKI with the
same names (ARK-Milan <- SEV-Milan <- SEV-VCEK) patched in as the pinned roots.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509

from modelseal.crypto.x509_test_ca import P256Key, cert_der, issue_certificate, issue_crl
from modelseal.errors import EvidenceError
from modelseal.tee.snp import certs as amd
from modelseal.tee.snp.report import Product

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
ASK_SERIAL = 7


def _pki() -> tuple[P256Key, x509.Certificate, x509.Certificate, x509.Certificate]:
    ark_key, ask_key, vcek_key = P256Key.generate(), P256Key.generate(), P256Key.generate()
    span = {"not_before": NOW - dt.timedelta(days=1), "not_after": NOW + dt.timedelta(days=1)}
    ark = issue_certificate(
        subject_cn="ARK-Milan", subject_key=ark_key, issuer_key=ark_key, issuer_cert=None,
        serial=1, ca=True, **span,
    )  # fmt: skip
    ask = issue_certificate(
        subject_cn="SEV-Milan", subject_key=ask_key, issuer_key=ark_key, issuer_cert=ark,
        serial=ASK_SERIAL, ca=True, **span,
    )  # fmt: skip
    vcek = issue_certificate(
        subject_cn="SEV-VCEK", subject_key=vcek_key, issuer_key=ask_key, issuer_cert=ask,
        serial=3, ca=False, **span,
    )  # fmt: skip
    return ark_key, ark, ask, vcek


def _crl_der(key: P256Key, issuer: x509.Certificate, serials: list[int]) -> bytes:
    return issue_crl(
        issuer_key=key,
        issuer_cert=issuer,
        revoked_serials=serials,
        this_update=NOW - dt.timedelta(hours=1),
        next_update=NOW + dt.timedelta(days=7),
    )


def _crl(
    key: P256Key, issuer: x509.Certificate, serials: list[int]
) -> x509.CertificateRevocationList:
    return amd.load_crl(_crl_der(key, issuer, serials))


def test_revoked_ask_is_rejected(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ark_key, ark, ask, vcek = _pki()
    monkeypatch.setattr(amd, "pinned", lambda product: {"ARK": ark, "ASK": ask, "ASVK": ask})
    vek = amd.classify(vcek)
    assert vek.role == "VCEK"
    assert vek.product is Product.MILAN
    now = NOW.timestamp()
    assert amd.verify_chain(vek, [], Product.MILAN, now) == ["SEV-VCEK", "SEV-Milan", "ARK-Milan"]
    clean = _crl(ark_key, ark, [99])
    assert amd.verify_chain(vek, [], Product.MILAN, now, [clean])[-1] == "ARK-Milan"
    forged = _crl(P256Key.generate(), ark, [ASK_SERIAL])  # right name, wrong key
    assert amd.verify_chain(vek, [], Product.MILAN, now, [forged])[-1] == "ARK-Milan"
    revoked = _crl(ark_key, ark, [ASK_SERIAL])
    with pytest.raises(EvidenceError, match="ASK certificate is revoked"):
        amd.verify_chain(vek, [], Product.MILAN, now, [forged, revoked])
    # A CRL file in --snp-certs is picked up by content, whatever its name.
    (tmp_path / "vcek.bin").write_bytes(cert_der(vcek))
    (tmp_path / "milan.crl").write_bytes(_crl_der(ark_key, ark, [ASK_SERIAL]))
    certs, crls = amd.load_sources(tmp_path)
    assert [c.role for c in certs] == ["VCEK"]
    assert len(crls) == 1
    with pytest.raises(EvidenceError, match="revoked"):
        amd.verify_chain(certs[0], [], Product.MILAN, now, crls)


def test_crl_with_a_malformed_issuer_name_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CRL whose issuer CN is re-tagged as a BIT STRING still loads, but comparing its
    name raised an exception pyca does not document (found by fuzzing): it is ignored, like
    any CRL not provably from the issuer."""
    ark_key, ark, ask, vcek = _pki()
    monkeypatch.setattr(amd, "pinned", lambda product: {"ARK": ark, "ASK": ask, "ASVK": ask})
    der = bytearray(_crl_der(ark_key, ark, [ASK_SERIAL]))
    cn = bytes.fromhex("0603550403") + bytes([0x0C, len("ARK-Milan")])  # OID 2.5.4.3, UTF8String
    der[der.index(cn) + 5] = 0x03
    crl = amd.load_crl(bytes(der))
    vek = amd.classify(vcek)
    assert amd.verify_chain(vek, [], Product.MILAN, NOW.timestamp(), [crl])[-1] == "ARK-Milan"
