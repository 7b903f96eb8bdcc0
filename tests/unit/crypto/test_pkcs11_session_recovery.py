"""A KEK token that goes away and comes back (HSM failover, device reset) under a running
process, with real SoftHSM2: the session is reopened and the operation retried once, a
token that stays away is a BackendError (the KBS's 503) with no reopen storm, and the PIN
is re-read from its file with the same checks and never shows in an error or a log."""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelseal.crypto.pkcs11_kek import Pkcs11Kek, Pkcs11Token, parse_pkcs11_uri
from modelseal.crypto.secret import SecretBytes
from modelseal.errors import BackendError
from tests.hsm import SoftHsm

DEK = SecretBytes(os.urandom(32))


@pytest.fixture
def kek(kek_uri: str) -> Pkcs11Kek:
    token = Pkcs11Token.open(parse_pkcs11_uri(kek_uri))
    token._retry_at = 0.0  # a test before may have left the token inside its backoff
    return token.generate(parse_pkcs11_uri(kek_uri).object)


def _drop_session(token: Pkcs11Token) -> None:
    """Close the token's session from under it: its handle is invalid from now on, as after
    an HSM failover (under the lock, so no call of the token is inside the module then)."""
    with token._lock:
        assert token._session is not None
        token._session.close()


@pytest.fixture
def token_away(softhsm: SoftHsm) -> Iterator[Path]:
    """The token directory moved aside for the test's body (the token is not present),
    and always put back; yields the directory so the test can restore it earlier."""
    tokens, aside = softhsm.base / "tokens", softhsm.base / "tokens-away"
    yield tokens
    if aside.exists():
        shutil.move(aside, tokens)


def _take_away(tokens: Path) -> None:
    shutil.move(tokens, tokens.parent / "tokens-away")


def _bring_back(tokens: Path) -> None:
    shutil.move(tokens.parent / "tokens-away", tokens)


def _events(event: str) -> float:
    prometheus_client = pytest.importorskip("prometheus_client")
    value = prometheus_client.REGISTRY.get_sample_value(
        "modelseal_kek_token_events_total", {"event": event}
    )
    return value or 0.0


def test_a_closed_session_is_reopened_and_the_call_retried(kek: Pkcs11Kek) -> None:
    token = kek._token
    blob = kek.wrap("m/k/v1", DEK)
    label = kek.label
    before = token.reopens
    lost, reopened = _events("session_lost"), _events("reopened")
    _drop_session(token)
    assert kek.unwrap("m/k/v1", blob) == DEK
    assert token.reopens == before + 1
    assert (_events("session_lost"), _events("reopened")) == (lost + 1, reopened + 1)
    # every operation of the KEK works on the new session, with the objects found again
    assert kek.unwrap("m/k/v1", kek.wrap("m/k/v1", DEK)) == DEK
    assert kek.label == label
    assert kek.mac("t", b"x") == kek.mac("t", b"x")
    assert token.reopens == before + 1
    _drop_session(token)  # a MAC (the audit head's) recovers the same way
    assert len(kek.mac("audit", b"head")) == 16
    assert token.reopens == before + 2


def test_an_absent_token_is_a_backend_error_until_it_is_back(
    kek: Pkcs11Kek, token_away: Path, softhsm: SoftHsm, caplog: pytest.LogCaptureFixture
) -> None:
    token = kek._token
    blob = kek.wrap("m/k/v1", DEK)
    before = token.reopens
    unavailable = _events("unavailable")
    _take_away(token_away)
    with pytest.raises(BackendError, match="unavailable"):
        kek.unwrap("m/k/v1", blob)
    assert _events("unavailable") == unavailable + 1
    # within the backoff a caller fails at once, without asking the token again
    caplog.clear()
    with pytest.raises(BackendError, match="unavailable; retry later"):
        kek.wrap("m/k/v1", DEK)
    assert not [r for r in caplog.records if "is unavailable (" in r.getMessage()]
    _bring_back(token_away)
    token._retry_at = 0.0  # the backoff over
    assert kek.unwrap("m/k/v1", blob) == DEK
    assert token.reopens == before + 1
    pin = (softhsm.base / "modelseal.pin").read_text().strip()
    assert all(pin not in r.getMessage() for r in caplog.records)


def test_the_pin_file_is_read_again_with_the_same_checks(kek: Pkcs11Kek, softhsm: SoftHsm) -> None:
    token = kek._token
    pin_file = softhsm.base / "modelseal.pin"
    pin = pin_file.read_text().strip()
    blob = kek.wrap("m/k/v1", DEK)
    _drop_session(token)
    pin_file.chmod(0o644)  # readable by others: refused at a reopen as at start
    try:
        with pytest.raises(BackendError) as exc:
            kek.unwrap("m/k/v1", blob)
    finally:
        pin_file.chmod(0o600)
    assert "cannot log in" in str(exc.value)
    assert pin not in str(exc.value)
    assert exc.value.__cause__ is None
    assert exc.value.__context__ is None or pin not in str(exc.value.__context__)
    token._retry_at = 0.0
    assert kek.unwrap("m/k/v1", blob) == DEK


def test_a_kek_whose_objects_changed_while_away_is_refused(kek: Pkcs11Kek) -> None:
    """After a reopen the KEK finds its objects by CKA_ID; when the MAC key found there
    derives another id, it is another key and is never used."""
    token = kek._token
    blob = kek.wrap("m/k/v1", DEK)
    kek.id = "kek-" + "00" * 8  # what this KEK claimed to be
    _drop_session(token)
    with pytest.raises(BackendError, match="another key"):
        kek.unwrap("m/k/v1", blob)


def test_concurrent_callers_share_one_reopen_per_failure(kek: Pkcs11Kek) -> None:
    """16 threads unwrap nonstop while the session is dropped 5 times: each drop costs
    exactly one reopen (the caller that met it), every caller gets its key back."""
    token = kek._token
    blob = kek.wrap("m/k/v1", DEK)
    before = token.reopens
    stop = threading.Event()
    done = [0] * 16
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        while not stop.is_set():
            try:
                if kek.unwrap("m/k/v1", blob) != DEK:
                    errors.append(AssertionError("wrong key"))
            except BackendError as exc:  # the documented error: not expected here
                errors.append(exc)
            done[i] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    try:
        for _ in range(5):
            mark = sum(done)
            while sum(done) < mark + 50:  # let the callers run on the current session
                time.sleep(0.001)
            _drop_session(token)
        mark = sum(done)
        while sum(done) < mark + 50:
            time.sleep(0.001)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    assert token.reopens == before + 5
    assert all(done)


def test_concurrent_callers_of_an_absent_token_try_one_reopen(
    kek: Pkcs11Kek, token_away: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """While the token is away, 16 callers each get the BackendError; only the first asks
    the token (the others are inside the backoff), then it is back and all succeed."""
    token = kek._token
    blob = kek.wrap("m/k/v1", DEK)
    before = token.reopens
    _take_away(token_away)
    barrier = threading.Barrier(16)
    outcomes: list[object] = []

    def worker() -> None:
        barrier.wait()
        try:
            outcomes.append(kek.unwrap("m/k/v1", blob))
        except BackendError as exc:
            outcomes.append(exc)

    with caplog.at_level(logging.WARNING, logger="modelseal.crypto.pkcs11_kek"):
        threads = [threading.Thread(target=worker) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(outcomes) == 16
    assert all(isinstance(o, BackendError) and "unavailable" in str(o) for o in outcomes)
    assert len([r for r in caplog.records if "is unavailable (" in r.getMessage()]) == 1
    _bring_back(token_away)
    token._retry_at = 0.0
    outcomes.clear()
    barrier.reset()
    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes == [DEK] * 16
    assert token.reopens == before + 1
