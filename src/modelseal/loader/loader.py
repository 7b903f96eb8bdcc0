"""The load sequence (:func:`run_load`) and ``load_model`` (contract: docs/guides/loader.md).

model info → headers and ranged downloads start → TEE attester → RCAR with the KBS → DEK →
sealed manifest (decrypted, digest checked) → every file's header checked against the
manifest → parallel decryption into a target → commit → keys zeroized. ``load_model``
runs it into a :class:`~modelseal.loader.targets.DirectoryTarget` (a private temp dir
inside a memory-backed destination, placed atomically, then receipt + ready marker);
``modelseal.loader.sdk.open_model`` runs the same sequence into a
:class:`~modelseal.loader.targets.MemoryTarget`. Any failure aborts the target, so no
unauthenticated or partial plaintext survives.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from modelseal._internal.bounded_http import Deadline
from modelseal.crypto.secret import SecretBytes
from modelseal.errors import (
    ConfigError,
    FormatError,
    IntegrityError,
    ModelNotFound,
    TransientError,
)
from modelseal.format.header import COMMIT_LEN, MAX_MODEL_HEADER_BYTES, PREAMBLE_LEN, Header
from modelseal.format.manifest import MAX_MANIFEST_LEN, Manifest, sealed_name
from modelseal.format.v1 import FileDecryptor, decrypt_whole, head_len, parse_head
from modelseal.loader import cnap_loader
from modelseal.loader.attest import (
    KeyRelease,
    read_init_data,
    release_from_cdh,
    release_key,
    resolve_tee,
    warn_if_insecure,
)
from modelseal.loader.fetch import Fetcher, RetryPolicy
from modelseal.loader.measure import record_load
from modelseal.loader.metrics import LoadStats, recording
from modelseal.loader.pipeline import Download, Pipeline, Target
from modelseal.loader.receipt import LoadedFile, Receipt, Timings
from modelseal.loader.settings import KEY_SOURCE_CDH, LoaderSettings
from modelseal.loader.targets import DirectoryTarget, ModelTarget
from modelseal.protocol.model_info import FORMAT_V1, KBS_CNAP, FileInfo, ModelInfo
from modelseal.protocol.wire import WireError, describe

log = logging.getLogger(__name__)

#: obtains the DEK: ``(settings, kbs_url, key_id) -> KeyRelease``
ReleaseFn = Callable[[LoaderSettings, str, str], KeyRelease]

#: first bytes fetched per sealed file: preamble + a typical header + commitment
HEAD_PROBE = 16 << 10


@dataclass(frozen=True)
class SealedFile:
    """A sealed file whose header was fetched and checked against the manifest."""

    info: FileInfo
    header: Header
    commitment: bytes
    sealed_size: int


def fetch_model_info(fetcher: Fetcher, url: str) -> ModelInfo:
    """GET and validate the model info (registry or CNAP model-info server)."""
    doc = fetcher.get_document(url, not_found=ModelNotFound)
    try:
        info = ModelInfo.from_json(doc)
    except WireError as exc:
        raise FormatError(f"{url}: invalid model info ({describe(exc)})") from None
    # the loader fetches these: a file:// or ftp:// URL from the registry is a bad document,
    # not a transient failure to retry
    for name, value in [("url", info.url), ("manifest_url", info.manifest_url)] + [
        (f"files[{i}].url", f.url) for i, f in enumerate(info.files)
    ]:
        if value is not None and not value.startswith(("http://", "https://")):
            raise FormatError(f"{url}: invalid model info ({name} is not an http(s) URL)")
    return info


class HeaderBudget:
    """The header bytes one model may still make the loader fetch (thread-safe).

    Sealed headers are read before anything is authenticated, so the registry alone decides
    their length (up to 1 MiB each); the sum over a model is capped at
    :data:`~modelseal.format.header.MAX_MODEL_HEADER_BYTES` before the bytes are fetched.
    """

    def __init__(self, limit: int = MAX_MODEL_HEADER_BYTES) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self, header_len: int, url: str) -> None:
        with self._lock:
            if self.used + header_len > self.limit:
                raise FormatError(
                    f"{url}: the sealed headers of this model exceed {self.limit} bytes in "
                    f"total (this one declares {header_len} bytes after {self.used}); "
                    "refusing to fetch more"
                )
            self.used += header_len


def fetch_sealed_head(
    fetcher: Fetcher, url: str, budget: HeaderBudget | None = None
) -> tuple[Header, bytes, int]:
    """Header, key commitment and blob length of a sealed file (no key needed).

    The blob length must be exactly what the header implies: truncated or extended blobs
    are refused before anything is decrypted. ``header_len`` is charged to ``budget``
    before the rest of a long header is fetched. Only the parsed fields are kept.
    """
    prefix: bytes | bytearray
    prefix, total = fetcher.read_head(url, HEAD_PROBE)
    need = head_len(prefix)
    if budget is not None:
        budget.take(need - PREAMBLE_LEN - COMMIT_LEN, url)
    if need > len(prefix) and total >= need:
        prefix = bytearray(need)
        fetcher.read_range(url, 0, memoryview(prefix), deadline=Deadline(fetcher.timeout))
    try:
        header, commitment = parse_head(prefix, total)
    except FormatError as exc:
        raise FormatError(f"{url}: {exc}") from None
    return header, commitment, total


def fetch_manifest(
    fetcher: Fetcher,
    info: ModelInfo,
    dek: SecretBytes,
    expected_digest: str | None,
    budget: HeaderBudget | None = None,
) -> Manifest:
    """Download, authenticate and parse the sealed manifest; check the model digest."""
    if info.manifest_url is None:
        raise FormatError("model info has no manifest_url")
    header, commitment, total = fetch_sealed_head(fetcher, info.manifest_url, budget)
    if header.size > MAX_MANIFEST_LEN:
        raise FormatError(f"manifest of {header.size} bytes exceeds {MAX_MANIFEST_LEN}")
    sealed = bytearray(total)
    deadline = Deadline(fetcher.timeout)
    fetcher.read_range(info.manifest_url, 0, memoryview(sealed), deadline=deadline)
    plain = decrypt_whole(sealed, header, commitment, dek)
    manifest = Manifest.parse(bytes(plain))
    manifest.check_manifest_header(header)
    digest = manifest.digest
    if info.model_digest is not None and info.model_digest != digest:
        raise IntegrityError(
            f"the registry announces model digest {info.model_digest} but the sealed manifest "
            f"has {digest}"
        )
    if expected_digest is not None and expected_digest != digest:
        raise IntegrityError(f"model digest {digest} is not the expected {expected_digest}")
    if manifest.key_id != info.key_id:
        raise IntegrityError("the sealed manifest names another key than the model info")
    if manifest.model is not None and manifest.model != info.id:
        raise IntegrityError(
            f"the sealed manifest is for model {manifest.model!r}, not {info.id!r}"
        )
    if (
        manifest.version is not None
        and info.version is not None
        and manifest.version != info.version
    ):
        raise IntegrityError(
            f"the sealed manifest is version {manifest.version!r}, not {info.version!r}"
        )
    return manifest


def fetch_heads(
    fetcher: Fetcher, info: ModelInfo, workers: int, budget: HeaderBudget | None = None
) -> list[SealedFile]:
    """Fetch every sealed file's header in parallel (one small ranged GET each), within
    ``budget`` (a fresh :class:`HeaderBudget` if none)."""
    budget = budget or HeaderBudget()
    pool = ThreadPoolExecutor(max_workers=max(1, min(workers, len(info.files))))
    try:
        heads = list(pool.map(lambda f: fetch_sealed_head(fetcher, f.url, budget), info.files))
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)  # the first failure ends the prefetch
        raise
    pool.shutdown()
    return [SealedFile(f, h, c, t) for f, (h, c, t) in zip(info.files, heads, strict=True)]


def refuse_unverifiable_pin(settings: LoaderSettings, info: ModelInfo) -> None:
    """A pinned model digest (``--model-digest``, init-data) is only honoured by a format
    that carries one: a modelseal/v1 model's authenticated manifest. A CNAP model has none
    (and a plaintext one no key either), so the registry could otherwise answer a pinned
    load with any CNAP model, plaintext included, and skip every check."""
    pinned = expected_digest(settings)
    if pinned is not None and info.format != FORMAT_V1:
        raise IntegrityError(
            f"this load is pinned to model {pinned}, but the registry served a "
            f"{info.format!r} model, which carries no digest to check; only modelseal/v1 "
            "models can be pinned"
        )


def expected_digest(settings: LoaderSettings) -> str | None:
    """The model digest this TEE must load: explicit, else from its launch init-data."""
    if settings.model_digest is not None:
        return settings.model_digest
    init_data = read_init_data(settings)
    return init_data.model_digest if init_data is not None else None


class KeyBox:
    """The model key, released on first use (attestation) and wiped by whoever made the box.

    The v1 loader asks for it only after its downloads have started, so attestation, the
    KBS round trips and the manifest overlap the first ranged GETs.
    """

    def __init__(self, obtain: Callable[[], KeyRelease | None]) -> None:
        self._obtain = obtain
        self._asked = False
        self.key: KeyRelease | None = None

    def get(self) -> KeyRelease | None:
        if not self._asked:
            self._asked = True
            self.key = self._obtain()
        return self.key

    def wipe(self) -> None:
        if self.key is not None:
            self.key.dek.wipe()


def decrypt_v1(
    fetcher: Fetcher,
    info: ModelInfo,
    get_dek: Callable[[], SecretBytes],
    target: ModelTarget,
    *,
    workers: int,
    expected_digest: str | None,
    timings: Timings,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[str, list[LoadedFile]]:
    """Headers, downloads started, key, manifest, then decryption into ``target``'s fds.

    The ciphertext downloads start before ``get_dek()`` attests (reading public ciphertext
    needs no key); nothing is decrypted or written before the manifest is authenticated and
    matches every header. ``target.reserve(total plaintext bytes)`` runs after that and
    before any target file is created (the destination's free-space check). Returns the
    model digest. The fds are closed before this returns.
    """
    pipeline = Pipeline(fetcher, workers=workers, on_progress=on_progress)
    budget = HeaderBudget()
    with ExitStack() as stack:
        try:
            with timings.step("prefetch"):
                files = fetch_heads(fetcher, info, workers, budget)
                pipeline.start([Download(f.info.url, f.header) for f in files])
            dek = get_dek()
            pipeline.check()  # a blob that failed meanwhile: stop before the manifest
            with timings.step("manifest"):
                manifest = fetch_manifest(fetcher, info, dek, expected_digest, budget)
                # under hidden names the model info lists opaque names: the authenticated
                # manifest says which path and size each one holds
                entries = manifest.check_files(
                    {sealed_name(f.info.path): (f.header, f.sealed_size) for f in files}
                )
                plain = [entries[sealed_name(f.info.path)] for f in files]
                if manifest.hidden:
                    target.plan([e.path for e in plain])  # the real names, before any write
                target.reserve(manifest.total_size)
                targets: list[Target] = []
                for f, entry in zip(files, plain, strict=True):
                    dec = FileDecryptor(f.header, f.commitment, dek)
                    stack.callback(dec.close)
                    fd = target.open(entry.path, entry.size)
                    stack.callback(os.close, fd)
                    targets.append(Target(dec, fd, entry.size))
            with timings.step("download_decrypt"):
                pipeline.provide(targets)
                pipeline.wait()
        except BaseException:
            pipeline.cancel()  # every worker stopped before its fd and decryptor close
            raise
    loaded = [LoadedFile(e.path, e.size, f.sealed_size) for f, e in zip(files, plain, strict=True)]
    return manifest.digest, loaded


@dataclass(frozen=True)
class LoadResult:
    """What one run of the load sequence produced (the plaintext is in its target)."""

    info: ModelInfo
    #: SHA-256 of the sealed manifest (None for a CNAP model, which has none)
    model_digest: str | None
    files: list[LoadedFile]
    #: the release that gave the key (its DEK already wiped); None for plaintext CNAP
    key: KeyRelease | None
    retries: int
    #: what recording the load in the runtime measurements did (None: no AA configured)
    measurement: dict[str, Any] | None = None


def run_load(
    settings: LoaderSettings,
    target: ModelTarget,
    timings: Timings,
    *,
    on_progress: Callable[[int], None] | None = None,
    release: ReleaseFn | None = None,
    stats: LoadStats | None = None,
) -> LoadResult:
    """The one load sequence, for a directory (``modelseal load``) or memory (the SDK).

    model info → ``target.plan`` (refuse before attesting) → headers and ranged downloads
    start → attestation and key release → sealed manifest checked against every header →
    ``target.reserve`` → decryption into ``target.open`` fds → ``target.commit``. Any
    failure calls ``target.abort`` (no partial plaintext survives) and the key is wiped
    whatever happens. ``stats`` (if given) counts the bytes received and decrypted as
    they go, so a failed run reports them too.
    """
    if stats is not None:
        on_progress = _counting(stats, on_progress)
    with open_fetcher(settings, stats) as fetcher:
        with timings.step("model_info"):
            info = fetch_model_info(fetcher, settings.model)
        refuse_unverifiable_pin(settings, info)
        target.plan([f.path for f in info.files] or [cnap_loader.target_name(info)[0]])
        box = KeyBox(lambda: obtain_key_if_needed(settings, info, timings, release, fetcher.retry))
        try:
            digest, loaded = decrypt_model(
                fetcher, settings, info, box, target, timings, on_progress=on_progress
            )
            target.commit(loaded, timings)
        except BaseException:
            target.abort()
            raise
        finally:
            box.wipe()
    with timings.step("runtime_measurement"):
        measured = record_load(settings, digest)
    return LoadResult(info, digest, loaded, box.key, fetcher.retried, measured)


def load_model(
    settings: LoaderSettings,
    *,
    on_progress: Callable[[int], None] | None = None,
    release: ReleaseFn | None = None,
) -> Receipt:
    """Run the whole loader contract; return the receipt written into the destination.

    ``release`` obtains the model key (default: attest to the KBS with ``KbsClient``).
    Raises the typed errors of :mod:`modelseal.errors` (each with its exit code). With
    ``settings.metrics_textfile`` the run's metrics are written there however it ends.
    """
    with recording(settings.metrics_textfile) as stats:
        return _load_model(settings, on_progress, release, stats)


def _load_model(
    settings: LoaderSettings,
    on_progress: Callable[[int], None] | None,
    release: ReleaseFn | None,
    stats: LoadStats,
) -> Receipt:
    timings = Timings()
    started = time.time()
    target = DirectoryTarget(
        settings.dest, allow_disk=settings.allow_disk, modes=settings.file_modes, timings=timings
    )
    done = run_load(
        settings, target, timings, on_progress=on_progress, release=release, stats=stats
    )
    key = done.key
    receipt = Receipt(
        model_id=done.info.id,
        version=done.info.version,
        format=done.info.format,
        model_digest=done.model_digest,
        model_url=settings.model,
        kbs_url=key.kbs_url if key is not None else "",
        key_id=done.info.key_id or "",
        tee=key.tee if key is not None else "none",
        token_id=key.token_id if key is not None else None,
        destination=str(settings.dest),
        files=tuple(done.files),
        bytes=sum(f.size for f in done.files),
        sealed_bytes=sum(f.sealed_size for f in done.files),
        timings=dict(timings.steps),
        retries=done.retries,
        loaded_at=started,
        insecure_tee=key.insecure if key is not None else False,
        key_source=settings.key_source,
        runtime_measurement=done.measurement,
    )
    receipt.write(settings.dest, modes=settings.file_modes)
    return receipt


def open_fetcher(settings: LoaderSettings, stats: LoadStats | None = None) -> Fetcher:
    """The one pooled HTTP client of a load (registry side), configured from the settings."""
    return Fetcher(
        verify=settings.registry_verify,
        timeout=settings.timeout,
        retry=RetryPolicy(attempts=settings.retries),
        max_connections=settings.workers + 2,
        received=stats.fetched if stats is not None else None,
    )


def _counting(stats: LoadStats, on_progress: Callable[[int], None] | None) -> Callable[[int], None]:
    """``on_progress`` that first adds the decrypted bytes to ``stats``."""

    def progress(n: int) -> None:
        stats.decrypted.add(n)
        if on_progress is not None:
            on_progress(n)

    return progress


def decrypt_model(
    fetcher: Fetcher,
    settings: LoaderSettings,
    info: ModelInfo,
    box: KeyBox,
    target: ModelTarget,
    timings: Timings,
    *,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[str | None, list[LoadedFile]]:
    """Decrypt a v1 model (manifest, headers, pipeline) or a CNAP file into ``target``.

    ``box`` releases the key when first asked (the caller wipes it). Returns the model
    digest (None for CNAP, which has no manifest) and the files written.
    """
    if info.format == FORMAT_V1:

        def dek() -> SecretBytes:
            key = box.get()
            if key is None:
                raise FormatError("a modelseal/v1 model is always sealed, but no key was released")
            return key.dek

        return decrypt_v1(
            fetcher,
            info,
            dek,
            target,
            workers=settings.workers,
            expected_digest=expected_digest(settings),
            timings=timings,
            on_progress=on_progress,
        )
    key = box.get()
    with timings.step("download_decrypt"):
        loaded = cnap_loader.load_cnap(
            fetcher, info, key.dek if key is not None else None, target.open,
            on_progress=on_progress,
        )  # fmt: skip
    return None, loaded


def follow_cnap_transfer(settings: LoaderSettings, transfer_url: str, key_id: str) -> KeyRelease:
    """ITA/CNAP two-round key transfer to the model's ``kbs_url`` (imported on first use,
    like the RCAR client, so it loads while the first downloads run)."""
    from modelseal.loader.transfer_client import transfer_key

    return transfer_key(settings, transfer_url, key_id)


def obtain_key_if_needed(
    settings: LoaderSettings,
    info: ModelInfo,
    timings: Timings,
    release: ReleaseFn | None,
    retry: RetryPolicy,
) -> KeyRelease | None:
    """The released key, unless the model is a plaintext CNAP model (no attestation)."""
    if info.encrypted or info.format == FORMAT_V1:
        return obtain_key(settings, info, timings, release, retry)
    return None


def obtain_key(
    settings: LoaderSettings,
    info: ModelInfo,
    timings: Timings,
    release: ReleaseFn | None,
    retry: RetryPolicy,
) -> KeyRelease:
    """Pick the KBS, then attest and fetch the key, retrying only transient failures.

    ``release`` defaults to RCAR with :class:`KbsClient` (``attest.release_key``), for
    the TEE kind resolved once here.
    """
    if not info.key_id:
        raise FormatError("model info has no key_id")
    if settings.key_source == KEY_SOURCE_CDH:
        # the CDH knows its KBS (from the pod's init-data); the loader attests nothing
        kbs_url = settings.cdh_url
        release = release or (lambda s, _url, key_id: release_from_cdh(s, key_id))
    else:
        found = settings.kbs_url or info.kbs_url
        if not found:
            raise ConfigError("no KBS URL: pass --kbs-url or publish the model with kbs_url")
        kbs_url = found
    if release is None:
        # detect the TEE and warn about an insecure one once, not on every retry
        settings = settings.with_overrides(tee=resolve_tee(settings))
        warn_if_insecure(settings.tee)
        # a CNAP record's kbs_url is an ITA/CNAP key-transfer URL, followed as such
        # unless --kbs-url names a Trustee-compatible KBS instead
        cnap_transfer = info.kbs == KBS_CNAP and settings.kbs_url is None
        release = follow_cnap_transfer if cnap_transfer else release_key
    with timings.step("attest_key_release"):
        attempt = 0
        while True:
            attempt += 1
            try:
                return release(settings, kbs_url, info.key_id)
            except TransientError as exc:
                if attempt >= retry.attempts:
                    raise
                log.info("key release failed transiently (%s); retrying", exc)
                time.sleep(retry.delay(attempt))
