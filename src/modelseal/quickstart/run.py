"""``modelseal quickstart``: the whole modelseal flow on 127.0.0.1 in well under a minute.

1. train a real small model (MLP on scikit-learn's digits) and save it as safetensors;
2. start a real KBS (``modelseal kbs serve --insecure-allow-sample``: DEVELOPMENT ONLY) and
   a real registry (``modelseal registry serve``) as child processes on free ports;
3. mint an admin token and publish: seal with a fresh key, upload the ciphertext, register
   the key with a release policy and the model digest;
4. run the confidential loader (``modelseal load``) into a fresh memory-backed directory
   under /dev/shm: attest (sample TEE), get the key, decrypt, verify, receipt;
5. start an unchanged inference process that reads only that directory with stock
   safetensors + numpy and classifies the held-out digits; with ``--tls`` it runs as an
   HTTP server behind ``modelseal gateway`` (attested TLS, the model digest from the
   loader's receipt) and the digits go through ``modelseal request``, which checks the
   gateway's evidence against a client policy before sending them;
6. print the accuracy and a table of bytes and seconds per step; clean everything up
   (servers, temp dirs, the plaintext in /dev/shm) even on failure or Ctrl-C.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from modelseal.errors import (
    AttestationError,
    BackendError,
    ConfigError,
    Error,
    IntegrityError,
    NotFound,
    TransientError,
    UnsafeDestination,
)
from modelseal.quickstart import infer_server
from modelseal.quickstart.services import (
    MODELSEAL,
    Service,
    child_env,
    free_port,
    kbs_service,
    option_flags,
    registry_service,
    run_cli,
)
from modelseal.tee import registry as tee_registry

MODEL_ID = "digits-mlp"
VERSION = "v1"
SHM = Path("/dev/shm")  # noqa: S108 (mkdtemp below makes a private 0700 dir)
#: TEE kinds the quickstart can attest as on a machine without a TEE (those with a testbed)
TEES = tee_registry.kinds(runs_without_hardware=True)


@dataclass
class Step:
    name: str
    seconds: float
    bytes: int | None = None
    detail: str = ""


@dataclass
class QuickstartResult:
    accuracy: float
    samples: int
    model_digest: str
    steps: list[Step] = field(default_factory=list)


class Quickstart:
    """One run; ``out`` receives the human-readable report."""

    def __init__(
        self,
        *,
        tee: str = tee_registry.DEVELOPMENT_KIND,
        out: TextIO | None = None,
        workers: int = 2,
        tls: bool = False,
    ) -> None:
        if tee not in TEES:
            raise ConfigError(f"quickstart --tee must be one of {', '.join(TEES)}")
        self.tee = tee
        self.plugin = tee_registry.plugin(tee)
        self.out = out or sys.stdout
        self.workers = workers
        self.tls = tls
        self.steps: list[Step] = []
        self.services: list[Service] = []

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    @contextmanager
    def step(self, name: str) -> Iterator[Step]:
        record = Step(name, 0.0)
        self.say(f"-> {name} ...")
        start = time.perf_counter()
        yield record
        record.seconds = time.perf_counter() - start
        self.steps.append(record)

    def run(self) -> QuickstartResult:
        work = Path(tempfile.mkdtemp(prefix="modelseal-quickstart-"))
        self.testbed = self.plugin.provision_testbed(work)
        self.say(self.testbed.banner)
        dest_root = _memory_dir()
        try:
            return self._run(work, dest_root / "models")
        finally:
            for service in reversed(self.services):
                service.stop()
            shutil.rmtree(dest_root, ignore_errors=True)
            shutil.rmtree(work, ignore_errors=True)
            self.say("cleaned up: servers stopped, temp dirs and the tmpfs model removed")

    def _run(self, work: Path, dest: Path) -> QuickstartResult:
        logs = work / "logs"
        logs.mkdir()
        # the servers boot (seconds of imports) while the model trains
        kbs = kbs_service(work / "kbs", logs, tee_options=self.testbed.kbs_options)
        registry = registry_service(work / "registry", logs)
        for service in (kbs, registry):
            self.services.append(service)
            service.spawn()
        self.say(f"   KBS      {kbs.url}  ({self.testbed.trust})")
        self.say(f"   registry {registry.url}")
        with self.step("train model (numpy MLP on sklearn digits)") as s:
            from modelseal.quickstart.train import train

            trained = train(work / "model", work / "heldout.npz")
            s.bytes = trained.bytes
            s.detail = f"train accuracy {trained.train_accuracy:.3f}"
        with self.step("KBS + registry ready (started before training)") as s:
            kbs.wait_healthy(60)
            registry.wait_healthy(60)
            s.detail = "loopback, SQLite, local blobs"

        with self.step("publish (seal, upload, register key + policy)") as s:
            result = self._publish(work, kbs, registry, trained.directory)
            s.bytes = result.uploaded_bytes
            s.detail = result.model_digest or ""
        digest = result.model_digest or ""

        with self.step(f"load (attest as {self.tee}, key release, decrypt into tmpfs)") as s:
            receipt = self._load(registry, dest, digest, work)
            s.bytes = int(receipt["bytes"])
            s.detail = f"-> {dest}"
        loader_steps = receipt.get("timings", {})

        if self.tls:
            with self.step("inference over attested TLS (gateway + modelseal request)") as s:
                accuracy, samples = self._infer_tls(work, dest, digest, trained.test_data)
                s.detail = f"accuracy {accuracy:.4f} on {samples} held-out digits"
        else:
            with self.step("inference (unchanged process, stock safetensors)") as s:
                accuracy, samples = self._infer(dest, trained.test_data)
                s.detail = f"accuracy {accuracy:.4f} on {samples} held-out digits"

        self._report(accuracy, samples, digest, loader_steps)
        return QuickstartResult(accuracy, samples, digest, list(self.steps))

    def _publish(self, work: Path, kbs: Service, registry: Service, model_dir: Path) -> Any:
        from modelseal.kbs.admin_auth import load_admin_credential, mint_admin_token
        from modelseal.owner.kbs_admin import KbsAdminClient
        from modelseal.owner.publish import PublishRequest, publish

        credential = load_admin_credential(work / "kbs")
        try:
            token = mint_admin_token(credential, ttl=600, now=time.time())
        finally:
            credential.wipe()
        upload_token = (work / "registry" / "upload-token").read_text(encoding="utf-8").strip()
        policy: dict[str, Any] = {
            "apiVersion": "modelseal/v1",
            "kind": "ReleasePolicy",
            "tee": [self.tee],
            "debug": False,
        }
        if self.testbed.measurements:
            policy["measurements"] = [dict(self.testbed.measurements)]
        request = PublishRequest(
            source=model_dir,
            registry_url=registry.url,
            kbs_url=kbs.url,
            model_id=MODEL_ID,
            version=VERSION,
            registry_token=upload_token,
            policy=policy,
            staging_dir=work / "staging",
            framework="safetensors",
            workers=self.workers,
        )
        with KbsAdminClient(kbs.url, token) as admin:
            result = publish(request, admin)
            if self.plugin.simulates_launch:
                # bind the key to TEEs launched for exactly this model (init-data claim)
                admin.set_policy(result.key_id, {**policy, "model_digest": result.model_digest})
        return result

    def _load(self, registry: Service, dest: Path, digest: str, work: Path) -> dict[str, Any]:
        args = [
            "load",
            "--model",
            f"{registry.url}/models/{MODEL_ID}",
            "--dest",
            str(dest),
            "--tee",
            self.tee,
            "--model-digest",
            digest,
            "--workers",
            str(self.workers),
        ]
        for name, value in self.testbed.attester_values.items():
            args += ["--" + name.replace("_", "-"), str(value)]
        if self.plugin.simulates_launch:
            # what the host would pass at launch (MRCONFIGID = its digest)
            init = work / "init-data.toml"
            init.write_text(
                f'version = "0.1.0"\nalgorithm = "sha384"\n[data]\nmodel_digest = "{digest}"\n',
                encoding="utf-8",
            )
            args += ["--init-data", str(init)]
        done = run_cli(args, timeout=120)
        if done.returncode != 0:
            raise _child_error("modelseal load", done)
        receipt: dict[str, Any] = json.loads(
            (dest / ".modelseal" / "receipt.json").read_text(encoding="utf-8")
        )
        return receipt

    def _infer(self, dest: Path, test_data: Path) -> tuple[float, int]:
        script = Path(infer_server.__file__)
        done = subprocess.run(
            [sys.executable, str(script), str(dest), str(test_data)],
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise _child_error("inference process", done)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        return float(result["accuracy"]), int(result["samples"])

    def _infer_tls(self, work: Path, dest: Path, digest: str, test_data: Path) -> tuple[float, int]:
        """The inference server behind the attested gateway; the digits sent through
        ``modelseal request`` with a policy pinning the TEE and the model digest."""
        import numpy as np

        logs = work / "logs"
        infer_port, gateway_port = free_port(), free_port()
        script = str(Path(infer_server.__file__))
        server = Service(
            "inference server",
            [sys.executable, script, str(dest), "--serve", f"127.0.0.1:{infer_port}"],
            f"http://127.0.0.1:{infer_port}",
            logs / "inference.log",
        )
        self.services.append(server)
        server.start(timeout=60)
        gateway_argv = [
            "gateway", "--listen", f"127.0.0.1:{gateway_port}", "--upstream", server.url,
            "--tee", self.tee, "--receipt", str(dest / ".modelseal" / "receipt.json"),
            *option_flags(self.testbed.attester_values),
        ]  # fmt: skip
        if self.plugin.insecure:
            gateway_argv += option_flags(self.testbed.kbs_options)
        gateway = Service(
            "gateway",
            [*MODELSEAL, *gateway_argv],
            f"https://127.0.0.1:{gateway_port}",
            logs / "gateway.log",
        )
        self.services.append(gateway)
        gateway.spawn()
        gateway.wait_listening(60)
        self.say(f"   gateway  {gateway.url} -> {server.url} (attested TLS, {self.tee})")

        policy = work / "client-policy.json"
        document: dict[str, Any] = {
            "apiVersion": "modelseal/v1",
            "kind": "ReleasePolicy",
            "tee": [self.tee],
            "model_digest": digest,
        }
        if self.testbed.measurements:
            document["measurements"] = [dict(self.testbed.measurements)]
        policy.write_text(json.dumps(document), encoding="utf-8")
        data = np.load(test_data)
        request_body = work / "digits.json"
        request_body.write_text(json.dumps({"x": data["x"].tolist()}), encoding="utf-8")
        done = run_cli(
            [
                "request",
                f"{gateway.url}/classify",
                "--policy",
                str(policy),
                "--data",
                f"@{request_body}",
                *option_flags(self.testbed.kbs_options),
            ],
            timeout=120,
        )
        if done.returncode != 0:
            raise _child_error("modelseal request", done)
        predicted = np.asarray(json.loads(done.stdout)["predicted"])
        return float((predicted == data["y"]).mean()), len(predicted)

    def _report(
        self, accuracy: float, samples: int, digest: str, loader_steps: dict[str, float]
    ) -> None:
        self.say("")
        self.say(f"ACCURACY: {accuracy:.4f} on {samples} held-out digits")
        self.say(f"model digest: {digest}")
        self.say("")
        width = max(len(s.name) for s in self.steps)
        self.say(f"{'step':<{width}}  {'seconds':>8}  {'bytes':>10}  detail")
        self.say(f"{'-' * width}  {'-' * 8}  {'-' * 10}  {'-' * 6}")
        for s in self.steps:
            size = "" if s.bytes is None else str(s.bytes)
            self.say(f"{s.name:<{width}}  {s.seconds:8.3f}  {size:>10}  {s.detail}")
        total = sum(s.seconds for s in self.steps)
        self.say(f"{'total':<{width}}  {total:8.3f}")
        inner = ", ".join(f"{k} {v:.3f}s" for k, v in loader_steps.items())
        self.say(f"loader steps: {inner}")


#: a child's exit code -> the error that carries the same code
_BY_EXIT_CODE: dict[int, type[Error]] = {
    2: ConfigError,
    3: NotFound,
    4: AttestationError,
    5: IntegrityError,
    6: UnsafeDestination,
    75: TransientError,
}


def _child_error(what: str, done: subprocess.CompletedProcess[str]) -> Error:
    """The child's failure as a modelseal error with the child's own exit code."""
    tail = "\n".join((done.stderr or done.stdout or "").strip().splitlines()[-10:])
    kind = _BY_EXIT_CODE.get(done.returncode, BackendError)
    return kind(f"{what} failed with exit status {done.returncode}:\n{tail}")


def _memory_dir() -> Path:
    """A fresh private directory on tmpfs for the decrypted model."""
    from modelseal.loader.destination import inspect_destination

    if not SHM.is_dir() or not inspect_destination(SHM).memory_backed:
        raise UnsafeDestination(f"{SHM} is not a tmpfs here; the quickstart needs one")
    return Path(tempfile.mkdtemp(prefix="modelseal-quickstart-", dir=SHM))


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so cleanup runs when a supervisor stops us."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous: Callable[..., Any] | int | None = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_quickstart(
    *, tee: str = tee_registry.DEVELOPMENT_KIND, out: TextIO | None = None, tls: bool = False
) -> QuickstartResult:
    """Run the quickstart; raises a modelseal error (with its exit code) on failure."""
    with _sigterm_as_interrupt():
        return Quickstart(tee=tee, out=out, tls=tls).run()
