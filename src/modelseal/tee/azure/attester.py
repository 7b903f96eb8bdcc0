"""Azure CVM attester core: the HCL report from the vTPM, a vTPM quote, the IMDS calls.

With tpm2-tools as subprocesses (as the ``tpm`` kind's attester), following what
guest-components' Azure attesters do through the TSS:

1. the report data goes into NV index ``0x01400002`` (owner auth; defined as 64 bytes,
   redefined when it exists with another size); the paravisor notices the write and
   regenerates the HCL report with ``user-data`` = those bytes;
2. the HCL report is read from NV index ``0x01400001`` until its ``user-data`` holds the
   report data (polled, instead of guest-components' fixed 3 s sleep) - evidence version 2;
3. ``tpm2_quote`` by the Azure vTPM AK (persistent handle ``0x81000003``) over SHA-256
   PCRs 0..23 with the report data as qualifying data, and ``tpm2_pcrread`` of the same
   PCRs (repeated if the PCRs changed in between);
4. the kind adds its hardware half through the instance metadata service (IMDS): the VCEK
   for SEV-SNP, the TD quote for the TDREPORT in the HCL report for TDX.
"""

from __future__ import annotations

import abc
import hmac
import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

import httpx

from modelseal._internal.bounded import load_json
from modelseal._internal.bounded_http import send
from modelseal.errors import AttestationError, EvidenceError, TransientError, UnsupportedTee
from modelseal.tee.azure.evidence import MAX_QUOTE, build_evidence
from modelseal.tee.azure.hcl import HclReport, parse_hcl_report
from modelseal.tee.base import pad_report_data
from modelseal.tee.tpm.structures import parse_attest, parse_signature, pcr_digest
from modelseal.tee.tpm.tools import Tpm2Tools

HCL_REPORT_INDEX = 0x01400001
REPORT_DATA_INDEX = 0x01400002
AK_HANDLE = 0x81000003
REPORT_DATA_SIZE = 64
DEFAULT_IMDS = "http://169.254.169.254"
PCR_SELECTION = "sha256:" + ",".join(str(i) for i in range(24))
_RETRIES = 3
_POLL = 0.2
#: Largest IMDS answer read (a TD quote with its PCK chain, base64url in JSON).
MAX_IMDS_ANSWER = 2 * MAX_QUOTE
_NV_SIZE = re.compile(rb"^\s*size:\s*(\d+)\s*$", re.MULTILINE)


class VtpmAttester(abc.ABC):
    """Evidence of an Azure CVM; subclasses add the hardware half (:meth:`hardware`)."""

    tee: ClassVar[str]
    #: HCL report type this kind's paravisor writes (2 SNP, 4 TDX)
    report_type: ClassVar[int]

    def __init__(
        self,
        *,
        imds_url: str | None = None,
        tcti: str | None = None,
        refresh_timeout: float = 10.0,
        timeout: float = 30.0,
    ) -> None:
        if shutil.which("tpm2_quote") is None or shutil.which("tpm2_nvread") is None:
            raise UnsupportedTee(f"the {self.tee} attester needs tpm2-tools (tpm2_nvread)")
        self._tools = Tpm2Tools(tcti=tcti, timeout=timeout, what="vTPM")
        self.imds_url = (imds_url or DEFAULT_IMDS).rstrip("/")
        self._refresh_timeout = refresh_timeout
        self._timeout = timeout

    # ------------------------------------------------------------------ tpm2-tools
    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return self._tools.run(*args, check=check)

    def _write_report_data(self, work: Path, data: bytes) -> None:
        index = f"0x{REPORT_DATA_INDEX:08x}"
        probe = self._run("tpm2_nvreadpublic", index, check=False)
        size = _NV_SIZE.search(probe.stdout) if probe.returncode == 0 else None
        if size is not None and int(size.group(1)) != len(data):
            self._run("tpm2_nvundefine", index, "-C", "o")
            size = None
        if size is None:
            self._run(
                "tpm2_nvdefine", index, "-C", "o", "-s", str(len(data)),
                "-a", "ownerread|ownerwrite",
            )  # fmt: skip
        path = work / "report-data.bin"
        path.write_bytes(data)
        self._run("tpm2_nvwrite", index, "-C", "o", "-i", str(path))

    def read_hcl_report(self, work: Path) -> bytes:
        """The raw HCL report from its NV index (owner auth, the whole index)."""
        out = work / "hcl-report.bin"
        self._run("tpm2_nvread", f"0x{HCL_REPORT_INDEX:08x}", "-C", "o", "-o", str(out))
        return out.read_bytes()

    def _fresh_hcl_report(self, work: Path, user_data: bytes) -> HclReport:
        """Write ``user_data`` and wait until the HCL report carries it."""
        self._write_report_data(work, user_data)
        deadline = time.monotonic() + self._refresh_timeout
        while True:
            try:
                report = parse_hcl_report(self.read_hcl_report(work))
            except EvidenceError as exc:
                raise AttestationError(f"the vTPM holds no valid HCL report: {exc}") from exc
            if report.report_type != self.report_type:
                raise UnsupportedTee(f"the HCL report is not of a {self.tee} machine")
            found = report.user_data()
            if found is not None and hmac.compare_digest(found, user_data):
                return report
            if time.monotonic() > deadline:
                raise AttestationError(
                    f"the HCL report did not take the report data within "
                    f"{self._refresh_timeout:g} s (is this an Azure confidential VM?)"
                )
            time.sleep(_POLL)

    def _quote(self, work: Path, nonce: bytes) -> tuple[bytes, bytes, list[bytes]]:
        msg, sig, values = work / "quote.msg", work / "quote.sig", work / "pcrs.bin"
        for _ in range(_RETRIES):
            self._run(
                "tpm2_quote", "-c", f"0x{AK_HANDLE:08x}", "-l", PCR_SELECTION,
                "-q", nonce.hex(), "-m", str(msg), "-s", str(sig), "-g", "sha256",
            )  # fmt: skip
            self._run("tpm2_pcrread", PCR_SELECTION, "-o", str(values), "-Q")
            raw = values.read_bytes()
            if len(raw) != 24 * 32:
                raise AttestationError("tpm2_pcrread returned a partial PCR bank")
            pcrs = [raw[i : i + 32] for i in range(0, len(raw), 32)]
            message = msg.read_bytes()
            if hmac.compare_digest(pcr_digest(pcrs, "sha256"), parse_attest(message).pcr_digest):
                signature = parse_signature(sig.read_bytes())
                if signature.scheme != "rsassa" or signature.hash != "sha256":
                    raise AttestationError("the vTPM AK did not sign with RSASSA-SHA256")
                return message, signature.value, pcrs
        raise AttestationError("PCRs kept changing while quoting; retry later")

    # ------------------------------------------------------------------ IMDS
    def imds(self, method: str, path: str, *, limit: int, json_body: Any = None) -> Any:
        """One IMDS request (``Metadata: true``); the JSON answer, bounded in size/time."""
        what = f"Azure IMDS {path}"
        headers = {"Metadata": "true", "Accept": "application/json"}
        extra: dict[str, Any] = {}
        if json_body is not None:
            headers["Content-Type"] = "application/json"
            extra["content"] = json.dumps(json_body).encode("ascii")
        try:
            with httpx.Client(timeout=self._timeout, follow_redirects=False) as client:
                reply = send(
                    client, method, self.imds_url + path, limit=limit,
                    seconds=self._timeout, what=what, headers=headers, **extra,
                )  # fmt: skip
        except httpx.HTTPError as exc:
            raise TransientError(f"{what}: {type(exc).__name__}") from exc
        if reply.status_code != 200:
            raise AttestationError(f"{what} answered HTTP {reply.status_code}")
        return load_json(reply.content, what=what, max_bytes=limit)

    @abc.abstractmethod
    def hardware(self, hcl: HclReport) -> dict[str, bytes]:
        """The kind's hardware member(s) of the evidence (``vcek`` or ``td_quote``)."""

    # ------------------------------------------------------------------ evidence
    def evidence(self, report_data: bytes) -> Any:
        if not 0 < len(report_data) <= REPORT_DATA_SIZE:
            raise AttestationError(f"{self.tee} report data must be 1..64 bytes")
        with tempfile.TemporaryDirectory(prefix="modelseal-azure-") as tmp:
            work = Path(tmp)
            hcl = self._fresh_hcl_report(work, pad_report_data(report_data, REPORT_DATA_SIZE))
            message, signature, pcrs = self._quote(work, report_data)
        return build_evidence(
            signature=signature,
            message=message,
            pcrs=pcrs,
            hcl_report=hcl.raw,
            **self.hardware(hcl),
        )
