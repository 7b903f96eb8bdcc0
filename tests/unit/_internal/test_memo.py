"""The verifiers' bounded memo: least recently used out first, safe across threads."""

from __future__ import annotations

import threading

import pytest

from modelseal._internal.memo import Memo


def test_the_least_recently_used_entry_goes_first() -> None:
    memo: Memo[str, int] = Memo(2)
    memo.put("a", 1)
    memo.put("b", 2)
    assert memo.get("a") == 1  # "a" is now the most recently used
    memo.put("c", 3)
    assert (memo.get("a"), memo.get("b"), memo.get("c")) == (1, None, 3)
    assert len(memo) == 2


def test_an_empty_memo_is_refused() -> None:
    with pytest.raises(ValueError):
        Memo(0)


def test_concurrent_puts_and_gets_stay_within_the_bound() -> None:
    memo: Memo[int, int] = Memo(64)
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for i in range(2000):
                memo.put(offset + i, i)
                got = memo.get(offset + i // 2)
                assert got is None or got == i // 2
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n * 100_000,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(memo) == 64
