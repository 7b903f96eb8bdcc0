"""The Intel Trust Authority KBS registration operations over one :class:`KbsState`.

Blocking (database and scrypt work); :mod:`modelseal.kbs.ita_api` runs them in the thread
pool. Every write is one transaction holding the audit append lock, with its audit row:
a policy create or delete here, a key create through
:meth:`~modelseal.kbs.keys.KeyService.put` with the key's ITA row written inside the same
transaction (so the policy it names cannot be deleted in between, and a crash never leaves
a key without its reference or a reference without its key).

Keys are ``default/key/<uuid>`` (the resource the transfer route ``/kbs/v1/keys/<uuid>/
transfer`` serves); their data key is generated from the operating system's CSPRNG or
imported from ``key_data``, and no answer ever carries key bytes.
"""

from __future__ import annotations

import hmac
import json
import secrets
import uuid
from collections.abc import Iterable, Mapping
from hashlib import sha256
from typing import Any, NoReturn

from sqlalchemy import Connection, delete, select, update
from sqlalchemy.orm import Session

from modelseal._internal.canonical import canonical_json
from modelseal._internal.encoding import b64_decode
from modelseal.crypto.secret import SecretBytes
from modelseal.errors import DecryptionError, FormatError, KeyNotFound
from modelseal.kbs.admin_api import AdminApi
from modelseal.kbs.admin_auth import AdminPrincipal
from modelseal.kbs.errors_http import ItaBadRequest, ItaNotFound, ItaRefused
from modelseal.kbs.ita_model import (
    AES_KEY_BITS,
    ITA_UUID_RE,
    NIL_UUID,
    KeyCreateRequest,
    KeyUpdateRequest,
    PolicyRequest,
    TranslationRefused,
    go_time,
    policy_document,
    release_policy,
)
from modelseal.kbs.ita_tables import ItaKeyRow, ItaPolicyRow
from modelseal.kbs.keys import stored_policy
from modelseal.kbs.state import KbsState
from modelseal.keystore.store import KeyRecord
from modelseal.keystore.tables import KeyRow
from modelseal.protocol.kbs import resource_path

__all__ = ["KEY_FILTERS", "ItaService"]

#: the query parameters of ``GET /kbs/v1/keys`` (ITA requires at least one)
KEY_FILTERS = ("algorithm", "keyLength", "curveType", "transferPolicyId")
_ALGORITHMS = ("AES", "RSA", "EC", "aes", "rsa", "ec")
#: the values ITA's key search accepts as filters (its AES and RSA lengths, its curves)
_FILTER_LENGTHS = (*AES_KEY_BITS, 2048, 3072, 4096, 7680)
_CURVES = ("secp256r1", "secp384r1", "secp521r1", "prime256v1")
_POLICY_MISSING = "400: Key transfer policy with specified id does not exist"
_KEY_MISSING = "404: Key with specified id does not exist"
#: a key id in the namespace of every ITA key (``default/key/<uuid>``): ITA policies serve
#: only those keys, so a publisher token must cover it to create or read them
_ITA_SCOPE = resource_path(NIL_UUID)


def _policy_id(raw: str | None, *, missing: str = _POLICY_MISSING) -> str | None:
    """A transfer policy id from a request (None or the nil UUID: no policy)."""
    if raw is None or raw == NIL_UUID:
        return None
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise ItaBadRequest(missing) from None


class ItaService:
    """Policies, keys and their references; ``tee_kinds`` are what ``attestation_type:
    TDX`` means on this KBS (the kinds its transfer route verifies TDX quotes with)."""

    def __init__(self, state: KbsState, tee_kinds: Iterable[str]) -> None:
        self.state = state
        self.tee_kinds = tuple(sorted(set(tee_kinds)))
        self.admin = AdminApi(state)
        self._mac_key = hmac.new(
            state.admin_key.reveal(), b"modelseal ita-policy mac", sha256
        ).digest()

    # --- policies ------------------------------------------------------------------------

    def _mac(self, row: ItaPolicyRow) -> str:
        fields = [row.id, row.document, row.release_json, row.policy_digest, repr(row.created_at)]
        return hmac.new(self._mac_key, canonical_json(fields), sha256).hexdigest()

    def _checked(self, row: ItaPolicyRow) -> ItaPolicyRow:
        if not hmac.compare_digest(self._mac(row), row.mac):
            raise DecryptionError(f"ITA policy {row.id} failed its integrity check")
        return row

    def _policy_row(self, s: Session, policy_id: str | None, missing: str) -> ItaPolicyRow:
        row = None if policy_id is None else s.get(ItaPolicyRow, policy_id)
        if row is None:
            raise ItaNotFound(missing) if missing.startswith("404") else ItaBadRequest(missing)
        return self._checked(row)

    def _policy_scope(self, who: AdminPrincipal, what: str) -> None:
        """401 (audited) for a publisher token outside ``default/key``: the admin API
        shows a policy only to who may manage its key, and ITA policies serve no other
        keys than those."""
        self.admin.tenant(who, _ITA_SCOPE, what, is_key=False)

    def create_policy(self, who: AdminPrincipal, req: PolicyRequest) -> dict[str, Any]:
        self._policy_scope(who, "ita.policy.create")
        policy_id = str(uuid.uuid4())
        now = self.state.clock.now()
        try:
            document = policy_document(req, policy_id=policy_id, created_at=now)
            release = release_policy(document, self.tee_kinds)
        except TranslationRefused as exc:
            raise ItaBadRequest(f"Invalid request body: {exc}") from None
        row = ItaPolicyRow(
            id=policy_id,
            document=json.dumps(document, separators=(",", ":")),
            release_json=release.canonical().decode(),
            policy_digest=release.digest,
            created_at=now,
            mac="",
        )
        row.mac = self._mac(row)
        with self.state.keys.audited() as (s, conn):
            s.add(row)
            s.flush()
            self._audit(conn, who, "ita.policy.create", row)
        return document

    def _audit(self, conn: Connection, who: AdminPrincipal, action: str, row: ItaPolicyRow) -> None:
        self.state.keys.record(
            conn,
            who.actor,
            action,
            None,
            policy_digest=row.policy_digest,
            reasons=[f"ita_policy={row.id}"],
        )

    def get_policy(self, who: AdminPrincipal, policy_id: str) -> dict[str, Any]:
        self._policy_scope(who, "ita.policy.read")
        missing = "404: Key transfer policy with specified id does not exist"
        with self.state.db.begin() as s:
            row = self._policy_row(s, _canonical_uuid(policy_id), missing)
            document: dict[str, Any] = json.loads(row.document)
        return document

    def list_policies(self, who: AdminPrincipal) -> list[dict[str, Any]]:
        self._policy_scope(who, "ita.policy.read")
        with self.state.db.begin() as s:
            rows = s.scalars(select(ItaPolicyRow).order_by(ItaPolicyRow.created_at)).all()
            return [json.loads(self._checked(r).document) for r in rows]

    def delete_policy(self, who: AdminPrincipal, policy_id: str) -> None:
        """Delete an unreferenced policy; one that keys use is refused (400, as ITA)."""
        missing = "404: Key transfer policy with specified id does not exist"
        with self.state.keys.audited() as (s, conn):
            row = self._policy_row(s, _canonical_uuid(policy_id), missing)
            if self._referenced(s, row):
                raise ItaBadRequest("400: Key transfer policy is associated with keys")
            # references that ended go with it: a key given another policy keeps its ITA
            # row without a policy; the row of a key deleted over the admin API goes
            gone = ~select(KeyRow.key_id).where(KeyRow.key_id == ItaKeyRow.key_id).exists()
            s.execute(delete(ItaKeyRow).where(ItaKeyRow.policy_id == row.id, gone))
            s.execute(update(ItaKeyRow).where(ItaKeyRow.policy_id == row.id).values(policy_id=None))
            s.delete(row)
            s.flush()
            self._audit(conn, who, "ita.policy.delete", row)

    @staticmethod
    def _referenced(s: Session, row: ItaPolicyRow) -> bool:
        found = s.execute(
            select(ItaKeyRow.key_id)
            .join(KeyRow, KeyRow.key_id == ItaKeyRow.key_id)
            .where(ItaKeyRow.policy_id == row.id, KeyRow.policy_digest == row.policy_digest)
            .limit(1)
        ).first()
        return found is not None

    # --- keys ----------------------------------------------------------------------------

    def create_key(self, who: AdminPrincipal, req: KeyCreateRequest) -> dict[str, Any]:
        info = req.key_information
        if info is None:
            raise ItaBadRequest("Invalid request body: key_information is required")
        bits = _check_key_information(info.algorithm, info.key_length, info.curve_type)
        if info.kmip_key_id:
            raise ItaBadRequest(
                "Invalid request body: kmip_key_id is not supported (modelseal keeps keys "
                "under its own KEK, not in a KMIP server)"
            )
        policy_id = _policy_id(req.transfer_policy_id)
        key_uuid = str(uuid.uuid4())
        kid = resource_path(key_uuid)
        self.admin.tenant(who, kid, "key.put")
        release = None
        if policy_id is not None:
            with self.state.db.begin() as s:
                policy_row = self._policy_row(s, policy_id, _POLICY_MISSING)
                release = stored_policy(policy_row.release_json)
        dek = _key_bytes(info.key_data, bits)

        def link(s: Session, record: KeyRecord) -> None:
            # in the key's transaction: the policy must still be the one translated above
            if policy_id is not None:
                row = self._policy_row(s, policy_id, _POLICY_MISSING)
                if release is None or row.policy_digest != release.digest:
                    raise ItaBadRequest(_POLICY_MISSING)
            s.add(
                ItaKeyRow(
                    key_id=record.key_id,
                    policy_id=policy_id,
                    algorithm=info.algorithm,
                    key_length=info.key_length,
                )
            )
            s.flush()

        try:
            record, _ = self.state.keys.put(
                kid, dek, policy=release, actor=who.actor, within=link, generated=not info.key_data
            )
        finally:
            dek.wipe()
        return _key_response(key_uuid, record, info.algorithm, info.key_length, policy_id)

    def _kid(self, who: AdminPrincipal, key_uuid: str, what: str, missing: str) -> str:
        """The key id a route's ``<id>`` names, once ``who`` may ``what`` it: checked
        before the key is looked up, so a token outside ``default/key`` learns nothing
        of which keys exist (as on the admin API)."""
        canonical = _canonical_uuid(key_uuid)
        if canonical is None:
            raise ItaNotFound(missing)
        kid = resource_path(canonical)
        self.admin.tenant(who, kid, what)
        return kid

    def _ita_key(self, s: Session, kid: str, missing: str) -> tuple[ItaKeyRow, KeyRecord]:
        link = s.get(ItaKeyRow, kid)
        key = None if link is None else s.get(KeyRow, link.key_id)
        if link is None or key is None:
            raise ItaNotFound(missing)
        return link, KeyRecord.of(key)

    def _live_policy(self, s: Session, link: ItaKeyRow, record: KeyRecord) -> str | None:
        """The key's ITA policy id while its release policy still is that translation."""
        if link.policy_id is None:
            return None
        row = s.get(ItaPolicyRow, link.policy_id)
        if row is None or row.policy_digest != record.policy_digest:
            return None
        return link.policy_id

    def get_key(self, who: AdminPrincipal, key_uuid: str) -> dict[str, Any]:
        kid = self._kid(who, key_uuid, "key.read", _KEY_MISSING)
        with self.state.db.begin() as s:
            link, record = self._ita_key(s, kid, _KEY_MISSING)
            live = self._live_policy(s, link, record)
        return _key_response(
            record.key_id.rsplit("/", 1)[1], record, link.algorithm, link.key_length, live
        )

    def search_keys(self, who: AdminPrincipal, query: Mapping[str, str]) -> list[dict[str, Any]]:
        """``GET /kbs/v1/keys?...``: ITA requires one known filter at least."""
        if not query or any(name not in KEY_FILTERS for name in query):
            raise ItaBadRequest("Invalid query parameter provided. Refer to API doc for details.")
        algorithm = query.get("algorithm", "").strip()
        length_text = query.get("keyLength", "").strip()
        curve = query.get("curveType", "").strip()
        policy_text = query.get("transferPolicyId", "").strip()
        # bounded before int(): a digit string over Python's conversion limit (4300 digits)
        # raises ValueError, and a longer one costs quadratic time
        numeric = length_text.isascii() and length_text.isdigit() and len(length_text) <= 8
        length = int(length_text) if numeric else -1
        if (
            (algorithm and algorithm not in _ALGORITHMS)
            or (length_text and length not in _FILTER_LENGTHS)
            or (curve and curve not in _CURVES)
        ):
            raise ItaBadRequest("Invalid filter criteria")
        # the nil UUID is "no filter" for ITA, as an absent one
        policy_filter = _policy_id(policy_text or None, missing="Invalid filter criteria")
        out = []
        with self.state.db.begin() as s:
            rows = s.execute(
                select(ItaKeyRow, KeyRow)
                .join(KeyRow, KeyRow.key_id == ItaKeyRow.key_id)
                .order_by(KeyRow.created_at, KeyRow.key_id)
            ).all()
            for link, key in rows:
                record = KeyRecord.of(key)
                live = self._live_policy(s, link, record)
                if (
                    (algorithm and link.algorithm != algorithm)
                    or (length_text and link.key_length != length)
                    or curve  # only EC keys have a curve, and modelseal makes none
                    or (policy_filter is not None and live != policy_filter)
                    or not who.covers(record.key_id)
                ):
                    continue
                key_uuid = record.key_id.rsplit("/", 1)[1]
                out.append(_key_response(key_uuid, record, link.algorithm, link.key_length, live))
        return out

    def delete_key(self, who: AdminPrincipal, key_uuid: str) -> None:
        kid = self._kid(who, key_uuid, "key.delete", _KEY_MISSING)
        with self.state.db.begin() as s:
            self._ita_key(s, kid, _KEY_MISSING)
        try:
            self.state.keys.delete(kid, actor=who.actor)  # its ITA reference goes with it
        except KeyNotFound:
            raise ItaNotFound(_KEY_MISSING) from None

    def refuse_export(self, who: AdminPrincipal, key_uuid: str) -> NoReturn:
        """``POST /kbs/v1/keys/<id>`` (ITA's key export, the key wrapped to a public key
        the caller sends): always 403, and audited, since a token holder asking for key
        bytes is worth an operator's attention whatever the answer."""
        canonical = _canonical_uuid(key_uuid)
        self.state.audit.record(
            actor=who.actor,
            action="ita.key.export",
            key_id=None if canonical is None else resource_path(canonical),
            tee=None,
            claims_digest=None,
            policy_digest=None,
            decision="deny",
            reasons=["modelseal never returns key bytes to an administrator"],
        )
        raise ItaRefused(
            "403: modelseal never returns key bytes to an administrator; register the key "
            "you sealed the model with (key_data), or seal with `modelseal publish`"
        )

    def update_key(
        self, who: AdminPrincipal, key_uuid: str, req: KeyUpdateRequest
    ) -> dict[str, Any]:
        """``PUT /kbs/v1/keys/<id>``: give the key another ITA policy (ITA requires one)."""
        missing_key = (
            "404: Failed to update key with the given key transfer policy ID. Invalid keyID."
        )
        bad_policy = "400: Failed to retrieve key transfer policy"
        policy_id = _policy_id(req.transfer_policy_id, missing=bad_policy)
        if policy_id is None:
            raise ItaBadRequest("400: Key transfer policy must be provided")
        kid = self._kid(who, key_uuid, "policy.set", missing_key)
        with self.state.db.begin() as s:
            release = stored_policy(self._policy_row(s, policy_id, bad_policy).release_json)
            link, _ = self._ita_key(s, kid, missing_key)
            algorithm, length = link.algorithm, link.key_length

        moved: list[KeyRecord] = []

        def relink(s: Session) -> None:
            row = self._policy_row(s, policy_id, bad_policy)
            if row.policy_digest != release.digest:
                raise ItaBadRequest(bad_policy)
            current = s.get(ItaKeyRow, kid)
            key = s.get(KeyRow, kid)
            if current is None or key is None:
                raise ItaNotFound(missing_key)
            current.policy_id = policy_id
            s.flush()
            # the answer is the key as this transaction left it: read after the commit,
            # a delete committed in between would turn a done update into a 500
            moved.append(KeyRecord.of(key))

        try:
            self.state.keys.set_policy(kid, release, actor=who.actor, within=relink)
        except KeyNotFound:
            raise ItaNotFound(missing_key) from None
        return _key_response(kid.rsplit("/", 1)[1], moved[0], algorithm, length, policy_id)


def _canonical_uuid(text: str) -> str | None:
    """The lower-case id of a route parameter matching ITA's id pattern, else None."""
    return text.lower() if ITA_UUID_RE.fullmatch(text) else None


def _check_key_information(algorithm: str, key_length: int, curve_type: str) -> int:
    """The key size in bits, after ITA's checks and modelseal's (model keys are AES)."""
    if not algorithm:
        raise ItaBadRequest("Invalid request body: key algorithm is missing")
    if algorithm not in _ALGORITHMS:
        raise ItaBadRequest("Invalid request body: key algorithm is not supported")
    if algorithm.upper() != "AES":
        raise ItaBadRequest(
            "Invalid request body: only AES keys are supported (modelseal seals models "
            "with AES data keys)"
        )
    if curve_type:
        raise ItaBadRequest("Invalid request body: curve_type applies to EC keys only")
    if key_length == 0:
        raise ItaBadRequest("Invalid request body: Key length is missing")
    if key_length not in AES_KEY_BITS:
        raise ItaBadRequest("Invalid request body: key_length is not supported")
    return key_length


def _key_bytes(key_data: str, bits: int) -> SecretBytes:
    """The supplied key (standard base64 of exactly ``bits``), or a new random one."""
    if not key_data:
        return SecretBytes(secrets.token_bytes(bits // 8))
    try:
        raw = b64_decode(key_data, what="key_data")
    except FormatError:
        raise ItaBadRequest(
            "Invalid request body: key_data must be base64 encoded string for AES key"
        ) from None
    key = SecretBytes(raw)
    del raw
    if len(key) * 8 != bits:
        key.wipe()
        raise ItaBadRequest(
            f"Invalid request body: key_data must be base64 of a {bits}-bit AES key (key_length)"
        )
    return key


def _key_response(
    key_uuid: str, record: KeyRecord, algorithm: str, key_length: int, policy_id: str | None
) -> dict[str, Any]:
    """ITA's ``KeyResponse``: never the key bytes."""
    return {
        "id": key_uuid,
        "key_info": {"algorithm": algorithm, "key_length": key_length},
        "transfer_policy_id": policy_id or NIL_UUID,
        "transfer_link": f"/kbs/v1/keys/{key_uuid}/transfer",
        "created_at": go_time(record.created_at),
    }
