"""Init-data (Trustee TOML): parsing, hashing as raw text, binding to launch fields."""

from __future__ import annotations

import contextlib
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelseal.errors import EvidenceError
from modelseal.tee.base import InitDataField
from modelseal.tee.initdata import init_data_field, parse_init_data

DOC = b"""version = "0.1.0"
algorithm = "sha384"

[data]
model_digest = "sha256:1234"
"aa.toml" = '''
[token_configs]
'''
replicas = 3
"""


def test_parse_and_digest_raw_text() -> None:
    init = parse_init_data(DOC)
    assert init.version == "0.1.0"
    assert init.algorithm == "sha384"
    assert init.digest == hashlib.sha384(DOC).digest()
    assert init.data["model_digest"] == "sha256:1234"
    assert init.data["aa.toml"] == "[token_configs]\n"
    assert init.data["replicas"] == "3"
    # whitespace changes the digest: hashed as sent, never re-serialized
    assert parse_init_data(DOC + b"\n").digest != init.digest


@pytest.mark.parametrize(("alg", "size"), [("sha256", 32), ("sha384", 48), ("sha512", 64)])
def test_binding_pads_or_truncates(alg: str, size: int) -> None:
    doc = f'version = "0.1.0"\nalgorithm = "{alg}"\n[data]\n'.encode()
    digest = hashlib.new(alg, doc).digest()
    tdx = init_data_field(doc, 48)
    snp = init_data_field(doc, 32)
    assert tdx == digest[:48].ljust(48, b"\x00")
    assert snp == digest[:32]
    init = parse_init_data(doc)
    assert init.digest == digest
    assert len(init.digest) == size
    # What the base verifier compares the attested field with: the same padding rule.
    assert InitDataField("MRCONFIGID", tdx).expected(init.digest) == tdx
    assert InitDataField("HOST_DATA", snp).expected(init.digest) == snp


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        (b"version = ", "not valid TOML"),
        (b'algorithm = "sha384"', "version"),
        (b'version = "0.1.0"\nalgorithm = "md5"', "algorithm"),
        (b'version = "0.1.0"\nalgorithm = "sha256"\ndata = 3', r"\[data\]"),
        (b"\xff\xfe", "not valid TOML"),
        (b"x" * (256 * 1024 + 1), "too large"),
    ],
)
def test_malformed(doc: bytes, reason: str) -> None:
    with pytest.raises(EvidenceError, match=reason):
        parse_init_data(doc)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_input_typed_errors(blob: bytes) -> None:
    with contextlib.suppress(EvidenceError):
        parse_init_data(blob)


@pytest.mark.parametrize(
    "value",
    [
        b"[" * 100_000 + b"]" * 100_000,  # tomllib recursed into a RecursionError (HTTP 500)
        b"{a=" * 50_000 + b"1" + b"}" * 50_000,
        b"[" * 17 + b"]" * 17,
    ],
    ids=["deep-array", "deep-inline-table", "just-too-deep"],
)
def test_deep_nesting_is_a_typed_error(value: bytes) -> None:
    doc = b'version = "0.1.0"\nalgorithm = "sha256"\n[data]\nx = ' + value + b"\n"
    with pytest.raises(EvidenceError, match="nested too deeply"):
        parse_init_data(doc)


def test_deep_dotted_keys_are_refused() -> None:
    key = ".".join(["k"] * 40)
    with pytest.raises(EvidenceError, match="nested too deeply"):
        parse_init_data(f'version = "0.1.0"\nalgorithm = "sha256"\n[data]\n{key} = 1\n')
    head = b'version = "0.1.0"\nalgorithm = "sha256"\n[data]\n'
    nested = parse_init_data(head + b"x = [[1], {a = [2]}]\n")
    assert nested.data == {"x": '[[1],{"a":[2]}]'}
