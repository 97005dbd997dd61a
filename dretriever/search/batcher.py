"""Micro-batching for the HTTP server: concurrent single-query searches gathered into one batched call.

Each ``/search`` request alone costs one encoder forward of one short query and one pass over every shard;
16 concurrent clients would pay that 16 times. :class:`MicroBatcher` queues the requests on the event loop;
one worker takes up to ``max_batch`` of them that share the same options (``k``, ``mode``, ... : requests
with different options are never mixed, so each gets exactly what it would alone), waiting at most
``max_wait_ms`` for a batch to fill, and runs them as one ``batch_search`` call (one forward pass, one
search per shard) in a worker thread, while the next batch gathers. Results are the unbatched ones: the
batched encoder gives the same vectors (token-budget batches, tests/test_server.py) and the search is exact
per query.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any, Callable

# 16 clients on the 2-core EPYC: 5 ms gave 125 requests/s against 116 at 2 ms, x3.00 against x2.69 over no
# batching (medians of 3 load tests, eval/reports/search/README.md); a lone request waits at most this long
DEFAULT_MAX_WAIT_MS = 5.0


class MicroBatcher:
    """``await batcher(query, **options)`` -> ``fn([query, ...], **options)[i]``, batched across callers."""

    def __init__(self, fn: Callable[..., list], max_batch: int = 32, max_wait_ms: float = DEFAULT_MAX_WAIT_MS):
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError(f"max_batch must be positive and max_wait_ms >= 0, got {max_batch}, {max_wait_ms}")
        self.fn, self.max_batch, self.max_wait = fn, max_batch, max_wait_ms / 1000
        self._pending: dict[tuple, list[tuple[str, asyncio.Future]]] = {}  # options -> waiting (query, future)
        self._full: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self.batches = 0  # calls of fn so far (for tests and logs)

    async def __call__(self, query: str, **options: Any):
        loop = asyncio.get_running_loop()
        if self._full is None:
            self._full = asyncio.Event()
        future = loop.create_future()
        group = self._pending.setdefault(tuple(sorted(options.items())), [])
        group.append((query, future))
        if len(group) >= self.max_batch:
            self._full.set()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._run())
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            key = next(iter(self._pending))  # the options of the oldest waiting request
            if len(self._pending[key]) < self.max_batch and self.max_wait > 0:
                self._full.clear()
                try:
                    await asyncio.wait_for(self._full.wait(), self.max_wait)
                except asyncio.TimeoutError:
                    pass
            group = self._pending.pop(key)
            batch, rest = group[:self.max_batch], group[self.max_batch:]
            if rest:
                self._pending[key] = rest
            batch = [(q, f) for q, f in batch if not f.done()]  # a cancelled request (client gone) is dropped
            if not batch:
                continue
            self.batches += 1
            try:
                results = await loop.run_in_executor(None, partial(self.fn, [q for q, _ in batch], **dict(key)))
            except Exception as e:  # noqa: BLE001  (each waiting request gets the error, as it would alone)
                for _, f in batch:
                    if not f.done():
                        f.set_exception(e)
            else:
                for (_, f), result in zip(batch, results):
                    if not f.done():
                        f.set_result(result)
