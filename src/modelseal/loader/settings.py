"""Loader settings: the initContainer contract of docs/guides/loader.md as one validated object.

Every field has a flag in ``modelseal load`` and a ``MODELSEAL_*`` variable, so a Pod spec
can configure the loader with ``env:`` alone. The variables are read in one of two places
only: by Click for the command line, and by :meth:`LoaderSettings.from_env` for the SDK;
both use :data:`ENV_VARS`.

Options that only one TEE kind's attester reads (a test CA directory, a metadata service
URL) are not fields: each kind declares them in its plugin description, and the settings
carry their values in one mapping, :attr:`LoaderSettings.tee_options`, keyed by option
name. A new kind's option therefore needs no edit here, in the SDK or in the CLI.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType

from modelseal._internal import environment
from modelseal.errors import ConfigError
from modelseal.loader.destination import FileModes
from modelseal.loader.metrics import check_textfile_path
from modelseal.tee import registry
from modelseal.tee.plugin import OptionSpec

DEFAULT_DEST = Path("/models")
DEFAULT_WORKERS = 4
MAX_WORKERS = 64
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}

_PATHS = frozenset({"dest", "kbs_ca", "registry_ca", "init_data", "metrics_textfile"})
#: option name -> spec of every TEE kind's attester inputs (what ``tee_options`` may hold)
_TEE_OPTIONS = {spec.name: spec for spec in registry.attester_options()}

#: environment variable -> settings field (or, for a kind's attester input, the option name
#: in ``tee_options``): the variables of ``modelseal load``'s options (a test keeps them
#: equal to its Click options' ``envvar``)
ENV_VARS: dict[str, str] = {
    "MODELSEAL_MODEL": "model",
    "MODELSEAL_KBS_URL": "kbs_url",
    "MODELSEAL_DEST": "dest",
    "MODELSEAL_TEE": "tee",
    "MODELSEAL_KBS_CA": "kbs_ca",
    "MODELSEAL_REGISTRY_CA": "registry_ca",
    "MODELSEAL_ALLOW_DISK": "allow_disk",
    "MODELSEAL_WORKERS": "workers",
    "MODELSEAL_MODEL_DIGEST": "model_digest",
    "MODELSEAL_INIT_DATA": "init_data",
    "MODELSEAL_TIMEOUT": "timeout",
    "MODELSEAL_FILE_MODE": "file_modes",
    "MODELSEAL_GROUP": "file_modes",
    "MODELSEAL_KEY_SOURCE": "key_source",
    "MODELSEAL_CDH_URL": "cdh_url",
    "MODELSEAL_MEASURE": "measure",
    "MODELSEAL_RETRIES": "retries",
    "MODELSEAL_METRICS_TEXTFILE": "metrics_textfile",
    **{spec.envvar: spec.name for spec in _TEE_OPTIONS.values()},
}

#: ``key_source`` values: RCAR with the KBS ourselves, or the CoCo Confidential Data Hub
KEY_SOURCE_KBS = "kbs"
KEY_SOURCE_CDH = "cdh"
KEY_SOURCES = (KEY_SOURCE_KBS, KEY_SOURCE_CDH)
#: Where guest-components' api-server-rest listens in a CoCo pod
DEFAULT_CDH_URL = "http://127.0.0.1:8006"


_NO_OPTION = OptionSpec(name="", help="", type="flag")


def _check_tee_options(values: Mapping[str, object]) -> Mapping[str, str | Path]:
    """``tee_options`` validated against the kinds' declarations: known option names only,
    http(s) URLs for URL options, ``Path`` for path options; unset (None, "") dropped."""
    if not isinstance(values, Mapping):
        raise ConfigError("tee_options: expected a mapping of option name to value")
    checked: dict[str, str | Path] = {}
    for name, value in values.items():
        spec = _TEE_OPTIONS.get(name)
        if spec is None:
            known = ", ".join(sorted(_TEE_OPTIONS))
            raise ConfigError(f"tee_options: unknown option {name!r}; known: {known}")
        if value is None or value == "":
            continue
        if not isinstance(value, str | Path):
            raise ConfigError(f"{spec.flag}: expected text or a path, got {type(value).__name__}")
        if spec.type in ("path", "dir"):
            checked[name] = Path(value)
        elif spec.type == "url" and not str(value).startswith(("http://", "https://")):
            raise ConfigError(f"{spec.flag}: not an http(s) URL: {value!r}")
        else:
            checked[name] = str(value)
    return MappingProxyType(checked)


def parse_bool(text: str, *, name: str) -> bool:
    """Strict boolean for environment variables: a typo must not enable an unsafe mode."""
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}: expected true/false, got {text!r}")


@dataclass(frozen=True)
class LoaderSettings:
    """What to load, from where, into where, attested as which TEE."""

    #: registry model URL (``.../models/<id>``) or a CNAP model-info URL
    model: str = ""
    kbs_url: str | None = None
    dest: Path = DEFAULT_DEST
    #: ``auto`` detects the TEE of this machine; otherwise a kind of ``tee.registry``
    tee: str = "auto"
    #: CA bundle (PEM) for the KBS; None = system trust store
    kbs_ca: Path | None = None
    #: CA bundle (PEM) for the registry; None = system trust store
    registry_ca: Path | None = None
    allow_disk: bool = False
    workers: int = DEFAULT_WORKERS
    #: expected model digest (``sha256:<hex>``), e.g. carried by measured init-data
    model_digest: str | None = None
    #: the TEE kinds' attester inputs by option name (``registry.attester_options()``:
    #: a test CA directory, a metadata service URL, the Attestation Agent's URL ...);
    #: each kind's attester reads the ones its plugin declares. Paths become ``Path``.
    tee_options: Mapping[str, str | Path] = field(default_factory=dict)
    #: the init-data TOML this TEE was launched with (sent to the KBS with the evidence;
    #: its ``[data] model_digest`` becomes the expected model digest unless one is given)
    init_data: Path | None = None
    #: attempts per HTTP request for transient failures (connection reset, 5xx)
    retries: int = 8
    #: seconds: a small answer (model info, a sealed header, each KBS answer) must be complete
    #: within it, whatever the peer's pace; also the longest wait for one socket read of a
    #: blob download (such a stall is retried)
    timeout: float = 30.0
    #: permissions (and group) of the placed plaintext files; directories get the matching
    #: x bits
    file_modes: FileModes = field(default_factory=FileModes)
    extra_attester_options: Mapping[str, object] = field(default_factory=dict)
    #: ``kbs``: attest and run RCAR with the KBS; ``cdh``: ask the CoCo Confidential Data
    #: Hub (``GET {cdh_url}/cdh/resource/<key id>``), which attests through the guest's AA
    key_source: str = KEY_SOURCE_KBS
    #: base URL of guest-components' api-server-rest for ``key_source = cdh``
    cdh_url: str = DEFAULT_CDH_URL
    #: after a load, record the model digest in the TEE's runtime measurements through the
    #: Attestation Agent, when one is configured (its URL option, ``--tee aa`` or the CDH's)
    measure: bool = True
    #: a sealed model directory on this machine instead of ``model`` (``modelseal mount
    #: --sealed``); its key is still released by the KBS after attestation
    sealed_dir: Path | None = None
    #: a ``*.prom`` file ``load_model`` writes the run's metrics to, for the node exporter's
    #: textfile collector (:mod:`modelseal.loader.metrics`); None: no metrics
    metrics_textfile: Path | None = None

    def __post_init__(self) -> None:
        if self.sealed_dir is not None:
            if self.model:
                raise ConfigError("--model and --sealed exclude each other: pass one")
            if not Path(self.sealed_dir).is_dir():
                raise ConfigError(f"sealed_dir: no such directory: {self.sealed_dir}")
        elif self.model and not self.model.startswith(("http://", "https://")):
            # empty only for a key without a model (``modelseal volume``); ``load`` and
            # ``mount`` require one through from_options
            raise ConfigError("model: an http(s) URL of the model info is required (--model)")
        if self.kbs_url is not None and not self.kbs_url.startswith(("http://", "https://")):
            raise ConfigError(f"kbs_url: not an http(s) URL: {self.kbs_url!r}")
        if not 1 <= self.workers <= MAX_WORKERS:
            raise ConfigError(f"workers: must be 1..{MAX_WORKERS}, got {self.workers}")
        if self.model_digest is not None and not _DIGEST.fullmatch(self.model_digest):
            raise ConfigError("model_digest: expected 'sha256:' followed by 64 lower-case hex")
        if not self.tee:
            raise ConfigError("tee: empty; use 'auto' or a TEE kind")
        if self.retries < 1:
            raise ConfigError("retries: must be at least 1")
        if not (isinstance(self.timeout, int | float) and 0 < self.timeout < float("inf")):
            raise ConfigError(f"timeout: must be a positive number of seconds, got {self.timeout}")
        if self.key_source not in KEY_SOURCES:
            raise ConfigError(
                f"key_source: {self.key_source!r} is not one of {', '.join(KEY_SOURCES)}"
            )
        if not str(self.cdh_url).startswith(("http://", "https://")):
            raise ConfigError(f"cdh_url: not an http(s) URL: {self.cdh_url!r}")
        object.__setattr__(self, "tee_options", _check_tee_options(self.tee_options))
        for name in ("kbs_ca", "registry_ca", "init_data"):
            value = getattr(self, name)
            if value is not None and not Path(value).is_file():
                raise ConfigError(f"{name}: no such file: {value}")
        if self.metrics_textfile is not None:
            check_textfile_path(Path(self.metrics_textfile))

    @classmethod
    def from_options(cls, **values: object) -> LoaderSettings:
        """Settings from option values where None means "not given" (the default applies):
        what ``modelseal load`` and ``mount`` pass after Click read their flags and
        variables. A model is required: ``model``, or ``sealed_dir`` (``mount --sealed``)."""
        given = {k: v for k, v in values.items() if v is not None}
        if "model" not in given and "sealed_dir" not in given:
            raise ConfigError(
                "no model: pass --model URL (model_url= in the SDK) or set MODELSEAL_MODEL"
            )
        return cls._build(given)

    @classmethod
    def for_key(cls, **values: object) -> LoaderSettings:
        """Like :meth:`from_options` for a key without a model (``modelseal volume``)."""
        return cls._build({k: v for k, v in values.items() if v is not None})

    @classmethod
    def _build(cls, given: dict[str, object]) -> LoaderSettings:
        """Fields by name; a kind's attester input given by its option name (as the CLI's
        flags and :data:`ENV_VARS` name it) goes into ``tee_options``."""
        given = dict(given)
        inputs = {name: given.pop(name) for name in list(given) if name in _TEE_OPTIONS}
        if inputs:
            base = given.get("tee_options") or {}
            if not isinstance(base, Mapping):
                raise ConfigError("tee_options: expected a mapping of option name to value")
            given["tee_options"] = {**base, **inputs}
        try:
            return cls(**given)  # type: ignore[arg-type]
        except TypeError as exc:
            raise ConfigError(f"bad loader settings: {exc}") from exc

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: object
    ) -> LoaderSettings:
        """Settings from the ``MODELSEAL_*`` variables ``modelseal load`` reads (the table
        in docs/reference/environment.md); ``overrides`` that are not None win.

        ``environ`` defaults to this process's environment: this is how an SDK user gets
        exactly the configuration a Pod spec's ``env:`` gives the loader container, e.g.
        ``open_model(settings=LoaderSettings.from_env())``.
        """
        env = environment.snapshot("MODELSEAL_") if environ is None else environ
        values: dict[str, object] = {}
        for var, name in ENV_VARS.items():
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            if name in ("allow_disk", "measure"):
                values[name] = parse_bool(raw, name=var)
            elif name in ("workers", "retries"):
                try:
                    values[name] = int(raw)
                except ValueError as exc:
                    raise ConfigError(f"{var}: not an integer: {raw!r}") from exc
            elif name == "timeout":
                try:
                    values[name] = float(raw)
                except ValueError as exc:
                    raise ConfigError(f"{var}: not a number of seconds: {raw!r}") from exc
            elif var == "MODELSEAL_FILE_MODE":
                values[name] = FileModes.parse(raw)
            elif var == "MODELSEAL_GROUP":  # after MODELSEAL_FILE_MODE (dict order)
                modes = values.get(name)
                base = modes if isinstance(modes, FileModes) else FileModes()
                values[name] = base.with_group(raw)
            elif name in _PATHS or _TEE_OPTIONS.get(name, _NO_OPTION).type in ("path", "dir"):
                values[name] = Path(raw)
            else:
                values[name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_options(**values)

    def with_overrides(self, **changes: object) -> LoaderSettings:
        """A copy with some fields replaced (validation runs again); a kind's attester
        input named by its option name updates ``tee_options``."""
        inputs = {name: changes.pop(name) for name in list(changes) if name in _TEE_OPTIONS}
        if inputs:
            base = changes.get("tee_options", self.tee_options)
            if not isinstance(base, Mapping):
                raise ConfigError("tee_options: expected a mapping of option name to value")
            changes["tee_options"] = {**base, **inputs}
        return replace(self, **changes)  # type: ignore[arg-type]

    def tee_option(self, spec: OptionSpec) -> str | Path | None:
        """The value of one kind's attester input, None when not given."""
        return self.tee_options.get(spec.name)

    @property
    def kbs_verify(self) -> bool | str:
        """``verify=`` argument for the KBS HTTP client."""
        return str(self.kbs_ca) if self.kbs_ca else True

    @property
    def registry_verify(self) -> bool | str:
        """``verify=`` argument for the registry HTTP client."""
        return str(self.registry_ca) if self.registry_ca else True
