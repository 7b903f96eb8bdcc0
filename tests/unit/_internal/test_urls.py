"""URLs shown in messages keep the endpoint and drop credentials."""

from __future__ import annotations

import pytest

from modelseal._internal.urls import display_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://kbs.example:8080/kbs/v0/auth", "https://kbs.example:8080/kbs/v0/auth"),
        ("http://admin:hunter2@127.0.0.1:9/x", "http://127.0.0.1:9/x"),
        (
            "https://s3.example/b/k?X-Amz-Signature=abc&X-Amz-Credential=k",
            "https://s3.example/b/k?…",
        ),
        ("http://[::1]:8080/p#frag", "http://[::1]:8080/p"),
        ("http://host:99999/", "<invalid URL>"),
    ],
)
def test_display_url(url: str, shown: str) -> None:
    assert display_url(url) == shown
