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

__all__ = ["Progress", "run_segments"]

#: Called with a number of plaintext bytes just processed (from worker threads).
Progress = Callable[[int], None]


def run_segments(
    count: int,
    workers: int,
    make_buffer: Callable[[], bytearray],
    work: Callable[[bytearray, int], int],
    progress: Progress | None,
) -> None:
    """Run ``work(buffer, i)`` for ``i`` in ``range(count)`` on ``workers`` threads.

    Each thread owns one reusable buffer, wiped when it finishes. The first error stops
    every thread and is re-raised (an authentication failure wins over others).
    """
    counter = itertools.count()
    stop = threading.Event()
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run() -> None:
        buf = make_buffer()
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
