"""Runtime events modelseal records in a TEE's runtime measurements, and how they read.

After a successful load the loader asks the CoCo Attestation Agent to record one event
(``ExtendRuntimeMeasurement``, exposed by api-server-rest as ``POST /aa/aael``). The AA
writes it to its event log (AAEL) as the text ``"<domain> <operation> <content>"`` inside
a TCG ``EV_EVENT_TAG`` event and extends the runtime register (RTMR3 on TDX) with the
event's digest. A KBS replays the log against the quoted register, so a release policy
can require that a model was loaded (``loaded_models``) before it releases, say, the key
of a second model or a TLS identity.

The three parts follow the AA's rules: domain and operation contain no space, content no
newline.
"""

from __future__ import annotations

import re
from typing import Final

from modelseal.errors import FormatError

#: AAEL domain of modelseal's events (a DNS name, as CoCo's own domains are)
DOMAIN: Final = "modelseal.dev"
#: AAEL operation of "a model with this digest was loaded"; the content is its digest
LOAD_MODEL: Final = "LoadModel"

_WORD = re.compile(r"[^\s]{1,255}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def event_text(domain: str, operation: str, content: str) -> str:
    """``"<domain> <operation> <content>"`` as the AA writes it; FormatError if a part
    breaks the AA's rules (a space in domain or operation, a newline in content)."""
    if not _WORD.fullmatch(domain) or not _WORD.fullmatch(operation):
        raise FormatError("an AAEL domain and operation are 1..255 characters without spaces")
    if "\n" in content or len(content) > 4096:
        raise FormatError("AAEL content is at most 4096 characters without a newline")
    return f"{domain} {operation} {content}"


def load_model_event(model_digest: str) -> str:
    """The event text recording that the model with ``model_digest`` was loaded."""
    if not _DIGEST.fullmatch(model_digest):
        raise FormatError('a model digest is "sha256:" followed by 64 lower-case hex digits')
    return event_text(DOMAIN, LOAD_MODEL, model_digest)
