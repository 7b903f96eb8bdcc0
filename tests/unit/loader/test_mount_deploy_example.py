"""The `modelseal mount` sidecar examples and their image stay consistent with the command
they run and with the least-privilege design (docs/guides/mount.md, "Kubernetes")."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import click
import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from modelseal.cli.mount import mount

EXAMPLES = Path(__file__).resolve().parents[3] / "deploy" / "examples"
SIDECARS = {"kbs": "mount-sidecar.yaml", "cdh": "mount-sidecar-cdh.yaml"}
DOCKERFILE = EXAMPLES / "Dockerfile.mount"
#: the release whose schemas the packaging is checked against (tests/integration/deploy)
KUBERNETES_VERSION = "1.32.0"


def _deployment(name: str) -> dict[str, Any]:
    (deployment,) = [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]
    assert deployment["kind"] == "Deployment"
    return deployment


def _pod(name: str) -> dict[str, Any]:
    return _deployment(name)["spec"]["template"]["spec"]


def _env(sidecar: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in sidecar["env"]}


def _parse(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What the real ``modelseal mount`` reads from this env: Click's own parsing and type
    checks (choices, ranges), without running the command."""
    for name in [n for n in os.environ if n.startswith("MODELSEAL_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with mount.make_context("mount", []) as ctx:
        return dict(ctx.params)


@pytest.mark.parametrize("example", SIDECARS.values())
def test_sidecar_env_is_what_the_mount_command_reads(
    example: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    (sidecar,) = _pod(example)["initContainers"]
    assert sidecar["args"] == ["mount"]
    assert sidecar["restartPolicy"] == "Always"  # native sidecar: outlives the init phase
    env = _env(sidecar)
    known = {p.envvar for p in mount.params if isinstance(p.envvar, str)}
    assert set(env) <= known, set(env) - known
    params = _parse(env, monkeypatch)
    assert params["allow_other"] is True  # the server runs as another user
    mounts = {m["name"]: m for m in sidecar["volumeMounts"]}
    assert mounts["models"]["mountPath"] == env["MODELSEAL_MOUNTPOINT"]
    assert str(params["mountpoint"]) == env["MODELSEAL_MOUNTPOINT"]
    assert mounts["models"]["mountPropagation"] == "Bidirectional"
    # the startup probe waits for the ready file, which lives on a mounted volume
    ready = env["MODELSEAL_READY_FILE"]
    assert sidecar["startupProbe"]["exec"]["command"] == ["test", "-f", ready]
    assert any(ready.startswith(m["mountPath"] + "/") for m in mounts.values())


def test_the_kbs_example_attests_itself_and_the_cdh_example_does_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (own,) = _pod(SIDECARS["kbs"])["initContainers"]
    params = _parse(_env(own), monkeypatch)
    assert params["key_source"] is None  # the default: RCAR with the KBS
    assert params["kbs_url"].startswith("https://")
    (via_cdh,) = _pod(SIDECARS["cdh"])["initContainers"]
    env = _env(via_cdh)
    params = _parse(env, monkeypatch)
    assert params["key_source"] == "cdh"
    assert params["cdh_url"] == "http://127.0.0.1:8006"  # the guest's api-server-rest
    # the CDH knows its KBS from the init-data: nothing of the KBS is configured here
    assert not {k for k in env if "KBS" in k or k in ("MODELSEAL_TEE", "MODELSEAL_INIT_DATA")}
    template = _deployment(SIDECARS["cdh"])["spec"]["template"]
    assert "io.katacontainers.config.hypervisor.cc_init_data" in template["metadata"]["annotations"]
    # a wrong choice is refused by the same parsing
    with pytest.raises(click.BadParameter):
        _parse({**env, "MODELSEAL_KEY_SOURCE": "kds"}, monkeypatch)


def _dockerfile() -> list[tuple[str, str]]:
    with DOCKERFILE.open("rb") as fh:
        return [
            (s["instruction"], s["value"])
            for s in DockerfileParser(fileobj=fh).structure
            if s["instruction"] != "COMMENT"
        ]


def _image_user() -> int:
    steps = _dockerfile()
    final = steps[max(i for i, s in enumerate(steps) if s[0] == "FROM") :]
    (user,) = [v for i, v in final if i == "USER"]
    uid, gid = user.split(":")
    assert uid == gid
    return int(uid)


@pytest.mark.parametrize("example", SIDECARS.values())
def test_the_sidecar_is_privileged_only_for_propagation_and_runs_as_the_image_user(
    example: str,
) -> None:
    pod = _pod(example)
    (sidecar,) = pod["initContainers"]
    sc = sidecar["securityContext"]
    assert sc["privileged"] is True  # required by Bidirectional propagation
    uid = _image_user()
    assert uid != 0
    assert sc["runAsUser"] == sc["runAsGroup"] == uid
    assert sc["runAsNonRoot"] is True
    # the setuid fusermount3 needs no_new_privs unset
    assert sc["allowPrivilegeEscalation"] is True
    assert sc["readOnlyRootFilesystem"] is True
    # the mount point and the ready file's emptyDirs are writable by that user
    assert pod["securityContext"]["fsGroup"] == uid


@pytest.mark.parametrize("example", SIDECARS.values())
def test_server_receives_the_mount_read_only_and_unprivileged(example: str) -> None:
    (server,) = _pod(example)["containers"]
    (models,) = [m for m in server["volumeMounts"] if m["name"] == "models"]
    assert models["readOnly"] is True
    assert models["mountPropagation"] == "HostToContainer"
    assert server["securityContext"]["allowPrivilegeEscalation"] is False
    assert "privileged" not in server["securityContext"]


@pytest.mark.parametrize("example", SIDECARS.values())
def test_the_examples_match_the_kubernetes_schemas(example: str) -> None:
    kubernetes_validate.validate(_deployment(example), KUBERNETES_VERSION, strict=True)


def test_the_image_is_non_root_with_a_setuid_fusermount3() -> None:
    steps = _dockerfile()
    froms = [v for i, v in steps if i == "FROM"]
    assert len(froms) == 2, "build the wheels, then a runtime stage without them"
    assert all(v.startswith("${PYTHON_BASE}") for v in froms)  # pinned by --build-arg
    final = steps[max(i for i, s in enumerate(steps) if s[0] == "FROM") :]
    runs = " ".join(v for i, v in final if i == "RUN")
    assert re.search(r"apt-get install .*\bfuse3\b", runs)
    # the build fails unless fusermount3 is setuid root, the one privileged program
    assert '"0 -rwsr-xr-x"' in runs
    assert "user_allow_other >> /etc/fuse.conf" in runs
    assert "useradd --uid 10001 --gid 10001" in runs
    assert "modelseal[mount]" in runs
    assert _image_user() == 10001
    assert "MODELSEAL_ALLOW_OTHER=true" in " ".join(v for i, v in final if i == "ENV")
    entry = [json.loads(v) for i, v in final if i == "ENTRYPOINT"]
    assert entry == [["modelseal"]]
    assert [json.loads(v) for i, v in final if i == "CMD"] == [["mount"]]
    assert not [v for i, v in steps if i == "ADD"]
