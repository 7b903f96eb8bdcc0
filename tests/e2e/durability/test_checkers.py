"""The durability checks themselves catch what they claim to: each test damages the stored
state the way a lost write or a torn upload would and expects the checker to say so."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.durability.kbs_driver import (
    ADMIN_PREFIX,
    Checker,
    KbsCluster,
    KbsConfig,
    Ledger,
    RcarClient,
    b64url,
    permissive_policy,
    policy_digest,
    release_round,
)
from tests.e2e.durability.processes import CLI, ServerProcess
from tests.e2e.durability.registry_driver import RegistryChecker, RegistryLedger

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def kbs_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KbsCluster, Ledger]]:
    """One KBS with three acknowledged keys, each released once; the checker passes."""
    cluster = KbsCluster(tmp_path_factory.mktemp("checkers"), KbsConfig())
    cluster.start()
    ledger = Ledger(tag="chk")
    rng = random.Random(7)
    try:
        headers = {"Authorization": f"Bearer {cluster.admin_token()}"}
        with httpx.Client(headers=headers, timeout=30) as admin:
            for n in range(3):
                dek, doc = rng.randbytes(32), permissive_policy(n)
                key_id, _ = ledger.new_key(dek, policy_digest(doc))
                r = admin.put(
                    f"{cluster.urls[0]}{ADMIN_PREFIX}/keys/{key_id}",
                    json={"key": b64url(dek), "policy": doc},
                )
                assert r.status_code == 201, r.text
                ledger.ack_key(key_id, policy_digest(doc))
        client = RcarClient()
        try:
            assert release_round(client, ledger, rng, cluster.urls, sorted(ledger.keys)) == 3
        finally:
            client.close()
        assert Checker(cluster, ledger, rng).check() == []
        yield cluster, ledger
    finally:
        cluster.stop()


@pytest.fixture
def kbs(kbs_module: tuple[KbsCluster, Ledger]) -> tuple[KbsCluster, Ledger]:
    """The module's KBS with a copy of its ledger; each test undoes its damage to the store."""
    cluster, ledger = kbs_module
    copy = Ledger(tag=ledger.tag, keys=dict(ledger.keys), releases=ledger.releases.copy())
    copy.policy.update(ledger.policy)
    for key_id in sorted(copy.keys):
        copy.adopt(key_id, copy.keys[key_id])
    return cluster, copy


def _sql(cluster: KbsCluster, statement: str, *args: object) -> list[tuple[object, ...]]:
    with sqlite3.connect(cluster.primary / "kbs.sqlite3") as db:
        return list(db.execute(statement, args))


def _check(cluster: KbsCluster, ledger: Ledger) -> str:
    return "\n".join(Checker(cluster, ledger, random.Random(1)).check())


def test_a_lost_key_is_reported(kbs: tuple[KbsCluster, Ledger]) -> None:
    cluster, ledger = kbs
    lost = sorted(ledger.keys)[0]
    saved = _sql(cluster, "SELECT * FROM ms_keys WHERE key_id = ?", lost)
    _sql(cluster, "DELETE FROM ms_keys WHERE key_id = ?", lost)
    try:
        assert f"acknowledged key {lost} is lost" in _check(cluster, ledger)
    finally:
        marks = ", ".join("?" * len(saved[0]))
        _sql(cluster, f"INSERT INTO ms_keys VALUES ({marks})", *saved[0])


def test_a_row_under_a_retired_kek_is_reported(kbs: tuple[KbsCluster, Ledger]) -> None:
    cluster, ledger = kbs
    key_id = sorted(ledger.keys)[0]
    [(kek_id,)] = _sql(cluster, "SELECT kek_id FROM ms_keys WHERE key_id = ?", key_id)
    _sql(cluster, "UPDATE ms_keys SET kek_id = 'kek-0000000000000000' WHERE key_id = ?", key_id)
    try:
        report = _check(cluster, ledger)
    finally:
        _sql(cluster, "UPDATE ms_keys SET kek_id = ? WHERE key_id = ?", kek_id, key_id)
    assert "1 key row(s) wrapped under kek-0000000000000000" in report
    assert f"{key_id} cannot be unwrapped with the current KEK" in report


def test_different_key_bytes_are_reported(kbs: tuple[KbsCluster, Ledger]) -> None:
    cluster, ledger = kbs
    key_id = sorted(ledger.keys)[0]
    right = ledger.keys[key_id]
    ledger.keys[key_id] = right[:-1] + bytes([right[-1] ^ 1])
    assert f"acknowledged key {key_id} reads back with different bytes" in _check(cluster, ledger)


def test_a_missing_release_row_is_reported(kbs: tuple[KbsCluster, Ledger]) -> None:
    cluster, ledger = kbs
    (token, key_id), _ = next(iter(ledger.releases.items()))
    ledger.releases[(token, key_id)] += 1  # one more acknowledged than logged
    assert "1 acknowledged release(s) missing from the audit log" in _check(cluster, ledger)


def test_a_broken_audit_chain_is_reported(kbs: tuple[KbsCluster, Ledger]) -> None:
    """Between kill points by the library call, after the last one by the operator's
    ``kbs audit --verify``: both must see it."""
    cluster, ledger = kbs
    [(actor,)] = _sql(cluster, "SELECT actor FROM ms_audit WHERE seq = 2")
    _sql(cluster, "UPDATE ms_audit SET actor = 'someone else' WHERE seq = 2")
    try:
        assert "the audit chain breaks at row 2" in _check(cluster, ledger)
        final = Checker(cluster, ledger, random.Random(1)).check(final=True)
        assert "`kbs audit --verify` exited 5" in "\n".join(final)
    finally:
        _sql(cluster, "UPDATE ms_audit SET actor = ? WHERE seq = 2", actor)


def test_the_repaired_store_passes(kbs: tuple[KbsCluster, Ledger]) -> None:
    """Each damage above was undone, so the checks pass again (they are not just failing)."""
    assert _check(*kbs) == ""
    assert Checker(*kbs, random.Random(1)).check(final=True) == []


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[tuple[ServerProcess, Path]]:
    data_dir = tmp_path / "registry"
    server = ServerProcess(
        "registry",
        lambda port: [*CLI, "registry", "serve", "--data-dir", str(data_dir), "--port", str(port)],
        tmp_path / "registry.log",
    )
    server.start()
    try:
        yield server, data_dir
    finally:
        server.stop()


def test_registry_checker_sees_a_torn_object(registry: tuple[ServerProcess, Path]) -> None:
    server, data_dir = registry
    data = random.Random(3).randbytes(100_000)
    token = (data_dir / "upload-token").read_text().strip()
    r = httpx.put(
        f"{server.url}/blobs/m1/v1/w.sealed",
        content=data,
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 201, r.text
    ledger = RegistryLedger(tag="chk")
    ledger.ack_blob("m1/v1/w.sealed", r.json()["sha256"])
    assert RegistryChecker(data_dir, ledger, None).check(server.url) == []
    obj = next((data_dir / "blobs" / "objects").glob("*/*"))
    obj.write_bytes(data[:-1])  # a torn write: one byte short
    problems = "\n".join(RegistryChecker(data_dir, ledger, None).check(server.url))
    assert f"object file {obj.name} does not hash to its name" in problems
    assert "m1/v1/w.sealed" in problems


def test_registry_checker_sees_a_ref_to_a_missing_object(
    registry: tuple[ServerProcess, Path],
) -> None:
    server, data_dir = registry
    token = (data_dir / "upload-token").read_text().strip()
    r = httpx.put(
        f"{server.url}/blobs/m2/v1/w.sealed",
        content=b"gone soon",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 201, r.text
    sha = r.json()["sha256"]
    (data_dir / "blobs" / "objects" / sha[:2] / sha).unlink()  # collected while referenced
    problems = RegistryChecker(data_dir, RegistryLedger(tag="chk"), None).check(server.url)
    assert f"blob m2/v1/w.sealed points to a missing object {sha}" in problems
