"""Fixtures for format tests: a fixed DEK and small segments keep everything fast."""

from __future__ import annotations

import pytest

from modelseal.crypto.secret import SecretBytes

SEG = 4096


@pytest.fixture
def dek() -> SecretBytes:
    return SecretBytes(bytes(range(32)))


@pytest.fixture
def other_dek() -> SecretBytes:
    return SecretBytes(bytes(range(1, 33)))
