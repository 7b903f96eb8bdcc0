"""What a TEE kind tells the rest of modelseal about itself: the plugin description.

Each kind package (``modelseal.tee.sample``, ``.tdx``, ...) exports ``PLUGIN``, a
:class:`TeePlugin`: its name, where its Attester and Verifier live (imported only when
asked for, so the loader inside the TEE never loads verifier code), its own configuration
dataclass (one tagged config per kind), the flags a caller must respect (insecure,
TCB-checked, test-only, opt-in, may download collateral) and how ``--tee auto`` detects it.
:mod:`modelseal.tee.registry` derives every list (CLI choices, policy schema, loader
detection, KBS options) from these descriptions, so a new kind is one package, not edits
spread over the KBS, the policy engine and the CLI.

Options are one vocabulary: a config field declares its option name once (``collateral``,
``snp_certs``, ...); the command line spells it ``--collateral``, ``--snp-certs`` and the
environment ``MODELSEAL_COLLATERAL``, ``MODELSEAL_SNP_CERTS``, wherever the option appears
(``kbs serve``, ``evidence verify``, ``load``, ``kbs get``). Kinds that read the same
material (TDX and SGX both read DCAP collateral) declare the same option.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:
    from pathlib import Path

    from modelseal.tee.base import Attester, Verifier

#: What an option's value is: a path that must exist, a directory that may be created,
#: an http(s) URL, or an on/off flag.
OptionType = Literal["path", "dir", "url", "flag"]


@dataclass(frozen=True)
class OptionSpec:
    """One option of the shared vocabulary, as a config field or an attester input declares.

    ``name`` is the Python identifier (``snp_certs``); :attr:`flag` and :attr:`envvar` are
    derived from it. ``enables`` marks the option that opts a kind in at a KBS;
    ``required`` one without which the kind's verifier refuses all evidence;
    ``catch_all`` the option older ``evidence verify`` read as any kind's material
    (still accepted there for a kind with one material option, with a deprecation note).
    """

    name: str
    help: str
    type: OptionType = "path"
    enables: bool = False
    required: bool = False
    catch_all: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def envvar(self) -> str:
        return "MODELSEAL_" + self.name.upper()


def option(spec: OptionSpec, *, default: Any = None) -> Any:
    """A config field that reads the option ``spec`` (kinds reading the same material
    share one spec, so the option appears once however many kinds read it)."""
    return dataclasses.field(default=default, metadata={"option": spec})


@dataclass(frozen=True)
class KindConfig:
    """Base of every kind's own verifier configuration (a frozen dataclass of options).

    Built by :func:`modelseal.tee.registry.build_config` from the shared option values;
    a kind reads only its own fields.
    """

    #: The TEE kind this config belongs to (the tag).
    kind: ClassVar[str]

    @classmethod
    def options(cls) -> tuple[OptionSpec, ...]:
        """The options this config reads, in field order."""
        return tuple(
            f.metadata["option"] for f in dataclasses.fields(cls) if "option" in f.metadata
        )

    @classmethod
    def from_options(cls, values: Mapping[str, Any]) -> KindConfig:
        """Pick this kind's fields out of the shared option values (unset ones default)."""
        picked = {}
        for f in dataclasses.fields(cls):
            spec: OptionSpec | None = f.metadata.get("option")
            if spec is not None and values.get(spec.name) not in (None, False):
                picked[f.name] = values[spec.name]
        return cls(**picked)

    def enabled(self) -> bool:
        """False while a kind that needs an explicit opt-in has not been given it."""
        for f in dataclasses.fields(self):
            spec: OptionSpec | None = f.metadata.get("option")
            if spec is not None and spec.enables and not getattr(self, f.name):
                return False
        return True

    def opt_in_flags(self) -> tuple[str, ...]:
        """The flags that opt this kind in (named by refusals)."""
        return tuple(
            f.metadata["option"].flag
            for f in dataclasses.fields(self)
            if "option" in f.metadata and f.metadata["option"].enables
        )


@dataclass(frozen=True)
class Detection:
    """How ``--tee auto`` recognizes the kind on this machine.

    ``devices`` are paths under the root whose presence means the kind; ``tsm_provider``
    is the configfs-tsm provider name the kernel reports for it. A ``fallback`` kind (a
    TPM, present on most hosts) is chosen only when no confidential-VM kind matched.
    """

    devices: tuple[str, ...] = ()
    tsm_provider: str | None = None
    fallback: bool = False


@dataclass(frozen=True)
class AttesterInput:
    """An attester keyword the loader and the CLI fill from an option (e.g. a test CA dir)."""

    option: OptionSpec
    keyword: str


@dataclass(frozen=True)
class Testbed:
    """A kind set up to run without its hardware: what the KBS and the attester need.

    ``kbs_options`` and ``attester_values`` are option values (by option name) for the
    KBS and for the attesting side; ``measurements`` are what the verifier will report,
    for a release policy to pin; ``trust`` and ``banner`` tell a user what is (not)
    proven.
    """

    kbs_options: Mapping[str, Any]
    attester_values: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    measurements: Mapping[str, str] = dataclasses.field(default_factory=dict)
    trust: str = ""
    banner: str = ""


@dataclass(frozen=True)
class TeePlugin:
    """The description a kind package exports as ``PLUGIN`` (see the module docstring)."""

    #: Kind name on the wire (RCAR ``tee``), in policies and on the command line.
    name: str
    #: Module holding ``Attester`` (None: no attester in this build, e.g. SGX).
    attester_module: str | None
    #: Module holding ``Verifier`` (None: a relay, see :attr:`relay`).
    verifier_module: str | None
    #: The kind's own verifier configuration.
    config: type[KindConfig]
    #: An evidence relay, not a kind on the wire: the attester obtains another kind's
    #: evidence (the CoCo Attestation Agent) and says which kind it is
    #: (``evidence_kind``), so the KBS verifies it with that kind's verifier. A relay has
    #: no verifier and never appears in policies, tokens or KBS options.
    relay: bool = False
    #: Evidence proves nothing (no hardware signature); the KBS needs an explicit opt-in
    #: and stamps every token it issues ``insecure``.
    insecure: bool = False
    #: The verifier reports a TCB status, so a policy's ``tcb_status`` applies.
    tcb_checked: bool = False
    #: For tests and demos only (a test CA, unsigned evidence): never detected, and the
    #: loader warns when attesting as it.
    test_only: bool = False
    #: Verification may download collateral (a KBS runs it in a thread).
    downloads_collateral: bool = False
    #: A device TEE (a GPU): its evidence travels as additional evidence next to a CPU
    #: TEE's, bound to the same session, and its claims go with the CPU TEE's as devices.
    device: bool = False
    #: How ``--tee auto`` finds it; None: never detected (must be named).
    detection: Detection | None = None
    #: Attester keywords filled from options (``--mock-tdx-dir`` -> ``ca_dir``).
    attester_inputs: tuple[AttesterInput, ...] = ()
    #: The attester simulates the host's launch step, so it takes the init-data document
    #: (``init_data`` keyword) to put its digest into the attested launch field.
    simulates_launch: bool = False
    #: ``Attestation-Type`` header values of the CNAP transfer API that mean this kind.
    transfer_types: tuple[str, ...] = ()
    #: Module with ``provision(work_dir) -> Testbed``: how to run the kind on a machine
    #: without its hardware (quickstart, tests); None: real hardware only.
    testbed_module: str | None = None
    #: One line for help texts.
    summary: str = ""
    #: Other words that mean this kind in names (a platform the kind's name abbreviates):
    #: code outside ``modelseal.tee`` uses none of them, as it uses no kind name.
    aliases: tuple[str, ...] = ()

    @property
    def runs_without_hardware(self) -> bool:
        """True when the kind has a testbed (the quickstart can attest as it anywhere)."""
        return self.testbed_module is not None

    @property
    def needs_opt_in(self) -> bool:
        """True when a KBS refuses the kind until one of its options is given."""
        return any(spec.enables for spec in self.config.options())

    def attester_class(self) -> type[Attester]:
        """The kind's Attester class (imports the attester module on first use)."""
        from modelseal.errors import UnsupportedTee

        if self.attester_module is None:
            raise UnsupportedTee(f"TEE kind {self.name!r} has no attester in this build")
        cls: type[Attester] = _import(self.name, self.attester_module).Attester
        return cls

    def provision_testbed(self, work_dir: Path) -> Testbed:
        """Set up what attesting as this kind without its hardware needs, in ``work_dir``."""
        from modelseal.errors import UnsupportedTee

        if self.testbed_module is None:
            raise UnsupportedTee(f"TEE kind {self.name!r} runs only on its hardware")
        testbed: Testbed = _import(self.name, self.testbed_module).provision(work_dir)
        return testbed

    def verifier_class(self) -> type[Verifier]:
        """The kind's Verifier class (imports the verifier module on first use)."""
        from modelseal.errors import UnsupportedTee

        if self.verifier_module is None:
            raise UnsupportedTee(
                f"{self.name!r} relays another TEE kind's evidence; verify it as that kind"
            )
        cls: type[Verifier] = _import(self.name, self.verifier_module).Verifier
        return cls


def _import(kind: str, module: str) -> Any:
    from modelseal.errors import UnsupportedTee

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("modelseal."):
            raise UnsupportedTee(f"TEE kind {kind!r}: {module} is missing in this build") from exc
        raise UnsupportedTee(f"TEE kind {kind!r} needs a missing package: {exc.name}") from exc
