"""The Kubernetes packaging (deploy/kubernetes, deploy/examples) and its images
(deploy/docker): every overlay rendered by a real Kustomize (``kubectl kustomize``), every
rendered object validated against the Kubernetes OpenAPI schemas of a pinned release
(kubernetes-validate, strict: unknown fields are errors), the security properties the
packaging promises asserted on the rendered objects, every modelseal flag and MODELSEAL_*
variable checked against the real Click commands, and the Dockerfiles parsed and linted."""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import kubernetes_validate
import pytest
from dockerfile_parse import DockerfileParser

from modelseal.cli import cli
from tests.integration.deploy.manifests import (
    DEPLOY,
    KUBERNETES_VERSION,
    MODELSEAL_IMAGE,
    OVERLAYS,
    RENDERED,
    SECRETISH,
    WORKLOADS,
    containers,
    objects,
    one,
    pod_spec,
    render,
)


@pytest.mark.parametrize("target", RENDERED)
def test_every_rendered_object_matches_the_kubernetes_schemas(target: str) -> None:
    docs = render(target)
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_schema_validation_catches_a_wrong_field() -> None:
    """The validator is not a no-op: a misspelt field and a wrong type are refused."""
    kbs = json.loads(json.dumps(one(OVERLAYS[0], "Deployment", "modelseal-kbs")))
    kbs["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(kbs, KUBERNETES_VERSION, strict=True)
    kbs = json.loads(json.dumps(one(OVERLAYS[0], "Deployment", "modelseal-kbs")))
    kbs["spec"]["replicas"] = "2"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(kbs, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("target", OVERLAYS)
def test_workloads_are_non_root_unprivileged_and_bounded(target: str) -> None:
    workloads = [o for kind in WORKLOADS for o in objects(target, kind)]
    assert {o["metadata"]["name"] for o in workloads} == {
        "modelseal-kbs",
        "modelseal-kbs-migrate",
        "modelseal-registry",
    }
    for workload in workloads:
        spec = pod_spec(workload)
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True
        assert pod["runAsUser"] != 0
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        assert not spec.get("hostNetwork")
        assert not spec.get("hostPID")
        for c in containers(spec):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, c["name"]
            assert sc.get("privileged", False) is False, c["name"]
            assert sc["readOnlyRootFilesystem"] is True, c["name"]
            assert sc["runAsNonRoot"] is True, c["name"]
            assert sc["capabilities"] == {"drop": ["ALL"]}, c["name"]
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][bound]), (c["name"], bound)
        # nothing is written to the read-only root: every writable path is a volume
        assert "tmp" in {v["name"] for v in spec["volumes"]}
    for namespace in objects(target, "Namespace"):
        assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("target", OVERLAYS)
def test_the_kbs_is_replicated_probed_and_covered_by_a_disruption_budget(target: str) -> None:
    kbs = one(target, "Deployment", "modelseal-kbs")
    assert kbs["spec"]["replicas"] >= 2
    assert kbs["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    labels = kbs["spec"]["template"]["metadata"]["labels"]
    (server,) = pod_spec(kbs)["containers"]
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = server[probe]["httpGet"]
        assert get["path"] in ("/healthz", "/readyz"), probe
        assert get["scheme"] == "HTTPS", probe
        assert get["port"] in ports, probe
    assert server["livenessProbe"]["httpGet"]["path"] == "/healthz"
    (pdb,) = [
        p
        for p in objects(target, "PodDisruptionBudget")
        if p["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ]
    assert 1 <= pdb["spec"]["minAvailable"] < kbs["spec"]["replicas"]
    service = one(target, "Service", "modelseal-kbs")
    assert service["spec"]["selector"].items() <= labels.items()
    assert "sessionAffinity" not in service["spec"] or service["spec"]["sessionAffinity"] == "None"
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["https"]
    registry = one(target, "Deployment", "modelseal-registry")
    for probe in ("livenessProbe", "readinessProbe"):
        assert pod_spec(registry)["containers"][0][probe]["httpGet"]["path"] == "/healthz"


def _selected(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    match = policy["spec"]["podSelector"].get("matchLabels", {})
    return bool(match.items() <= labels.items())


@pytest.mark.parametrize("target", OVERLAYS)
def test_network_policies_deny_by_default_and_admit_only_the_service_ports(target: str) -> None:
    policies = objects(target, "NetworkPolicy")
    (deny,) = [p for p in policies if p["spec"]["podSelector"] == {}]
    assert set(deny["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert not deny["spec"].get("ingress")
    assert not deny["spec"].get("egress")
    for workload in (o for kind in WORKLOADS for o in objects(target, kind)):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        own = [p for p in policies if p["spec"]["podSelector"] and _selected(p, labels)]
        assert own, workload["metadata"]["name"]
        ports = {
            p["containerPort"] for c in pod_spec(workload)["containers"] for p in c.get("ports", [])
        }
        for policy in own:
            assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
            for rule in policy["spec"].get("ingress", []):
                # every ingress rule names its peers and only the pod's serving ports
                assert rule.get("from"), policy["metadata"]["name"]
                for peer in rule["from"]:
                    assert peer.get("podSelector", {}).get("matchLabels"), peer
                assert {p["port"] for p in rule["ports"]} <= ports, policy["metadata"]["name"]
            for rule in policy["spec"].get("egress", []):
                assert rule.get("ports"), policy["metadata"]["name"]  # never "any port"


@pytest.mark.parametrize("target", OVERLAYS)
def test_no_secret_is_shipped_and_secrets_reach_pods_only_as_files_or_env(target: str) -> None:
    assert not objects(target, "Secret")
    for workload in (o for kind in WORKLOADS for o in objects(target, kind)):
        spec = pod_spec(workload)
        for c in containers(spec):
            for env in c.get("env", []):
                if SECRETISH.search(env["name"]) or "DATABASE_URL" in env["name"]:
                    assert "value" not in env, env
                    assert "secretKeyRef" in env["valueFrom"], env
            for arg in c.get("args", []):
                assert "postgresql://" not in arg, arg
                assert "pin-value" not in arg, arg
        for volume in spec["volumes"]:
            if "secret" in volume:
                # group-readable for the pod's fsGroup, nothing for others
                assert volume["secret"]["defaultMode"] & 0o007 == 0, volume


def test_the_kek_comes_from_a_secret_file_or_a_pkcs11_token() -> None:
    file_kbs = pod_spec(one(OVERLAYS[0], "Deployment", "modelseal-kbs"))
    (copy,) = file_kbs["initContainers"]
    assert copy["command"][:4] == ["install", "-D", "-m", "0600"]
    data_dir = copy["command"][copy["command"].index("-t") + 1]
    assert "/etc/modelseal/kbs-kek/kek" in copy["command"]
    mounted = {m["mountPath"] for m in copy["volumeMounts"]}
    for source in copy["command"][copy["command"].index("-t") + 2 :]:
        assert str(Path(source).parent) in mounted, source
    kek_volume = {v["name"]: v for v in file_kbs["volumes"]}["kbs-kek"]
    assert kek_volume["secret"]["secretName"] == "modelseal-kbs-kek"
    (server,) = file_kbs["containers"]
    assert server["args"][server["args"].index("--data-dir") + 1] == data_dir
    assert "--kek-uri" not in server["args"]
    data = {v["name"]: v for v in file_kbs["volumes"]}["data"]
    assert data["emptyDir"]["medium"] == "Memory"

    hsm_kbs = pod_spec(one(OVERLAYS[1], "Deployment", "modelseal-kbs"))
    (server,) = hsm_kbs["containers"]
    uri = server["args"][server["args"].index("--kek-uri") + 1]
    assert uri.startswith("pkcs11:")
    assert "pin-value" not in uri
    pin = re.search(r"pin-source=file:(\S+?)(?:&|$)", uri)
    assert pin is not None
    # the PIN file is a 0600 copy in the data directory (the KBS refuses a readable one),
    # made by the initContainer from the Secret volume
    data_dir = server["args"][server["args"].index("--data-dir") + 1]
    assert str(Path(pin.group(1)).parent) == data_dir
    (copy,) = hsm_kbs["initContainers"]
    assert copy["command"][:5] == ["install", "-D", "-m", "0600", "-t"]
    source = next(p for p in copy["command"] if p.endswith("/" + Path(pin.group(1)).name))
    mounts = {m["mountPath"]: m["name"] for m in copy["volumeMounts"]}
    volume = {v["name"]: v for v in hsm_kbs["volumes"]}[mounts[str(Path(source).parent)]]
    assert volume["secret"]["secretName"] == "modelseal-kbs-hsm"
    assert not any("kek" in part for part in copy["command"])  # the KEK stays in the token


def _command(args: list[str]) -> tuple[click.Command, list[str]]:
    """The Click command ``modelseal ARGS`` runs and the arguments left for it."""
    command: click.Command = cli
    rest = list(args)
    while isinstance(command, click.Group):
        sub = command.get_command(click.Context(command), rest[0])
        assert sub is not None, f"no command {rest[0]!r} in {args}"
        command, rest = sub, rest[1:]
    return command, rest


def _modelseal_containers() -> Iterator[tuple[str, dict[str, Any]]]:
    for target in RENDERED:
        for workload in (o for kind in WORKLOADS for o in objects(target, kind)):
            for c in containers(pod_spec(workload)):
                if MODELSEAL_IMAGE.search(c["image"]) and "command" not in c:
                    yield target, c


def test_every_flag_and_variable_in_the_manifests_exists_in_the_cli() -> None:
    checked = set()
    for target, c in _modelseal_containers():
        command, rest = _command(c["args"])
        params = [p for p in command.params if isinstance(p, click.Option)]
        flags = {f: p for p in params for f in (*p.opts, *p.secondary_opts)}
        i = 0
        while i < len(rest):
            flag = rest[i].split("=", 1)[0]
            assert flag.startswith("--"), (target, c["name"], rest[i])
            assert flag in flags, f"{target} {c['name']}: {flag} is not an option of {c['args']}"
            takes_value = not flags[flag].is_flag and "=" not in rest[i]
            if takes_value:
                assert i + 1 < len(rest), (flag, rest)
                assert not rest[i + 1].startswith("--"), (flag, rest)
            i += 2 if takes_value else 1
        envvars = {p.envvar for p in params if isinstance(p.envvar, str)}
        for env in c.get("env", []):
            if env["name"].startswith("MODELSEAL_"):
                assert env["name"] in envvars, f"{target} {c['name']}: {env['name']} is unused"
        checked.add(command.name)
    assert checked == {"serve", "migrate", "load"}


def test_the_flag_check_refuses_an_unknown_flag() -> None:
    command, rest = _command(["kbs", "serve", "--data-dir", "/d", "--kek-url", "x"])
    opts = {f for p in command.params for f in getattr(p, "opts", [])}
    assert "--data-dir" in opts
    assert "--kek-url" not in opts
    assert rest[-2] == "--kek-url"


# --- the images ---------------------------------------------------------------------------

DOCKERFILES = sorted((DEPLOY / "docker").glob("Dockerfile.*"))
#: extras each image needs for what its manifests run
EXTRAS = {
    "kbs": {"server", "postgres", "hsm", "tdx"},
    "registry": {"server", "s3"},
    "loader": set(),
}


def parse_dockerfile(path: Path) -> list[tuple[str, str]]:
    with path.open("rb") as fh:
        parser = DockerfileParser(fileobj=fh)
        return [(s["instruction"], s["value"]) for s in parser.structure]


def test_there_is_one_image_per_component() -> None:
    assert {p.suffix.lstrip(".") for p in DOCKERFILES} == set(EXTRAS)


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_are_multi_stage_non_root_and_carry_no_secret(path: Path) -> None:
    steps = [s for s in parse_dockerfile(path) if s[0] != "COMMENT"]
    froms = [v for i, v in steps if i == "FROM"]
    assert len(froms) >= 2, "multi-stage: build wheels, then a runtime stage without them"
    base_args = {v.split("=", 1)[0] for i, v in steps if i == "ARG"}
    for value in froms:
        image = value.split()[0]
        # the base is a build argument, so a release pins it by digest (--build-arg)
        assert image.startswith("${"), value
        assert image[2:-1] in base_args, value
    final = steps[max(i for i, s in enumerate(steps) if s[0] == "FROM") :]
    users = [v for i, v in final if i == "USER"]
    assert users, "the runtime stage sets a USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), "a numeric USER: runAsNonRoot can check it"
    assert int(uid) != 0
    assert uid == "10001"  # the runAsUser of the manifests
    assert not [v for i, v in steps if i == "ADD"], "COPY only: ADD fetches URLs and unpacks"
    for instruction, value in steps:
        if instruction == "COPY":
            sources = [w for w in value.split()[:-1] if not w.startswith("--")]
            assert not any(SECRETISH.search(s) for s in sources), value
        if instruction in ("ENV", "ARG"):
            for name in re.findall(r"([A-Z_]+)=", value):
                assert not SECRETISH.search(name.replace("_", " ")), value
    entry = [v for i, v in final if i == "ENTRYPOINT"]
    assert [json.loads(e) for e in entry] == [["modelseal"]]
    component = path.suffix.lstrip(".")
    installs = [v for i, v in final if i == "RUN" and "pip install" in v]
    (install,) = installs
    extras = re.search(r"modelseal\[([a-z0-9,]+)\]", install)
    assert set(extras.group(1).split(",") if extras else ()) == EXTRAS[component]


def test_the_manifests_use_the_images_built_here() -> None:
    images = {
        MODELSEAL_IMAGE.search(c["image"]).group(1)  # type: ignore[union-attr]
        for target in RENDERED
        for o in (o for kind in WORKLOADS for o in objects(target, kind))
        for c in containers(pod_spec(o))
        if MODELSEAL_IMAGE.search(c["image"])
    }
    assert images == set(EXTRAS)


def test_the_example_loader_is_non_root_and_reaches_the_packaged_services() -> None:
    (deployment,) = objects("examples", "Deployment")
    spec = pod_spec(deployment)
    assert spec["securityContext"]["runAsNonRoot"] is True
    (loader,) = spec["initContainers"]
    sc = loader["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    # the labels the KBS's and the registry's NetworkPolicies admit, and their Services
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    base = OVERLAYS[0]
    for name in ("modelseal-kbs", "modelseal-registry"):
        policy = one(base, "NetworkPolicy", name)
        peers = [peer for rule in policy["spec"]["ingress"] for peer in rule["from"]]
        assert any(p["podSelector"]["matchLabels"].items() <= labels.items() for p in peers), name
    env = {e["name"]: e.get("value", "") for e in loader["env"]}
    # the KBS is reached by the guest's CDH and AA, with the URL of the init-data
    (config_map,) = objects("examples", "ConfigMap")
    initdata = tomllib.loads(config_map["data"]["initdata.toml"])["data"]
    kbs_urls = [
        tomllib.loads(initdata["cdh.toml"])["kbc"]["url"],
        tomllib.loads(initdata["aa.toml"])["token_configs"]["kbs"]["url"],
    ]
    for name, urls in (
        ("modelseal-kbs", kbs_urls),
        ("modelseal-registry", [env["MODELSEAL_MODEL"]]),
    ):
        service = one(base, "Service", name)
        port = service["spec"]["ports"][0]["port"]
        host = f"https://{name}.{service['metadata']['namespace']}.svc:{port}"
        assert all(url.startswith(host) for url in urls), (name, urls)
