"""An independent KBS (RCAR) client, written only from the Trustee protocol description.

Source: Trustee's ``kbs/docs/kbs_attestation_protocol.md`` (kbs_protocol 0.4.0) and the sample-TEE
evidence shape ``{"svn": "1", "report_data": std-base64(digest)}``. It deliberately imports nothing
from modelseal: httpx for HTTP, jwcrypto for keys and JWE, hashlib/json for the binding.
It behaves like Trustee's Rust ``kbs_protocol`` client, including the way that client
re-serializes the JWE protected header to compute the AES-GCM AAD.

Usage: ``python independent_rcar_client.py KBS_URL repo/type/tag`` prints the SHA-256 of
the released resource (never the resource itself).
"""

from __future__ import annotations

import base64
import hashlib
import json
import ssl
import sys
from dataclasses import dataclass
from typing import Any

import httpx
from jwcrypto import jwe, jwk


class RcarFailure(Exception):
    """The KBS refused a step; carries the HTTP status and ErrorInformation body."""

    def __init__(self, step: str, response: httpx.Response) -> None:
        super().__init__(f"{step}: HTTP {response.status_code} {response.text[:200]}")
        self.status = response.status_code
        self.body = response.text


def b64url_nopad_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def canonical(value: Any) -> bytes:
    """JCS for string-only content (sorted keys, compact separators reproduce RFC 8785 here)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def rust_client_aad(protected_b64: str) -> str:
    """What Trustee's client hashes as AAD: the header re-serialized with alg, enc first."""
    header = json.loads(b64url_nopad_decode(protected_b64))
    ordered: dict[str, Any] = {"alg": header.pop("alg"), "enc": header.pop("enc")}
    for name in sorted(header):
        value = header[name]
        ordered[name] = dict(sorted(value.items())) if isinstance(value, dict) else value
    raw = json.dumps(ordered, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass
class Released:
    resource: bytes
    token: str
    protected_header: dict[str, Any]


class IndependentRcarClient:
    """auth → attest (sample TEE) → resource, with a fresh EC P-256 TEE key."""

    def __init__(self, base_url: str, *, verify: bool | ssl.SSLContext = True) -> None:
        self.base_url = base_url.rstrip("/")
        self.verify = verify
        self.http = httpx.Client(verify=verify, timeout=30.0)
        self.tee_key = jwk.JWK.generate(kty="EC", crv="P-256")
        public = json.loads(self.tee_key.export_public())
        self.tee_pubkey = {
            "kty": "EC",
            "crv": "P-256",
            "alg": "ECDH-ES+A256KW",
            "x": public["x"],
            "y": public["y"],
        }

    def close(self) -> None:
        self.http.close()

    def auth(self) -> str:
        request = {
            "version": "0.4.0",
            "tee": "sample",
            "extra-params": {"supported-hash-algorithms": ["sha256", "sha384", "sha512", "sm3"]},
        }
        response = self.http.post(self.base_url + "/kbs/v0/auth", json=request)
        if response.status_code != 200:
            raise RcarFailure("auth", response)
        if "kbs-session-id" not in response.cookies:
            raise RcarFailure("auth (no kbs-session-id cookie)", response)
        challenge = response.json()
        nonce = challenge["nonce"]
        if len(base64.b64decode(nonce, validate=True)) != 32:
            raise RcarFailure("auth (nonce is not 32 bytes of standard base64)", response)
        return str(nonce)

    def attestation(self, nonce: str, *, report_data: bytes | None = None) -> dict[str, Any]:
        digest = hashlib.sha384(
            canonical({"additional-evidence": "", "nonce": nonce, "tee-pubkey": self.tee_pubkey})
        ).digest()
        evidence = {
            "svn": "1",
            "report_data": base64.b64encode(
                digest if report_data is None else report_data
            ).decode(),
        }
        return {
            "init-data": None,
            "runtime-data": {"nonce": nonce, "tee-pubkey": self.tee_pubkey},
            "tee-evidence": {"primary_evidence": evidence, "additional_evidence": ""},
        }

    def attest(self, nonce: str) -> str:
        response = self.http.post(self.base_url + "/kbs/v0/attest", json=self.attestation(nonce))
        if response.status_code != 200:
            raise RcarFailure("attest", response)
        return str(response.json()["token"])

    def resource(self, path: str, *, bearer: str | None = None) -> Released:
        """GET the resource with the session cookie, or (``bearer``) with only the token."""
        url = self.base_url + "/kbs/v0/resource/" + path
        if bearer is None:
            response = self.http.get(url)
        else:
            with httpx.Client(verify=self.verify, timeout=30.0) as fresh:  # no cookies
                response = fresh.get(url, headers={"Authorization": f"Bearer {bearer}"})
        if response.status_code != 200:
            raise RcarFailure("resource", response)
        flattened = response.json()
        protected = flattened["protected"]
        if rust_client_aad(protected) != protected:
            raise RcarFailure(
                "resource (protected header not in the Rust client's layout)", response
            )
        token = jwe.JWE()
        token.deserialize(json.dumps(flattened), key=self.tee_key)
        return Released(token.payload, bearer or "", json.loads(b64url_nopad_decode(protected)))

    def fetch(self, path: str) -> Released:
        """The whole handshake, then the resource through the session cookie."""
        token = self.attest(self.auth())
        released = self.resource(path)
        released.token = token
        return released


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    client = IndependentRcarClient(argv[1])
    try:
        released = client.fetch(argv[2])
    except RcarFailure as exc:
        print(f"failed: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    print(hashlib.sha256(released.resource).hexdigest())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
