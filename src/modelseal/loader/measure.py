"""Record a completed load in the TEE's runtime measurements (through the CoCo AA).

After the model is in place the loader asks the Attestation Agent, through
guest-components' api-server-rest (``POST /aa/aael``), to log the event
``modelseal.dev LoadModel sha256:<model digest>`` and extend the runtime register with
its digest (RTMR3 on TDX). Evidence the AA produces afterwards carries the log, the KBS
replays it against the quoted register, and a release policy can require the model to
have been loaded (``loaded_models``).

The AA is the one component that keeps the register and its log consistent (it writes a
write-ahead record before extending). Without an AA the loader does not extend an RTMR
itself: an extension that no event log records cannot be replayed by a KBS, and would
only make every later quote unverifiable against its log.

A failure to record does not undo the load (the model is already authenticated and in
place; a missing event can only make later releases be denied): it is logged as a
warning and written to the receipt.
"""

from __future__ import annotations

import logging
from typing import Any

from modelseal.errors import Error
from modelseal.loader.settings import KEY_SOURCE_CDH, LoaderSettings
from modelseal.protocol.runtime_events import DOMAIN, LOAD_MODEL, load_model_event
from modelseal.tee import registry
from modelseal.tee.aa import AA_URL
from modelseal.tee.aa import DEFAULT_URL as AA_DEFAULT_URL

log = logging.getLogger(__name__)


def measurement_url(settings: LoaderSettings) -> str | None:
    """The api-server-rest URL of the Attestation Agent to record loads with, if any:
    the ``--aa-url`` option; else the default one when attesting through the AA (``--tee aa``); else
    the CDH's server (one api-server-rest serves both in a CoCo pod); else None."""
    if not settings.measure:
        return None
    given = settings.tee_option(AA_URL)
    if given:
        return str(given)
    if settings.tee in registry.PLUGINS and registry.plugin(settings.tee).relay:
        return AA_DEFAULT_URL
    if settings.key_source == KEY_SOURCE_CDH:
        return settings.cdh_url
    return None


def record_load(settings: LoaderSettings, model_digest: str | None) -> dict[str, Any] | None:
    """Record ``model_digest`` as loaded; the receipt's ``runtime_measurement`` entry, or
    None when no Attestation Agent is configured (nothing was attempted)."""
    url = measurement_url(settings)
    if url is None:
        return None
    if model_digest is None:
        return {"recorded": False, "detail": "a CNAP model has no model digest to record"}
    event = load_model_event(model_digest)
    from modelseal.tee.aa.rest import ApiServerClient

    try:
        with ApiServerClient(url, timeout=settings.timeout) as aa:
            result = aa.extend_runtime_measurement(DOMAIN, LOAD_MODEL, model_digest)
    except Error as exc:
        log.warning("the load was not recorded in the runtime measurements: %s", exc)
        return {"recorded": False, "event": event, "detail": str(exc)[:300]}
    if not result.recorded:
        log.warning(
            "the Attestation Agent did not record the load: %s", result.message or "no reason"
        )
        return {"recorded": False, "event": event, "detail": result.message}
    log.info("recorded %r in the runtime measurements", event)
    return {"recorded": True, "event": event}
