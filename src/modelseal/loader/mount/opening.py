"""Everything a mount checks before it serves a byte: the loader's sequence up to decryption.

Remote (``--model URL``): model info → every sealed header (small ranged GETs) → attestation
and key release → sealed manifest authenticated, its digest checked (against the model info,
``--model-digest`` or the init-data) → every header checked against the manifest. Local
(``--sealed DIR``): the same from the files of a sealed directory; the key id comes from
the sealed manifest's header and the key from the KBS (``--kbs-url``) after attestation.

The result holds one :class:`~modelseal.format.segments.FileDecryptor` per file (each
checked the key commitment) and the source of sealed bytes; the model key itself is wiped
before this returns. Any failure closes what was opened.
"""

from __future__ import annotations

import os
import stat
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from modelseal.errors import ConfigError, FormatError, IntegrityError
from modelseal.format.manifest import (
    MAX_MANIFEST_LEN,
    SEALED_MANIFEST_NAME,
    Manifest,
    sealed_name,
)
from modelseal.format.v1 import FileDecryptor, SealedReader, read_header
from modelseal.loader.attest import KeyRelease
from modelseal.loader.fetch import RetryPolicy
from modelseal.loader.loader import (
    HeaderBudget,
    KeyBox,
    ReleaseFn,
    expected_digest,
    fetch_heads,
    fetch_manifest,
    fetch_model_info,
    obtain_key,
    open_fetcher,
)
from modelseal.loader.mount.store import HttpSource, LocalSource, MountedFile, SealedSource
from modelseal.loader.receipt import Timings
from modelseal.loader.settings import LoaderSettings
from modelseal.protocol.model_info import FORMAT_V1, KBS_TRUSTEE, ModelInfo

__all__ = ["OpenedModel", "open_model"]


@dataclass
class OpenedModel:
    """A model ready to serve: authenticated manifest, decryptors, source of sealed bytes."""

    manifest: Manifest
    files: list[MountedFile]
    source: SealedSource
    #: the release that gave the key (its DEK already wiped)
    key: KeyRelease
    model_id: str | None
    version: str | None
    #: seconds per step before serving (model info, headers, key release, manifest)
    timings: Timings


def open_model(
    settings: LoaderSettings, timings: Timings, *, release: ReleaseFn | None = None
) -> OpenedModel:
    """Open ``settings.model`` (registry) or ``settings.sealed_dir`` (local directory)."""
    if settings.sealed_dir is not None:
        return _open_local(settings, settings.sealed_dir, timings, release)
    return _open_remote(settings, timings, release)


def _open_remote(
    settings: LoaderSettings, timings: Timings, release: ReleaseFn | None
) -> OpenedModel:
    failing = ExitStack()
    try:
        fetcher = open_fetcher(settings)
        failing.callback(fetcher.close)
        with timings.step("model_info"):
            info = fetch_model_info(fetcher, settings.model)
        if info.format != FORMAT_V1:
            raise ConfigError(
                f"{settings.model} is a {info.format!r} model: only modelseal/v1 models have "
                "segments that can be read on demand; use `modelseal load` for it"
            )
        box = KeyBox(lambda: obtain_key(settings, info, timings, release, fetcher.retry))
        failing.callback(box.wipe)
        budget = HeaderBudget()
        with timings.step("headers"):
            heads = fetch_heads(fetcher, info, settings.workers, budget)
        key = box.get()
        if key is None:  # pragma: no cover - obtain_key always returns a key for v1
            raise FormatError("a modelseal/v1 model is always sealed, but no key was released")
        with timings.step("manifest"):
            manifest = fetch_manifest(fetcher, info, key.dek, expected_digest(settings), budget)
            manifest.check_files(
                {sealed_name(h.info.path): (h.header, h.sealed_size) for h in heads}
            )
        files: list[MountedFile] = []
        for head in heads:
            dec = FileDecryptor(head.header, head.commitment, key.dek)
            failing.callback(dec.close)
            files.append(MountedFile(head.info.path, head.header, dec))
        box.wipe()
        failing.pop_all()
        return OpenedModel(
            manifest,
            files,
            HttpSource(fetcher, [h.info.url for h in heads]),
            key,
            info.id,
            info.version,
            timings,
        )
    except BaseException:
        failing.close()
        raise


def _open_regular(path: Path) -> int:
    """A read-only descriptor of a regular file (not a FIFO, device or directory)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise IntegrityError(
            f"{path.name}: missing in the sealed directory", paths=[path.name]
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot open {path}: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise IntegrityError(f"{path}: not a regular file", paths=[str(path)])
    os.set_blocking(fd, True)
    return fd


def _open_local(
    settings: LoaderSettings, root: Path, timings: Timings, release: ReleaseFn | None
) -> OpenedModel:
    failing = ExitStack()
    try:
        manifest_fd = _open_regular(root / SEALED_MANIFEST_NAME)
        failing.callback(os.close, manifest_fd)
        try:
            header, _commitment = read_header(manifest_fd)
        except FormatError as exc:
            raise IntegrityError(f"{SEALED_MANIFEST_NAME}: {exc}") from None
        if not settings.kbs_url:
            raise ConfigError("--sealed needs --kbs-url: the model key comes from the KBS")
        # the key id is read before anything is authenticated: a swapped id only makes the
        # KBS release another key, and then the manifest's key commitment fails
        info = ModelInfo(
            id=header.model or root.name or "sealed",
            url=root.resolve().as_uri(),
            encrypted=True,
            kbs=KBS_TRUSTEE,
            kbs_url=settings.kbs_url,
            key_id=header.key_id,
        )
        key = obtain_key(settings, info, timings, release, RetryPolicy(attempts=settings.retries))
        failing.callback(key.dek.wipe)
        with timings.step("manifest"):
            with SealedReader(manifest_fd, key.dek) as reader:
                if reader.size > MAX_MANIFEST_LEN:
                    raise FormatError(f"manifest of {reader.size} bytes exceeds the limit")
                manifest = Manifest.parse(bytes(reader.read_range(0, reader.size)))
            manifest.check_manifest_header(header)
            want = expected_digest(settings)
            if want is not None and want != manifest.digest:
                raise IntegrityError(f"model digest {manifest.digest} is not the expected {want}")
        files: list[MountedFile] = []
        fds: list[int] = []
        for entry in manifest.files:
            name = sealed_name(entry.path)
            fd = _open_regular(root / name)
            failing.callback(os.close, fd)
            fds.append(fd)
            file_header, commitment = read_header(fd)
            manifest.check_file(name, file_header, os.fstat(fd).st_size)
            dec = FileDecryptor(file_header, commitment, key.dek)
            failing.callback(dec.close)
            files.append(MountedFile(entry.path, file_header, dec))
        key.dek.wipe()
        os.close(manifest_fd)
        failing.pop_all()
        return OpenedModel(
            manifest, files, LocalSource(fds), key, manifest.model, manifest.version, timings
        )
    except BaseException:
        failing.close()
        raise
