"""EAR attestation tokens (draft-ietf-rats-ear, JWT flavour) issued and verified by the KBS.

Shape follows Trustee's attestation service so CoCo tooling can read it: per-device
``submods`` with ``ear.status``, the AR4SI ``ear.trustworthiness-vector`` and
``ear.veraison.annotated-evidence`` holding the typed claims and the runtime-data claims
(nonce and ``tee-pubkey``, which is where the KBS reads the key to encrypt to). Unlike
Trustee we add ``aud``, ``jti`` and an ``insecure`` stamp, and never embed raw evidence.
"""

from __future__ import annotations

import dataclasses
import secrets
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from modelseal import __version__
from modelseal._internal.clock import Clock, SystemClock
from modelseal.crypto.jose.jwk import RecipientKey
from modelseal.crypto.jose.jwt import TokenSigningKey
from modelseal.errors import TokenError
from modelseal.protocol.claims import Claims

EAT_PROFILE: Final = "tag:github.com,2024:confidential-containers/Trustee"
APPRAISAL_POLICY_ID: Final = "modelseal-default"
ANNOTATED: Final = "ear.veraison.annotated-evidence"
#: AR4SI tiers (draft-ietf-rats-ar4si): affirming 2..31, warning 32..95, contraindicated 96..
_AFFIRMING, _WARNING, _CONTRAINDICATED, _NONE = 2, 32, 96, 0
_VECTOR_KEYS: Final = (
    "instance-identity",
    "configuration",
    "executables",
    "file-system",
    "hardware",
    "runtime-opaque",
    "storage-opaque",
    "sourced-data",
)


def trustworthiness(claims: Claims) -> tuple[str, dict[str, int]]:
    """AR4SI vector and the worst tier as ``ear.status``.

    Verified hardware evidence is affirming; an outdated TCB is a configuration warning; a
    debug TEE is contraindicated; an insecure (sample) TEE is a hardware warning.
    """
    vector = dict.fromkeys(_VECTOR_KEYS, _NONE)
    vector["instance-identity"] = _AFFIRMING
    vector["executables"] = _AFFIRMING if claims.measurements else _NONE
    vector["hardware"] = _WARNING if claims.insecure else _AFFIRMING
    vector["runtime-opaque"] = _AFFIRMING
    tcb_ok = claims.tcb_status in (None, "UpToDate")
    vector["configuration"] = _AFFIRMING if tcb_ok else _WARNING
    if claims.debug:
        vector["configuration"] = _CONTRAINDICATED
        vector["runtime-opaque"] = _CONTRAINDICATED
    worst = max(vector.values())
    status = (
        "contraindicated"
        if worst >= _CONTRAINDICATED
        else "warning"
        if worst >= _WARNING
        else "affirming"
    )
    return status, vector


#: Submod name prefix of device (GPU) claims, numbered from 0 as Trustee numbers them.
DEVICE_SUBMOD: Final = "gpu"
MAX_DEVICE_SUBMODS: Final = 16


def _compact(device: Claims) -> dict[str, Any]:
    """A device's claims as the token carries them: a GPU report has 64 measurement
    blocks, most of them unused (all zeros), so those and the per-block measurement
    counts are left out; a token stays small enough for an Authorization header. A
    policy pins the blocks a device does measure."""
    data = device.to_json()
    data["measurements"] = {k: v for k, v in device.measurements.items() if v.strip("0")}
    config = data["extra"].get("config")
    if isinstance(config, Mapping):
        data["extra"] = {
            **data["extra"],
            "config": {k: v for k, v in config.items() if k != "measurement_count"},
        }
    return data


def _submod(device: Claims) -> dict[str, Any]:
    """A device's own EAR submod: its status, vector and (compact) claims."""
    status, vector = trustworthiness(device)
    return {
        "ear.status": status,
        "ear.trustworthiness-vector": vector,
        "ear.appraisal-policy-id": APPRAISAL_POLICY_ID,
        ANNOTATED: {device.tee: _compact(device)},
    }


def _devices(submods: Any) -> tuple[Claims, ...]:
    """Device claims from the ``gpu0``, ``gpu1`` ... submods, in order (a gap ends them)."""
    if not isinstance(submods, Mapping):
        raise TokenError("token submods are malformed")
    devices = []
    for i in range(MAX_DEVICE_SUBMODS + 1):
        sub = submods.get(f"{DEVICE_SUBMOD}{i}")
        if sub is None:
            break
        if i == MAX_DEVICE_SUBMODS:
            raise TokenError("token carries too many device submods")
        try:
            annotated = sub[ANNOTATED]
            ((tee, data),) = annotated.items()
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise TokenError("token device submod is malformed") from exc
        device = claims_from_json(data)
        if device.tee != tee:
            raise TokenError("token device claims are inconsistent")
        devices.append(device)
    return tuple(devices)


def claims_from_json(data: Any, devices: tuple[Claims, ...] = ()) -> Claims:
    """Rebuild typed claims from :meth:`Claims.to_json` output carried in a token (device
    claims travel in their own submods and are passed in as ``devices``)."""
    if not isinstance(data, Mapping):
        raise TokenError("token carries no typed claims")
    try:
        tee = data["tee"]
        if not isinstance(tee, str) or not isinstance(data["debug"], bool):
            raise TokenError("token claims are malformed")
        return Claims(
            tee=tee,
            debug=data["debug"],
            report_data=bytes.fromhex(data.get("report_data") or ""),
            tcb_status=data.get("tcb_status"),
            advisories=tuple(data.get("advisories") or ()),
            measurements=dict(data.get("measurements") or {}),
            init_data_digest=data.get("init_data_digest"),
            init_data=dict(data.get("init_data") or {}),
            insecure=bool(data.get("insecure", False)),
            extra=dict(data.get("extra") or {}),
            runtime_events=_texts(data.get("runtime_events")),
            devices=devices,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise TokenError("token claims are malformed") from exc


def _texts(value: Any) -> tuple[str, ...]:
    """A list of strings from token claims (a signed token, still checked for shape)."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TokenError("token claims are malformed")
    return tuple(value)


@dataclass(frozen=True)
class VerifiedToken:
    """What the resource endpoint needs from a verified token."""

    jti: str
    exp: float
    claims: Claims
    tee_pubkey: Mapping[str, Any]
    #: the validated ``tee_pubkey`` when the token's issuer already parsed it (else None)
    recipient: RecipientKey | None = field(default=None, compare=False)


#: Tokens one KBS process remembers having issued (a few KB each; oldest forgotten first).
MAX_REMEMBERED_TOKENS: Final = 4096


class TokenService:
    """Issues EAR JWTs signed ES256 by the KBS key and verifies them on every request.

    A token presented back to the process that issued it, character for character, is
    known to carry our signature: this process made those exact bytes. :meth:`verify` then
    skips the ECDSA verification (about a tenth of a release's CPU) and only checks that
    the token has not expired; any other token, including one issued by another worker or
    replica, is verified in full. The remembered tokens are what the session rows hold
    anyway, kept in memory for their lifetime at most.
    """

    def __init__(
        self,
        key: TokenSigningKey,
        *,
        issuer: str,
        audience: str,
        ttl: float,
        insecure: bool,
        clock: Clock | None = None,
        leeway: float = 5.0,
    ) -> None:
        self.key = key
        self.issuer = issuer
        self.audience = audience
        self.ttl = ttl
        self.insecure = insecure
        self.clock: Clock = clock or SystemClock()
        self.leeway = leeway
        self._issued: OrderedDict[str, VerifiedToken] = OrderedDict()
        self._issued_lock = threading.Lock()

    def issue(
        self,
        claims: Claims,
        *,
        nonce: str,
        tee_pubkey: Mapping[str, Any],
        recipient: RecipientKey | None = None,
    ) -> tuple[str, str, float]:
        """Sign a token for ``claims``; returns ``(token, jti, exp)``. ``recipient`` is
        ``tee_pubkey`` as validated by the caller, remembered with the token."""
        now = int(self.clock.now())
        exp = now + int(self.ttl)
        jti = secrets.token_hex(16)
        status, vector = trustworthiness(claims)
        cpu = claims.to_json()
        cpu.pop("devices", None)  # each device has a submod of its own
        annotated: dict[str, Any] = {
            claims.tee: cpu,
            "runtime_data_claims": {"nonce": nonce, "tee-pubkey": dict(tee_pubkey)},
        }
        if claims.init_data:
            annotated["init_data_claims"] = dict(claims.init_data)
        payload: dict[str, Any] = {
            "eat_profile": EAT_PROFILE,
            "iat": now,
            "exp": exp,
            "jti": jti,
            "iss": self.issuer,
            "aud": self.audience,
            "ear.verifier-id": {
                "developer": "https://github.com/modelseal/modelseal",
                "build": f"modelseal {__version__}",
            },
            "submods": {
                "cpu0": {
                    "ear.status": status,
                    "ear.trustworthiness-vector": vector,
                    "ear.appraisal-policy-id": APPRAISAL_POLICY_ID,
                    ANNOTATED: annotated,
                },
                **{f"{DEVICE_SUBMOD}{i}": _submod(d) for i, d in enumerate(claims.devices)},
            },
        }
        if self.insecure or claims.insecure:
            payload["insecure"] = True
        token = self.key.sign_jwt(payload)
        # Exactly what verify() extracts from these bytes (the same function reads the
        # same payload, devices included), plus the key the caller already validated.
        verified = dataclasses.replace(self._extract(payload), recipient=recipient)
        with self._issued_lock:
            self._issued[token] = verified
            if len(self._issued) > MAX_REMEMBERED_TOKENS:
                self._issued.popitem(last=False)
        return token, jti, float(exp)

    def verify(self, token: str) -> VerifiedToken:
        """Verify signature and validity, then extract claims and the TEE key."""
        now = self.clock.now()
        with self._issued_lock:
            issued = self._issued.get(token)
        if issued is not None:
            if now >= issued.exp + self.leeway:
                with self._issued_lock:
                    self._issued.pop(token, None)
                raise TokenError("token has expired")
            return issued
        payload = self.key.verify_jwt(
            token,
            now=now,
            audience=self.audience,
            issuer=self.issuer,
            leeway=self.leeway,
        )
        return self._extract(payload)

    @staticmethod
    def _extract(payload: Mapping[str, Any]) -> VerifiedToken:
        """The claims and TEE key of a verified token's payload (TokenError if missing)."""
        try:
            annotated = payload["submods"]["cpu0"][ANNOTATED]
            tee_pubkey = annotated["runtime_data_claims"]["tee-pubkey"]
        except (KeyError, TypeError) as exc:
            raise TokenError("token has no runtime-data claims") from exc
        if not isinstance(annotated, Mapping) or not isinstance(tee_pubkey, Mapping):
            raise TokenError("token has no runtime-data claims")
        tees = [k for k in annotated if k not in ("runtime_data_claims", "init_data_claims")]
        if len(tees) != 1:
            raise TokenError("token must carry the claims of exactly one TEE")
        claims = claims_from_json(annotated[tees[0]], _devices(payload["submods"]))
        if claims.tee != tees[0]:
            raise TokenError("token claims are inconsistent")
        return VerifiedToken(str(payload["jti"]), float(payload["exp"]), claims, tee_pubkey)
