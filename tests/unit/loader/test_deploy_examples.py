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
    annotations = pod["metadata"]["annotations"]
    assert "io.katacontainers.config.hypervisor.cc_init_data" in annotations
    # the AA's runtime measurement is served to containers only with the full REST API
    kernel = annotations["io.katacontainers.config.hypervisor.kernel_params"]
    assert "agent.guest_components_rest_api=all" in kernel.split()
    (loader,) = spec["initContainers"]
    env = {e["name"]: e["value"] for e in loader["env"]}
    assert set(env) <= set(ENV_VARS)
    for required in ("MODELSEAL_MODEL", "MODELSEAL_DEST", "MODELSEAL_INIT_DATA"):
        assert required in env
    assert env["MODELSEAL_ALLOW_DISK"] == "false"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["models"]["emptyDir"]["medium"] == "Memory"
    assert volumes["models"]["emptyDir"]["sizeLimit"]
    (server,) = spec["containers"]
    mounts = {m["name"]: m for m in server["volumeMounts"]}
    assert mounts["models"]["mountPath"] == env["MODELSEAL_DEST"]
    assert mounts["models"]["readOnly"] is True


def test_the_loader_takes_the_coco_path_without_device_access() -> None:
    spec = next(d for d in _docs() if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    (loader,) = spec["initContainers"]
    env = {e["name"]: e["value"] for e in loader["env"]}
    assert env["MODELSEAL_KEY_SOURCE"] == "cdh"
    assert env["MODELSEAL_CDH_URL"] == "http://127.0.0.1:8006"
    # the CDH knows the KBS from init-data; the loader attests nothing itself
    assert "MODELSEAL_KBS_URL" not in env
    assert "MODELSEAL_TEE" not in env
    security = loader["securityContext"]
    assert security["privileged"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    for mount in loader["volumeMounts"]:
        assert "hostPath" not in volumes[mount["name"]]
        assert not mount["mountPath"].startswith(("/dev", "/sys"))
    assert "volumeDevices" not in loader


def test_init_data_documents_agree() -> None:
    raw = (EXAMPLES / "initdata.toml").read_bytes()
    config = next(d for d in _docs() if d["kind"] == "ConfigMap")
    assert config["data"]["initdata.toml"].encode() == raw
    # the annotation is the gzipped, base64-encoded document itself (what the host measures)
    pod = next(d for d in _docs() if d["kind"] == "Deployment")["spec"]["template"]
    annotation = pod["metadata"]["annotations"]["io.katacontainers.config.hypervisor.cc_init_data"]
    assert gzip.decompress(base64.b64decode(annotation)) == raw
    data = tomllib.loads(raw.decode())["data"]
    assert data["model_digest"].startswith("sha256:")
    # the KBS URL the AA and the CDH attest to
    cdh = tomllib.loads(data["cdh.toml"])
    aa = tomllib.loads(data["aa.toml"])
    assert cdh["kbc"]["name"] == "cc_kbc"
    assert cdh["kbc"]["url"] == aa["token_configs"]["kbs"]["url"]
    assert cdh["kbc"]["url"].startswith("https://")


def test_policy_example_is_a_release_policy() -> None:
    policy = yaml.safe_load((EXAMPLES / "release-policy.yaml").read_text())
    assert policy["apiVersion"] == "modelseal/v1"
    assert policy["kind"] == "ReleasePolicy"
    assert set(policy["tee"]) == {"tdx", "snp"}
