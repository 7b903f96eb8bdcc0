"""End to end: ``modelseal kbs serve`` as a real process on 127.0.0.1, keys registered
through the admin API, RCAR with the sample TEE, JWE decrypted for every key-wrap algorithm,
and every refusal the protocol reference lists."""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modelseal.crypto.jose.jwk import KEY_ALGS, TeeKeyPair
from modelseal.crypto.secret import SecretBytes
from modelseal.errors import PolicyDenied, UnsupportedTee
from modelseal.loader.kbs_client import KbsClient
from modelseal.owner.kbs_admin import KbsAdminClient
from modelseal.protocol.binding import runtime_data_digest
from modelseal.tee.sample.attester import Attester
from tests.conftest import free_port, self_signed_cert
from tests.e2e.independent_rcar_client import IndependentRcarClient, RcarFailure

# one worker runs the module: its module-scoped server checks, at teardown, the log of
# the whole module's traffic
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("test_kbs_rcar_e2e")]

SAMPLE_POLICY = {"apiVersion": "modelseal/v1", "kind": "ReleasePolicy", "tee": ["sample"]}
TDX_POLICY = {"apiVersion": "modelseal/v1", "kind": "ReleasePolicy", "tee": ["tdx"]}
KEY_ID = "models/demo/1"
DENIED_ID = "models/locked/1"
DEK = bytes.fromhex("5f3c9a0be1d24786a9c0ffee0123456789abcdef0011223344556677deadbeef")
#: short enough to test expiry, long enough for a handshake on a busy CI machine
SESSION_TTL = 4.0
CLI = [sys.executable, "-c", "from modelseal.cli import main; main()"]
AUTH = {"version": "0.4.0", "tee": "sample", "extra-params": ""}


def key_forms(key: bytes) -> list[str]:
    return [
        key.hex(),
        key.hex().upper(),
        base64.b64encode(key).decode(),
        base64.urlsafe_b64encode(key).decode().rstrip("="),
    ]


class KbsProcess:
    """``modelseal kbs serve`` in a subprocess; output captured to a file."""

    def __init__(self, data_dir: Path, *args: str, scheme: str = "http", verify: bool | str = True):
        self.port = free_port()
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.log_path = data_dir.with_suffix(".log")
        self.verify: bool | ssl.SSLContext = (
            verify if isinstance(verify, bool) else ssl.create_default_context(cafile=verify)
        )
        cmd = [*CLI, "kbs", "serve", "--data-dir", str(data_dir), "--port", str(self.port), *args]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSEAL_")}
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()  # never leave a server behind, whatever went wrong
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kbs serve exited {self.proc.returncode}: {self.output()}")
            try:
                health = httpx.get(self.url + "/healthz", verify=self.verify, timeout=1)
                if health.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"kbs serve did not start: {self.output()}")
            time.sleep(0.05)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def admin_token(data_dir: Path) -> str:
    """What `modelseal kbs token --data-dir DIR` prints (minted in-process: faster)."""
    from modelseal.kbs.admin_auth import load_admin_credential, mint_admin_token

    key = load_admin_credential(data_dir)
    try:
        return mint_admin_token(key, ttl=600, now=time.time())
    finally:
        key.wipe()


@pytest.fixture(scope="module")
def kbs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KbsProcess]:
    data_dir = tmp_path_factory.mktemp("kbs-e2e") / "data"
    server = KbsProcess(
        data_dir,
        "--insecure-allow-sample",
        "--session-ttl",
        str(SESSION_TTL),
        "--log-level",
        "debug",
    )
    try:
        with KbsAdminClient(server.url, admin_token(data_dir)) as admin:
            admin.put_key(KEY_ID, SecretBytes(DEK), policy=SAMPLE_POLICY)
            admin.put_key(DENIED_ID, SecretBytes(DEK), policy=TDX_POLICY)
        yield server
    finally:
        server.stop()
    # the whole module's traffic (releases, denials, debug logs) never printed a key
    text = server.output()
    assert "released models/demo/1" in text
    assert "INSECURE" in text
    for form in key_forms(DEK):
        assert form not in text


@pytest.mark.parametrize("key_alg", KEY_ALGS)
def test_release_every_key_alg(kbs: KbsProcess, key_alg: str) -> None:
    with KbsClient(kbs.url, Attester(), tee="sample", key_alg=key_alg) as client:
        assert client.get_resource(KEY_ID).reveal() == DEK
        assert client.get_resource(KEY_ID).reveal() == DEK
        assert client.handshakes == 1
        assert client.token_id


def test_kbs_get_cli(kbs: KbsProcess, tmp_path: Path) -> None:
    out = tmp_path / "dek.bin"
    result = subprocess.run(
        [
            *CLI,
            "kbs",
            "get",
            KEY_ID,
            "--kbs-url",
            kbs.url,
            "--key-alg",
            "ECDH-ES+A256KW-P384",
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("MODELSEAL_")},
    )
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == DEK
    assert out.stat().st_mode & 0o777 == 0o600
    summary = json.loads(result.stdout)
    assert summary["bytes"] == 32
    for form in key_forms(DEK):
        assert form not in result.stdout + result.stderr
    # the older spellings (--kbs, --cacert) still work, with a note naming the new ones
    denied = subprocess.run(
        [*CLI, "kbs", "get", DENIED_ID, "--kbs", kbs.url], capture_output=True, text=True
    )
    assert denied.returncode == 4
    assert "--kbs is deprecated; use --kbs-url" in denied.stderr
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MODELSEAL_")}
    missing = subprocess.run(
        [*CLI, "kbs", "get", KEY_ID], capture_output=True, text=True, env=clean
    )
    assert missing.returncode == 2
    assert "--kbs-url" in missing.stderr


def _handshake(http: httpx.Client, kbs: KbsProcess) -> tuple[str, TeeKeyPair]:
    r = http.post(kbs.url + "/kbs/v0/auth", json=AUTH)
    assert r.status_code == 200
    return r.json()["nonce"], TeeKeyPair.generate()


def _attestation(nonce: str, keys: TeeKeyPair, report_data: bytes | None = None) -> dict:  # type: ignore[type-arg]
    jwk = keys.public_jwk()
    digest = runtime_data_digest(nonce, jwk) if report_data is None else report_data
    return {
        "runtime-data": {"nonce": nonce, "tee-pubkey": jwk},
        "tee-evidence": {
            "primary_evidence": Attester().evidence(digest),
            "additional_evidence": "",
        },
    }


def test_replayed_nonce_is_401(kbs: KbsProcess) -> None:
    with httpx.Client() as http:
        nonce, keys = _handshake(http, kbs)
        body = _attestation(nonce, keys)
        assert http.post(kbs.url + "/kbs/v0/attest", json=body).status_code == 200
        assert http.post(kbs.url + "/kbs/v0/attest", json=body).status_code == 401


def test_wrong_report_data_is_401(kbs: KbsProcess) -> None:
    with httpx.Client() as http:
        nonce, keys = _handshake(http, kbs)
        body = _attestation(nonce, keys, report_data=b"\x00" * 48)
        r = http.post(kbs.url + "/kbs/v0/attest", json=body)
        assert r.status_code == 401
        assert r.json()["detail"] == "attestation failed"


def test_expired_session_is_401(kbs: KbsProcess) -> None:
    with httpx.Client() as http:
        nonce, keys = _handshake(http, kbs)
        time.sleep(SESSION_TTL + 0.3)
        assert (
            http.post(kbs.url + "/kbs/v0/attest", json=_attestation(nonce, keys)).status_code == 401
        )


def test_deny_and_unknown_are_identical_403(kbs: KbsProcess) -> None:
    with httpx.Client() as http:
        nonce, keys = _handshake(http, kbs)
        token = http.post(kbs.url + "/kbs/v0/attest", json=_attestation(nonce, keys)).json()[
            "token"
        ]
        auth = {"Authorization": f"Bearer {token}"}
        denied = httpx.get(kbs.url + f"/kbs/v0/resource/{DENIED_ID}", headers=auth)
        unknown = httpx.get(kbs.url + "/kbs/v0/resource/models/absent/9", headers=auth)
    assert denied.status_code == unknown.status_code == 403
    assert denied.content == unknown.content
    with KbsClient(kbs.url, Attester(), tee="sample") as client, pytest.raises(PolicyDenied):
        client.get_resource(DENIED_ID)


def test_independent_client(kbs: KbsProcess) -> None:
    client = IndependentRcarClient(kbs.url)
    try:
        released = client.fetch(KEY_ID)
        assert released.resource == DEK
        assert list(released.protected_header) == ["alg", "enc", "epk"]
        assert list(released.protected_header["epk"]) == ["crv", "kty", "x", "y"]
        # the bearer path with no cookie at all
        assert client.resource(KEY_ID, bearer=released.token).resource == DEK
        with pytest.raises(RcarFailure) as info:
            client.resource(DENIED_ID, bearer=released.token)
        assert info.value.status == 403
        nonce = client.auth()
        bad = client.http.post(
            kbs.url + "/kbs/v0/attest", json=client.attestation(nonce, report_data=b"\x01" * 48)
        )
        assert bad.status_code == 401
    finally:
        client.close()


def test_independent_client_as_a_program(kbs: KbsProcess) -> None:
    import hashlib

    script = Path(__file__).with_name("independent_rcar_client.py")
    out = subprocess.run(
        [sys.executable, str(script), kbs.url, KEY_ID], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == hashlib.sha256(DEK).hexdigest()


def test_sample_refused_without_flag(tmp_path: Path) -> None:
    server = KbsProcess(tmp_path / "strict")
    try:
        r = httpx.post(server.url + "/kbs/v0/auth", json=AUTH)
        assert r.status_code == 401
        with (
            KbsClient(server.url, Attester(), tee="sample") as client,
            pytest.raises(UnsupportedTee),
        ):
            client.get_resource(KEY_ID)
    finally:
        server.stop()
    assert "INSECURE" not in server.output()


def test_https_with_secure_cookie(tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path)
    data_dir = tmp_path / "tls"
    server = KbsProcess(
        data_dir,
        "--insecure-allow-sample",
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
        scheme="https",
        verify=str(cert),
    )
    try:
        with KbsAdminClient(server.url, admin_token(data_dir), verify=str(cert)) as admin:
            admin.put_key(KEY_ID, SecretBytes(DEK), policy=SAMPLE_POLICY)
        r = httpx.post(server.url + "/kbs/v0/auth", json=AUTH, verify=server.verify)
        cookie = r.headers["set-cookie"]
        assert "Secure" in cookie
        assert "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie
        with KbsClient(server.url, Attester(), tee="sample", verify=cert) as client:
            assert client.get_resource(KEY_ID).reveal() == DEK
        client2 = IndependentRcarClient(server.url, verify=server.verify)
        try:
            assert client2.fetch(KEY_ID).resource == DEK
        finally:
            client2.close()
    finally:
        server.stop()


def test_config_error_exits_2_before_serving(tmp_path: Path) -> None:
    r = subprocess.run(
        [*CLI, "kbs", "serve", "--data-dir", str(tmp_path / "d"), "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2, r.stderr
    assert "refusing plain HTTP" in r.stderr
    assert not (tmp_path / "d").exists()  # nothing is created for a refused configuration


@pytest.mark.parametrize(
    "args",
    [
        ["--tls-cert", "/nonexistent/cert.pem"],
        ["--tls-cert", "/nonexistent/cert.pem", "--tls-key", "/nonexistent/key.pem"],
        ["--port", "0"],
        ["--token-ttl", "0"],
        ["--mock-tdx-root", "/nonexistent/root.pem"],
    ],
)
def test_config_errors_exit_2(
    tmp_path: Path, args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from modelseal.cli import main

    with pytest.raises(SystemExit) as info:
        main(["kbs", "serve", "--data-dir", str(tmp_path / "d"), *args])
    assert info.value.code == 2
    assert "error:" in capsys.readouterr().err
