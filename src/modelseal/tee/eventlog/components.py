"""Measured boot components extracted from an event log, for release policies.

What is extracted (digests in the log's bank, lower-case hex; all optional):

* ``kernel_digest`` — the Linux kernel: the EV_IPL event GRUB writes with the kernel's
  path right after its ``grub_cmd: linux <path>`` command; else td-shim's payload
  (EV_EFI_PLATFORM_FIRMWARE_BLOB2 described ``td_payload``); else the last
  EV_EFI_BOOT_SERVICES_APPLICATION (the kernel EFI stub that OVMF or shim started last).
* ``cmdline_digest`` (+ ``cmdline`` text when the log carries it) — GRUB's
  ``kernel_cmdline: ...`` EV_IPL event, td-shim's ``td_payload_info`` platform-config
  event, else OVMF's tagged event ``LOADED_IMAGE::LoadOptions`` (EV_EVENT_TAG, only the
  digest is in the log).
* ``initrd_digest`` — OVMF's tagged event ``Linux initrd``.
* ``efi_applications`` — digests of every EV_EFI_BOOT_SERVICES_APPLICATION, in order
  (shim, GRUB, kernel ...), for audit.
* ``runtime_events`` — CoCo attestation-agent events (EV_EVENT_TAG with tag "AAEL",
  data ``"<domain> <operation> <content>"``, extended into RTMR3 at run time); each
  event's digest must be the hash of its data, so policies may require them
  (``loaded_models``).

The values are trustworthy only after the log replayed to the attested registers.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass, field

from modelseal.errors import EvidenceError
from modelseal.tee.eventlog.tcg import (
    ALG_SHA1,
    ALG_SHA256,
    ALG_SHA384,
    ALG_SHA512,
    EV_EFI_BOOT_SERVICES_APPLICATION,
    EV_EFI_PLATFORM_FIRMWARE_BLOB2,
    EV_EVENT_TAG,
    EV_IPL,
    EV_PLATFORM_CONFIG_FLAGS,
    EventLog,
)

_TAG_LOAD_OPTIONS = b"LOADED_IMAGE::LoadOptions"
_TAG_INITRD = b"Linux initrd"
_TD_PAYLOAD = b"td_payload"
_TD_PAYLOAD_INFO = b"td_payload_info\x00"


@dataclass(frozen=True)
class MeasuredComponents:
    kernel_digest: str | None = None
    cmdline_digest: str | None = None
    cmdline: str | None = None
    initrd_digest: str | None = None
    efi_applications: list[str] = field(default_factory=list)
    runtime_events: list[str] = field(default_factory=list)

    def measurements(self) -> dict[str, str]:
        """Claims for ``Claims.measurements`` (hex values only)."""
        out = {}
        if self.kernel_digest:
            out["kernel_digest"] = self.kernel_digest
        if self.cmdline_digest:
            out["cmdline_digest"] = self.cmdline_digest
        if self.initrd_digest:
            out["initrd_digest"] = self.initrd_digest
        return out

    def to_json(self) -> dict[str, object]:
        return {
            **self.measurements(),
            "cmdline": self.cmdline,
            "efi_applications": self.efi_applications,
            "runtime_events": self.runtime_events,
        }


_TAG_AAEL = 0x4141454C  # "LEAA" in the log: the attestation agent's event log tag
_HASH_NAMES = {ALG_SHA1: "sha1", ALG_SHA256: "sha256", ALG_SHA384: "sha384", ALG_SHA512: "sha512"}


def _tagged(data: bytes) -> tuple[int, bytes]:
    """TCG_PCClientTaggedEvent: (tag id, tag data)."""
    if len(data) < 8:
        return -1, b""
    tag_id, size = struct.unpack_from("<II", data)
    return tag_id, data[8 : 8 + size]


def _text(data: bytes) -> str:
    return data.rstrip(b"\x00").decode("utf-8", "replace")


def extract_components(log: EventLog, alg: int) -> MeasuredComponents:
    """Find kernel, command line and initrd measurements in bank ``alg``."""
    apps: list[str] = []
    grub_kernel: str | None = None
    cmdline_digest: str | None = None
    cmdline: str | None = None
    initrd: str | None = None
    runtime: list[str] = []
    shim_payload: str | None = None
    pending_linux_path: str | None = None
    for ev in log.events:
        digest = ev.digests.get(alg)
        if digest is None:
            continue
        if ev.event_type == EV_EFI_BOOT_SERVICES_APPLICATION:
            apps.append(digest.hex())
        elif ev.event_type == EV_IPL:
            text = _text(ev.data)
            if text.startswith("grub_cmd: linux ") or text.startswith("grub_cmd: linuxefi "):
                parts = text.split()
                pending_linux_path = parts[2] if len(parts) > 2 else None
            elif text.startswith("kernel_cmdline: "):
                cmdline_digest = digest.hex()
                cmdline = text[len("kernel_cmdline: ") :]
            elif pending_linux_path is not None and text.endswith(pending_linux_path):
                grub_kernel = digest.hex()
                pending_linux_path = None
        elif ev.event_type == EV_EFI_PLATFORM_FIRMWARE_BLOB2:
            size = ev.data[0] if ev.data else 0
            if ev.data[1 : 1 + size].rstrip(b"\x00") == _TD_PAYLOAD:
                shim_payload = digest.hex()
        elif ev.event_type == EV_PLATFORM_CONFIG_FLAGS and ev.data.startswith(_TD_PAYLOAD_INFO):
            # td-shim: 16-byte descriptor, u32 length, then the command line
            if cmdline_digest is None and len(ev.data) >= 20:
                (length,) = struct.unpack_from("<I", ev.data, 16)
                cmdline_digest = digest.hex()
                cmdline = _text(ev.data[20 : 20 + length].split(b"\x00", 1)[0])
        elif ev.event_type == EV_EVENT_TAG:
            tag_id, tag_data = _tagged(ev.data)
            name = tag_data.rstrip(b"\x00")
            if tag_id == _TAG_AAEL:
                # the replay proves only the digest: the text a policy reads must be
                # what was hashed (the whole tagged event, as the AA hashes it)
                hash_name = _HASH_NAMES.get(alg)
                if hash_name is None or not hmac.compare_digest(
                    hashlib.new(hash_name, ev.data).digest(), digest
                ):
                    raise EvidenceError(
                        f"runtime event at offset {ev.offset}: its digest is not the hash "
                        "of its data"
                    )
                runtime.append(_text(tag_data))
            elif name == _TAG_LOAD_OPTIONS and cmdline_digest is None:
                cmdline_digest = digest.hex()
            elif name == _TAG_INITRD:
                initrd = digest.hex()
    kernel = grub_kernel or shim_payload or (apps[-1] if apps else None)
    return MeasuredComponents(
        kernel_digest=kernel,
        cmdline_digest=cmdline_digest,
        cmdline=cmdline,
        initrd_digest=initrd,
        efi_applications=apps,
        runtime_events=runtime,
    )
