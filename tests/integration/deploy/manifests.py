"""The rendered Kubernetes packaging: ``kubectl kustomize`` of deploy/ targets, parsed, and
small accessors shared by the manifest tests."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
#: the Kubernetes release whose schemas the manifests must satisfy
KUBERNETES_VERSION = "1.32.0"
OVERLAYS = ("kubernetes/overlays/kek-file", "kubernetes/overlays/kek-hsm")
RENDERED = (*OVERLAYS, "examples")
WORKLOADS = ("Deployment", "Job")
#: an image built from deploy/docker: its entrypoint is `modelseal`, args are CLI args
MODELSEAL_IMAGE = re.compile(r"/modelseal/(kbs|registry|loader):")
SECRETISH = re.compile(r"(kek|credential|token|secret|password|\.pem|\.key)\b", re.I)


def _kubectl() -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (scripts/system-packages.txt)")
    out = subprocess.run(
        [kubectl, "version", "--client", "-o", "json"], capture_output=True, text=True, check=True
    ).stdout
    kustomize = json.loads(out).get("kustomizeVersion", "v0")
    if int(kustomize.lstrip("v").split(".")[0]) < 5:
        pytest.skip(f"kubectl's Kustomize {kustomize} is older than v5")
    return kubectl


@cache
def render(target: str) -> tuple[dict[str, Any], ...]:
    out = subprocess.run(
        [_kubectl(), "kustomize", str(DEPLOY / target)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return tuple(doc for doc in yaml.safe_load_all(out) if doc)


def objects(target: str, kind: str) -> list[dict[str, Any]]:
    return [o for o in render(target) if o["kind"] == kind]


def one(target: str, kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in objects(target, kind) if o["metadata"]["name"] == name]
    return found


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def containers(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def workloads(target: str) -> Iterator[dict[str, Any]]:
    for kind in WORKLOADS:
        yield from objects(target, kind)
