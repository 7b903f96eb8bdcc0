"""The error tree carries the exit codes listed in the README."""

from __future__ import annotations

import pickle

import pytest

from modelseal import errors
from modelseal.crypto.secret import SecretBytes


@pytest.mark.parametrize(
    ("cls", "code"),
    [
        (errors.ConfigError, 2),
        (errors.ModelNotFound, 3),
        (errors.PolicyDenied, 4),
        (errors.EvidenceError, 4),
        (errors.TokenError, 4),
        (errors.IntegrityError, 5),
        (errors.DecryptionError, 5),
        (errors.UnsafeDestination, 6),
        (errors.TransientError, 75),
        (errors.CollateralMissing, 2),
    ],
)
def test_exit_codes(cls: type[errors.Error], code: int) -> None:
    assert cls.exit_code == code
    assert issubclass(cls, errors.Error)


def test_every_error_has_an_exit_code_in_the_design_table() -> None:
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert cls.exit_code in {1, 2, 3, 4, 5, 6, 75}


def test_decryption_error_is_opaque() -> None:
    assert str(errors.DecryptionError()) == "authentication failed"


def test_secret_bytes_never_shows_or_pickles() -> None:
    s = SecretBytes(b"\x01" * 32)
    assert "01" not in repr(s)
    assert "\\x01" not in str(s)
    with pytest.raises(TypeError):
        pickle.dumps(s)
    s.wipe()
    assert s.reveal() == b"\x00" * 32
