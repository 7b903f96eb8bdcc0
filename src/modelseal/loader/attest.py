"""Attest this TEE to the KBS and obtain the model key (RCAR through ``KbsClient``).

Only attesters are imported here (``tee.registry.attester_for``); verifier code stays on
the KBS side. ``auto`` asks ``tee.detect`` which TEE this machine is; test-only kinds are
never chosen automatically.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modelseal.crypto.secret import SecretBytes
from modelseal.errors import ConfigError, UnsupportedTee
from modelseal.loader.settings import LoaderSettings
from modelseal.tee import registry
from modelseal.tee.base import Attester, close_attester
from modelseal.tee.detect import detect
from modelseal.tee.initdata import parse_init_data

if TYPE_CHECKING:
    from modelseal.loader.kbs_client import KbsClient

log = logging.getLogger(__name__)

#: TEE kinds whose evidence proves nothing outside tests (the KBS needs an explicit flag)
INSECURE_TEES = frozenset(registry.kinds(test_only=True))
#: What a receipt names as the TEE when the CDH attested (the loader does not see which)
CDH_TEE = "coco-cdh"


@dataclass
class KeyRelease:
    """The released DEK plus what the receipt records about the release."""

    dek: SecretBytes
    tee: str
    token_id: str | None
    kbs_url: str
    insecure: bool


def attester_kinds() -> list[str]:
    """The TEE kinds this build can attest as (those with an attester)."""
    return sorted(registry.attestable_kinds())


def resolve_tee(settings: LoaderSettings) -> str:
    """The TEE kind to attest as: ``settings.tee``, or the detected one for ``auto``;
    a composite (``tdx+nvidia``, ``auto+nvidia``) keeps its device kinds.

    Detection never answers a test-only kind: those must be named explicitly. No TEE on
    this machine is a configuration error (exit 2), not a denied attestation: nothing was
    attested, and the fix is ``--tee``, which the message spells out.
    """
    try:
        # also for a single kind: a device kind alone (``nvidia``) is no session TEE
        primary, devices = registry.split_composite(settings.tee)
    except UnsupportedTee as exc:
        raise ConfigError(f"--tee (MODELSEAL_TEE) {settings.tee!r}: {exc}") from None
    if primary == "auto":
        try:
            primary = detect()
        except UnsupportedTee as exc:
            raise ConfigError(
                f"{exc}. --tee (MODELSEAL_TEE) accepts: auto, {', '.join(attester_kinds())}"
            ) from None
    return registry.COMPOSITE_SEPARATOR.join((primary, *devices))


def warn_if_insecure(kind: str) -> None:
    """Say loudly (once per load, not per retry) that this TEE kind proves nothing."""
    primary = kind.split(registry.COMPOSITE_SEPARATOR)[0]
    if primary in INSECURE_TEES:
        # the insecure part is the CPU kind: a device next to it is verified as usual
        log.warning("attesting as the INSECURE %r TEE: for development only", primary)


def read_init_data(settings: LoaderSettings) -> InitData | None:
    """The launch init-data document (raw text and parsed), if configured."""
    if settings.init_data is None:
        return None
    try:
        text = settings.init_data.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read init-data {settings.init_data}") from exc
    return InitData(text, parse_init_data(text).data)


@dataclass(frozen=True)
class InitData:
    """The init-data TOML as launched: ``text`` goes to the KBS verbatim (its digest is what
    the hardware measured), ``data`` is its ``[data]`` table (e.g. ``model_digest``)."""

    text: str
    data: dict[str, str]

    @property
    def model_digest(self) -> str | None:
        return self.data.get("model_digest")


def build_attester(kind: str, settings: LoaderSettings, init_data: InitData | None) -> Attester:
    """Instantiate the attester of ``kind`` with the options the settings carry.

    On real hardware the host put the init-data digest into the attested launch field
    (MRCONFIGID, HOST_DATA); a test attester that simulates that launch step gets the
    document. Attester inputs (a test CA directory) come from the settings' ``tee_options``.
    """
    options: dict[str, Any] = registry.attester_keywords(
        kind, settings.tee_options, init_data=init_data.text if init_data is not None else None
    )
    options.update(settings.extra_attester_options)
    return registry.attester_for(kind, **options)


def open_kbs_client(settings: LoaderSettings, kbs_url: str) -> KbsClient:
    """A KBS client attesting as the settings' TEE (``auto`` resolved), with their CA
    bundle, timeout and init-data: what the loader and ``KbsClient.from_settings`` use.

    For an evidence relay (``--tee aa``) RCAR names the kind the relay reports, so the
    KBS verifies the evidence as that kind. The client owns the attester: closing the
    client closes it.
    """
    # imported here: the KBS client stack (JWE, TEE keys, RCAR models) loads while the
    # loader's first ciphertext downloads are already running
    from modelseal.loader.kbs_client import KbsClient

    kind, device_kinds = registry.split_composite(resolve_tee(settings))
    init_data = read_init_data(settings)
    attester = build_attester(kind, settings, init_data)
    try:
        wire = registry.evidence_kind(kind, attester)
        # device attesters (GPUs) take no launch document and no caller-supplied options
        devices = [(device, registry.attester_for(device)) for device in device_kinds]
        return KbsClient(
            kbs_url,
            attester,
            tee=wire,
            devices=devices,
            verify=settings.kbs_verify,
            timeout=settings.timeout,
            init_data=init_data.text if init_data is not None else None,
        )
    except BaseException:
        close_attester(attester)
        raise


def release_key(settings: LoaderSettings, kbs_url: str, key_id: str) -> KeyRelease:
    """Attest and fetch resource ``key_id``; the TEE key is zeroized when the client closes.

    ``key_id`` is ``repo/type/tag``, ``kbs:///repo/type/tag`` or a UUID. One attempt: the
    caller retries transient failures, and resolves ``auto`` and warns about an insecure
    kind once before the first attempt (:func:`warn_if_insecure`).
    """
    with open_kbs_client(settings, kbs_url) as client:
        dek = client.get_resource(key_id)
        token_id = client.token_id
        wire = client.tee
    return KeyRelease(
        dek=dek, tee=wire, token_id=token_id, kbs_url=kbs_url, insecure=wire in INSECURE_TEES
    )


def release_from_cdh(settings: LoaderSettings, key_id: str) -> KeyRelease:
    """The key from the CoCo Confidential Data Hub: ``GET {cdh_url}/cdh/resource/<id>``.

    The CDH attests through the guest's Attestation Agent and runs RCAR with the KBS of
    the pod's init-data (Trustee or modelseal); the loader never touches the TEE. One
    attempt, like :func:`release_key`.
    """
    from modelseal.tee.aa.rest import ApiServerClient

    with ApiServerClient(settings.cdh_url, timeout=settings.timeout) as cdh:
        dek = cdh.resource(key_id)
    return KeyRelease(dek=dek, tee=CDH_TEE, token_id=None, kbs_url=settings.cdh_url, insecure=False)
