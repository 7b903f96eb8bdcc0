"""A KBS whose KEK lives in a PKCS#11 token (SoftHSM2): start, rotate, move from the kek
file into the token and back, and finish a promotion a crash interrupted."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

from modelseal.crypto.pkcs11_kek import Pkcs11Kek, Pkcs11Token, parse_pkcs11_uri
from modelseal.crypto.secret import SecretBytes
from modelseal.errors import BackendError, ConfigError
from modelseal.kbs.kek_stores import TokenKeks
from modelseal.kbs.state import KbsState, offline_audit_verify

POLICY = {"apiVersion": "modelseal/v1", "kind": "ReleasePolicy", "tee": ["sample"]}


def _labels(kek_uri: str) -> tuple[Pkcs11Token, str]:
    uri = parse_pkcs11_uri(kek_uri)
    return Pkcs11Token.open(uri), uri.object


def _objects(token: Pkcs11Token, label: str) -> dict[str, list[Pkcs11Kek]]:
    return {s: token.find(label + s) for s in ("", ".next", ".retired")}


def test_new_data_dir_keeps_its_kek_in_the_token(tmp_path: Path, kek_uri: str) -> None:
    state = KbsState.open(tmp_path, kek_uri=kek_uri)
    dek = SecretBytes(os.urandom(32))
    try:
        state.keys.put("m/k/v1", dek, policy=POLICY, actor="a")
        active = state.store.ring.active
        assert isinstance(active, Pkcs11Kek)
        assert state.store.count_by_kek() == {active.id: 1}
    finally:
        state.close()
    assert not (tmp_path / "kek").exists()  # no KEK bytes anywhere on disk
    again = KbsState.open(tmp_path, kek_uri=kek_uri)
    try:
        assert again.store.ring.active.id == active.id
        assert again.store.load("m/k/v1").dek == dek
        assert again.audit.verify().ok
    finally:
        again.close()
    assert offline_audit_verify(tmp_path, kek_uri=kek_uri).ok
    with pytest.raises(ConfigError, match="--kek-uri"):
        offline_audit_verify(tmp_path)  # without the token the head MAC cannot be checked


def test_rotation_inside_the_token(tmp_path: Path, kek_uri: str) -> None:
    token, label = _labels(kek_uri)
    state = KbsState.open(tmp_path, kek_uri=kek_uri)
    dek = SecretBytes(os.urandom(32))
    try:
        state.keys.put("m/k/v1", dek, actor="a")
        first = state.store.ring.active.id
        result = state.keys.rotate_kek(actor="a")
        assert result.old_kek_id == first != result.new_kek_id
        objs = _objects(token, label)
        assert [k.id for k in objs[""]] == [result.new_kek_id]
        assert objs[".next"] == objs[".retired"] == []  # the old KEK is destroyed
        assert state.store.load("m/k/v1").dek == dek
    finally:
        state.close()


def test_move_from_the_kek_file_into_the_token_and_back(tmp_path: Path, kek_uri: str) -> None:
    token, label = _labels(kek_uri)
    dek = SecretBytes(os.urandom(32))
    state = KbsState.open(tmp_path)
    state.keys.put("m/k/v1", dek, policy=POLICY, actor="a")
    file_id = state.store.ring.active.id
    state.close()

    # pointed at the token, the KBS serves on under the file KEK until the next rotation
    state = KbsState.open(tmp_path, kek_uri=kek_uri)
    try:
        assert state.store.ring.active.id == file_id
        assert token.find(label) == []
        assert state.store.load("m/k/v1").dek == dek
        result = state.keys.rotate_kek(actor="a")
        assert result.old_kek_id == file_id
        assert not (tmp_path / "kek").exists()  # the file KEK is gone
        assert [k.id for k in token.find(label)] == [result.new_kek_id]
        assert state.store.count_by_kek() == {result.new_kek_id: 1}
        assert state.audit.verify().ok
    finally:
        state.close()
    with pytest.raises(ConfigError, match="KEK file"):
        KbsState.open(tmp_path)  # a new file KEK could not read the rows: refused

    # and back: the file is primary again, the token the previous store
    state = KbsState.open(tmp_path, kek_uri="file", kek_previous_uri=kek_uri)
    try:
        assert state.store.ring.active.id == result.new_kek_id
        back = state.keys.rotate_kek(actor="a")
        assert (tmp_path / "kek").exists()
        assert token.find(label) == []  # destroyed in the token
        assert state.store.load("m/k/v1").dek == dek
    finally:
        state.close()
    state = KbsState.open(tmp_path)
    try:
        assert state.store.ring.active.id == back.new_kek_id
        assert state.audit.verify().ok
    finally:
        state.close()


def test_same_store_twice_is_refused(tmp_path: Path, kek_uri: str) -> None:
    with pytest.raises(ConfigError, match="same store"):
        KbsState.open(tmp_path, kek_uri=kek_uri, kek_previous_uri=kek_uri)


@pytest.mark.parametrize("stage", ["retired+next", "active+retired", "only-retired"])
def test_interrupted_promotion_is_finished_at_start(
    tmp_path: Path, kek_uri: str, stage: str
) -> None:
    token, label = _labels(kek_uri)
    dek = SecretBytes(os.urandom(32))
    state = KbsState.open(tmp_path, kek_uri=kek_uri)
    state.keys.put("m/k/v1", dek, actor="a")
    old = state.store.ring.active
    assert isinstance(old, Pkcs11Kek)
    state.keys.rotate_kek(actor="a")
    new = state.store.ring.active
    assert isinstance(new, Pkcs11Kek)
    state.close()
    # rebuild the token as a crash at each step of a promotion leaves it: a copy of the
    # old KEK cannot be made (non-extractable), so a stand-in object plays the retired one
    stand_in = token.generate(label + ".retired")
    if stage == "retired+next":
        token.relabel(new, label + ".next")
    elif stage == "only-retired":
        token.destroy(stand_in)
        token.relabel(new, label + ".retired")
    reopened = KbsState.open(tmp_path, kek_uri=kek_uri)
    try:
        assert reopened.store.ring.active.id == new.id
        objs = _objects(token, label)
        assert [k.id for k in objs[""]] == [new.id]
        assert objs[".next"] == objs[".retired"] == []
        assert reopened.store.load("m/k/v1").dek == dek
        assert reopened.audit.verify().ok
    finally:
        reopened.close()


def test_interrupted_rotation_with_a_next_kek_is_finished(tmp_path: Path, kek_uri: str) -> None:
    token, label = _labels(kek_uri)
    dek = SecretBytes(os.urandom(32))
    state = KbsState.open(tmp_path, kek_uri=kek_uri)
    state.keys.put("m/k/v1", dek, actor="a")
    state.close()
    nxt = TokenKeks(token, label, tmp_path / "kek.lock").create_next()  # crash after this
    reopened = KbsState.open(tmp_path, kek_uri=kek_uri)
    try:
        assert reopened.store.ring.active.id == nxt.id
        assert reopened.store.count_by_kek() == {nxt.id: 1}
        assert reopened.store.load("m/k/v1").dek == dek
        assert "resumed at start-up" in reopened.audit.entries()[-1].reasons
    finally:
        reopened.close()


def test_two_labels_of_one_name_are_refused(tmp_path: Path, kek_uri: str) -> None:
    token, label = _labels(kek_uri)
    token.generate(label)
    token.generate(label)
    with pytest.raises(ConfigError, match="at most one"):
        KbsState.open(tmp_path, kek_uri=kek_uri)


def test_concurrent_puts_releases_and_rotations(tmp_path: Path, kek_uri: str) -> None:
    """The token session is shared by every request thread: nothing may interleave."""
    state = KbsState.open(tmp_path, kek_uri=kek_uri)
    deks: dict[str, SecretBytes] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()

    def putter(n: int) -> None:
        try:
            for i in range(15):
                key_id, dek = f"m/t{n}/v{i}", SecretBytes(os.urandom(32))
                state.keys.put(key_id, dek, policy=POLICY, actor="a")
                with lock:
                    deks[key_id] = dek
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def rotator() -> None:
        try:
            for _ in range(3):
                state.keys.rotate_kek(actor="a")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=putter, args=(n,)) for n in range(4)]
    threads.append(threading.Thread(target=rotator))
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        active = state.store.ring.active.id
        assert state.store.count_by_kek() == {active: len(deks)}
        for key_id, dek in deks.items():
            assert state.store.load(key_id).dek == dek
        assert state.audit.verify().ok
    finally:
        state.close()


def test_replicas_creating_the_first_kek_at_once_keep_exactly_one(
    tmp_path: Path, kek_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another machine's KBS creates its first KEK between our create and our second look:
    ours is destroyed, theirs is used, and the token holds exactly one."""
    token, label = _labels(kek_uri)
    real_generate = token.generate
    theirs: list[Pkcs11Kek] = []

    def racing_generate(name: str) -> Pkcs11Kek:
        ours = real_generate(name)
        if not theirs:
            theirs.append(real_generate(name))  # the other replica, at the same moment
        return ours

    monkeypatch.setattr(token, "generate", racing_generate)
    state = KbsState.open(tmp_path, kek_uri=kek_uri)
    try:
        (only,) = token.find(label)
        assert only.id == theirs[0].id
        assert state.store.ring.active.id == theirs[0].id
    finally:
        state.close()


def test_a_mac_key_left_by_a_crash_changes_nothing(tmp_path: Path, kek_uri: str) -> None:
    """A KEK's MAC key is generated before it and destroyed after it, so a crash leaves at
    worst a MAC key that no KEK names: the KBS starts and serves as before. A KEK whose
    MAC key is gone (never by modelseal's order) is refused, not used without MACs."""
    import pkcs11

    token, label = _labels(kek_uri)
    dek = SecretBytes(os.urandom(32))
    state = KbsState.open(tmp_path, kek_uri=kek_uri)
    state.keys.put("m/k/v1", dek, actor="a")
    state.close()
    # killed between the two generations of a rotation's next KEK
    session = token._session

    class DiesAtTheSecondKey:
        generated = 0

        def __getattr__(self, name: str) -> Any:
            return getattr(session, name)

        def generate_key(self, *args: Any, **kwargs: Any) -> Any:
            self.generated += 1
            if self.generated == 2:
                raise pkcs11.exceptions.DeviceRemoved
            return session.generate_key(*args, **kwargs)

    dies = DiesAtTheSecondKey()
    token._session = dies  # type: ignore[assignment]
    try:
        with pytest.raises(BackendError):
            TokenKeks(token, label, tmp_path / "kek.lock").create_next()
    finally:
        if token._session is dies:  # DeviceRemoved made the token open a new session
            token._session = session
    assert token.find(label + ".next") == []  # only the MAC key, which nothing names
    # killed between destroying a discarded KEK and its MAC key
    discarded = token.generate(label + ".next")
    discarded.handle.destroy()
    reopened = KbsState.open(tmp_path, kek_uri=kek_uri)
    try:
        assert reopened.store.load("m/k/v1").dek == dek
        assert reopened.audit.verify().ok
        assert reopened.keys.rotate_kek(actor="a").new_kek_id != discarded.id
        active = reopened.store.ring.active
    finally:
        reopened.close()
    assert isinstance(active, Pkcs11Kek)
    active.mac_handle.destroy()
    with pytest.raises(ConfigError, match="has 0 MAC keys"):
        KbsState.open(tmp_path, kek_uri=kek_uri)
