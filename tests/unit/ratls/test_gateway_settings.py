"""Gateway settings: the upstream is plain HTTP on loopback, nothing else."""

from __future__ import annotations

import pytest

from modelseal.errors import ConfigError
from modelseal.ratls.gateway import GatewaySettings


@pytest.mark.parametrize(
    "upstream",
    ["https://127.0.0.1:8000", "http://10.0.0.5:8000", "http://model.example:80",
     "http://127.0.0.1:8000/v1", "http://127.0.0.1:8000?x=1", "127.0.0.1:8000"],
)  # fmt: skip
def test_gateway_upstream_is_plain_http_on_loopback(upstream: str) -> None:
    with pytest.raises(ConfigError):
        GatewaySettings("127.0.0.1", 0, upstream).validated()
    for good in ("http://127.0.0.1:8000", "http://[::1]:8000/", "http://localhost:9"):
        assert GatewaySettings("127.0.0.1", 0, good).validated().upstream == good
