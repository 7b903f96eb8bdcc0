"""``GET /kbs/v0/resource/<repo>/<type>/<tag>``: token → release decision → JWE to the TEE.

The token (Bearer header, else the session cookie's stored token) is re-verified as a JWT on
every request. The release decision and its audit row belong to ``KbsState.release_unit``;
this module verifies the token, asks for the DEK, encrypts it to the TEE key named in the
token and wipes it. The three steps are separate so the app can hand only the database step
to its unit runner, off the event loop.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from modelseal._internal.canonical import compact_json
from modelseal.crypto.jose.jwe import encrypt
from modelseal.crypto.jose.jwk import RecipientKey, recipient_from_jwk
from modelseal.crypto.secret import SecretBytes
from modelseal.kbs.tokens import TokenService, VerifiedToken

if TYPE_CHECKING:
    from modelseal.kbs.release import ReleaseOutcome
    from modelseal.kbs.state import KbsState
    from modelseal.kbs.units import Unit

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

    def __init__(self, state: KbsState, tokens: TokenService) -> None:
        self.state = state
        self.tokens = tokens

    def verify(self, token: str) -> tuple[VerifiedToken, RecipientKey]:
        """Verify the EAR token and the TEE key it names (TokenError / FormatError)."""
        verified = self.tokens.verify(token)
        if verified.recipient is not None:
            return verified, verified.recipient
        return verified, recipient_from_jwk(verified.tee_pubkey)

    def release_unit(
        self, path: str, verified: VerifiedToken, requester: str
    ) -> Unit[ReleaseOutcome]:
        """Policy decision + audit row as a unit of work for the app's unit runner;
        ``released`` of its outcome gives the DEK or PolicyDenied / KeyNotFound (same 403)."""
        return self.state.release_unit(path, verified.claims, verified.jti, requester)

    def wrap(
        self, path: str, dek: SecretBytes, verified: VerifiedToken, recipient: RecipientKey
    ) -> bytes:
        """The JSON bytes of the flattened JWE of ``dek``; the DEK is wiped either way."""
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
        return compact_json(jwe)
