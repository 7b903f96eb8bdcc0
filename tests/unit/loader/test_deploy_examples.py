"""The Kubernetes example stays consistent with the loader contract (docs/guides/loader.md)."""

from __future__ import annotations

import base64
import gzip
import tomllib
from pathlib import Path

import yaml

from modelseal.loader.settings import ENV_VARS

EXAMPLES = Path(__file__).resolve().parents[3] / "deploy" / "examples"


def _docs() -> list[dict]:  # type: ignore[type-arg]
    text = (EXAMPLES / "confidential-model-deployment.yaml").read_text()
    return [d for d in yaml.safe_load_all(text) if d]


def test_deployment_shape() -> None:
    docs = {d["kind"]: d for d in _docs()}
    pod = docs["Deployment"]["spec"]["template"]
    spec = pod["spec"]
    assert spec["runtimeClassName"].startswith("kata-")
    assert "io.katacontainers.config.hypervisor.cc_init_data" in pod["metadata"]["annotations"]
    (loader,) = spec["initContainers"]
    env = {e["name"]: e["value"] for e in loader["env"]}
    assert set(env) <= set(ENV_VARS)
    for required in ("MODELSEAL_MODEL", "MODELSEAL_KBS_URL", "MODELSEAL_DEST", "MODELSEAL_TEE"):
        assert required in env
    assert env["MODELSEAL_ALLOW_DISK"] == "false"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["models"]["emptyDir"]["medium"] == "Memory"
    assert volumes["models"]["emptyDir"]["sizeLimit"]
    (server,) = spec["containers"]
    mounts = {m["name"]: m for m in server["volumeMounts"]}
    assert mounts["models"]["mountPath"] == env["MODELSEAL_DEST"]
    assert mounts["models"]["readOnly"] is True


def test_init_data_documents_agree() -> None:
    config = next(d for d in _docs() if d["kind"] == "ConfigMap")
    in_configmap = tomllib.loads(config["data"]["initdata.toml"])
    standalone = tomllib.loads((EXAMPLES / "initdata.toml").read_text())
    assert in_configmap["data"] == standalone["data"]
    assert "model_digest" in standalone["data"]
    # the annotation encoding the README describes round-trips
    raw = (EXAMPLES / "initdata.toml").read_bytes()
    assert gzip.decompress(base64.b64decode(base64.b64encode(gzip.compress(raw)))) == raw


def test_policy_example_is_a_release_policy() -> None:
    policy = yaml.safe_load((EXAMPLES / "release-policy.yaml").read_text())
    assert policy["apiVersion"] == "modelseal/v1"
    assert policy["kind"] == "ReleasePolicy"
    assert set(policy["tee"]) == {"tdx", "snp"}
