"""Where a long job spends its time: exclusive wall-clock seconds per named stage.

Code marks its stages with ``with stage("tokenize"): ...``; that costs one context-variable lookup when no
clock is running. A :class:`StageClock` started around a job (``with StageClock() as clock: build(...)``)
charges every second to the innermost open stage, so nested stages are exclusive: time spent chunking inside
the reading of a source counts as ``chunk``, not ``read``, and the shares add up to the wall time (what no stage
claims is ``other``). The index build uses it to log its per-stage split; ``eval/bench_pipeline.py`` reports it.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
_CLOCK: ContextVar["StageClock | None"] = ContextVar("dretriever_stage_clock", default=None)


class StageClock:
    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._stack: list[str] = []
        self._since = 0.0
        self._started = 0.0
        self.wall = 0.0
        self._token = None

    def __enter__(self) -> "StageClock":
        self._started = self._since = time.perf_counter()
        self._stack = ["other"]
        self._token = _CLOCK.set(self)
        return self

    def __exit__(self, *exc) -> None:
        self._charge()
        self.wall = self._since - self._started  # the same instant the last charge ended at
        _CLOCK.reset(self._token)

    def _charge(self) -> None:
        now = time.perf_counter()
        name = self._stack[-1]
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self._since
        self._since = now

    @property
    def stage(self) -> str | None:
        """The innermost open stage (readable from another thread, e.g. a memory sampler)."""
        return self._stack[-1] if self._stack else None

    def push(self, name: str) -> None:
        self._charge()
        self._stack.append(name)

    def pop(self) -> None:
        self._charge()
        self._stack.pop()

    def summary(self) -> str:
        total = sum(self.seconds.values()) or 1.0
        return ", ".join(f"{k} {v:.1f} s ({100 * v / total:.0f} %)"
                         for k, v in sorted(self.seconds.items(), key=lambda kv: -kv[1]))


@contextmanager
def stage(name: str):
    clock = _CLOCK.get()
    if clock is None:
        yield
        return
    clock.push(name)
    try:
        yield
    finally:
        clock.pop()


def staged_iter(items: Iterable[T], name: str) -> Iterator[T]:
    """``items``, with the time spent producing each one charged to ``name`` (stages inside keep theirs)."""
    it = iter(items)
    while True:
        with stage(name):
            try:
                item = next(it)
            except StopIteration:
                return
        yield item


def current() -> StageClock | None:
    return _CLOCK.get()
