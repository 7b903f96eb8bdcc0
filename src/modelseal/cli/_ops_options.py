"""Click options every long-running server shares: log format and the metrics endpoint."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from modelseal._internal import environment, metrics
from modelseal._internal.logs import FORMATS, LOG_FORMAT_ENV, configure_logging
from modelseal._internal.metrics import MetricsEndpoint

F = TypeVar("F", bound=Callable[..., Any])


def ops_options(f: F) -> F:
    """``--log-format``, ``--metrics-port``, ``--metrics-host``, ``--metrics-token-file``."""
    for option in reversed(
        [
            click.option(
                "--log-format",
                type=click.Choice(FORMATS),
                default="text",
                show_default=True,
                envvar=LOG_FORMAT_ENV,
                help="Log lines as text or as one JSON object each (with request ids).",
            ),
            click.option(
                "--metrics-port",
                type=click.IntRange(0, 65535),
                default=None,
                envvar="MODELSEAL_METRICS_PORT",
                help="Serve Prometheus metrics at http://METRICS_HOST:PORT/metrics [default: off].",
            ),
            click.option(
                "--metrics-host",
                default="127.0.0.1",
                show_default=True,
                envvar="MODELSEAL_METRICS_HOST",
                help="Address of the metrics endpoint; off loopback it needs --metrics-token-file.",
            ),
            click.option(
                "--metrics-token-file",
                type=click.Path(dir_okay=False, path_type=Path),
                default=None,
                envvar="MODELSEAL_METRICS_TOKEN_FILE",
                help="File holding the bearer token scrapers must send to /metrics.",
            ),
        ]
    ):
        f = option(f)
    return f


def apply_log_format(log_format: str, root_level: int | None = None) -> None:
    """Install the chosen log format for this process and, through the environment, for
    the worker processes it starts. The root level stays what ``-v`` made it."""
    level = root_level if root_level is not None else logging.getLogger().level
    configure_logging(log_format, level or logging.WARNING)
    environment.export(LOG_FORMAT_ENV, log_format)


def metrics_endpoint(
    port: int | None, host: str, token_file: Path | None
) -> MetricsEndpoint | None:
    """The validated endpoint the options name, or None when ``--metrics-port`` is unset.
    Checks the metrics environment of this process either way (values are recorded even
    when nothing serves them)."""
    metrics.check_environment()
    if port is None:
        return None
    return MetricsEndpoint(host=host, port=port, token_file=token_file).validated()
