"""The base verifier enforces kind, binding and init-data even when a kind forgets them.

Each verifier here is deliberately careless: its ``_verify_evidence`` hook checks nothing
and returns whatever claims the test hands it. ``Verifier.verify`` must still refuse.
"""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar

import pytest

from modelseal.errors import EvidenceError
from modelseal.protocol.claims import Claims
from modelseal.tee.base import Authenticated, InitDataField, Verifier
from modelseal.tee.initdata import init_data_field
from modelseal.tee.plugin import KindConfig
from modelseal.tee.registry import KINDS, PLUGINS

#: A full-length (SHA-512) binding and a SHA-384 one, as the KBS computes them.
BINDING_64 = hashlib.sha512(b"nonce and tee-pubkey").digest()
BINDING_48 = hashlib.sha384(b"nonce and tee-pubkey").digest()
INIT = b'version = "0.1.0"\nalgorithm = "sha384"\n[data]\nmodel = "m"\n'


def _last_byte_flipped(value: bytes) -> bytes:
    return value[:-1] + bytes([value[-1] ^ 1])


class Careless(Verifier):
    """Ignores the evidence and the binding: returns the claims it was built with."""

    tee: ClassVar[str] = "careless"

    def __init__(self, found: Authenticated) -> None:
        self.found = found

    @classmethod
    def from_config(cls, config: KindConfig) -> Careless:
        raise AssertionError("built directly by the tests")

    def _verify_evidence(self, evidence: Any, *, now: float) -> Authenticated:
        return self.found


class CarelessNonce(Careless):
    """A kind whose report-data field may be 32..64 bytes (like a TPM quote nonce)."""

    report_data_sizes: ClassVar[tuple[int, int]] = (32, 64)
    report_data_field: ClassVar[str] = "the nonce"


class CarelessInsecure(Careless):
    """A kind that proves nothing (like the sample TEE)."""

    insecure: ClassVar[bool] = True


def _claims(report_data: bytes, *, tee: str = "careless", **more: Any) -> Claims:
    return Claims(tee=tee, debug=False, report_data=report_data, **more)


def _verify(verifier: Verifier, expected: bytes, init_data: bytes | None = None) -> Claims:
    return verifier.verify({}, expected_report_data=expected, now=0, init_data=init_data)


def test_matching_binding_is_accepted() -> None:
    assert _verify(Careless(Authenticated(_claims(BINDING_64))), BINDING_64).tee == "careless"
    padded = BINDING_48 + bytes(16)
    assert _verify(Careless(Authenticated(_claims(padded))), BINDING_48).report_data == padded


@pytest.mark.parametrize(
    ("found", "expected"),
    [
        (_last_byte_flipped(BINDING_64), BINDING_64),
        # the 48-byte digest matches but the padding does not: the whole field is compared
        (_last_byte_flipped(BINDING_48 + bytes(16)), BINDING_48),
        (_last_byte_flipped(BINDING_48) + bytes(16), BINDING_48),
    ],
    ids=["sha512-last-byte", "padding-last-byte", "sha384-last-byte"],
)
def test_careless_verifier_cannot_skip_the_binding(found: bytes, expected: bytes) -> None:
    assert len(found) == 64
    with pytest.raises(EvidenceError, match="binding mismatch"):
        _verify(Careless(Authenticated(_claims(found))), expected)


def test_careless_verifier_cannot_return_another_kind() -> None:
    # Correctly bound evidence, but claims of a kind this verifier does not verify: a
    # release policy for "tdx" must never see claims a "careless" verifier vouched for.
    found = Authenticated(_claims(BINDING_64, tee="tdx"))
    with pytest.raises(EvidenceError, match="claims of kind 'tdx'"):
        _verify(Careless(found), BINDING_64)


@pytest.mark.parametrize("size", [0, 32, 63, 65])
def test_report_data_of_the_wrong_size_is_refused(size: int) -> None:
    # An empty field would equal any binding padded to zero bytes; a short one would
    # compare only a prefix of the digest.
    with pytest.raises(EvidenceError, match="bytes; 64 required"):
        _verify(Careless(Authenticated(_claims(bytes(size)))), b"")


def test_variable_fields_must_hold_the_whole_digest() -> None:
    short = BINDING_64[:32]
    with pytest.raises(EvidenceError, match="does not fit"):
        # a 32-byte nonce equal to the first half of the digest binds only half of it
        _verify(CarelessNonce(Authenticated(_claims(short))), BINDING_64)
    with pytest.raises(EvidenceError, match=r"31 bytes; 32\.\.64 required"):
        _verify(CarelessNonce(Authenticated(_claims(short[:-1]))), b"")
    nonce = BINDING_48[:32]
    assert _verify(CarelessNonce(Authenticated(_claims(nonce))), nonce).report_data == nonce
    with pytest.raises(EvidenceError, match="nonce does not match"):
        _verify(CarelessNonce(Authenticated(_claims(_last_byte_flipped(nonce)))), nonce)


def test_expected_report_data_longer_than_any_field_is_refused() -> None:
    with pytest.raises(EvidenceError, match="65 bytes"):
        _verify(Careless(Authenticated(_claims(bytes(64)))), bytes(65))


def test_init_data_is_bound_to_the_launch_field() -> None:
    field = InitDataField("MRCONFIGID", init_data_field(INIT, 48))
    claims = _verify(Careless(Authenticated(_claims(BINDING_64), field)), BINDING_64, INIT)
    assert claims.init_data == {"model": "m"}
    assert claims.init_data_digest == hashlib.sha384(INIT).hexdigest()
    wrong = InitDataField("MRCONFIGID", _last_byte_flipped(field.value))
    with pytest.raises(EvidenceError, match="MRCONFIGID"):
        _verify(Careless(Authenticated(_claims(BINDING_64), wrong)), BINDING_64, INIT)


def test_init_data_without_a_launch_field_is_refused() -> None:
    found = Authenticated(_claims(BINDING_64), init_data_refusal="no launch field here")
    with pytest.raises(EvidenceError, match="no launch field here"):
        _verify(Careless(found), BINDING_64, INIT)
    with pytest.raises(EvidenceError, match="not supported for careless evidence"):
        _verify(Careless(Authenticated(_claims(BINDING_64))), BINDING_64, INIT)


def test_init_data_claims_come_only_from_the_base() -> None:
    # A hook that fills init-data claims itself: without a checked document they are dropped.
    forged = _claims(BINDING_64, init_data_digest="00" * 48, init_data={"model": "forged"})
    claims = _verify(Careless(Authenticated(forged)), BINDING_64)
    assert claims.init_data_digest is None
    assert claims.init_data == {}
    field = InitDataField("MRCONFIGID", init_data_field(INIT, 48))
    bound = _verify(Careless(Authenticated(forged, field)), BINDING_64, INIT)
    assert bound.init_data == {"model": "m"}


def test_insecure_kinds_are_always_marked_and_report_init_data_unbound() -> None:
    claims = _verify(CarelessInsecure(Authenticated(_claims(BINDING_64))), BINDING_64, INIT)
    assert claims.insecure is True
    assert claims.init_data == {"model": "m"}
    with pytest.raises(EvidenceError, match="binding mismatch"):
        _verify(CarelessInsecure(Authenticated(_claims(bytes(64)))), BINDING_64)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_uses_the_template(kind: str) -> None:
    # mypy refuses an override of the @final verify; this catches a kind that is not a
    # base.Verifier at all, or one registered under a name its claims would not carry.
    cls = PLUGINS[kind].verifier_class()
    assert issubclass(cls, Verifier)
    assert cls.verify is Verifier.verify
    assert cls.tee == kind
