"""The TEE registry refuses unknown kinds with a typed error."""

from __future__ import annotations

import pytest

from modelseal.errors import UnsupportedTee
from modelseal.tee import registry
from modelseal.tee.base import pad_report_data
from modelseal.tee.sample import SampleConfig


def test_unknown_kind_is_unsupported() -> None:
    with pytest.raises(UnsupportedTee, match="unknown TEE kind"):
        registry.verifier_for("quantum", SampleConfig())
    with pytest.raises(UnsupportedTee):
        registry.attester_for("quantum")


def test_pad_report_data() -> None:
    assert pad_report_data(b"\x01" * 48) == b"\x01" * 48 + b"\x00" * 16
    assert pad_report_data(b"\x02" * 70) == b"\x02" * 64
    assert len(pad_report_data(b"", 32)) == 32
