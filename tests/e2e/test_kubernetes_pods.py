"""Run what the rendered manifests run, on loopback: the KBS migration Job's container, then
two replicas of the KBS pod (its initContainer's ``install`` copying the Secret files into
the data directory, then its server container with the manifest's exact arguments and
environment), and probe them as the kubelet would. Only what a cluster provides is
simulated: each volume is a directory (a Secret's keys are files, mode 0440, reached through
symlinks as the kubelet lays them out), ``--host 0.0.0.0`` binds 127.0.0.1 and the
container port is a free one. The admin credential from the Secret then works on both
replicas and a key written through one is listed by the other. The registry's Deployment
runs the same way, its data directory inside its volume."""

from __future__ import annotations

import copy
import os
import re
import secrets
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelseal.crypto.secret import SecretBytes
from modelseal.kbs.admin_auth import mint_admin_token
from tests.conftest import free_port, self_signed_cert
from tests.e2e.durability.kbs_driver import b64url
from tests.e2e.kbs_process import CLI, stop_process
from tests.hsm import SoftHsm, unique_object
from tests.integration.deploy.manifests import OVERLAYS, one, pod_spec

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

POLICY = {"apiVersion": "modelseal/v1", "kind": "ReleasePolicy", "tee": ["tdx"]}


class Cluster:
    """Secrets as kubelet-style directories; volumes of one pod as local directories."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.secrets: dict[str, dict[str, bytes]] = {}

    def secret(self, name: str, data: dict[str, bytes]) -> None:
        self.secrets[name] = data

    def _secret_dir(self, volume: dict[str, Any], into: Path) -> Path:
        """The kubelet's layout: ``..data`` -> a timestamped dir; each key a symlink."""
        spec = volume["secret"]
        data = self.secrets[spec["secretName"]]
        items = spec.get("items") or [{"key": k, "path": k} for k in data]
        real = into / "..2026_01_01_00_00_00.1"
        real.mkdir(parents=True)
        for item in items:
            (real / item["path"]).write_bytes(data[item["key"]])
            os.chmod(real / item["path"], spec["defaultMode"])
            (into / item["path"]).symlink_to(Path("..data") / item["path"])
        (into / "..data").symlink_to(real.name)
        return into

    def pod(self, workload: dict[str, Any], name: str) -> Pod:
        spec = pod_spec(workload)
        volumes: dict[str, Path] = {}
        for volume in spec["volumes"]:
            where = self.base / name / volume["name"]
            if "secret" in volume:
                volumes[volume["name"]] = self._secret_dir(volume, where)
            else:
                where.mkdir(parents=True)
                volumes[volume["name"]] = where
        return Pod(self, spec, volumes)


class Pod:
    def __init__(self, cluster: Cluster, spec: dict[str, Any], volumes: dict[str, Path]) -> None:
        self.cluster = cluster
        self.spec = spec
        self.volumes = volumes

    def _mounts(self, container: dict[str, Any]) -> list[tuple[str, Path]]:
        mounts = [(m["mountPath"], self.volumes[m["name"]]) for m in container["volumeMounts"]]
        return sorted(mounts, key=lambda m: -len(m[0]))  # the longest mount path wins

    def local(self, container: dict[str, Any], arg: str) -> str:
        """``arg`` with a container path (or a PKCS#11 URI's PIN file) rewritten to the
        directory of its volume."""
        if arg.startswith("pkcs11:"):
            return re.sub(
                r"pin-source=file:([^&]+)",
                lambda m: "pin-source=file:" + self.local(container, m.group(1)),
                arg,
            )
        for mount_path, directory in self._mounts(container):
            if arg == mount_path or arg.startswith(mount_path + "/"):
                return str(directory) + arg[len(mount_path) :]
        return arg

    def env(self, container: dict[str, Any]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSEAL_")}
        for var in container.get("env", []):
            if "value" in var:
                env[var["name"]] = var["value"]
            else:
                ref = var["valueFrom"]["secretKeyRef"]
                env[var["name"]] = self.cluster.secrets[ref["name"]][ref["key"]].decode()
        return env

    def argv(self, container: dict[str, Any], port: int | None = None) -> list[str]:
        """The container's command line on this machine (entrypoint ``modelseal``)."""
        if "command" in container:
            return [self.local(container, a) for a in container["command"]]
        args = [self.local(container, a) for a in container["args"]]
        if port is not None:
            args[args.index("--host") + 1] = "127.0.0.1"
            args[args.index("--port") + 1] = str(port)
        return [*CLI, *args]

    def run_init_containers(self) -> None:
        for container in self.spec.get("initContainers", []):
            subprocess.run(self.argv(container), check=True, env=self.env(container))


def _wait_probes(
    container: dict[str, Any], url: str, ca: Path, proc: subprocess.Popen[bytes]
) -> None:
    """The startup probe until it passes, then the liveness and readiness probes, as the
    kubelet sends them (its probes do not verify the certificate; these do)."""
    deadline = time.monotonic() + 120
    startup = container["startupProbe"]["httpGet"]
    with httpx.Client(verify=ssl.create_default_context(cafile=ca), timeout=5) as http:
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
            try:
                if http.get(url + startup["path"]).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the startup probe never passed"
            time.sleep(0.2)
        for probe in ("livenessProbe", "readinessProbe"):
            get = container[probe]["httpGet"]
            assert get["scheme"] == "HTTPS"
            assert http.get(url + get["path"]).status_code == 200, probe


@pytest.mark.postgres
@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda o: o.rsplit("/", 1)[-1])
def test_the_kbs_manifests_run_replicas_and_their_migration(
    overlay: str, tmp_path: Path, pg_url: str, request: pytest.FixtureRequest
) -> None:
    """kek-file: two replicas, started together. kek-hsm: one replica on SoftHSM2 (two
    replicas sharing a token are the durability suite's), its URI's module and object
    swapped for the test token's, the PIN file from the Secret volume."""
    cert, key = self_signed_cert(tmp_path)
    signing = tmp_path / "signing.pem"
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-out", str(signing)],
        check=True, capture_output=True,
    )  # fmt: skip
    admin_credential = secrets.token_bytes(32)
    cluster = Cluster(tmp_path / "cluster")
    cluster.secret("modelseal-kbs-database", {"url": pg_url.encode()})
    cluster.secret(
        "modelseal-kbs-keys",
        {"admin-credential": admin_credential, "token-signing-key.pem": signing.read_bytes()},
    )
    cluster.secret("modelseal-kbs-kek", {"kek": secrets.token_bytes(32)})
    hsm = overlay.endswith("kek-hsm")
    if hsm:
        softhsm: SoftHsm = request.getfixturevalue("softhsm")
        pin = (softhsm.base / "modelseal.pin").read_bytes()
        cluster.secret("modelseal-kbs-hsm", {"pin": pin})
    cluster.secret("modelseal-kbs-tls", {"tls.crt": cert.read_bytes(), "tls.key": key.read_bytes()})

    job = cluster.pod(one(overlay, "Job", "modelseal-kbs-migrate"), "migrate")
    (migrate,) = job.spec["containers"]
    done = subprocess.run(job.argv(migrate), env=job.env(migrate), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr

    kbs = copy.deepcopy(one(overlay, "Deployment", "modelseal-kbs"))
    if hsm:
        args = pod_spec(kbs)["containers"][0]["args"]
        at = args.index("--kek-uri") + 1
        args[at] = re.sub(r"module-path=[^&]+", f"module-path={softhsm.module}", args[at])
        args[at] = args[at].replace("object=modelseal-kek", f"object={unique_object()}")
    urls, procs = [], []
    try:
        replicas = 1 if hsm else kbs["spec"]["replicas"]
        assert kbs["spec"]["replicas"] >= 2
        pods = [cluster.pod(kbs, f"kbs-{i}") for i in range(replicas)]
        for pod in pods:  # the replicas start together, as a Deployment's pods do
            pod.run_init_containers()
            (server,) = pod.spec["containers"]
            port = free_port()
            procs.append(
                subprocess.Popen(
                    pod.argv(server, port),
                    env=pod.env(server),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
            )
            urls.append(f"https://127.0.0.1:{port}")
        for pod, url, proc in zip(pods, urls, procs, strict=True):
            (server,) = pod.spec["containers"]
            _wait_probes(server, url, cert, proc)
            # the copies the server reads are private to it
            args = server["args"]
            data_dir = Path(pod.local(server, args[args.index("--data-dir") + 1]))
            for name in ("admin-credential", "token-signing-key.pem"):
                assert (data_dir / name).stat().st_mode & 0o777 == 0o600, name
            if hsm:
                assert not (data_dir / "kek").exists()  # the KEK stays in the token
            else:
                assert (data_dir / "kek").stat().st_mode & 0o777 == 0o600

        token = mint_admin_token(
            SecretBytes(admin_credential),
            role="admin",
            ttl=600,
            subject="k8s-test",
            now=time.time(),
        )
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(
            verify=ssl.create_default_context(cafile=cert), timeout=30, headers=headers
        ) as http:
            put = http.put(
                f"{urls[0]}/modelseal/v1/keys/models/k8s/1",
                json={"key": b64url(secrets.token_bytes(32)), "policy": POLICY},
            )
            assert put.status_code == 201, put.text
            listed = http.get(f"{urls[-1]}/modelseal/v1/keys")
            assert listed.status_code == 200, listed.text
            assert "models/k8s/1" in listed.text
    finally:
        for proc in procs:
            stop_process(proc)


def test_the_registry_manifest_runs(tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path)
    cluster = Cluster(tmp_path / "cluster")
    cluster.secret(
        "modelseal-registry-tls", {"tls.crt": cert.read_bytes(), "tls.key": key.read_bytes()}
    )
    pod = cluster.pod(one(OVERLAYS[0], "Deployment", "modelseal-registry"), "registry")
    (server,) = pod.spec["containers"]
    port = free_port()
    proc = subprocess.Popen(
        pod.argv(server, port),
        env=pod.env(server),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_probes(server, f"https://127.0.0.1:{port}", cert, proc)
        args = server["args"]
        data_dir = Path(pod.local(server, args[args.index("--data-dir") + 1]))
        # the data directory is created inside the volume, with the upload token in it
        assert (data_dir / "upload-token").stat().st_mode & 0o077 == 0
    finally:
        stop_process(proc)
