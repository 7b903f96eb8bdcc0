"""The in-process SDK: attest, fetch, decrypt into memory, hand out zero-copy views.

``open_model`` runs the same load sequence as ``modelseal load``
(:func:`modelseal.loader.loader.run_load`: model info, RCAR key release, sealed manifest
and header checks, parallel ranged download + decryption) into a
:class:`~modelseal.loader.targets.MemoryTarget`: anonymous memory files
(``memfd_create``), never a filesystem. Each
file is then ``mmap``-ed and exposed as a ``memoryview``; ``load_safetensors`` builds numpy
(or torch) tensors directly on those pages (no second copy: the views take microseconds,
where ``safetensors.torch.load(bytes)`` copies every tensor).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from modelseal._internal.encoding import b64url_decode
from modelseal.crypto.secret import SecretBytes
from modelseal.errors import ConfigError, FormatError, NotFound
from modelseal.format.safetensors import parse_safetensors
from modelseal.format.v1 import SealedReader
from modelseal.loader.loader import ReleaseFn, run_load
from modelseal.loader.receipt import Timings
from modelseal.loader.safetensors_view import numpy_views, torch_views
from modelseal.loader.settings import LoaderSettings
from modelseal.loader.targets import MemFile, MemoryTarget

Framework = Literal["numpy", "torch"]
SAFETENSORS_SUFFIX = ".safetensors"


@dataclass
class DecryptedModel(Mapping[str, memoryview]):
    """Model files decrypted into memory: relative path -> writable ``memoryview``.

    Close it (or use ``with``) to zero and release the plaintext.
    """

    model_id: str
    version: str | None
    model_digest: str | None
    tee: str
    token_id: str | None
    _files: dict[str, MemFile] = field(default_factory=dict, repr=False)
    timings: dict[str, float] = field(default_factory=dict)

    def __getitem__(self, path: str) -> memoryview:
        return self._files[path].view()

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self._files.values())

    def tensors(self, path: str | None = None, *, framework: Framework = "numpy") -> dict[str, Any]:
        """Zero-copy tensors of one safetensors file, or of all of them (sharded models)."""
        if path is not None:
            names = [path]
        else:
            names = sorted(p for p in self._files if p.endswith(SAFETENSORS_SUFFIX))
            if not names:
                raise ConfigError(f"model {self.model_id} has no {SAFETENSORS_SUFFIX} file")
        out: dict[str, Any] = {}
        for name in names:
            tensors = safetensors_views(self[name], framework=framework)
            clash = set(tensors) & set(out)
            if clash:
                raise FormatError(f"tensor {sorted(clash)[0]!r} appears in two shards")
            out.update(tensors)
        return out

    def close(self) -> None:
        for f in self._files.values():
            f.close()

    def __enter__(self) -> DecryptedModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def safetensors_views(buf: memoryview, *, framework: Framework = "numpy") -> dict[str, Any]:
    """Tensors of a safetensors image in memory, as views (no copy)."""
    header = parse_safetensors(buf)
    if framework == "numpy":
        return numpy_views(buf, header)
    if framework == "torch":
        return torch_views(buf, header)
    raise ConfigError(f"unknown framework {framework!r}; use 'numpy' or 'torch'")


def open_model(
    model_url: str | None = None,
    *,
    settings: LoaderSettings | None = None,
    tee: str | None = None,
    kbs_url: str | None = None,
    kbs_ca: str | Path | None = None,
    registry_ca: str | Path | None = None,
    workers: int | None = None,
    model_digest: str | None = None,
    tee_options: Mapping[str, str | Path] | None = None,
    init_data: str | Path | None = None,
    release: ReleaseFn | None = None,
    on_progress: Callable[[int], None] | None = None,
    timeout: float | None = None,
    key_source: str | None = None,
    cdh_url: str | None = None,
    measure: bool | None = None,
) -> DecryptedModel:
    """Attest, fetch and decrypt a published model into memory; see :class:`DecryptedModel`.

    Configure it with keywords, or pass ``settings`` (a :class:`LoaderSettings`, e.g.
    ``LoaderSettings.from_env()`` for exactly the ``MODELSEAL_*`` variables of
    ``modelseal load``); keywords that are not None override those settings. Nothing here
    reads the environment by itself. ``timeout``: seconds within which each small answer
    (model info, a sealed header, each KBS answer) must be complete, as ``modelseal load
    --timeout`` [default 30]. ``key_source="cdh"`` takes the key from the CoCo Confidential
    Data Hub at ``cdh_url`` instead of attesting; ``measure`` records the load in the
    runtime measurements through the CoCo Attestation Agent when one is configured (as
    ``modelseal load``). ``tee_options`` are the TEE kinds' attester inputs by option name,
    as ``modelseal load``'s kind options spell them without the dashes (the Attestation
    Agent's URL, a test CA directory ...; ``modelseal load --help`` lists them); given ones
    are added to the settings' own.
    """
    given: dict[str, object] = {
        "model": model_url,
        "tee": tee,
        "kbs_url": kbs_url,
        "kbs_ca": Path(kbs_ca) if kbs_ca else None,
        "registry_ca": Path(registry_ca) if registry_ca else None,
        "workers": workers,
        "model_digest": model_digest,
        "init_data": Path(init_data) if init_data else None,
        "timeout": timeout,
        "key_source": key_source,
        "cdh_url": cdh_url,
        "measure": measure,
    }
    if settings is None:
        given["tee_options"] = tee_options
        settings = LoaderSettings.from_options(**given)
    else:
        changes = {k: v for k, v in given.items() if v is not None}
        if tee_options:
            changes["tee_options"] = {**settings.tee_options, **tee_options}
        settings = settings.with_overrides(**changes)
    timings = Timings()
    target = MemoryTarget()
    done = run_load(settings, target, timings, on_progress=on_progress, release=release)
    key = done.key
    return DecryptedModel(
        model_id=done.info.id,
        version=done.info.version,
        model_digest=done.model_digest,
        tee=key.tee if key is not None else "none",
        token_id=key.token_id if key is not None else None,
        _files=target.files,
        timings=dict(timings.steps),
    )


def _dek(key: SecretBytes | bytes | str | Path) -> SecretBytes:
    if isinstance(key, SecretBytes):
        return SecretBytes(key.reveal())
    if isinstance(key, bytes):
        return SecretBytes(key)
    try:
        text = Path(key).read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise NotFound(f"key file {key} not found") from None  # exit 3, as in the owner CLI
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read key file {key}") from exc
    return SecretBytes(b64url_decode(text, what="key file"))


def decrypt_file(
    path: str | Path, key: SecretBytes | bytes | str | Path, *, workers: int = 2
) -> memoryview:
    """Decrypt a local sealed v1 file into anonymous memory; returns a view of it.

    ``key`` is the DEK (``SecretBytes``/32 raw bytes) or the path of a key file written by
    ``modelseal keygen``. The plaintext never touches a filesystem.
    """
    dek = _dek(key)
    try:
        with SealedReader.open(path, dek) as reader:
            mem = MemFile(Path(path).name, reader.size)
            try:
                reader.decrypt_to_fd(mem.fd, workers=workers)
                mem.map()
            except BaseException:
                mem.close()
                raise
    finally:
        dek.wipe()
    return mem.view()


def load_safetensors(
    source: str | Path,
    *,
    key: SecretBytes | bytes | str | Path | None = None,
    framework: Framework = "numpy",
    file: str | None = None,
    **open_options: Any,
) -> dict[str, Any]:
    """Tensors of a sealed safetensors model as zero-copy numpy arrays (or torch tensors).

    * ``source`` an ``http(s)://`` model URL: attests and loads like :func:`open_model`
      (``open_options`` are its keyword arguments); all ``.safetensors`` files are merged
      unless ``file`` names one.
    * ``source`` a local sealed file and ``key`` its DEK or key file: decrypted in memory.
    """
    text = str(source)
    if text.startswith(("http://", "https://")):
        if key is not None:
            raise ConfigError("a model URL gets its key from the KBS; do not pass key=")
        model = open_model(text, **open_options)
        return model.tensors(file, framework=framework)
    if key is None:
        raise ConfigError("a local sealed file needs key= (the DEK or a key file path)")
    if open_options:
        raise ConfigError(f"unexpected options for a local file: {', '.join(open_options)}")
    return safetensors_views(decrypt_file(source, key), framework=framework)
