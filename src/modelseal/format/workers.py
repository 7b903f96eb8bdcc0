"""A small thread pool over the segments of one file.

AES-GCM and SHA-256 release the GIL, so threads give real parallelism on segments. Each
thread reuses one buffer for the whole file (memory is constant in the file size) and
wipes it at the end, because it held plaintext.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable

from modelseal.crypto.aead import wipe
from modelseal.errors import DecryptionError
from modelseal.format.header import TAG_LEN, Header

__all__ = ["Progress", "run_segments"]

#: Called with a number of plaintext bytes just processed (from worker threads).
Progress = Callable[[int], None]


def run_segments(
    header: Header,
    workers: int,
    work: Callable[[bytearray, int], int],
    progress: Progress | None,
) -> None:
    """Run ``work(buffer, i)`` for every segment ``i`` of ``header`` on ``workers`` threads;
    ``work`` returns the plaintext bytes it processed (for ``progress``).

    Each thread owns one reusable buffer that holds a whole sealed segment (ciphertext and
    tag), wiped when it finishes. The first error stops every thread and is re-raised (an
    authentication failure wins over others).
    """
    count = header.segment_count
    counter = itertools.count()
    stop = threading.Event()
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run() -> None:
        buf = bytearray(header.segment_plain_len(0) + TAG_LEN)
        try:
            while not stop.is_set():
                i = next(counter)
                if i >= count:
                    return
                done = work(buf, i)
                if progress is not None:
                    with lock:
                        progress(done)
        except BaseException as exc:
            stop.set()
            errors.append(exc)
        finally:
            wipe(buf)

    workers = max(1, min(workers, count))
    if workers == 1:
        run()
    else:
        threads = [threading.Thread(target=run, name=f"modelseal-{k}") for k in range(workers)]
        for t in threads:
            t.start()
        try:
            for t in threads:
                t.join()
        except BaseException:
            stop.set()
            for t in threads:
                t.join()
            raise
    if errors:
        auth = [e for e in errors if isinstance(e, DecryptionError)]
        raise (auth or errors)[0]
