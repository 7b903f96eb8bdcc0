"""``GET /kbs/v0/resource/<repo>/<type>/<tag>``: token → release decision → JWE to the TEE.

The token (Bearer header, else the session cookie's stored token) is re-verified as a JWT on
every request. The release decision and its audit row belong to ``KbsState.release``; this
module only encrypts what it returns to the TEE key named in the token and wipes the DEK.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from modelseal.crypto.jwe import encrypt
from modelseal.crypto.jwk import recipient_from_jwk
from modelseal.errors import TokenError
from modelseal.kbs.sessions import SessionStore
from modelseal.kbs.tokens import TokenService
from modelseal.protocol.kbs import check_resource_path

if TYPE_CHECKING:
    from modelseal.kbs.state import KbsState

log = logging.getLogger("modelseal.kbs")

_BEARER = "bearer "


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer`` header, if any."""
    if authorization and authorization[: len(_BEARER)].lower() == _BEARER:
        token = authorization[len(_BEARER) :].strip()
        return token or None
    return None


class ResourceService:
    """Releases resources (model keys) as flattened JWE to attested TEEs."""

    def __init__(self, state: KbsState, tokens: TokenService, sessions: SessionStore) -> None:
        self.state = state
        self.tokens = tokens
        self.sessions = sessions

    def get(
        self,
        path: str,
        *,
        authorization: str | None,
        session_id: str | None,
        requester: str,
    ) -> bytes:
        """Return the JSON bytes of the JWE; raises FormatError/TokenError/PolicyDenied/..."""
        check_resource_path(path)
        token = bearer_token(authorization)
        if token is None and session_id:
            token = self.sessions.token_for(session_id)
        if token is None:
            raise TokenError("no token: send the session cookie or Authorization: Bearer")
        verified = self.tokens.verify(token)
        recipient = recipient_from_jwk(verified.tee_pubkey)
        dek = self.state.release(path, verified.claims, token_id=verified.jti, requester=requester)
        try:
            jwe = encrypt(dek.reveal(), recipient)
        finally:
            dek.wipe()
        log.info(
            "released %s to tee=%s token=%s alg=%s%s",
            path,
            verified.claims.tee,
            verified.jti,
            recipient.alg,
            " INSECURE" if verified.claims.insecure else "",
        )
        return json.dumps(jwe, separators=(",", ":")).encode("ascii")
