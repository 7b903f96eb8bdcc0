"""TPM 2.0 attester: a quote by an attestation key over PCRs, bound to ``report_data``.

Uses tpm2-tools as subprocesses (no TSS build needed inside the TEE image). The AK is a
restricted ECDSA P-256 signing primary key in the owner hierarchy, persisted at
``ak_handle`` (Trustee's default 0x81010002); it is created there on first use when absent
(``provision=True``). Because a primary key is derived from the hierarchy seed, the same
TPM always yields the same AK, which is what operators register as trusted.
The qualifying data is ``report_data`` zero-padded to 64 bytes. The event log
(``/sys/kernel/security/tpm0/binary_bios_measurements``) is attached when readable.
"""

from __future__ import annotations

import hmac
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from modelseal.errors import AttestationError, UnsupportedTee
from modelseal.tee.base import pad_report_data
from modelseal.tee.tpm.evidence import build_evidence
from modelseal.tee.tpm.structures import parse_attest, pcr_digest
from modelseal.tee.tpm.tools import Tpm2Tools

DEFAULT_AK_HANDLE = 0x81010002
DEFAULT_EVENT_LOG = Path("/sys/kernel/security/tpm0/binary_bios_measurements")
NONCE_SIZE = 64
AK_ATTRIBUTES = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign"
_RETRIES = 3


class Attester:
    """TPM evidence (Trustee ``tpm`` shape + AK TPM2B_PUBLIC + event log)."""

    tee: ClassVar[str] = "tpm"

    def __init__(
        self,
        *,
        tcti: str | None = None,
        ak_handle: int = DEFAULT_AK_HANDLE,
        pcrs: Sequence[int] = tuple(range(24)),
        bank: str = "sha256",
        event_log: str | Path | None = DEFAULT_EVENT_LOG,
        provision: bool = True,
        timeout: float = 30.0,
    ) -> None:
        if shutil.which("tpm2_quote") is None:
            raise UnsupportedTee("the TPM attester needs tpm2-tools (tpm2_quote not found)")
        if not pcrs or any(not 0 <= p < 24 for p in pcrs):
            raise UnsupportedTee("TPM PCR selection must name PCRs 0..23")
        if bank not in ("sha1", "sha256", "sha384"):
            raise UnsupportedTee(f"unsupported PCR bank {bank!r}")
        self._tools = Tpm2Tools(tcti=tcti, timeout=timeout, what="TPM")
        self._handle = f"0x{ak_handle:08x}"
        self._selection = f"{bank}:" + ",".join(str(p) for p in sorted(set(pcrs)))
        self._event_log = Path(event_log) if event_log is not None else None
        self._provision = provision

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return self._tools.run(*args, check=check)

    def _flush(self) -> None:
        # Without a resource manager transient objects must be flushed explicitly.
        self._run("tpm2_flushcontext", "-t", check=False)

    def ensure_ak(self, workdir: Path) -> tuple[bytes, bytes]:
        """(SPKI DER, TPM2B_PUBLIC) of the AK, creating and persisting it if needed."""
        der, tss = workdir / "ak.der", workdir / "ak.pub"
        probe = self._run("tpm2_readpublic", "-c", self._handle, "-Q", check=False)
        if probe.returncode != 0:
            if not self._provision:
                raise AttestationError(f"no attestation key at handle {self._handle}")
            ctx = workdir / "ak.ctx"
            self._flush()
            self._run(
                "tpm2_createprimary", "-C", "o", "-G", "ecc256:ecdsa-sha256:null",
                "-g", "sha256", "-a", AK_ATTRIBUTES, "-c", str(ctx), "-Q",
            )  # fmt: skip
            self._run("tpm2_evictcontrol", "-C", "o", "-c", str(ctx), self._handle, "-Q")
            self._flush()
        self._run("tpm2_readpublic", "-c", self._handle, "-f", "der", "-o", str(der), "-Q")
        self._run("tpm2_readpublic", "-c", self._handle, "-o", str(tss), "-Q")
        return der.read_bytes(), tss.read_bytes()

    def extend_pcr(self, index: int, digest: bytes, bank: str = "sha256") -> None:
        """Extend ``index`` in ``bank`` with ``digest`` (init-data binding, runtime events)."""
        self._run("tpm2_pcrextend", f"{index}:{bank}={digest.hex()}")

    def bind_init_data(self, init_data: bytes | str) -> None:
        """Trustee's TPM init-data binding: extend SHA-256 PCR8 once with the digest.

        The verifier expects PCR8 == SHA-256(32 zero bytes || digest), so this must be the
        only extend of PCR8 since boot (it is what the guest's init does at start-up).
        """
        from modelseal.tee.initdata import parse_init_data

        digest = parse_init_data(init_data).digest
        self.extend_pcr(8, digest[:32].ljust(32, b"\x00"))

    def evidence(self, report_data: bytes) -> Any:
        if len(report_data) > NONCE_SIZE:
            raise AttestationError("TPM report data must be at most 64 bytes")
        nonce = pad_report_data(report_data, NONCE_SIZE)
        with tempfile.TemporaryDirectory(prefix="modelseal-tpm-") as tmp:
            work = Path(tmp)
            spki, tpm_public = self.ensure_ak(work)
            for _ in range(_RETRIES):
                message, signature, pcrs = self._quote(work, nonce)
                attest = parse_attest(message)
                if hmac.compare_digest(pcr_digest(pcrs, "sha256"), attest.pcr_digest):
                    break
            else:
                raise AttestationError("PCRs kept changing while quoting; retry later")
        log = None
        if self._event_log is not None and self._event_log.is_file():
            try:
                log = self._event_log.read_bytes()
            except OSError:
                log = None
        return build_evidence(
            ak_public=spki,
            message=message,
            signature=signature,
            pcrs=pcrs,
            ak_tpm_public=tpm_public,
            event_log=log,
        )

    def _quote(self, work: Path, nonce: bytes) -> tuple[bytes, bytes, list[bytes]]:
        msg, sig, values = work / "quote.msg", work / "quote.sig", work / "pcrs.bin"
        self._run(
            "tpm2_quote", "-c", self._handle, "-l", self._selection, "-q", nonce.hex(),
            "-m", str(msg), "-s", str(sig), "-g", "sha256",
        )  # fmt: skip
        self._run("tpm2_pcrread", self._selection, "-o", str(values), "-Q")
        raw = values.read_bytes()
        size = {"sha1": 20, "sha256": 32, "sha384": 48}[self._selection.split(":")[0]]
        if len(raw) % size:
            raise AttestationError("tpm2_pcrread returned a partial PCR value")
        pcrs = [raw[i : i + size] for i in range(0, len(raw), size)]
        return msg.read_bytes(), sig.read_bytes(), pcrs
