"""KBS wire models: field names as on the wire, version range, resource-path grammar."""

from __future__ import annotations

import re

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelseal.errors import FormatError
from modelseal.protocol.kbs import (
    AttestationRequest,
    AuthRequest,
    check_resource_path,
    parse_model,
    version_supported,
)


@pytest.mark.parametrize(
    ("version", "ok"),
    [
        ("0.4.0", True),
        ("0.4.9", True),
        ("0.4.0+build", True),
        ("0.4.0-rc.1", False),
        ("0.5.0", False),
        ("0.3.9", False),
        ("1.4.0", False),
        ("0.4", False),
        ("00.4.0", False),
        ("", False),
        (" 0.4.0", False),
    ],
)
def test_version_range(version: str, ok: bool) -> None:
    assert version_supported(version) is ok


def test_auth_request_aliases() -> None:
    req = parse_model(
        AuthRequest, b'{"version":"0.4.0","tee":"tdx","extra-params":{"a":1}}', what="x"
    )
    assert req.extra_params == {"a": 1}
    assert msgspec.to_builtins(req)["extra-params"] == {"a": 1}


def test_attestation_request_wire_names() -> None:
    body = (
        b'{"init-data":{"format":"toml","body":"x"},"runtime-data":{"nonce":"n","tee-pubkey":{"kty":"EC"}},'
        b'"tee-evidence":{"primary_evidence":{"svn":"1"},"additional_evidence":""}}'
    )
    req = parse_model(AttestationRequest, body, what="attest")
    assert req.runtime_data.tee_pubkey == {"kty": "EC"}
    assert req.init_data is not None
    assert req.init_data.format == "toml"
    assert req.tee_evidence.primary_evidence == {"svn": "1"}


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"null",
        b'{"runtime-data":{}}',
        b'{"init-data":{"format":"json","body":"{}"},"runtime-data":{"nonce":"n","tee-pubkey":{}},'
        b'"tee-evidence":{"primary_evidence":1}}',
        b'{"runtime-data":{"nonce":"n","tee-pubkey":{}},"tee-evidence":{"primary_evidence":null}}',
        b'{"runtime-data":{"nonce":"n","tee-pubkey":{}},"tee-evidence":{"primary_evidence":1,"additional_evidence":{}}}',
    ],
)
def test_malformed_attestation_is_format_error(body: bytes) -> None:
    with pytest.raises(FormatError, match="malformed attest"):
        parse_model(AttestationRequest, body, what="attest")


@pytest.mark.parametrize("path", ["models/m/1", "a/b/c", "A-_/b.c/-x.1", "repo/type/1.0.0"])
def test_valid_paths(path: str) -> None:
    assert check_resource_path(path) == path


@pytest.mark.parametrize(
    "path",
    [
        "a/b",
        "a/b/c/d",
        "../b/c",
        "a/./c",
        "a/b/",
        "/a/b/c",
        ".x/b/c",
        "a/b/c d",
        "a/b/" + "x" * 200,
    ],
)
def test_invalid_paths(path: str) -> None:
    with pytest.raises(FormatError):
        check_resource_path(path)


_SEG = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")


@given(st.text(max_size=40))
def test_grammar_property(path: str) -> None:
    parts = path.split("/")
    ok = len(parts) == 3 and all(_SEG.fullmatch(p) and len(p) <= 128 for p in parts)
    try:
        check_resource_path(path)
        assert ok
    except FormatError:
        assert not ok
