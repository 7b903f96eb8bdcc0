"""Owner-side sealing and unsealing of files and model directories.

Outputs are atomic: everything is written under a temporary name next to the destination
and renamed only when complete and authenticated, so a failure (wrong key, tampering, a
full disk, Ctrl-C) never leaves a partial plaintext file behind. Used by the owner CLI
(``modelseal seal/unseal/verify/inspect``) and by ``modelseal publish``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from modelseal.crypto.secret import SecretBytes
from modelseal.errors import ConfigError, Error, FormatError, IntegrityError, NotFound
from modelseal.format import cnap, partial
from modelseal.format.detect import detect_fd
from modelseal.format.header import DEFAULT_SEGMENT_SIZE, Header, check_relpath
from modelseal.format.manifest import (
    MANIFEST_NAME,
    MAX_MANIFEST_LEN,
    SEALED_MANIFEST_NAME,
    SEALED_SUFFIX,
    FileEntry,
    Manifest,
    sealed_name,
)
from modelseal.format.v1 import Progress, SealedReader, SealWriter, read_header, seal_fd

__all__ = [
    "CNAP_SUFFIX",
    "SealFormat",
    "SealedFile",
    "SealedModel",
    "UnsealResult",
    "inspect",
    "open_manifest",
    "progress_total",
    "seal",
    "seal_directory",
    "seal_file",
    "unseal",
    "unseal_directory",
    "unseal_file",
    "verify",
]

SealFormat = Literal["v1", "cnap", "partial"]
CNAP_SUFFIX = ".enc"
_HASH_CHUNK = 4 << 20
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


@dataclass(frozen=True)
class SealedFile:
    """One sealed (or unsealed) single file."""

    path: Path
    format: SealFormat
    size: int
    sealed_size: int
    header: Header | None = None


@dataclass(frozen=True)
class SealedModel:
    """A sealed model directory: what publish uploads and registers."""

    directory: Path
    manifest: Manifest
    model_digest: str

    @property
    def files(self) -> tuple[FileEntry, ...]:
        return self.manifest.files

    def sealed_paths(self) -> list[str]:
        """Relative paths of every sealed file, manifest included."""
        return [SEALED_MANIFEST_NAME, *(sealed_name(e.path) for e in self.manifest.files)]


@dataclass(frozen=True)
class UnsealResult:
    path: Path
    format: SealFormat
    files: int
    size: int
    model_digest: str | None = None


# --- atomic outputs --------------------------------------------------------------------------


def _check_dst(dst: Path, overwrite: bool) -> None:
    if dst.exists() or dst.is_symlink():
        if not overwrite:
            raise ConfigError(f"{dst} already exists; remove it or pass --force")
        if dst.is_dir() and not dst.is_symlink():
            raise ConfigError(f"{dst} is a directory; refusing to replace it with a file")
    if not dst.parent.is_dir():
        raise ConfigError(f"{dst.parent} does not exist; create it first")


@contextmanager
def _atomic_file(dst: Path, *, mode: int, overwrite: bool) -> Iterator[int]:
    """Yield a descriptor of a temporary sibling of ``dst``; rename it to ``dst`` only if the
    block completes, delete it otherwise."""
    _check_dst(dst, overwrite)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".partial", dir=dst.parent)
    except OSError as exc:
        raise ConfigError(f"cannot write into {dst.parent}: {exc.strerror}") from None
    done = False
    try:
        os.fchmod(fd, mode)
        yield fd
        done = True
    finally:
        os.close(fd)
        if done:
            os.replace(tmp, dst)
        else:
            Path(tmp).unlink(missing_ok=True)


@contextmanager
def _atomic_dir(dst: Path, *, overwrite: bool) -> Iterator[Path]:
    """Yield a fresh temporary directory next to ``dst``; it becomes ``dst`` on success and
    is removed with everything in it on failure."""
    if dst.exists() or dst.is_symlink():
        if not overwrite:
            raise ConfigError(f"{dst} already exists; remove it or pass --force")
        if not dst.is_dir() or dst.is_symlink():
            raise ConfigError(f"{dst} exists and is not a directory")
    if not dst.parent.is_dir():
        raise ConfigError(f"{dst.parent} does not exist; create it first")
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".partial", dir=dst.parent))
    except OSError as exc:
        raise ConfigError(f"cannot write into {dst.parent}: {exc.strerror}") from None
    done = False
    try:
        yield tmp
        done = True
    finally:
        if done:
            if dst.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".old", dir=dst.parent))
                os.replace(dst, old / "d")
                os.replace(tmp, dst)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, dst)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def _open_ro(path: Path) -> int:
    try:
        return os.open(path, os.O_RDONLY | _O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"{path} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a directory") from None
    except PermissionError:
        raise ConfigError(f"cannot read {path}: permission denied") from None


def _new_file(path: Path, mode: int) -> int:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | _O_CLOEXEC, mode)


def _sha256_fd(fd: int, size: int) -> str:
    """SHA-256 of the first ``size`` bytes (hashlib releases the GIL: runs beside AES)."""
    h = hashlib.sha256()
    buf = bytearray(min(_HASH_CHUNK, max(size, 1)))
    view = memoryview(buf)
    offset = 0
    try:
        while offset < size:
            n = os.preadv(fd, [view[: min(len(view), size - offset)]], offset)
            if n == 0:
                raise ConfigError("file shrank while it was being read")
            h.update(view[:n])
            offset += n
    finally:
        buf[:] = bytes(len(buf))
    return h.hexdigest()


# --- sealing ---------------------------------------------------------------------------------


def _model_files(src: Path) -> list[tuple[str, Path]]:
    """Regular files under ``src`` (symlinks to files are followed), sorted, as
    (POSIX relative path, absolute path)."""
    found: list[tuple[str, Path]] = []
    for root, dirs, files in os.walk(src, followlinks=False):
        base = Path(root)
        for d in sorted(dirs):
            if (base / d).is_symlink():
                raise ConfigError(f"{base / d} is a symlinked directory; copy it into place")
        dirs.sort()
        for name in sorted(files):
            full = base / name
            rel = full.relative_to(src).as_posix()
            if not full.is_file():
                raise ConfigError(f"{full} is not a regular file (or a dangling symlink)")
            try:
                check_relpath(rel, what="file name")
            except FormatError as exc:
                raise ConfigError(f"cannot seal {full}: {exc}") from None
            if rel == MANIFEST_NAME:
                raise ConfigError(f"{full}: the name {MANIFEST_NAME} is reserved by modelseal")
            found.append((rel, full))
    if not found:
        raise ConfigError(f"{src} contains no files to seal")
    return found


def _seal_model_file(
    src: Path,
    rel: str,
    out_path: Path,
    dek: SecretBytes,
    *,
    key_id: str,
    model: str | None,
    segment_size: int,
    workers: int,
    progress: Progress | None,
) -> FileEntry:
    fd = _open_ro(src)
    try:
        before = os.fstat(fd)
        out_fd = _new_file(out_path, 0o644)
        try:
            with ThreadPoolExecutor(1, thread_name_prefix="modelseal-hash") as pool:
                digest = pool.submit(_sha256_fd, fd, before.st_size)
                header = seal_fd(
                    fd,
                    out_fd,
                    dek,
                    size=before.st_size,
                    key_id=key_id,
                    path=rel,
                    segment_size=segment_size,
                    model=model,
                    workers=workers,
                    progress=progress,
                )
                sha256 = digest.result()
        finally:
            os.close(out_fd)
        after = os.fstat(fd)
    finally:
        os.close(fd)
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        raise ConfigError(f"{src} changed while it was being sealed; seal it again")
    return FileEntry(
        path=rel,
        size=header.size,
        sha256=sha256,
        header_sha256=header.digest_hex,
        sealed_size=header.sealed_size,
    )


def seal_directory(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    dek: SecretBytes,
    *,
    key_id: str,
    model_id: str | None = None,
    version: str | None = None,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
    workers: int = 2,
    progress: Progress | None = None,
    overwrite: bool = False,
) -> SealedModel:
    """Seal every file of the model directory ``src`` into the new directory ``dst``
    (``<path>.sealed`` each, plus ``modelseal-manifest.json.sealed``).

    Returns the manifest and the model digest to register with the key.
    """
    source, target = Path(src), Path(dst)
    if not source.is_dir():
        raise NotFound(f"{source} is not a directory")
    files = _model_files(source)
    with _atomic_dir(target, overwrite=overwrite) as tmp:
        entries = [
            _seal_model_file(
                full,
                rel,
                tmp / sealed_name(rel),
                dek,
                key_id=key_id,
                model=model_id,
                segment_size=segment_size,
                workers=workers,
                progress=progress,
            )
            for rel, full in files
        ]
        manifest = Manifest.build(key_id=key_id, files=entries, model=model_id, version=version)
        with open(_new_file(tmp / SEALED_MANIFEST_NAME, 0o644), "wb") as out:
            writer = SealWriter(
                out,
                dek,
                size=len(manifest.raw),
                key_id=key_id,
                path=MANIFEST_NAME,
                segment_size=segment_size,
                model=model_id,
                content_type="application/json",
            )
            writer.write(manifest.raw)
            writer.close()
        os.chmod(tmp, 0o755)  # noqa: S103 - ciphertext only; readable like any published blob
    return SealedModel(directory=target, manifest=manifest, model_digest=manifest.digest)


def seal_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    dek: SecretBytes,
    *,
    key_id: str | None,
    fmt: SealFormat = "v1",
    path: str | None = None,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
    model: str | None = None,
    content_type: str | None = None,
    workers: int = 2,
    progress: Progress | None = None,
    overwrite: bool = False,
    tensors: Sequence[str] = (),
    last_layers: int = 0,
) -> SealedFile:
    """Seal one file (v1, or the CNAP legacy layout with ``fmt="cnap"``) into ``dst``.

    ``fmt="partial"`` seals only the tensors of a safetensors file selected by the glob
    ``tensors`` and/or the last ``last_layers`` numbered layers (format/partial.py).
    """
    source, target = Path(src), Path(dst)
    fd = _open_ro(source)
    try:
        size = os.fstat(fd).st_size
        if fmt == "partial":
            if not key_id:
                raise ConfigError("--key-id is required (the KBS resource path of the key)")
            st_header = partial.read_safetensors_header(fd)
            names = partial.select_tensors(st_header, tensors, last_layers=last_layers)
            with _atomic_file(target, mode=0o644, overwrite=overwrite) as out_fd:
                partial.seal_partial(
                    fd,
                    out_fd,
                    dek,
                    key_id=key_id,
                    names=names,
                    segment_size=segment_size,
                    progress=progress,
                )
                sealed_size = os.fstat(out_fd).st_size
            return SealedFile(target, "partial", size, sealed_size)
        if fmt == "cnap":
            if size > cnap.MAX_PLAINTEXT:
                raise ConfigError(
                    f"{source} is {size} bytes; the CNAP format holds at most "
                    f"{cnap.MAX_PLAINTEXT} bytes (4 GiB). Use --format v1"
                )
            with (
                _atomic_file(target, mode=0o644, overwrite=overwrite) as out_fd,
                open(fd, "rb", closefd=False) as fin,
                open(out_fd, "wb", closefd=False) as fout,
            ):
                cnap.encrypt_stream(fin, fout, dek, size=size, progress=progress)
            return SealedFile(target, "cnap", size, size + cnap.OVERHEAD)
        if fmt != "v1":
            raise ConfigError(f"unknown format {fmt!r}; use v1, cnap or partial")
        if not key_id:
            raise ConfigError("--key-id is required for the v1 format (the KBS resource path)")
        rel = path if path is not None else source.name
        try:
            check_relpath(rel, what="--path")
        except FormatError as exc:
            raise ConfigError(str(exc)) from None
        with _atomic_file(target, mode=0o644, overwrite=overwrite) as out_fd:
            header = seal_fd(
                fd,
                out_fd,
                dek,
                size=size,
                key_id=key_id,
                path=rel,
                segment_size=segment_size,
                model=model,
                content_type=content_type,
                workers=workers,
                progress=progress,
            )
        return SealedFile(target, "v1", size, header.sealed_size, header)
    finally:
        os.close(fd)


def seal(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    dek: SecretBytes,
    *,
    key_id: str | None,
    fmt: SealFormat = "v1",
    segment_size: int = DEFAULT_SEGMENT_SIZE,
    model: str | None = None,
    version: str | None = None,
    workers: int = 2,
    progress: Progress | None = None,
    overwrite: bool = False,
    tensors: Sequence[str] = (),
    last_layers: int = 0,
) -> SealedFile | SealedModel:
    """Seal a file or a model directory. A file sealed into an existing directory gets the
    name ``<name>.sealed`` (``<name>.enc`` for CNAP, unchanged for partial sealing)."""
    source, target = Path(src), Path(dst)
    if not source.exists():
        raise NotFound(f"{source} not found")
    if source.is_dir():
        if fmt != "v1":
            raise ConfigError(f"the {fmt} format seals single files only; use --format v1")
        if not key_id:
            raise ConfigError("--key-id is required (the KBS resource path of the key)")
        return seal_directory(
            source,
            target,
            dek,
            key_id=key_id,
            model_id=model,
            version=version,
            segment_size=segment_size,
            workers=workers,
            progress=progress,
            overwrite=overwrite,
        )
    if target.is_dir():
        suffix = {"cnap": CNAP_SUFFIX, "partial": ""}.get(fmt, SEALED_SUFFIX)
        target = target / (source.name + suffix)
    return seal_file(
        source,
        target,
        dek,
        key_id=key_id,
        fmt=fmt,
        tensors=tensors,
        last_layers=last_layers,
        segment_size=segment_size,
        model=model,
        workers=workers,
        progress=progress,
        overwrite=overwrite,
    )


# --- reading sealed directories --------------------------------------------------------------


def open_manifest(src: str | os.PathLike[str], dek: SecretBytes) -> Manifest:
    """Authenticate and parse ``src/modelseal-manifest.json.sealed``."""
    path = Path(src) / SEALED_MANIFEST_NAME
    if not path.is_file():
        raise IntegrityError(
            f"{SEALED_MANIFEST_NAME} is missing in {src}: not a sealed model directory, "
            "or the manifest was removed",
            paths=[SEALED_MANIFEST_NAME],
        )
    with SealedReader.open(path, dek) as reader:
        if reader.size > MAX_MANIFEST_LEN:
            raise FormatError(f"{SEALED_MANIFEST_NAME} is larger than {MAX_MANIFEST_LEN} bytes")
        manifest = Manifest.parse(bytes(reader.read_range(0, reader.size)))
        manifest.check_manifest_header(reader.header)
    return manifest


def _sealed_names(src: Path) -> list[str]:
    names: list[str] = []
    for root, dirs, files in os.walk(src, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            rel = (Path(root) / name).relative_to(src).as_posix()
            if rel != SEALED_MANIFEST_NAME:
                names.append(rel)
        names.extend(
            (Path(root) / d).relative_to(src).as_posix()
            for d in dirs
            if (Path(root) / d).is_symlink()
        )
    return names


def _checked_headers(src: Path, manifest: Manifest) -> dict[str, Header]:
    """Names and headers of every sealed file checked against the manifest (no key used)."""
    manifest.check_names(_sealed_names(src))
    headers: dict[str, Header] = {}
    for entry in manifest.files:
        name = sealed_name(entry.path)
        fd = _open_ro(src / name)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise IntegrityError(f"{name}: not a regular file", paths=[name])
            try:
                header, _ = read_header(fd)
            except FormatError as exc:
                raise IntegrityError(f"{name}: {exc}", paths=[name]) from None
            manifest.check_file(name, header, os.fstat(fd).st_size)
        finally:
            os.close(fd)
        headers[name] = header
    return headers


def _plaintext_sha256(reader: SealedReader) -> str:
    h = hashlib.sha256()
    for chunk in reader.iter_segments():
        h.update(chunk)
    return h.hexdigest()


def unseal_directory(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    dek: SecretBytes,
    *,
    workers: int = 2,
    progress: Progress | None = None,
    overwrite: bool = False,
) -> UnsealResult:
    """Unseal a sealed model directory into the new directory ``dst``.

    The manifest is authenticated first; every file's name and header are checked against
    it before any weight is decrypted; every plaintext's SHA-256 is checked after. Files
    are mode 0600 in a 0700 directory that appears only when everything verified.
    """
    source, target = Path(src), Path(dst)
    manifest = open_manifest(source, dek)
    _checked_headers(source, manifest)
    with _atomic_dir(target, overwrite=overwrite) as tmp:
        for entry in manifest.files:
            name = sealed_name(entry.path)
            with SealedReader.open(source / name, dek) as reader:
                out_fd = _new_file(tmp / entry.path, 0o600)
                try:
                    reader.decrypt_to_fd(out_fd, workers=workers, progress=progress)
                    actual = _sha256_fd(out_fd, entry.size)
                finally:
                    os.close(out_fd)
            if actual != entry.sha256:
                raise IntegrityError(
                    f"{name}: plaintext SHA-256 differs from the manifest", paths=[name]
                )
    return UnsealResult(target, "v1", len(manifest.files), manifest.total_size, manifest.digest)


def unseal_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    dek: SecretBytes,
    *,
    workers: int = 2,
    progress: Progress | None = None,
    overwrite: bool = False,
) -> UnsealResult:
    """Unseal one v1 or CNAP file (detected) into ``dst`` (a file, or an existing directory
    that receives the original file name)."""
    source, target = Path(src), Path(dst)
    fd = _open_ro(source)
    try:
        fmt = detect_fd(fd)
        if fmt == "v1":
            with SealedReader(fd, dek) as reader:
                if target.is_dir():
                    target = target / Path(reader.header.path).name
                with _atomic_file(target, mode=0o600, overwrite=overwrite) as out_fd:
                    reader.decrypt_to_fd(out_fd, workers=workers, progress=progress)
                return UnsealResult(target, "v1", 1, reader.size)
        total = os.fstat(fd).st_size
        if fmt == "partial":
            if target.is_dir():
                target = target / source.name
            with _atomic_file(target, mode=0o600, overwrite=overwrite) as out_fd:
                partial.unseal_partial(fd, out_fd, dek, progress=progress)
                size = os.fstat(out_fd).st_size
            return UnsealResult(target, "partial", 1, size)
        if target.is_dir():
            name = source.name
            name = name[: -len(CNAP_SUFFIX)] if name.endswith(CNAP_SUFFIX) else name + ".plain"
            target = target / name
        with (
            _atomic_file(target, mode=0o600, overwrite=overwrite) as out_fd,
            open(fd, "rb", closefd=False) as fin,
            open(out_fd, "wb", closefd=False) as fout,
        ):
            header = cnap.decrypt_stream(fin, fout, dek, total_len=total, progress=progress)
        return UnsealResult(target, "cnap", 1, header.plaintext_len)
    finally:
        os.close(fd)


def unseal(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    dek: SecretBytes,
    *,
    workers: int = 2,
    progress: Progress | None = None,
    overwrite: bool = False,
) -> UnsealResult:
    """Unseal a sealed file or sealed model directory (format detected)."""
    source = Path(src)
    if not source.exists():
        raise NotFound(f"{source} not found")
    if source.is_dir():
        return unseal_directory(
            source, dst, dek, workers=workers, progress=progress, overwrite=overwrite
        )
    return unseal_file(source, dst, dek, workers=workers, progress=progress, overwrite=overwrite)


class _Discard:
    """A write-only sink for CNAP verification."""

    def write(self, data: bytes) -> int:
        return len(data)


def verify(
    src: str | os.PathLike[str],
    dek: SecretBytes,
    *,
    workers: int = 2,
    progress: Progress | None = None,
) -> UnsealResult:
    """Authenticate a sealed file or directory completely and write nothing.

    Directories: manifest, names, headers, every segment and every plaintext SHA-256
    (hashing is sequential, so ``workers`` only applies to single files).
    """
    source = Path(src)
    if not source.exists():
        raise NotFound(f"{source} not found")
    if source.is_dir():
        manifest = open_manifest(source, dek)
        _checked_headers(source, manifest)
        for entry in manifest.files:
            name = sealed_name(entry.path)
            with SealedReader.open(source / name, dek) as reader:
                actual = _plaintext_sha256(reader)  # authenticates every segment, in order
            if progress is not None:
                progress(entry.size)
            if actual != entry.sha256:
                raise IntegrityError(
                    f"{name}: plaintext SHA-256 differs from the manifest", paths=[name]
                )
        return UnsealResult(source, "v1", len(manifest.files), manifest.total_size, manifest.digest)
    fd = _open_ro(source)
    try:
        fmt = detect_fd(fd)
        if fmt == "v1":
            with SealedReader(fd, dek) as reader:
                reader.verify(workers=workers, progress=progress)
                return UnsealResult(source, "v1", 1, reader.size)
        if fmt == "partial":
            params = partial.unseal_partial(fd, None, dek, progress=progress)
            size = 8 + len(params.header) + partial.read_safetensors_header(fd).data_len
            return UnsealResult(source, "partial", 1, size)
        with open(fd, "rb", closefd=False) as fin:
            sink: Any = _Discard()
            header = cnap.decrypt_stream(
                fin, sink, dek, total_len=os.fstat(fd).st_size, progress=progress
            )
        return UnsealResult(source, "cnap", 1, header.plaintext_len)
    finally:
        os.close(fd)


# --- keyless inspection ----------------------------------------------------------------------


def _inspect_fd(fd: int) -> dict[str, Any]:
    total = os.fstat(fd).st_size
    fmt = detect_fd(fd)
    if fmt == "cnap":
        prefix = os.pread(fd, cnap.HEADER_LEN, 0)
        return cnap.parse_header(prefix, total).to_json()
    if fmt == "partial":
        outer, params = partial.read_partial_params(fd)
        return {
            "format": partial.FORMAT_ID,
            "alg": "AES-256-GCM",
            "key_id": params.key_id,
            "segment_size": params.segment_size,
            "sealed": list(params.sealed),
            "size": 8 + len(params.header) + outer.data_len,
            "tensors": len(outer.tensors),
        }
    header, _ = read_header(fd)
    return {
        "format": "modelseal/v1",
        "version": 1,
        "header": header.to_json(),
        "header_sha256": header.digest_hex,
        "segments": header.segment_count,
        "sealed_size": header.sealed_size,
    }


def inspect(src: str | os.PathLike[str]) -> dict[str, Any]:
    """Describe a sealed file or directory from its headers alone (no key)."""
    source = Path(src)
    if not source.exists():
        raise NotFound(f"{source} not found")
    if not source.is_dir():
        fd = _open_ro(source)
        try:
            return _inspect_fd(fd)
        finally:
            os.close(fd)
    out: dict[str, Any] = {"format": "modelseal/v1 directory", "files": {}}
    manifest_path = source / SEALED_MANIFEST_NAME
    if manifest_path.is_file():
        out["manifest"] = inspect(manifest_path)
    else:
        out["manifest"] = None
    for name in _sealed_names(source):
        try:
            out["files"][name] = inspect(source / name)
        except Error as exc:
            out["files"][name] = {"error": str(exc)}
    return out


def progress_total(src: str | os.PathLike[str], *, sealed: bool) -> int:
    """Plaintext bytes an operation on ``src`` will process (for progress bars); 0 if
    unknown. ``sealed``: ``src`` is sealed (sizes come from headers, no key needed)."""
    source = Path(src)
    try:
        if not sealed:
            if source.is_dir():
                return sum(p.stat().st_size for _, p in _model_files(source))
            return source.stat().st_size
        if source.is_dir():
            return sum(
                int(inspect(source / n).get("header", {}).get("size", 0))
                for n in _sealed_names(source)
                if n.endswith(SEALED_SUFFIX)
            )
        info = inspect(source)
        return int(info.get("size", info.get("header", {}).get("size", 0)))
    except (Error, OSError):
        return 0
