"""The plaintext baseline of ``loader_bench``: the loader's own HTTP code, no decryption.

Run as its own process (``python -m bench.plain_download URL DEST WORKERS``) with the same
import hygiene as ``modelseal load`` (httpx's optional command-line client kept out), so the
baseline pays no start-up the loader does not: parallel ranged GETs with ``readinto`` into
16 MiB buffers and ``pwrite`` at their offsets, like the loader minus AES-GCM.
"""

from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

CHUNK = 16 << 20


def plain_download(url: str, dest: str, workers: int) -> None:
    """Download ``url`` into ``dest`` with ``workers`` parallel ranged GETs."""
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    from modelseal.loader.fetch import Fetcher

    local = threading.local()
    with Fetcher(max_connections=workers + 2) as fetcher:
        size = fetcher.size(url)
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, size)

            def work(offset: int) -> None:
                buf: memoryview | None = getattr(local, "buf", None)
                if buf is None:
                    buf = local.buf = memoryview(bytearray(CHUNK))
                view = buf[: min(CHUNK, size - offset)]
                fetcher.read_range(url, offset, view)
                done = 0
                while done < len(view):
                    done += os.pwrite(fd, view[done:], offset + done)

            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(work, range(0, size, CHUNK)))
        finally:
            os.close(fd)


if __name__ == "__main__":
    plain_download(sys.argv[1], sys.argv[2], int(sys.argv[3]))
