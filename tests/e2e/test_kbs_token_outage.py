"""A real ``kbs serve`` whose KEK is in a SoftHSM2 token that goes away and comes back.

The token directory is moved aside under the running KBS (the token is not present, as
while a network HSM fails over) and put back: meanwhile releases answer 503 problem
bodies (never a 500, never a traceback in the log), afterwards they work again in the
same process, without a restart.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from modelseal.kbs.admin_auth import load_admin_credential, mint_admin_token
from tests.conftest import free_port
from tests.e2e.durability.kbs_driver import ADMIN_PREFIX, RcarClient, b64url, permissive_policy
from tests.e2e.durability.processes import wait_healthy
from tests.e2e.kbs_process import stop_process
from tests.hsm import SoftHsm, module_path

pytestmark = pytest.mark.e2e

CLI = [sys.executable, "-c", "from modelseal.cli import main; main()"]


def test_releases_survive_a_token_outage_without_a_restart(tmp_path: Path) -> None:
    module = module_path()
    if module is None:
        pytest.skip("SoftHSM2 is not installed (apt-get install softhsm2)")
    # a token store of its own: moving it aside touches no other test's token
    hsm = SoftHsm.create(module)
    pin_file = hsm.token("outage")
    pin = pin_file.read_text().strip()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "kbs.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [
                *CLI, "kbs", "serve", "--data-dir", str(tmp_path / "kbs"), "--port", str(port),
                "--insecure-allow-sample", "--kek-uri", hsm.uri("outage", pin_file),
                "--log-level", "info",
            ],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=hsm.env(),
        )  # fmt: skip
    tokens, aside = hsm.base / "tokens", hsm.base / "tokens-away"
    try:
        wait_healthy(url, proc, log.read_text)
        admin = mint_admin_token(
            load_admin_credential(tmp_path / "kbs"), role="admin", ttl=600, now=time.time()
        )
        dek = os.urandom(32)
        r = httpx.put(
            f"{url}{ADMIN_PREFIX}/keys/models/outage/v1",
            json={"key": b64url(dek), "policy": permissive_policy(0)},
            headers={"Authorization": f"Bearer {admin}"},
            timeout=30,
        )
        assert r.status_code in (200, 201), r.text
        client = RcarClient()
        token, pair = client.handshake(url, url)
        assert client.resource(url, "models/outage/v1", token, pair) == dek

        shutil.move(tokens, aside)  # the HSM is gone
        for _ in range(3):
            r = client.http.get(
                f"{url}/kbs/v0/resource/models/outage/v1",
                headers={"Authorization": f"Bearer {token}"},
            )
            assert r.status_code == 503, r.text
            assert r.headers["content-type"].startswith("application/json")
            assert r.json()["detail"]
        shutil.move(aside, tokens)  # and back

        # the next request after the KBS's one-second backoff reopens the session
        deadline = time.monotonic() + 30
        while True:
            r = client.http.get(
                f"{url}/kbs/v0/resource/models/outage/v1",
                headers={"Authorization": f"Bearer {token}"},
            )
            if r.status_code == 200 or time.monotonic() > deadline:
                break
            assert r.status_code == 503, r.text
            time.sleep(0.2)
        assert r.status_code == 200, r.text
        assert client.resource(url, "models/outage/v1", token, pair) == dek
        token2, pair2 = client.handshake(url, url)  # a new session and its audit records
        assert client.resource(url, "models/outage/v1", token2, pair2) == dek
        assert proc.poll() is None  # the same process served throughout
        client.close()
    finally:
        if aside.exists():
            shutil.move(aside, tokens)
        stop_process(proc)
        hsm.remove()
    text = log.read_text()
    assert "Traceback" not in text
    assert pin not in text
    assert "reopened the PKCS#11 session" in text
