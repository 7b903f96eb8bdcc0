"""The attested-gateway Kubernetes example stays consistent with ``modelseal gateway``."""

from __future__ import annotations

from pathlib import Path

import yaml
from click.testing import CliRunner

from modelseal.cli.gateway import gateway

EXAMPLE = Path(__file__).resolve().parents[3] / "deploy" / "examples"


def test_gateway_sidecar_uses_real_settings() -> None:
    patch = yaml.safe_load((EXAMPLE / "attested-gateway-patch.yaml").read_text())
    containers = {c["name"]: c for c in patch["spec"]["template"]["spec"]["containers"]}
    sidecar = containers["modelseal-gateway"]
    assert sidecar["args"] == ["gateway"]
    env = {e["name"]: e["value"] for e in sidecar["env"]}
    envvars = {p.envvar for p in gateway.params if getattr(p, "envvar", None)}
    assert set(env) <= envvars
    assert {"MODELSEAL_LISTEN", "MODELSEAL_UPSTREAM", "MODELSEAL_TEE"} <= set(env)
    # the upstream is loopback, where the inference server is told to listen
    assert env["MODELSEAL_UPSTREAM"].startswith("http://127.0.0.1:")
    assert "127.0.0.1" in containers["inference"]["args"]
    assert env["MODELSEAL_RECEIPT"] == "/models/.modelseal/receipt.json"
    mounts = {m["name"]: m for m in sidecar["volumeMounts"]}
    assert mounts["models"]["readOnly"] is True
    assert sidecar["securityContext"]["readOnlyRootFilesystem"] is True


def test_gateway_reads_the_same_settings_from_the_environment(tmp_path: Path) -> None:
    # the env-var spelling of the example reaches the command (refused: sample, no opt-in)
    env = {
        "MODELSEAL_LISTEN": "127.0.0.1:0",
        "MODELSEAL_UPSTREAM": "http://127.0.0.1:8000",
        "MODELSEAL_TEE": "sample",
    }
    result = CliRunner().invoke(gateway, [], env=env, standalone_mode=False)
    assert "refusing to start" in str(result.exception)
