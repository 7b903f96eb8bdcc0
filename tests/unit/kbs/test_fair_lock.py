"""The KBS writer lock hands over in arrival order, so a looping writer cannot starve another."""

from __future__ import annotations

import threading

from modelseal.kbs.db import _FairLock


def test_waiters_get_the_lock_in_arrival_order() -> None:
    lock = _FairLock()
    lock.acquire()
    order: list[int] = []
    queued = threading.Semaphore(0)

    def waiter(n: int) -> None:
        queued.release()
        lock.acquire()
        order.append(n)
        lock.release()

    threads = []
    for n in range(5):
        t = threading.Thread(target=waiter, args=(n,))
        t.start()
        queued.acquire()
        # wait until this waiter is really queued before starting the next one
        while len(lock._waiters) != n + 1:
            threading.Event().wait(0.001)
        threads.append(t)
    lock.release()
    for t in threads:
        t.join(10)
    assert order == [0, 1, 2, 3, 4]


def test_a_looping_holder_cannot_overtake_a_waiter() -> None:
    """The holder releases and immediately asks again: the waiter goes first."""
    lock = _FairLock()
    lock.acquire()
    got: list[str] = []
    waiting = threading.Thread(
        target=lambda: (lock.acquire(), got.append("waiter"), lock.release())
    )
    waiting.start()
    while not lock._waiters:
        threading.Event().wait(0.001)
    lock.release()
    lock.acquire()
    got.append("looper")
    lock.release()
    waiting.join(10)
    assert got == ["waiter", "looper"]
