"""MicroBatcher: concurrent calls gathered into few batched calls, options never mixed, errors to every caller."""

import asyncio
import threading

import pytest

from dretriever.search.batcher import MicroBatcher


class Recorder:
    """A batched function that records each call (thread-safe) and answers ``query * k``."""

    def __init__(self):
        self.calls, self.lock = [], threading.Lock()

    def __call__(self, queries, k=1, mode=None):
        with self.lock:
            self.calls.append((list(queries), k, mode))
        if mode == "broken":
            raise ValueError("mode: broken")
        return [q * k for q in queries]


def test_concurrent_calls_are_batched_by_options_and_answered_in_order():
    fn = Recorder()
    batcher = MicroBatcher(fn, max_batch=4, max_wait_ms=50)

    async def main():
        jobs = [batcher(str(i), k=1 + i % 2) for i in range(10)]
        return await asyncio.gather(*jobs)

    results = asyncio.run(main())
    assert results == [str(i) * (1 + i % 2) for i in range(10)]  # each caller gets its own answer
    assert all(len(qs) <= 4 for qs, _, _ in fn.calls)
    assert all({int(q) % 2 for q in qs} == {k - 1} for qs, k, _ in fn.calls)  # never mixes k
    assert batcher.batches == len(fn.calls) == 4  # 5 of each k: 4 + 1, twice
    assert sorted(int(q) for qs, _, _ in fn.calls for q in qs) == list(range(10))


def test_an_error_reaches_every_caller_of_its_batch_only():
    fn = Recorder()
    batcher = MicroBatcher(fn, max_batch=8, max_wait_ms=20)

    async def main():
        return await asyncio.gather(batcher("a", mode="broken"), batcher("b", mode="broken"), batcher("c"),
                                    return_exceptions=True)

    a, b, c = asyncio.run(main())
    assert isinstance(a, ValueError) and isinstance(b, ValueError) and str(a) == "mode: broken"
    assert c == "c"


def test_settings_are_checked():
    with pytest.raises(ValueError):
        MicroBatcher(Recorder(), max_batch=0)
    with pytest.raises(ValueError):
        MicroBatcher(Recorder(), max_wait_ms=-1)
