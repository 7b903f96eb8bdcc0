"""KEK: wrapping with key-id/KEK-id AAD, one opaque error, secret-file permissions."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelseal.crypto.kek import KekRing, SoftwareKek, create_secret_file, read_secret_file
from modelseal.crypto.secret import SecretBytes
from modelseal.errors import ConfigError, DecryptionError

KEK = SoftwareKek(SecretBytes(bytes(range(32))))
DEK = SecretBytes(os.urandom(32))


def test_round_trip_and_fresh_nonces() -> None:
    a, b = KEK.wrap("models/m/v1", DEK), KEK.wrap("models/m/v1", DEK)
    assert a != b
    assert len(a) == 1 + 12 + 32 + 16
    assert DEK.reveal() not in a
    assert KEK.unwrap("models/m/v1", a) == DEK
    assert KEK.unwrap("models/m/v1", b) == DEK


def test_key_id_is_bound() -> None:
    blob = KEK.wrap("models/m/v1", DEK)
    with pytest.raises(DecryptionError) as exc:
        KEK.unwrap("models/m/v2", blob)
    assert str(exc.value) == "authentication failed"


def test_kek_is_bound() -> None:
    other = SoftwareKek.generate()
    assert other.id != KEK.id
    with pytest.raises(DecryptionError):
        other.unwrap("models/m/v1", KEK.wrap("models/m/v1", DEK))


def test_kek_id_is_stable_and_reveals_nothing() -> None:
    again = SoftwareKek(SecretBytes(bytes(range(32))))
    assert again.id == KEK.id
    assert KEK.id.startswith("kek-")
    assert bytes(range(32)).hex()[:16] not in KEK.id
    assert "kek-" in repr(KEK)
    assert bytes(range(32)).hex() not in repr(KEK)


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_kek_size(size: int) -> None:
    with pytest.raises(ConfigError):
        SoftwareKek(SecretBytes(b"x" * size))


@settings(deadline=None)
@given(st.binary(max_size=100))
def test_garbage_unwrap_is_one_error(blob: bytes) -> None:
    with pytest.raises(DecryptionError):
        KEK.unwrap("models/m/v1", blob)


@settings(deadline=None)
@given(st.integers(min_value=0, max_value=60), st.integers(min_value=1, max_value=255))
def test_any_flipped_byte_fails(pos: int, delta: int) -> None:
    blob = bytearray(KEK.wrap("a/b/c", DEK))
    blob[pos % len(blob)] ^= delta
    with pytest.raises(DecryptionError):
        KEK.unwrap("a/b/c", bytes(blob))


def test_mac_labels_are_separated() -> None:
    assert KEK.mac("a", b"x") != KEK.mac("b", b"x")
    assert KEK.verify_mac("a", b"x", KEK.mac("a", b"x"))
    assert not KEK.verify_mac("a", b"y", KEK.mac("a", b"x"))


def test_ring_lookup() -> None:
    other = SoftwareKek.generate()
    ring = KekRing(KEK, [other])
    assert ring.get(other.id) is other
    assert ring.active is KEK
    with pytest.raises(ConfigError, match="does not hold"):
        ring.get("kek-0000")


def test_secret_file_created_once_0600(tmp_path: Path) -> None:
    path = tmp_path / "kek"
    assert create_secret_file(path, size=32)
    first = path.read_bytes()
    assert not create_secret_file(path, size=32)
    assert path.read_bytes() == first
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_secret_file(path, size=32, what="KEK").reveal() == first
    assert [p.name for p in tmp_path.iterdir()] == ["kek"]


def test_concurrent_creation_has_one_winner(tmp_path: Path) -> None:
    path = tmp_path / "kek"
    results: list[bool] = []

    def make() -> None:
        results.append(create_secret_file(path, size=32))

    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1
    assert len(path.read_bytes()) == 32


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_loose_permissions_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "kek"
    create_secret_file(path, size=32)
    os.chmod(path, mode)
    with pytest.raises(ConfigError, match="chmod 600"):
        read_secret_file(path, size=32, what="KEK")


def test_owner_only_modes_accepted(tmp_path: Path) -> None:
    path = tmp_path / "kek"
    create_secret_file(path, size=32)
    os.chmod(path, 0o400)
    assert len(read_secret_file(path, size=32, what="KEK")) == 32


def test_symlink_to_private_file_accepted(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    create_secret_file(target, size=32)
    link = tmp_path / "kek"
    link.symlink_to(target)
    assert read_secret_file(link, size=32, what="KEK").reveal() == target.read_bytes()


def test_missing_wrong_size_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not readable"):
        read_secret_file(tmp_path / "none", size=32, what="KEK")
    (tmp_path / "d").mkdir(mode=0o700)
    with pytest.raises(ConfigError, match="regular file"):
        read_secret_file(tmp_path / "d", size=32, what="KEK")
    bad = tmp_path / "bad"
    fd = os.open(bad, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"x" * 33)
    os.close(fd)
    with pytest.raises(ConfigError, match="malformed"):
        read_secret_file(bad, size=32, what="KEK")
