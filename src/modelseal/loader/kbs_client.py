"""KBS client used inside the TEE: RCAR attestation, token caching, JWE-wrapped key fetch.

Speaks Trustee's KBS protocol 0.4 (``/kbs/v0/auth`` → ``/kbs/v0/attest`` → ``GET
/kbs/v0/resource/...``): the token is cached for its lifetime and the handshake is repeated
only when the KBS answers 401. Resources come back as flattened JWE encrypted to an
ephemeral TEE key that never leaves this process and is dropped on :meth:`KbsClient.close`.

The KBS is a peer like any other until its answer decrypts: every response (challenge,
token, resource, error) is read as a stream of at most :data:`MAX_RESPONSE_BYTES` that must
be complete within ``timeout`` seconds (:mod:`modelseal._internal.bounded_http`). An
httpx auth flow would buffer whole intermediate responses, so the handshake is explicit.
"""

from __future__ import annotations

import json
import logging
import math
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from modelseal._internal.bounded_http import Reply, send
from modelseal._internal.urls import display_url
from modelseal.crypto.jose.compact import split_jwt
from modelseal.crypto.jose.jwe import decrypt
from modelseal.crypto.jose.jwk import DEFAULT_KEY_ALG, TeeKeyPair
from modelseal.crypto.secret import SecretBytes
from modelseal.errors import (
    AttestationError,
    BackendError,
    ConfigError,
    FormatError,
    NotFound,
    PolicyDenied,
    TokenError,
    TransientError,
    UnsupportedTee,
)
from modelseal.loader.tls import certifi_trust
from modelseal.protocol.binding import device_digest, runtime_data_digest
from modelseal.protocol.kbs import (
    ATTEST_PATH,
    AUTH_PATH,
    COOKIE_NAME,
    PROTOCOL_VERSION,
    RESOURCE_PREFIX,
    AttestationResponse,
    Challenge,
    parse_model,
    resource_path,
)
from modelseal.protocol.wire import WireError, decode_json, describe
from modelseal.tee.base import Attester, close_attester

if TYPE_CHECKING:
    from modelseal.loader.settings import LoaderSettings

log = logging.getLogger(__name__)

#: Re-attest this long before the token's lifetime ends (the KBS clock may differ).
TOKEN_MARGIN = 10.0
#: largest KBS answer read (challenge, token, JWE resource, error body cut at 64 KiB)
MAX_RESPONSE_BYTES = 1 << 20


def _tls_verify(verify: bool | str | Path) -> bool | ssl.SSLContext:
    """httpx's ``verify``: True (certifi, read on the first handshake), False, or a context
    trusting the CA bundle at a path."""
    if verify is True:
        return certifi_trust()
    if isinstance(verify, bool):
        return verify
    try:
        return ssl.create_default_context(cafile=str(verify))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the KBS CA bundle {verify}: {exc}") from exc


def _detail(response: Reply) -> str:
    """The KBS's safe ``detail`` text of an error response, for diagnostics."""
    try:
        body = decode_json(response.content[:4096])
        detail = body.get("detail") if isinstance(body, dict) else None
    except WireError:
        detail = None
    text = f": {_printable(detail)}" if isinstance(detail, str) else ""
    return f"HTTP {response.status_code}{text}"


def _printable(text: str) -> str:
    """A peer's text cut to a printable line (it ends up in logs and error messages)."""
    return "".join(c if c.isprintable() else "?" for c in text[:300])


def _raise_for_handshake(response: Reply, step: str) -> None:
    status = response.status_code
    if status == 200:
        return
    if status >= 500:
        raise TransientError(f"KBS {step} failed: {_detail(response)}")
    if status == 401 and "TEE kind not accepted" in _detail(response):
        raise UnsupportedTee(f"KBS {step} refused this TEE kind: {_detail(response)}")
    if status in (400, 401, 403):
        raise AttestationError(f"KBS {step} rejected: {_detail(response)}")
    raise BackendError(f"KBS {step} returned {_detail(response)}")


def _session_cookie(response: Reply) -> str:
    for header in response.headers.get_list("set-cookie"):
        name, _, rest = header.partition("=")
        if name.strip() == COOKIE_NAME:
            value = rest.split(";", 1)[0].strip()
            if value:
                return value
    raise AttestationError("KBS auth response set no kbs-session-id cookie")


#: sends one request to the KBS: ``(method, url, what, **httpx stream options) -> Reply``
Exchange = Callable[..., Reply]


class RcarSession:
    """The EAR token of one TEE key: cached for its lifetime, renewed by an RCAR handshake.

    Every KBS answer is read through ``exchange`` (a bounded read: size cap and deadline),
    never buffered by httpx on its own.
    """

    def __init__(
        self,
        base_url: str,
        attester: Attester,
        *,
        tee: str,
        keys: TeeKeyPair,
        init_data: str | None = None,
        devices: Sequence[tuple[str, Attester]] = (),
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.attester = attester
        #: device (GPU) attesters whose evidence goes along as additional evidence
        self.devices = tuple(devices)
        self.tee = tee
        self.keys = keys
        self.init_data = init_data
        self.token: str | None = None
        self.token_id: str | None = None
        self._valid_until = 0.0
        self._lock = threading.RLock()
        self.handshakes = 0

    def cached(self) -> str | None:
        with self._lock:
            if self.token is not None and time.monotonic() < self._valid_until:
                return self.token
            return None

    def invalidate(self) -> None:
        with self._lock:
            self.token = None
            self._valid_until = 0.0

    def device_evidence(self, nonce: str, tee_pubkey: Mapping[str, Any]) -> str:
        """Trustee's additional evidence: the JSON text of ``{kind: evidence}`` from the
        device attesters, each bound to the session (nonce and TEE key) the way
        guest-components binds it; the CPU TEE's report data then covers this text."""
        if not self.devices:
            return ""
        binding = device_digest(nonce, tee_pubkey)
        evidence = {kind: attester.evidence(binding) for kind, attester in self.devices}
        return json.dumps(evidence, separators=(",", ":"))

    def handshake(self, exchange: Exchange) -> str:
        """``/auth`` then ``/attest``: a fresh token for this TEE key."""
        with self._lock:
            self.handshakes += 1
            auth_body = {"version": PROTOCOL_VERSION, "tee": self.tee, "extra-params": ""}
            response = exchange("POST", self.base_url + AUTH_PATH, "KBS auth", json=auth_body)
            _raise_for_handshake(response, "auth")
            challenge = parse_model(Challenge, response.content, what="KBS challenge")
            cookie = _session_cookie(response)
            tee_pubkey = self.keys.public_jwk()
            additional = self.device_evidence(challenge.nonce, tee_pubkey)
            digest = runtime_data_digest(challenge.nonce, tee_pubkey, additional)
            evidence = self.attester.evidence(digest)
            attestation: dict[str, Any] = {
                "runtime-data": {"nonce": challenge.nonce, "tee-pubkey": tee_pubkey},
                "tee-evidence": {"primary_evidence": evidence, "additional_evidence": additional},
            }
            if self.init_data is not None:
                attestation["init-data"] = {"format": "toml", "body": self.init_data}
            started = time.monotonic()
            response = exchange(
                "POST",
                self.base_url + ATTEST_PATH,
                "KBS attest",
                json=attestation,
                headers={"Cookie": f"{COOKIE_NAME}={cookie}"},
            )
            _raise_for_handshake(response, "attest")
            token = parse_model(AttestationResponse, response.content, what="KBS token").token
            _header, payload, _input, _sig = split_jwt(token)
            exp, iat = payload.get("exp"), payload.get("iat")
            if (
                not isinstance(exp, int | float)
                or not isinstance(iat, int | float)
                or not (math.isfinite(exp) and math.isfinite(iat))
                or exp <= iat
            ):
                raise AttestationError("KBS issued a token without a valid lifetime")
            lifetime = float(exp) - float(iat)
            self._valid_until = started + lifetime - min(TOKEN_MARGIN, lifetime / 2)
            self.token = token
            jti = payload.get("jti")
            self.token_id = jti if isinstance(jti, str) else None
            log.info(
                "attested to the KBS as %s; token %s valid %.0fs", self.tee, self.token_id, lifetime
            )
            return token


class KbsClient:
    """Fetch resources (model keys) from a KBS after attesting this TEE.

    ``key_alg`` picks the ephemeral TEE key the KBS encrypts to: ``ECDH-ES+A256KW-P256``
    (default), ``-P384``, ``-P521`` or ``RSA-OAEP-256``. ``verify`` is httpx's TLS setting
    (True, False or a CA bundle path). ``init_data`` is the TOML init-data document the TEE
    was launched with, sent so the KBS can check it against the evidence. ``transport``
    replaces httpx's network transport (tests, custom proxies).
    """

    def __init__(
        self,
        base_url: str,
        attester: Attester,
        *,
        tee: str,
        key_alg: str = DEFAULT_KEY_ALG,
        verify: bool | str | Path = True,
        init_data: str | bytes | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        devices: Sequence[tuple[str, Attester]] = (),
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"KBS URL must be http(s)://...: {base_url!r}")
        if isinstance(init_data, bytes):
            try:
                init_data = init_data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ConfigError("init-data must be UTF-8 TOML text") from exc
        self._keys = TeeKeyPair.generate(key_alg)
        self._auth = RcarSession(
            base_url, attester, tee=tee, keys=self._keys, init_data=init_data, devices=devices
        )
        self._base = base_url.rstrip("/")
        self._timeout = timeout
        self._http = httpx.Client(
            verify=_tls_verify(verify),
            timeout=timeout,
            follow_redirects=False,
            trust_env=False,
            transport=transport,
        )

    @classmethod
    def from_settings(cls, settings: LoaderSettings, kbs_url: str | None = None) -> KbsClient:
        """A client configured like the loader: the settings' TEE (``auto`` detected), KBS
        CA bundle, timeout and init-data; ``kbs_url`` defaults to ``settings.kbs_url``.
        ``KbsClient.from_settings(LoaderSettings.from_env())`` reads the same variables as
        ``modelseal load``."""
        from modelseal.loader.attest import open_kbs_client

        url = kbs_url or settings.kbs_url
        if not url:
            raise ConfigError("no KBS URL: pass kbs_url or set kbs_url (MODELSEAL_KBS_URL)")
        return open_kbs_client(settings, url)

    @property
    def tee(self) -> str:
        """The TEE kind this client attests as."""
        return self._auth.tee

    @property
    def token_id(self) -> str | None:
        """``jti`` of the last EAR token (for correlating with the KBS audit log)."""
        return self._auth.token_id

    @property
    def handshakes(self) -> int:
        """Number of RCAR handshakes performed so far."""
        return self._auth.handshakes

    def _exchange(self, method: str, url: str, what: str, **options: Any) -> Reply:
        """One request; the answer must fit :data:`MAX_RESPONSE_BYTES` and arrive within
        ``timeout`` seconds in all (FormatError / TransientError otherwise)."""
        try:
            return send(
                self._http,
                method,
                url,
                limit=MAX_RESPONSE_BYTES,
                seconds=self._timeout,
                what=what,
                **options,
            )
        except httpx.HTTPError as exc:
            raise TransientError(
                f"KBS unreachable at {display_url(url)}: {type(exc).__name__}"
            ) from exc

    def get_resource(self, path: str) -> SecretBytes:
        """Attest if needed, fetch ``path`` and decrypt it with the TEE key.

        ``path`` is ``repo/type/tag``, ``kbs:///repo/type/tag`` or a UUID key id
        (``default/key/<uuid>``)."""
        path = resource_path(path)
        url = self._base + RESOURCE_PREFIX + path
        what = "KBS resource"
        response: Reply | None = None
        token = self._auth.cached()
        if token is not None:
            response = self._exchange("GET", url, what, headers=_bearer(token))
            if response.status_code == 401:
                log.info("KBS answered 401 to a cached token; re-attesting")
                self._auth.invalidate()
                response = None
        if response is None:
            token = self._auth.handshake(self._exchange)
            response = self._exchange("GET", url, what, headers=_bearer(token))
        status = response.status_code
        if status == 200:
            try:
                jwe = decode_json(response.content)
            except WireError as exc:
                raise FormatError(f"{what} response is not JSON ({describe(exc)})") from None
            return decrypt(jwe, self._keys)
        if status == 401:
            self._auth.invalidate()
            raise TokenError(f"KBS rejected a fresh token: {_detail(response)}")
        if status == 403:
            raise PolicyDenied(f"the KBS denied the release of {path}")
        if status == 404:
            raise NotFound(f"the KBS has no resource {path}")
        if status == 400:
            raise FormatError(f"KBS says the request is malformed: {_detail(response)}")
        if status >= 500:
            raise TransientError(f"KBS failed: {_detail(response)}")
        raise BackendError(f"KBS returned {_detail(response)}")

    def attest(self) -> tuple[str, SecretBytes]:
        """A valid EAR token for this client's TEE key (cached, else a fresh RCAR
        handshake) and that key as PKCS#8 PEM: what CoCo's AA ``GetToken`` returns."""
        token = self._auth.cached() or self._auth.handshake(self._exchange)
        return token, self._keys.private_pem()

    def close(self) -> None:
        """Close the connection pool, drop the TEE private key and token, and close the
        attester (an evidence relay holds an HTTP client)."""
        self._http.close()
        self._auth.invalidate()
        self._keys.close()
        close_attester(self._auth.attester)

    def __enter__(self) -> KbsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
