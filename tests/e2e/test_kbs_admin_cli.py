"""End to end: the admin CLI (`modelseal kbs token|key|policy|audit`) against a real
`modelseal kbs serve` process on 127.0.0.1, then RCAR/transfer releases of what it registered."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modelseal.cli import main
from modelseal.crypto.secret import SecretBytes
from modelseal.errors import ConfigError, PolicyDenied
from modelseal.loader.kbs_client import KbsClient
from modelseal.tee.sample.attester import Attester
from tests.conftest import free_port

pytestmark = pytest.mark.e2e

CLI = [sys.executable, "-c", "from modelseal.cli import main; main()"]
DEK = os.urandom(32)
DIGEST = "sha256:" + "c0" * 32
SAMPLE_POLICY_YAML = """\
apiVersion: modelseal/v1
kind: ReleasePolicy
tee: [sample]
init_data: {}
"""


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MODELSEAL_")}


class Server:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data_dir.with_suffix(".log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.extra: list[str] = []

    def start(self) -> None:
        cmd = [
            *CLI,
            "kbs",
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--port",
            str(self.port),
            "--insecure-allow-sample",
            "--log-level",
            "debug",
            *self.extra,
        ]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=_clean_env()
            )
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("kbs-admin") / "data")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
    text = srv.log.read_text(errors="replace")
    for form in (
        DEK.hex(),
        base64.b64encode(DEK).decode(),
        base64.urlsafe_b64encode(DEK).decode().rstrip("="),
    ):
        assert form not in text


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, env={**_clean_env(), **(env or {})}
    )


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the CLI in-process (same entry point and exit-code mapping as the binary)."""
    capsys.readouterr()
    try:
        main(list(args))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    else:
        code = 0
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def admin_token(server: Server) -> str:
    result = run("kbs", "token", "--data-dir", str(server.data_dir), "--ttl", "600")
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_token_needs_the_credential(tmp_path: Path) -> None:
    result = run("kbs", "token", "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert "admin credential" in result.stderr


def test_unbounded_input_files_are_refused_without_reading_them_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``/dev/zero`` as a key, token or policy file: a usage error (exit 2), read in bounded
    chunks (never into memory whole), before any request is sent."""
    dead = ("--kbs-url", f"http://127.0.0.1:{free_port()}")
    put = ("kbs", "key", "put", "models/cli/zero", *dead)
    code, _, err = cli(capsys, *put, "--token", "t", "--key-file", "/dev/zero")
    assert code == 2
    assert "not a key file" in err or "too large" in err
    code, _, err = cli(capsys, *put, "--token", "t", "--generate", "--policy", "/dev/zero")
    assert code == 2
    code, _, err = cli(capsys, *put, "--token-file", "/dev/zero", "--generate")
    assert code == 2
    assert "too large" in err
    big = tmp_path / "policy.yaml"
    big.write_bytes(b"#" * (1 << 20))
    code, _, err = cli(capsys, *put, "--token", "t", "--generate", "--policy", str(big))
    assert code == 2
    assert "at most" in err


def test_key_put_from_env_and_files(server: Server, admin_token: str, tmp_path: Path) -> None:
    key_file, policy = _key_file(tmp_path), _policy_file(tmp_path)
    result = run(
        "kbs",
        "key",
        "put",
        "models/cli/v1",
        "--key-file",
        str(key_file),
        "--policy",
        str(policy),
        env={
            "MODELSEAL_KBS_URL": server.url,
            "MODELSEAL_TOKEN": admin_token,
            "MODELSEAL_MODEL_DIGEST": DIGEST,
        },
    )
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["key_id"] == "models/cli/v1"
    assert info["model_digest"] == DIGEST
    assert info["created"] is True
    assert DEK.hex() not in result.stdout + result.stderr
    with KbsClient(server.url, Attester(), tee="sample") as client:
        assert client.get_resource("models/cli/v1").reveal() == DEK


def test_retired_spellings_still_work_with_one_note(
    server: Server, admin_token: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--kbs`` and ``MODELSEAL_KBS`` (now ``--kbs-url``/``MODELSEAL_KBS_URL``) keep
    working, each with one note naming its replacement; the help shows only the new name."""
    code, out, err = cli(capsys, "kbs", "key", "list", "--kbs", server.url, "--token", admin_token)
    assert code == 0, err
    assert isinstance(json.loads(out), list)
    assert err.count("note: --kbs is deprecated; use --kbs-url") == 1
    by_env = run(
        "kbs", "key", "list", env={"MODELSEAL_KBS": server.url, "MODELSEAL_TOKEN": admin_token}
    )
    assert by_env.returncode == 0, by_env.stderr
    assert by_env.stderr.count("note: MODELSEAL_KBS is deprecated; use MODELSEAL_KBS_URL") == 1
    code, out, _ = cli(capsys, "kbs", "key", "list", "--help")
    assert "--kbs-url" in out
    assert "--kbs " not in out
    assert "--cacert" not in out
    code, _, err = cli(capsys, "kbs", "key", "list", "--token", admin_token)
    assert code == 2
    assert "--kbs-url" in err


def test_kbs_client_from_the_loader_settings(
    server: Server, admin_token: str, tmp_path: Path
) -> None:
    """``modelseal.clients.KbsClient.from_settings``: the SDK's KBS client takes the same
    settings as the loader (here built from the loader's variables) and reads nothing else."""
    from modelseal.clients import KbsClient as FacadeClient
    from modelseal.loader.settings import LoaderSettings

    run("kbs", "key", "put", "models/cli/settings", "--key-file", str(_key_file(tmp_path)),
        "--policy", str(_policy_file(tmp_path)), env={"MODELSEAL_KBS_URL": server.url,
        "MODELSEAL_TOKEN": admin_token})  # fmt: skip
    settings = LoaderSettings.from_env(
        {
            "MODELSEAL_MODEL": "http://127.0.0.1:9/models/m",
            "MODELSEAL_TEE": "sample",
            "MODELSEAL_KBS_URL": server.url,
        }
    )
    with FacadeClient.from_settings(settings) as client:
        assert client.tee == "sample"
        assert client.get_resource("models/cli/settings").reveal() == DEK
    with pytest.raises(ConfigError, match="MODELSEAL_KBS_URL"):
        FacadeClient.from_settings(settings.with_overrides(kbs_url=None))


def _key_file(tmp_path: Path) -> Path:
    path = tmp_path / "dek.key"
    path.write_text(base64.urlsafe_b64encode(DEK).decode().rstrip("="))
    return path


def _policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(SAMPLE_POLICY_YAML)
    return path


def test_key_lifecycle(
    server: Server, admin_token: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conn = ("--kbs-url", server.url, "--token", admin_token)
    code, out, err = cli(capsys, "kbs", "key", "put", "models/cli/gen", *conn, "--generate")
    assert code == 0, err
    assert json.loads(out)["size"] == 32
    assert "no release policy" in err
    policy = tmp_path / "p.json"
    policy.write_text(
        json.dumps({"apiVersion": "modelseal/v1", "kind": "ReleasePolicy", "tee": ["sample"]})
    )
    code, out, err = cli(
        capsys, "kbs", "policy", "set", "models/cli/gen", *conn, "--file", str(policy)
    )
    assert code == 0, err
    assert json.loads(out)["policy"]["tee"] == ["sample"]
    code, out, _ = cli(capsys, "kbs", "policy", "get", "models/cli/gen", *conn)
    assert json.loads(out)["policy_digest"].startswith("sha256:")
    code, out, _ = cli(capsys, "kbs", "key", "list", *conn)
    assert "models/cli/gen" in [k["key_id"] for k in json.loads(out)]
    with KbsClient(server.url, Attester(), tee="sample") as client:
        dek = client.get_resource("models/cli/gen")
        assert len(dek) == 32
        code, out, _ = cli(capsys, "kbs", "key", "revoke", "models/cli/gen", *conn)
        assert json.loads(out)["state"] == "revoked"
        with pytest.raises(PolicyDenied):
            client.get_resource("models/cli/gen")
    code, _, _ = cli(capsys, "kbs", "key", "delete", "models/cli/gen", *conn)
    assert code == 0
    code, _, err = cli(capsys, "kbs", "key", "get", "models/cli/gen", *conn)
    assert code == 3, err


def test_refusals_and_exit_codes(
    server: Server, admin_token: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    put = ("kbs", "key", "put", "models/cli/x", "--kbs-url", server.url, "--generate")
    code, _, err = cli(capsys, *put)
    assert code == 2
    assert "token is required" in err
    code, _, err = cli(capsys, *put, "--token", admin_token[:-4] + "AAAA")
    assert code == 4
    publisher = run(
        "kbs",
        "token",
        "--data-dir",
        str(server.data_dir),
        "--role",
        "publisher",
        "--namespace",
        "*",
    )
    token = publisher.stdout.strip()
    code, _, _ = cli(capsys, "kbs", "key", "rotate-kek", "--kbs-url", server.url, "--token", token)
    assert code == 4
    code, _, err = cli(
        capsys, "kbs", "key", "put", "models/cli/x", "--kbs-url", server.url, "--token", admin_token
    )
    assert code == 2
    conflict = ("kbs", "key", "put", "models/cli/conflict", "--kbs-url", server.url)
    code, _, _ = cli(capsys, *conflict, "--token", admin_token, "--generate")
    assert code == 0
    other_key = tmp_path / "other.key"
    other_key.write_bytes(os.urandom(32))
    code, _, err = cli(capsys, *conflict, "--token", admin_token, "--key-file", str(other_key))
    assert code == 2
    assert "different key bytes" in err
    bad_policy = tmp_path / "bad.yaml"
    bad_policy.write_text("apiVersion: modelseal/v1\nkind: ReleasePolicy\ntee: [tdx]\nbogus: 1\n")
    code, _, err = cli(capsys, *put, "--token", admin_token, "--policy", str(bad_policy))
    assert code == 2
    assert "bogus: unknown field" in err
    code, _, _ = cli(
        capsys,
        "kbs",
        "key",
        "list",
        "--kbs-url",
        f"http://127.0.0.1:{free_port()}",
        "--token",
        admin_token,
    )
    assert code == 75


def test_rotate_kek_keeps_releases_working(
    server: Server, admin_token: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conn = ("--kbs-url", server.url, "--token", admin_token)
    policy = tmp_path / "p.yaml"
    policy.write_text(SAMPLE_POLICY_YAML)
    code, _, err = cli(
        capsys, "kbs", "key", "put", "models/cli/rot", *conn, "--generate", "--policy", str(policy)
    )
    assert code == 0, err
    with KbsClient(server.url, Attester(), tee="sample") as client:
        before = client.get_resource("models/cli/rot").reveal()
    code, out, err = cli(capsys, "kbs", "key", "rotate-kek", *conn)
    assert code == 0, err
    result = json.loads(out)
    assert result["rewrapped"] >= 1
    code, out, _ = cli(capsys, "kbs", "key", "list", *conn)
    assert {k["kek_id"] for k in json.loads(out)} == {result["new_kek_id"]}
    with KbsClient(server.url, Attester(), tee="sample") as client:
        assert client.get_resource("models/cli/rot").reveal() == before


def test_audit_verify_detects_tampering(
    server: Server, admin_token: str, capsys: pytest.CaptureFixture[str]
) -> None:
    conn = ("--kbs-url", server.url, "--token", admin_token)
    cli(capsys, "kbs", "key", "put", "models/cli/audited", *conn, "--generate")
    with KbsClient(server.url, Attester(), tee="sample") as client, pytest.raises(PolicyDenied):
        client.get_resource("models/cli/audited")  # no policy: a denial to tamper with
    code, out, err = cli(capsys, "kbs", "audit", *conn)
    assert code == 0, err
    assert "key.release" in out
    assert "deny" in out
    code, out, _ = cli(capsys, "kbs", "audit", *conn, "--json", "--limit", "2")
    assert [e["seq"] for e in json.loads(out)] == [1, 2]
    result = run(
        "kbs",
        "audit",
        "--verify",
        env={"MODELSEAL_KBS_URL": server.url, "MODELSEAL_TOKEN": admin_token},
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["kbs"]["ok"] is True
    # an operator with database access edits a denial into an allow
    db = sqlite3.connect(server.data_dir / "kbs.sqlite3")
    seq = db.execute("SELECT min(seq) FROM ms_audit WHERE decision = 'deny'").fetchone()[0]
    db.execute("UPDATE ms_audit SET decision = 'allow' WHERE seq = ?", (seq,))
    db.commit()
    db.close()
    code, out, err = cli(capsys, "kbs", "audit", *conn, "--verify")
    assert code == 5
    assert f"row {seq}" in err
    verdict = json.loads(out)
    assert verdict["local"]["first_bad_seq"] == seq
    assert verdict["kbs"]["first_bad_seq"] == seq
    # the same verdict offline, straight from the data directory (no server, no token)
    data = ("--data-dir", str(server.data_dir))
    code, out, err = cli(capsys, "kbs", "audit", *data, "--verify")
    assert code == 5
    assert json.loads(out)["local"]["first_bad_seq"] == seq
    code, out, _ = cli(capsys, "kbs", "audit", *data, "--json", "--limit", "3")
    assert [e["seq"] for e in json.loads(out)] == [1, 2, 3]
    code, _, err = cli(capsys, "kbs", "audit", *data, *conn)
    assert code == 2
    code, _, err = cli(capsys, "kbs", "audit", "--data-dir", str(server.data_dir.parent))
    assert code == 2
    assert "not a KBS data directory" in err


def test_trustee_kbs_client_set_resource(
    server: Server, admin_token: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What `kbs-client config --admin-token-file F set-resource` sends, then RCAR gets it."""
    raw = os.urandom(32)
    url = f"{server.url}/kbs/v0/resource/models/trustee/key1"
    octets = {"Content-Type": "application/octet-stream"}
    assert httpx.post(url, content=raw, headers=octets).status_code == 401
    r = httpx.post(url, content=raw, headers={**octets, "Authorization": f"Bearer {admin_token}"})
    assert r.status_code == 201, r.text
    policy = tmp_path / "p.yaml"
    policy.write_text(SAMPLE_POLICY_YAML)
    code, _, err = cli(
        capsys,
        "kbs",
        "policy",
        "set",
        "models/trustee/key1",
        "--kbs-url",
        server.url,
        "--token",
        admin_token,
        "--file",
        str(policy),
    )
    assert code == 0, err
    with KbsClient(server.url, Attester(), tee="sample") as client:
        assert client.get_resource("models/trustee/key1").reveal() == raw


def test_rotation_under_several_workers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`kbs serve --workers 2`: a rotation done by one worker is followed by the other."""
    srv = Server(tmp_path / "data")
    srv.extra = ["--workers", "2"]
    srv.start()
    try:
        token = run("kbs", "token", "--data-dir", str(srv.data_dir)).stdout.strip()
        conn = ("--kbs-url", srv.url, "--token", token)
        policy = tmp_path / "p.yaml"
        policy.write_text(SAMPLE_POLICY_YAML)
        keys = []
        for i in range(3):
            code, _, err = cli(
                capsys,
                "kbs",
                "key",
                "put",
                f"models/w/v{i}",
                *conn,
                "--generate",
                "--policy",
                str(policy),
            )
            assert code == 0, err
            if i == 1:
                code, _, err = cli(capsys, "kbs", "key", "rotate-kek", *conn)
                assert code == 0, err
        for i in range(3):
            with KbsClient(srv.url, Attester(), tee="sample") as client:
                keys.append(client.get_resource(f"models/w/v{i}").reveal())
        for _ in range(6):  # new connections land on either worker
            with KbsClient(srv.url, Attester(), tee="sample") as client:
                assert [client.get_resource(f"models/w/v{i}").reveal() for i in range(3)] == keys
        code, out, _ = cli(capsys, "kbs", "key", "list", *conn)
        assert len({k["kek_id"] for k in json.loads(out)}) == 1
        code, out, err = cli(capsys, "kbs", "audit", *conn, "--verify")
        assert code == 0, err
    finally:
        srv.stop()


def test_every_admin_route_of_the_served_app_refuses_bad_tokens(server: Server) -> None:
    """Against `kbs serve` itself (the ASGI app uvicorn really serves, not just
    ``create_app``): every admin route, no token / forged / expired -> 401."""
    from modelseal.kbs.admin_auth import load_admin_credential, mint_admin_token
    from tests.integration.kbs_admin.test_admin_routes import ALLOWED, concrete

    forged = mint_admin_token(SecretBytes(os.urandom(32)), now=time.time())
    expired = mint_admin_token(
        load_admin_credential(server.data_dir), ttl=60, now=time.time() - 3600
    )
    failures = []
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for method, template in sorted(ALLOWED):
            for headers in (
                {},
                {"Authorization": f"Bearer {forged}"},
                {"Authorization": f"Bearer {expired}"},
            ):
                r = http.request(method, concrete(template), headers=headers, content=b"{}")
                if r.status_code != 401:
                    failures.append((method, template, r.status_code))
    assert failures == []


def test_offline_audit_of_a_corrupt_database_is_an_integrity_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Garbage in place of kbs.sqlite3: exit 5 naming the file, not 75 ("retry later")."""
    from modelseal.kbs.state import KbsState

    data = tmp_path / "kbs"
    KbsState.open(data).close()
    for leftover in data.glob("kbs.sqlite3-*"):
        leftover.unlink()
    (data / "kbs.sqlite3").write_bytes(os.urandom(8192))
    for extra in (("--verify",), ()):
        code, _, err = cli(capsys, "kbs", "audit", "--data-dir", str(data), *extra)
        assert code == 5, err
        assert "not a readable SQLite database" in err
