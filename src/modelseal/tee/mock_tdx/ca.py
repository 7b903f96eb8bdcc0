"""The mock-tdx test PKI: an Intel-DCAP-shaped CA hierarchy and its collateral.

Layout mirrors Intel's: a self-signed root; a "PCK Platform CA" under it that issues the
platform's PCK leaf (with the SGX extension: FMSPC, CPUSVN, PCESVN, PPID); a "TCB Signing"
certificate under the root that signs TCB info and QE identity; a root CRL (covers the
intermediates) and a PCK CRL (covers PCK leaves). The quoting enclave's attestation key is
certified by a QE report the PCK key signs. dcap-qvl verifies all of it against the root
given with ``verify_with_root_ca`` — so CI exercises the whole DCAP path without hardware.

Directory (created on demand, private keys 0600, directory 0700)::

    root-ca.pem  root-ca.key  pck-ca.pem  pck-ca.key  pck.pem  pck.key
    tcb-signing.pem  tcb-signing.key  attestation.key  platform.json  collateral.json

The root is a TEST root: a KBS trusts it only when ``--mock-tdx-root root-ca.pem`` is
given explicitly. Never use it for anything real.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelseal.crypto.x509_test_ca import (
    P256Key,
    cert_pem,
    issue_certificate,
    issue_crl,
    load_certificate,
)
from modelseal.errors import ConfigError
from modelseal.tee.mock_tdx.pck_extension import SGX_EXTENSION_OID, sgx_extension

MOCK_FMSPC = "feedfacecafe"
#: TEE_TCB_SVN of an up-to-date mock TD (byte 0 = TDX module SVN, byte 1 = module version)
UP_TO_DATE_TEE_TCB_SVN = bytes([3, 1, 2]) + bytes(13)
#: ... and of an out-of-date one (matches only the OutOfDate TCB level)
OUT_OF_DATE_TEE_TCB_SVN = bytes([2, 1, 1]) + bytes(13)
MOCK_ADVISORIES = ["MOCK-SA-00001", "MOCK-SA-00002"]
QE_MRSIGNER = bytes.fromhex("6d6f64656c7365616c206d6f636b2d7464782071756f74696e6720656e636c61")
QE_ISVPRODID = 2
QE_ISVSVN = 4
QE_ATTRIBUTES = bytes([0x11]) + bytes(15)
COLLATERAL_DAYS = 365

_FILES = ("root-ca", "pck-ca", "pck", "tcb-signing")


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(int(ts), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _dt(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(int(ts), dt.UTC)


def _components(svns: bytes) -> list[dict[str, int]]:
    return [{"svn": b} for b in svns]


@dataclass
class MockTdxCA:
    """Loaded CA material; create with :meth:`create`, open with :meth:`load`."""

    directory: Path
    keys: dict[str, P256Key]
    certs: dict[str, Any]
    attestation_key: P256Key
    platform: dict[str, Any]
    #: the QE certification data every quote of this platform carries, once built
    #: (:func:`~modelseal.tee.mock_tdx.quote_builder.build_quote`)
    qe_certification: bytes | None = field(default=None, init=False, repr=False, compare=False)

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def create(
        cls, directory: str | Path, *, now: float | None = None, root_crl_url: str | None = None
    ) -> MockTdxCA:
        """Mint a fresh test PKI in ``directory`` (must not already hold one).

        ``root_crl_url`` puts a CRL distribution point into the root certificate, as
        Intel's root has (collateral clients fetch the root CRL from there).
        """
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path, 0o700)
        if (path / "root-ca.pem").exists():
            raise ConfigError(f"{path} already holds a mock-tdx CA")
        created = time.time() if now is None else now
        nb, na = _dt(created - 86400), _dt(created + 10 * 365 * 86400)
        keys = {name: P256Key.generate() for name in _FILES}
        certs: dict[str, Any] = {}
        certs["root-ca"] = issue_certificate(
            subject_cn="modelseal mock-tdx Root CA (TEST ONLY)",
            subject_key=keys["root-ca"],
            issuer_key=keys["root-ca"],
            issuer_cert=None,
            serial=secrets.randbits(63) | 1,
            not_before=nb,
            not_after=na,
            ca=True,
            crl_url=root_crl_url,
        )
        certs["pck-ca"] = issue_certificate(
            subject_cn="modelseal mock-tdx PCK Platform CA",
            subject_key=keys["pck-ca"],
            issuer_key=keys["root-ca"],
            issuer_cert=certs["root-ca"],
            serial=secrets.randbits(63) | 1,
            not_before=nb,
            not_after=na,
            ca=True,
            path_length=0,
        )
        certs["tcb-signing"] = issue_certificate(
            subject_cn="modelseal mock-tdx TCB Signing",
            subject_key=keys["tcb-signing"],
            issuer_key=keys["root-ca"],
            issuer_cert=certs["root-ca"],
            serial=secrets.randbits(63) | 1,
            not_before=nb,
            not_after=na,
            ca=False,
        )
        platform: dict[str, Any] = {
            "fmspc": MOCK_FMSPC,
            "ppid": secrets.token_hex(16),
            "cpu_svn": bytes([3, 3, 2, 2, 4, 1, 0, 5] + [0] * 8).hex(),
            "pce_svn": 11,
            "pce_id": "0000",
            "pck_serial": secrets.randbits(63) | 1,
            "created": int(created),
        }
        certs["pck"] = issue_certificate(
            subject_cn="modelseal mock-tdx PCK Certificate",
            subject_key=keys["pck"],
            issuer_key=keys["pck-ca"],
            issuer_cert=certs["pck-ca"],
            serial=platform["pck_serial"],
            not_before=nb,
            not_after=na,
            ca=False,
            extra_extensions=[
                (
                    SGX_EXTENSION_OID,
                    sgx_extension(
                        ppid=bytes.fromhex(platform["ppid"]),
                        cpu_svn=bytes.fromhex(platform["cpu_svn"]),
                        pce_svn=platform["pce_svn"],
                        pce_id=bytes.fromhex(platform["pce_id"]),
                        fmspc=bytes.fromhex(platform["fmspc"]),
                    ),
                )
            ],
        )
        for name in _FILES:
            keys[name].write(path / f"{name}.key")
            (path / f"{name}.pem").write_bytes(cert_pem(certs[name]))
        ak = P256Key.generate()
        ak.write(path / "attestation.key")
        (path / "platform.json").write_text(json.dumps(platform, indent=2), encoding="utf-8")
        ca = cls(path, keys, certs, ak, platform)
        ca.write_collateral(now=created)
        return ca

    @classmethod
    def load(cls, directory: str | Path) -> MockTdxCA:
        path = Path(directory)
        try:
            keys = {n: P256Key.from_pem((path / f"{n}.key").read_bytes()) for n in _FILES}
            certs = {n: load_certificate((path / f"{n}.pem").read_bytes()) for n in _FILES}
            ak = P256Key.from_pem((path / "attestation.key").read_bytes())
            platform = json.loads((path / "platform.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path} does not hold a complete mock-tdx CA: {exc}") from exc
        return cls(path, keys, certs, ak, platform)

    @classmethod
    def load_or_create(cls, directory: str | Path) -> MockTdxCA:
        path = Path(directory)
        if (path / "root-ca.pem").exists():
            return cls.load(path)
        return cls.create(path)

    # ------------------------------------------------------------------ material
    @property
    def root_pem_path(self) -> Path:
        return self.directory / "root-ca.pem"

    @property
    def collateral_path(self) -> Path:
        return self.directory / "collateral.json"

    def pck_chain_pem(self) -> bytes:
        """PCK leaf, PCK CA, root — as a quote's type-5 certification data carries it."""
        return b"".join(cert_pem(self.certs[n]) for n in ("pck", "pck-ca", "root-ca"))

    # ------------------------------------------------------------------ collateral
    def tcb_info(self, issued: float, next_update: float) -> dict[str, Any]:
        cpu = bytes.fromhex(self.platform["cpu_svn"])
        return {
            "id": "TDX",
            "version": 3,
            "issueDate": _iso(issued),
            "nextUpdate": _iso(next_update),
            "fmspc": self.platform["fmspc"].upper(),
            "pceId": self.platform["pce_id"],
            "tcbType": 0,
            "tcbEvaluationDataNumber": 1,
            "tdxModule": {
                "mrsigner": "00" * 48,
                "attributes": "0000000000000000",
                "attributesMask": "FFFFFFFFFFFFFFFF",
            },
            "tdxModuleIdentities": [
                {
                    "id": "TDX_01",
                    "mrsigner": "00" * 48,
                    "attributes": "0000000000000000",
                    "attributesMask": "FFFFFFFFFFFFFFFF",
                    "tcbLevels": [
                        {
                            "tcb": {"isvsvn": 3},
                            "tcbDate": "2025-01-01T00:00:00Z",
                            "tcbStatus": "UpToDate",
                        },
                        {
                            "tcb": {"isvsvn": 0},
                            "tcbDate": "2024-01-01T00:00:00Z",
                            "tcbStatus": "OutOfDate",
                            "advisoryIDs": MOCK_ADVISORIES,
                        },
                    ],
                }
            ],
            "tcbLevels": [
                {
                    "tcb": {
                        "sgxtcbcomponents": _components(cpu),
                        "pcesvn": self.platform["pce_svn"],
                        "tdxtcbcomponents": _components(UP_TO_DATE_TEE_TCB_SVN),
                    },
                    "tcbDate": "2025-01-01T00:00:00Z",
                    "tcbStatus": "UpToDate",
                },
                {
                    "tcb": {
                        "sgxtcbcomponents": _components(bytes(16)),
                        "pcesvn": 0,
                        "tdxtcbcomponents": _components(bytes([0, 1]) + bytes(14)),
                    },
                    "tcbDate": "2024-01-01T00:00:00Z",
                    "tcbStatus": "OutOfDate",
                    "advisoryIDs": MOCK_ADVISORIES,
                },
            ],
        }

    def qe_identity(self, issued: float, next_update: float) -> dict[str, Any]:
        return {
            "id": "TD_QE",
            "version": 2,
            "issueDate": _iso(issued),
            "nextUpdate": _iso(next_update),
            "tcbEvaluationDataNumber": 1,
            "miscselect": "00000000",
            "miscselectMask": "FFFFFFFF",
            "attributes": QE_ATTRIBUTES.hex().upper(),
            "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
            "mrsigner": QE_MRSIGNER.hex().upper(),
            "isvprodid": QE_ISVPRODID,
            "tcbLevels": [
                {
                    "tcb": {"isvsvn": QE_ISVSVN},
                    "tcbDate": "2025-01-01T00:00:00Z",
                    "tcbStatus": "UpToDate",
                }
            ],
        }

    def collateral(
        self,
        *,
        issued: float,
        next_update: float,
        revoke_pck: bool = False,
        revoke_pck_ca: bool = False,
    ) -> dict[str, Any]:
        """A complete dcap-qvl collateral set valid in [issued, next_update)."""
        tcb = json.dumps(self.tcb_info(issued, next_update), separators=(",", ":"))
        qe = json.dumps(self.qe_identity(issued, next_update), separators=(",", ":"))
        signer = self.keys["tcb-signing"]
        root_chain = cert_pem(self.certs["root-ca"]).decode()
        tcb_chain = cert_pem(self.certs["tcb-signing"]).decode() + root_chain
        root_crl = issue_crl(
            issuer_key=self.keys["root-ca"],
            issuer_cert=self.certs["root-ca"],
            revoked_serials=[self.certs["pck-ca"].serial_number] if revoke_pck_ca else [],
            this_update=_dt(issued),
            next_update=_dt(next_update),
        )
        pck_crl = issue_crl(
            issuer_key=self.keys["pck-ca"],
            issuer_cert=self.certs["pck-ca"],
            revoked_serials=[self.platform["pck_serial"]] if revoke_pck else [],
            this_update=_dt(issued),
            next_update=_dt(next_update),
        )
        return {
            "pck_crl_issuer_chain": cert_pem(self.certs["pck-ca"]).decode() + root_chain,
            "root_ca_crl": root_crl.hex(),
            "pck_crl": pck_crl.hex(),
            "tcb_info_issuer_chain": tcb_chain,
            "tcb_info": tcb,
            "tcb_info_signature": signer.sign_raw(tcb.encode()).hex(),
            "qe_identity_issuer_chain": tcb_chain,
            "qe_identity": qe,
            "qe_identity_signature": signer.sign_raw(qe.encode()).hex(),
        }

    def write_collateral(
        self, *, now: float | None = None, days: int = COLLATERAL_DAYS, **options: bool
    ) -> Path:
        """(Re)write ``collateral.json``: issued an hour before ``now``, valid ``days``."""
        start = (time.time() if now is None else now) - 3600
        doc = self.collateral(issued=start, next_update=start + days * 86400, **options)
        tmp = self.collateral_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1), encoding="utf-8")
        tmp.replace(self.collateral_path)
        return self.collateral_path
