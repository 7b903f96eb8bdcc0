"""A test GPU: Hopper reports in the real layout, for any nonce, signed by a test device CA.

The real H100 reports carry fixed nonces, so a live session (fresh nonce) needs reports
made here: the real sample report with its request nonce replaced, its FWID replaced by
the test leaf's, optionally a measurement changed, re-signed (ECDSA P-384 over everything
before the signature) by a leaf certificate under a test root that a verifier trusts
through ``--nvidia-device-root``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import struct
from pathlib import Path

from modelseal.crypto.x509_pem import cert_pem, load_certificate
from modelseal.crypto.x509_test_ca import P384Key, issue_certificate
from modelseal.tee.nvidia.certs import DICE_TCB_INFO
from modelseal.tee.nvidia.report import REQUEST_SIZE, parse_report
from tests.unit.tee.nvidia.conftest import SAMPLE


class MockGpu:
    """A test device CA and one GPU leaf; :meth:`report` makes signed reports."""

    def __init__(self) -> None:
        self.fwid = os.urandom(48)
        self.root_key, self.leaf_key = P384Key.generate(), P384Key.generate()
        start = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
        end = start + dt.timedelta(days=3650)
        self.root = issue_certificate(
            subject_cn="test GPU device root",
            subject_key=self.root_key,
            issuer_key=self.root_key,
            issuer_cert=None,
            serial=1,
            not_before=start,
            not_after=end,
            ca=True,
        )
        # a DICE TcbInfo whose value ends with the FWID as an OCTET STRING, as NVIDIA's does
        tcb_info = b"\x30\x34\xa6\x32\x30\x30\x04\x30" + self.fwid
        self.leaf = issue_certificate(
            subject_cn="test GPU FMC LF",
            subject_key=self.leaf_key,
            issuer_key=self.root_key,
            issuer_cert=self.root,
            serial=2,
            not_before=start,
            not_after=end,
            ca=False,
            extra_extensions=[(DICE_TCB_INFO.dotted_string, tcb_info)],
        )

    @property
    def chain_pem(self) -> bytes:
        return cert_pem(self.leaf) + cert_pem(self.root)

    def save(self, path: Path) -> Path:
        """This GPU's keys, certificates and FWID as JSON, for :meth:`load` in another
        process (a loader run as a subprocess with a fake NVML)."""
        path.write_text(
            json.dumps(
                {
                    "fwid": self.fwid.hex(),
                    "root_key": self.root_key.private_pem().decode(),
                    "leaf_key": self.leaf_key.private_pem().decode(),
                    "root": cert_pem(self.root).decode(),
                    "leaf": cert_pem(self.leaf).decode(),
                }
            )
        )
        return path

    @classmethod
    def load(cls, path: Path) -> MockGpu:
        """The GPU :meth:`save` wrote: the same device, signing under the same root."""
        saved = json.loads(path.read_text())
        gpu = cls.__new__(cls)
        gpu.fwid = bytes.fromhex(saved["fwid"])
        gpu.root_key = P384Key.from_pem(saved["root_key"].encode())
        gpu.leaf_key = P384Key.from_pem(saved["leaf_key"].encode())
        gpu.root = load_certificate(saved["root"].encode())
        gpu.leaf = load_certificate(saved["leaf"].encode())
        return gpu

    def write_root(self, path: Path) -> Path:
        path.write_bytes(cert_pem(self.root))
        return path

    def report(self, nonce: bytes, *, measurements: dict[int, bytes] | None = None) -> bytes:
        """The sample report for ``nonce`` (first 32 bytes), with ``measurements``
        (block index -> value of the same length) replaced, signed by the test leaf."""
        raw = bytearray(SAMPLE.report)
        raw[4 : 4 + 32] = nonce[:32].ljust(32, b"\x00")
        parsed = parse_report(SAMPLE.report)
        offset = REQUEST_SIZE + 8
        for block in parsed.blocks:
            size = struct.unpack_from("<H", raw, offset + 2)[0]
            if measurements and block.index in measurements:
                value = measurements[block.index]
                assert len(value) == len(block.value)
                raw[offset + 7 : offset + 7 + len(value)] = value
            offset += 4 + size
        old_fwid = parsed.fwid
        assert old_fwid is not None
        signed = bytes(raw[: len(parsed.signed_bytes)]).replace(old_fwid, self.fwid)
        return signed + self.leaf_key.sign_raw(signed)
