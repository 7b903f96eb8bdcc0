"""Test RIMs: SWID tags in NVIDIA's layout, signed (XML-DSig, via signxml) by a test CA.

No real driver RIM covers the vector reports, so RIM matching is tested with tags made
here from a report's own measurements (or deliberately different ones), signed by a test
root the verifier is configured to trust instead of NVIDIA's pinned RIM root.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from lxml import etree
from signxml.algorithms import SignatureMethod
from signxml.signer import XMLSigner

from modelseal.crypto.x509_pem import cert_pem
from modelseal.crypto.x509_test_ca import P256Key, issue_certificate

SWID_NS = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd"
SHA384_NS = "http://www.w3.org/2001/04/xmlenc#sha384"


@dataclass(frozen=True)
class RimCA:
    """A test RIM root and a leaf signer under it."""

    root: x509.Certificate
    root_key: P256Key
    leaf: x509.Certificate
    leaf_key: P256Key

    @classmethod
    def create(cls, now: float, *, days: int = 30) -> RimCA:
        start = dt.datetime.fromtimestamp(now, dt.UTC) - dt.timedelta(days=1)
        end = start + dt.timedelta(days=days)
        root_key, leaf_key = P256Key.generate(), P256Key.generate()
        root = issue_certificate(
            subject_cn="test RIM root",
            subject_key=root_key,
            issuer_key=root_key,
            issuer_cert=None,
            serial=1,
            not_before=start,
            not_after=end,
            ca=True,
        )
        leaf = issue_certificate(
            subject_cn="test RIM signer",
            subject_key=leaf_key,
            issuer_key=root_key,
            issuer_cert=root,
            serial=2,
            not_before=start,
            not_after=end,
            ca=False,
        )
        return cls(root, root_key, leaf, leaf_key)

    def write_root(self, path: Path) -> Path:
        path.write_bytes(cert_pem(self.root))
        return path

    def sign(
        self, version: str, golden: Mapping[int, bytes], *, inactive: tuple[int, ...] = ()
    ) -> bytes:
        """A signed RIM for ``version`` whose active ``golden`` values are keyed by the
        0-based RIM index (report block index - 1)."""
        root = etree.Element(
            f"{{{SWID_NS}}}SoftwareIdentity",
            nsmap={None: SWID_NS, "ns2": SHA384_NS},
            name="GH100",
            tagId=f"test-{version}",
            version="1.0",
        )
        etree.SubElement(root, f"{{{SWID_NS}}}Entity", name="test", role="tagCreator")
        etree.SubElement(root, f"{{{SWID_NS}}}Meta", colloquialVersion=version.upper())
        payload = etree.SubElement(root, f"{{{SWID_NS}}}Payload")
        for index in sorted({*golden, *inactive}):
            value = golden.get(index, bytes(48))
            etree.SubElement(
                payload,
                f"{{{SWID_NS}}}Resource",
                {
                    "type": "Measurement",
                    "index": str(index),
                    "active": "False" if index in inactive else "True",
                    "alternatives": "1",
                    f"{{{SHA384_NS}}}Hash0": value.hex(),
                    "name": f"Measurement_{index}",
                    "size": str(len(value)),
                },
            )
        signer = XMLSigner(signature_algorithm=SignatureMethod.ECDSA_SHA256)
        signed = signer.sign(
            root,
            key=self.leaf_key.private_key,
            cert=[cert_pem(self.leaf).decode(), cert_pem(self.root).decode()],
        )
        return etree.tostring(signed)
