"""The Intel Trust Authority registration operations on SQLite and PostgreSQL.

Policy translation (ITA attributes -> release policy, refusals), the policy rows' integrity
check, references that end when a key gets another policy, namespaces, and parallel key
creates racing a policy delete. The HTTP routes run against a real ``kbs serve`` in
tests/e2e/test_ita_registration.py.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from modelseal._internal.clock import FixedClock
from modelseal.crypto.secret import SecretBytes
from modelseal.errors import AuthorizationError, DecryptionError
from modelseal.kbs.admin_auth import AdminPrincipal
from modelseal.kbs.errors_http import ItaBadRequest, ItaNotFound
from modelseal.kbs.ita_model import (
    NIL_UUID,
    KeyCreateRequest,
    KeyUpdateRequest,
    PolicyRequest,
    TranslationRefused,
    policy_document,
    release_policy,
)
from modelseal.kbs.ita_service import ItaService
from modelseal.kbs.ita_tables import ItaPolicyRow
from modelseal.kbs.state import KbsState
from modelseal.policy.document import TCB_STATUSES
from modelseal.policy.evaluate import evaluate
from modelseal.protocol.claims import Claims

ADMIN = AdminPrincipal("tester", frozenset({"admin"}), "t1")
A, B, C = "a" * 96, "b" * 96, "c" * 96
TDX = ("mock-tdx", "tdx")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def ita(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ItaService]:
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    state = KbsState.open(tmp_path / "kbs", database_url=url, clock=FixedClock())
    try:
        yield ItaService(state, TDX)
    finally:
        state.close()


def _req(attributes: dict[str, object] | None = None, **top: object) -> PolicyRequest:
    doc: dict[str, object] = {"attestation_type": "TDX", "tdx": {"attributes": attributes or {}}}
    doc.update(top)
    return PolicyRequest.model_validate(doc)


def _key(policy_id: str | None) -> KeyCreateRequest:
    return KeyCreateRequest.model_validate(
        {
            "key_information": {"algorithm": "AES", "key_length": 256},
            "transfer_policy_id": policy_id,
        }
    )


def _move(policy_id: str) -> KeyUpdateRequest:
    return KeyUpdateRequest.model_validate({"transfer_policy_id": policy_id})


def _claims(**measurements: str) -> Claims:
    return Claims(
        tee="tdx", debug=False, report_data=b"", tcb_status="UpToDate", measurements=measurements
    )


def test_translation_keeps_itas_meaning() -> None:
    req = _req({"mrtd": [A, B.upper()], "mrseam": [C], "rtmr2": A, "enforce_tcb_upto_date": True})
    doc = policy_document(req, policy_id="p", created_at=1_800_000_000.25)
    assert doc == {
        "id": "p",
        "created_at": "2027-01-15T08:00:00.25Z",
        "attestation_type": "TDX",
        "tdx": {
            "attributes": {"mrseam": [C], "mrtd": [A, B], "rtmr2": A, "enforce_tcb_upto_date": True}
        },
    }
    policy = release_policy(doc, TDX)
    assert policy.tee == TDX
    assert policy.tcb_status == ("UpToDate",)
    assert policy.measurements == (
        {"rtmr2": A, "mr_td": A, "mr_seam": C},
        {"rtmr2": A, "mr_td": B, "mr_seam": C},
    )
    allowed = _claims(mr_td=B, mr_seam=C, rtmr2=A)
    assert evaluate(policy, allowed, now=0).allowed
    for name, value in (
        ("mr_td", B[:-1] + "c"),
        ("mr_seam", C[:-1] + "d"),
        ("rtmr2", A[:-1] + "b"),
    ):
        assert not evaluate(policy, _claims(**{**allowed.measurements, name: value}), now=0).allowed
    # enforce_tcb_upto_date false or absent: ITA checks no TCB status, nor does the copy
    loose = release_policy(policy_document(_req({}), policy_id="q", created_at=0), TDX)
    assert loose.tcb_status == TCB_STATUSES
    assert loose.measurements is None


@pytest.mark.parametrize(
    ("req", "problem"),
    [
        (_req({"seamsvn": 3}), "seamsvn cannot be evaluated"),
        (_req({}, tdx={"attributes": {}, "policy_ids": ["x"]}), "policy_ids"),
        (_req({}, tdx=None), "needs tdx.attributes"),
        (_req(attestation_type="SGX", tdx=None), "SGX is not supported"),
        (_req(attestation_type="sev"), "Invalid attestation type"),
        (_req({"mrtd": ["zz" * 48]}), "mrtd[0] is not a SHA-384 hex string"),
        (_req({"rtmr1": "a" * 95}), "rtmr1 is not a SHA-384"),
    ],
)
def test_what_modelseal_cannot_evaluate_is_refused(req: PolicyRequest, problem: str) -> None:
    with pytest.raises(TranslationRefused, match=problem.replace("[", r"\[").replace("]", r"\]")):
        policy_document(req, policy_id="p", created_at=0)


def test_too_many_combinations_are_refused() -> None:
    many = [f"{i:096x}" for i in range(11)]
    doc = policy_document(
        _req({"mrtd": many, "mrseam": many, "mrsignerseam": many}), policy_id="p", created_at=0
    )
    with pytest.raises(TranslationRefused, match="more than 1024"):
        release_policy(doc, TDX)


def test_create_reference_and_delete(ita: ItaService) -> None:
    policy = ita.create_policy(ADMIN, _req({"mrtd": [A]}))
    key = ita.create_key(ADMIN, _key(policy["id"]))
    assert key["transfer_policy_id"] == policy["id"]
    stored = ita.state.keys.get_policy(f"default/key/{key['id']}")
    assert stored is not None
    assert stored.measurements == ({"mr_td": A},)
    with pytest.raises(ItaBadRequest, match="associated with keys"):
        ita.delete_policy(ADMIN, policy["id"])
    # a policy set through the modelseal admin API ends the reference
    ita.state.keys.set_policy(
        f"default/key/{key['id']}",
        {"apiVersion": "modelseal/v1", "kind": "ReleasePolicy", "tee": ["tdx"]},
        actor="admin:other",
    )
    assert ita.get_key(ADMIN, key["id"])["transfer_policy_id"] == NIL_UUID
    # a key deleted over the admin API no longer refers to anything either
    other = ita.create_key(ADMIN, _key(policy["id"]))
    ita.state.keys.delete(f"default/key/{other['id']}", actor="admin:other")
    ita.delete_policy(ADMIN, policy["id"])
    assert ita.get_key(ADMIN, key["id"])["transfer_policy_id"] == NIL_UUID  # still listed
    assert {k["id"] for k in ita.search_keys(ADMIN, {"keyLength": "256"})} == {key["id"]}
    with pytest.raises(ItaNotFound):
        ita.get_policy(ADMIN, policy["id"])
    with pytest.raises(ItaBadRequest, match="does not exist"):
        ita.create_key(ADMIN, _key(policy["id"]))
    actions = [e.action for e in ita.state.audit.entries(limit=100)]
    assert actions == [
        "ita.policy.create", "key.generate", "policy.set", "key.generate", "key.delete",
        "ita.policy.delete",
    ]  # fmt: skip
    assert ita.state.audit.verify().ok


def test_an_edited_policy_row_is_refused(ita: ItaService) -> None:
    policy = ita.create_policy(ADMIN, _req({"mrtd": [A]}))
    wider = ita.create_policy(ADMIN, _req({}))  # no measurements at all
    with ita.state.db.begin() as s:
        other = s.get(ItaPolicyRow, wider["id"])
        assert other is not None
        s.execute(
            update(ItaPolicyRow)
            .where(ItaPolicyRow.id == policy["id"])
            .values(release_json=other.release_json, policy_digest=other.policy_digest)
        )
    with pytest.raises(DecryptionError, match="integrity"):
        ita.create_key(ADMIN, _key(policy["id"]))
    with pytest.raises(DecryptionError):
        ita.get_policy(ADMIN, policy["id"])


def test_a_publisher_outside_default_key_is_refused_and_audited(ita: ItaService) -> None:
    """Keys and policies alike: the admin API shows a key's policy only to who may manage
    the key, and ITA policies serve only the keys under ``default/key``. Every refusal
    comes before any lookup (an unknown id is refused the same way) and is audited."""
    policy = ita.create_policy(ADMIN, _req({"mrtd": [A]}))
    allowed = AdminPrincipal("p", frozenset({"publisher"}), "t3", frozenset({"default/key"}))
    key = ita.create_key(allowed, _key(policy["id"]))
    assert key["transfer_policy_id"] == policy["id"]
    assert ita.get_policy(allowed, policy["id"]) == ita.list_policies(allowed)[0]

    acme = AdminPrincipal("p", frozenset({"publisher"}), "t2", frozenset({"acme"}))
    unknown = "4517534b-a758-4447-9d2f-3e5606152ed6"
    attempts = [
        ("ita.policy.create", None, lambda: ita.create_policy(acme, _req({"mrtd": [B]}))),
        ("ita.policy.read", None, lambda: ita.list_policies(acme)),
        ("ita.policy.read", None, lambda: ita.get_policy(acme, policy["id"])),
        ("ita.policy.read", None, lambda: ita.get_policy(acme, unknown)),
        ("key.put", "*", lambda: ita.create_key(acme, _key(policy["id"]))),
        ("key.read", key["id"], lambda: ita.get_key(acme, key["id"])),
        ("key.read", unknown, lambda: ita.get_key(acme, unknown)),
        ("policy.set", key["id"], lambda: ita.update_key(acme, key["id"], _move(policy["id"]))),
        ("policy.set", unknown, lambda: ita.update_key(acme, unknown, _move(policy["id"]))),
    ]
    for what, key_uuid, attempt in attempts:
        before = len(ita.state.audit.entries(limit=1000))
        with pytest.raises(AuthorizationError):
            attempt()
        rows = ita.state.audit.entries(limit=1000)
        assert len(rows) == before + 1, what
        last = rows[-1]
        assert (last.action, last.decision, last.actor) == ("authz.deny", "deny", "admin:p")
        assert last.reasons[0].startswith(what + ":")
        if key_uuid is None:
            assert last.key_id is None
        elif key_uuid != "*":
            assert last.key_id == f"default/key/{key_uuid}"
    assert ita.list_policies(ADMIN) == [policy]
    assert ita.state.audit.verify().ok


def test_parallel_creates_and_a_racing_delete_stay_consistent(ita: ItaService) -> None:
    """Keys created while the policy is deleted: each key either exists with the policy
    (and the delete was refused) or was refused itself; never a key without its policy."""
    policy = ita.create_policy(ADMIN, _req({"mrtd": [A]}))
    created: list[str] = []
    refused: list[str] = []
    deleted: list[bool] = []

    def create() -> None:
        try:
            created.append(ita.create_key(ADMIN, _key(policy["id"]))["id"])
        except ItaBadRequest as exc:
            refused.append(str(exc))

    def delete() -> None:
        try:
            ita.delete_policy(ADMIN, policy["id"])
            deleted.append(True)
        except ItaBadRequest:
            deleted.append(False)

    threads = [threading.Thread(target=create) for _ in range(8)]
    threads.insert(4, threading.Thread(target=delete))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(created) + len(refused) == 8
    if deleted == [True]:
        assert created == []  # the delete came first: every later create was refused
    else:
        assert created
        for key_id in created:
            assert ita.get_key(ADMIN, key_id)["transfer_policy_id"] == policy["id"]
    assert ita.state.audit.verify().ok


def test_key_search_filters_as_ita(ita: ItaService) -> None:
    policy = ita.create_policy(ADMIN, _req({"mrtd": [A]}))
    with_policy = ita.create_key(ADMIN, _key(policy["id"]))["id"]
    without = ita.create_key(ADMIN, _key(None))["id"]

    def ids(**query: str) -> set[str]:
        return {k["id"] for k in ita.search_keys(ADMIN, query)}

    both = {with_policy, without}
    assert ids(keyLength="256") == both
    assert ids(algorithm="AES") == both
    assert ids(algorithm="aes") == set()  # ITA compares the algorithm as it was given
    assert ids(transferPolicyId=policy["id"]) == {with_policy}
    assert ids(transferPolicyId=NIL_UUID) == both  # nil: no filter
    assert ids(curveType="secp384r1") == set()
    assert ids(keyLength="3072") == set()
    for bad in ({}, {"x": "1"}, {"keyLength": "100"}, {"keyLength": "²"}, {"curveType": "p"},
                {"algorithm": "DES"}, {"transferPolicyId": "nope"}):  # fmt: skip
        with pytest.raises(ItaBadRequest):
            ita.search_keys(ADMIN, bad)


def test_a_policy_row_mac_differing_in_the_last_byte_is_refused(ita: ItaService) -> None:
    policy = ita.create_policy(ADMIN, _req({"mrtd": [A]}))
    with ita.state.db.begin() as s:
        row = s.get(ItaPolicyRow, policy["id"])
        assert row is not None
        row.mac = row.mac[:-2] + f"{int(row.mac[-2:], 16) ^ 0x01:02x}"
    with pytest.raises(DecryptionError, match="integrity"):
        ita.get_policy(ADMIN, policy["id"])
    with pytest.raises(DecryptionError):
        ita.list_policies(ADMIN)


def test_a_key_deleted_right_after_its_policy_moved_still_gets_the_update_answer(
    ita: ItaService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The update committed; a delete committed just after it must not turn the answer
    into an unknown-key error (a 500 over HTTP)."""
    first = ita.create_policy(ADMIN, _req({"mrtd": [A]}))
    second = ita.create_policy(ADMIN, _req({"mrtd": [B]}))
    key = ita.create_key(ADMIN, _key(first["id"]))
    kid = f"default/key/{key['id']}"
    real = ita.state.keys.set_policy

    def then_deleted(*args: Any, **kwargs: Any) -> Any:
        done = real(*args, **kwargs)
        ita.state.keys.delete(kid, actor="admin:other")
        return done

    monkeypatch.setattr(ita.state.keys, "set_policy", then_deleted)
    answer = ita.update_key(ADMIN, key["id"], _move(second["id"]))
    assert (answer["id"], answer["transfer_policy_id"]) == (key["id"], second["id"])
    assert answer["created_at"] == key["created_at"]
    with pytest.raises(ItaNotFound):
        ita.get_key(ADMIN, key["id"])


def test_a_key_deleted_over_the_admin_api_and_put_again_is_no_ita_key(ita: ItaService) -> None:
    """Deleting an ITA key over the admin API takes its ITA reference along: a key put
    later under the same id through the admin API is served, but not an ITA key (not
    listed, not managed, no stale algorithm, length or policy id)."""
    policy = ita.create_policy(ADMIN, _req({"mrtd": [A]}))
    key = ita.create_key(ADMIN, _key(policy["id"]))
    kid = f"default/key/{key['id']}"
    ita.state.keys.delete(kid, actor="admin:operator")
    dek = SecretBytes(bytes(range(16)))
    ita.state.keys.put(
        kid,
        dek,
        policy=release_policy(
            policy_document(_req({"mrtd": [A]}), policy_id="x", created_at=0), TDX
        ),
        actor="admin:o",
    )
    with pytest.raises(ItaNotFound):
        ita.get_key(ADMIN, key["id"])
    with pytest.raises(ItaNotFound):
        ita.update_key(ADMIN, key["id"], _move(policy["id"]))
    assert ita.search_keys(ADMIN, {"algorithm": "AES"}) == []
    ita.delete_policy(ADMIN, policy["id"])  # nothing refers to it any more
