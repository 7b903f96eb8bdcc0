"""Log output of the modelseal processes: text or one JSON object per line, with request ids.

The HTTP edge sets :data:`REQUEST_ID` for the duration of each request; every record
logged while it is set (in the request's task, or in a thread the request handed work to
with the context copied) carries it as ``request_id``. ``--log-format json`` writes::

    {"ts": "2026-12-06T07:42:35.123Z", "level": "INFO", "logger": "modelseal.kbs",
     "message": "...", "request_id": "...", "pid": 1234}

plus the HTTP fields of the access line (``http_method``, ``http_route``, ``http_path``,
``http_status``, ``duration_ms``) and ``exc_info`` for a traceback. Only these fields are
written: whatever else a record carries stays out of the output.

Secrets never reach the log by construction elsewhere (messages name token ids, never
tokens; errors are written without key material); this module adds nothing that could
carry one.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Final, TextIO

from modelseal._internal import environment

__all__ = [
    "FORMATS",
    "LOG_FORMAT_ENV",
    "REQUEST_ID",
    "JsonFormatter",
    "RequestIdFilter",
    "configure_logging",
    "quiet_noisy_libraries",
    "request_id_from",
]

FORMATS: Final = ("text", "json")
#: libraries whose debug/info output can carry credentials (SQL parameters: session ids
#: and tokens; request lines: presigned URLs; botocore: signed headers): held at WARNING
#: whatever ``-v`` asks for
_QUIET: Final = ("sqlalchemy", "httpx", "httpcore", "botocore", "boto3", "s3transfer", "urllib3")
#: read by the worker processes of a multi-worker server (set by ``kbs serve``)
LOG_FORMAT_ENV: Final = "MODELSEAL_LOG_FORMAT"
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s%(request_suffix)s"

#: the id of the HTTP request being served in this context, if any
REQUEST_ID: ContextVar[str | None] = ContextVar("modelseal_request_id", default=None)

#: an incoming ``X-Request-Id`` is kept when it is 1-128 of these characters
_WELL_FORMED: Final = re.compile(r"[A-Za-z0-9._:+=@/-]{1,128}")
#: record attributes the JSON output carries besides the fixed ones
_HTTP_FIELDS: Final = ("http_method", "http_route", "http_path", "http_status", "duration_ms")


def request_id_from(header: bytes | None) -> str:
    """The incoming ``X-Request-Id`` if well formed and bounded, else a fresh random id."""
    if header is not None and len(header) <= 128:
        try:
            text = header.decode("ascii")
        except UnicodeDecodeError:
            text = ""
        if _WELL_FORMED.fullmatch(text):
            return text
    return os.urandom(16).hex()


class RequestIdFilter(logging.Filter):
    """Stamps every record with the current request id (``None`` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        rid = REQUEST_ID.get()
        record.request_id = rid
        record.request_suffix = f" [request_id={rid}]" if rid else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with a fixed set of fields."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC)
        doc: dict[str, object] = {
            "ts": ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        rid = getattr(record, "request_id", None)
        if rid is not None:
            doc["request_id"] = rid
        for name in _HTTP_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                doc[name] = value
        if record.exc_info:
            doc["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record is emitted (like logging's last
    resort), never to a stream that was swapped out and closed since."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> TextIO:
        return sys.stderr


def configure_logging(fmt: str = "text", level: int | str = logging.WARNING) -> None:
    """Route every record (modelseal's, uvicorn's, libraries') to one stderr handler in
    ``fmt`` at ``level``; replaces the handlers a previous call installed."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}")
    handler = _StderrHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    quiet_noisy_libraries()
    # uvicorn's loggers propagate to this handler instead of printing on their own
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


def quiet_noisy_libraries() -> None:
    """Hold the loggers of libraries that may print credentials at WARNING (see _QUIET)."""
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)


def configure_from_env(default_level: str = "INFO") -> None:
    """Logging of a worker process: the format and level its supervisor was started with."""
    fmt = environment.variable(LOG_FORMAT_ENV) or "text"
    configure_logging(fmt if fmt in FORMATS else "text", logging.WARNING)
    logging.getLogger("modelseal").setLevel(
        (environment.variable("MODELSEAL_LOG_LEVEL") or default_level).upper()
    )
