"""Keyless inspection of sealed files and directories, and progress-bar totals.

Headers are public by design (docs/reference/format.md), so ``inspect`` needs no key; it
reports per-file errors instead of stopping, because it is a diagnostic tool.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from modelseal.errors import Error, NotFound
from modelseal.format import cnap, partial
from modelseal.format.detect import detect_fd
from modelseal.format.manifest import SEALED_MANIFEST_NAME, SEALED_SUFFIX
from modelseal.format.v1 import read_header
from modelseal.owner.model_tree import model_files, sealed_names
from modelseal.owner.outputs import open_ro

__all__ = ["inspect", "progress_total"]


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
        fd = open_ro(source)
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
    for name in sealed_names(source):
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
                return sum(p.stat().st_size for _, p in model_files(source))
            return source.stat().st_size
        if source.is_dir():
            return sum(
                int(inspect(source / n).get("header", {}).get("size", 0))
                for n in sealed_names(source)
                if n.endswith(SEALED_SUFFIX)
            )
        info = inspect(source)
        return int(info.get("size", info.get("header", {}).get("size", 0)))
    except (Error, OSError):
        return 0
