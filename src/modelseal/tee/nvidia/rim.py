"""Reference integrity manifests (RIMs): NVIDIA's signed SWID tags of golden measurements.

A driver RIM and a VBIOS RIM each list ``Resource`` elements (0-based ``index``,
``active``, ``alternatives`` and ``Hash0..HashN`` SHA-384 values, ``size``) under
``Payload``; ``Meta@colloquialVersion`` names the driver or VBIOS version it describes.
The tag carries an enveloped XML-DSig signature whose ``KeyInfo`` holds the signing chain.

Checks, in order: the signing chain (leaf first, as the tag lists it) validates link by
link to the pinned RIM root at the verification time (see ``certs.verify_links`` for why
not RFC 5280 path validation) (and against the CRL bundle, when given); the
XML-DSig signature verifies under that leaf (``signxml``, only ECDSA/RSA with SHA-2 or
SHA-3); only the elements the signature covers are read. Then each active golden value
must equal the report's measurement at block ``index + 1`` (one of its alternatives, of
the stated size), as NVIDIA's verifier compares them: block 36 (index 35) is skipped when
the report says NVDEC0 is disabled, and an index both RIMs mark active is refused.

RIMs are read from local files only (a directory NVIDIA's RIM service was mirrored into,
or single files): nothing is fetched at verification time.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography import x509

from modelseal.crypto.x509_pem import cert_pem, parse_certificates
from modelseal.errors import ConfigError, EvidenceError
from modelseal.tee.nvidia import certs
from modelseal.tee.nvidia.report import HopperReport

SWID: Final = "{http://standards.iso.org/iso/19770/-2/2015/schema.xsd}"
DSIG: Final = "{http://www.w3.org/2000/09/xmldsig#}"
SHA384_NS: Final = "{http://www.w3.org/2001/04/xmlenc#sha384}"
MAX_RIM_FILE: Final = 2 * 1024 * 1024
MAX_RIM_FILES: Final = 512
MAX_RESOURCES: Final = 256
MAX_ALTERNATIVES: Final = 16
#: measurement index NVIDIA's verifier skips when NVDEC0 is disabled
_NVDEC_INDEX: Final = 35


@dataclass(frozen=True)
class Golden:
    """One active golden measurement of a RIM."""

    index: int
    values: tuple[bytes, ...]
    size: int


@dataclass(frozen=True)
class RimFile:
    """A RIM as found on disk: its bytes and the version it claims (not yet verified)."""

    path: Path
    data: bytes
    version: str


@dataclass(frozen=True)
class VerifiedRim:
    """A RIM whose chain and signature verified: its version and active golden values."""

    path: Path
    version: str
    golden: Mapping[int, Golden]
    signer: str


def _etree() -> Any:
    """``lxml.etree``, or a ``ConfigError`` naming the extra that installs it (RIMs are
    optional: the verifier works without them)."""
    try:
        from lxml import etree
        from signxml import verifier  # noqa: F401 - checked here, used in verify_rim
    except ImportError:
        raise ConfigError(
            "RIM verification needs lxml and signxml: pip install 'modelseal[nvidia]'"
        ) from None
    return etree


def _parser() -> Any:
    etree = _etree()
    return etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, load_dtd=False)


def _version_of(data: bytes) -> str | None:
    """The colloquialVersion a RIM claims, lower-case; None if the file is not a RIM."""
    etree = _etree()

    try:
        root = etree.fromstring(data, parser=_parser())
    except etree.LxmlError:
        return None
    meta = root.find(f"{SWID}Meta")
    if root.tag != f"{SWID}SoftwareIdentity" or meta is None:
        return None
    version = meta.get("colloquialVersion")
    return version.lower() if version else None


def load_rims(path: str | Path) -> list[RimFile]:
    """Every RIM in a file or directory (other files are skipped; a named file that is
    not a RIM is a ``ConfigError``)."""
    root = Path(path)
    if not root.exists():
        raise ConfigError(f"--rim {root} does not exist")
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    if len(files) > MAX_RIM_FILES:
        raise ConfigError(f"--rim {root} holds more than {MAX_RIM_FILES} files")
    found = []
    for file in files:
        if file.stat().st_size > MAX_RIM_FILE:
            continue
        data = file.read_bytes()
        version = _version_of(data)
        if version is not None:
            found.append(RimFile(file, data, version))
        elif not root.is_dir():
            raise ConfigError(f"--rim {root} is not a SWID RIM")
    return found


def _signing_chain(data: bytes) -> list[x509.Certificate]:
    """The X509Certificate elements of the signature's KeyInfo, in document order."""
    etree = _etree()

    try:
        root = etree.fromstring(data, parser=_parser())
    except etree.LxmlError as exc:
        raise EvidenceError("RIM is not well-formed XML") from exc
    out = []
    for element in root.iterfind(
        f"{DSIG}Signature/{DSIG}KeyInfo/{DSIG}X509Data/{DSIG}X509Certificate"
    ):
        try:
            der = base64.b64decode("".join((element.text or "").split()), validate=True)
            out.extend(certs.parsed_names(parse_certificates(der)))
        except (binascii.Error, ValueError) as exc:
            raise EvidenceError("RIM KeyInfo holds a malformed certificate") from exc
        if len(out) > certs.MAX_CHAIN:
            raise EvidenceError("RIM KeyInfo holds too many certificates")
    if not out:
        raise EvidenceError("RIM carries no signing certificate")
    return out


def verify_rim(
    rim: RimFile,
    root: x509.Certificate,
    *,
    now: float,
    revocation: certs.Revocation | None = None,
) -> VerifiedRim:
    """Chain, signature and signed content of one RIM (see the module docstring)."""
    etree = _etree()
    from signxml.exceptions import SignXMLException
    from signxml.verifier import SignatureConfiguration, XMLVerifier

    chain = _signing_chain(rim.data)
    what = f"RIM {rim.path.name} signing chain"
    try:
        verified_chain = certs.verify_links(chain, root, now=now, what=what)
    except (ValueError, TypeError) as exc:  # a name pyca parses lazily, on first access
        raise EvidenceError(f"{what} has a malformed certificate ({str(exc)[:120]})") from None
    if revocation is not None:
        revocation.check(verified_chain, what, now)
    config = SignatureConfiguration(
        verification_time=dt.datetime.fromtimestamp(now, dt.UTC),
        signature_methods=frozenset(
            m for m in SignatureConfiguration().signature_methods if "HMAC" not in m.name
        ),
    )
    try:
        result = XMLVerifier().verify(
            rim.data, x509_cert=cert_pem(verified_chain[0]).decode(), expect_config=config
        )
    except (SignXMLException, etree.LxmlError, ValueError) as exc:
        # LxmlError: also canonicalization failures (C14NError) of a malformed namespace
        raise EvidenceError(
            f"RIM {rim.path.name} signature is invalid ({str(exc)[:120]})"
        ) from None
    if isinstance(result, list):  # only when several signatures were expected
        raise EvidenceError(f"RIM {rim.path.name} carries more than one signature")
    signed = result.signed_xml
    if signed is None or signed.tag != f"{SWID}SoftwareIdentity":
        raise EvidenceError(f"RIM {rim.path.name}: the signature does not cover the tag")
    meta = signed.find(f"{SWID}Meta")
    version = (meta.get("colloquialVersion") if meta is not None else None) or ""
    if version.lower() != rim.version:
        raise EvidenceError(f"RIM {rim.path.name}: its signed version differs")
    return VerifiedRim(
        rim.path, rim.version, _golden(signed, rim.path.name), certs.common_name(chain[0])
    )


def _golden(signed: Any, name: str) -> dict[int, Golden]:
    payload = signed.find(f"{SWID}Payload")
    if payload is None:
        raise EvidenceError(f"RIM {name} has no Payload")
    resources = payload.findall(f"{SWID}Resource")
    if not resources or len(resources) > MAX_RESOURCES:
        raise EvidenceError(f"RIM {name} has no or too many measurements")
    out: dict[int, Golden] = {}
    for resource in resources:
        try:
            index = int(resource.get("index"))
            alternatives = int(resource.get("alternatives"))
            size = int(resource.get("size"))
            if not 0 <= index < 255 or not 1 <= alternatives <= MAX_ALTERNATIVES:
                raise ValueError("out of range")
            values = tuple(
                bytes.fromhex(resource.get(f"{SHA384_NS}Hash{i}")) for i in range(alternatives)
            )
        except (TypeError, ValueError):
            raise EvidenceError(f"RIM {name} has a malformed measurement") from None
        if index in out:
            raise EvidenceError(f"RIM {name} lists measurement index {index} twice")
        if resource.get("active") != "False":
            out[index] = Golden(index, values, size)
    return out


@dataclass(frozen=True)
class RimResult:
    """What the RIMs established: which ones matched, by version."""

    driver: str | None
    vbios: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "driver": "match" if self.driver else "absent",
            "vbios": "match" if self.vbios else "absent",
            "driver_rim": self.driver,
            "vbios_rim": self.vbios,
        }


def compare(report: HopperReport, rims: Sequence[VerifiedRim]) -> None:
    """Every active golden value of ``rims`` must match the report (module docstring)."""
    runtime = report.measurements
    seen: dict[int, str] = {}
    for rim in rims:
        for index, golden in rim.golden.items():
            if index in seen:
                raise EvidenceError(
                    f"RIMs {seen[index]} and {rim.path.name} both measure index {index}"
                )
            seen[index] = rim.path.name
            if index == _NVDEC_INDEX and report.nvdec0_disabled:
                continue
            value = runtime.get(index + 1)
            if value is None or not any(
                len(value) == golden.size and hmac.compare_digest(value, alt)
                for alt in golden.values
            ):
                found = value.hex() if value is not None else "absent"
                raise EvidenceError(
                    f"GPU measurement {index + 1} ({found}) does not match RIM "
                    f"{rim.path.name} (version {rim.version})"
                )


class RimStore:
    """The RIMs of a configured directory, verified on demand for a report's versions."""

    def __init__(
        self,
        rims: Sequence[RimFile],
        root: x509.Certificate,
        revocation: certs.Revocation | None = None,
    ) -> None:
        self._rims = list(rims)
        self._root = root
        self._revocation = revocation

    def check(self, report: HopperReport, now: float) -> RimResult:
        """Verify the RIMs covering the report's driver and VBIOS versions and compare."""
        found: dict[str, VerifiedRim] = {}
        for label, version in (("driver", report.driver_version), ("vbios", report.vbios_version)):
            for rim in self._rims:
                if rim.version == version.lower():
                    found[label] = verify_rim(rim, self._root, now=now, revocation=self._revocation)
                    break
        compare(report, list(found.values()))
        return RimResult(
            driver=found["driver"].path.name if "driver" in found else None,
            vbios=found["vbios"].path.name if "vbios" in found else None,
        )
