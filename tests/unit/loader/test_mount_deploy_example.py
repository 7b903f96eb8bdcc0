"""The `modelseal mount` sidecar example stays consistent with the command it runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from modelseal.cli.mount import mount

EXAMPLE = Path(__file__).resolve().parents[3] / "deploy" / "examples" / "mount-sidecar.yaml"


def _pod() -> dict[str, Any]:
    (deployment,) = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]
    assert deployment["kind"] == "Deployment"
    return deployment["spec"]["template"]["spec"]


def test_sidecar_env_is_what_the_mount_command_reads() -> None:
    (sidecar,) = _pod()["initContainers"]
    assert sidecar["args"] == ["mount"]
    assert sidecar["restartPolicy"] == "Always"  # native sidecar: outlives the init phase
    env = {e["name"]: e["value"] for e in sidecar["env"]}
    known = {p.envvar for p in mount.params if isinstance(p.envvar, str)}
    assert set(env) <= known, set(env) - known
    mounts = {m["name"]: m for m in sidecar["volumeMounts"]}
    assert mounts["models"]["mountPath"] == env["MODELSEAL_MOUNTPOINT"]
    assert mounts["models"]["mountPropagation"] == "Bidirectional"
    assert sidecar["securityContext"]["privileged"] is True  # required by Bidirectional
    # the startup probe waits for the ready file, which lives on a mounted volume
    ready = env["MODELSEAL_READY_FILE"]
    assert sidecar["startupProbe"]["exec"]["command"] == ["test", "-f", ready]
    assert any(ready.startswith(m["mountPath"] + "/") for m in mounts.values())


def test_server_receives_the_mount_read_only_and_unprivileged() -> None:
    (server,) = _pod()["containers"]
    (models,) = [m for m in server["volumeMounts"] if m["name"] == "models"]
    assert models["readOnly"] is True
    assert models["mountPropagation"] == "HostToContainer"
    assert server["securityContext"]["allowPrivilegeEscalation"] is False
    assert "privileged" not in server["securityContext"]
