"""The process heap: freed memory given back between the chunks of a long job, and no garbage collection
while a search builds its (many, acyclic) result objects.

glibc keeps memory that a process has freed inside its heaps, to reuse it. A long build allocates and frees
the same working set (a chunk's token lists, a batch's activations) thousands of times, and the heap's free
space fragments: the process's resident memory then creeps up with the number of chunks, not with their size.
``malloc_trim(0)`` releases every free page (also from the middle of a heap) after each chunk, which keeps
the peak bounded by one chunk's working set. Elsewhere (macOS, musl) it is a no-op.

A search at k=1000 over 300 queries builds 300,000 hits. Each allocation counts towards Python's cyclic
collector, which then walks every tracked object of a process that holds a model (hundreds of thousands):
measured on SciFact, the collections took 0.3-0.5 s of a 2 s ``batch_search`` and building the hits
themselves 0.1 s. The hits hold no cycles, so :func:`gc_paused` turns the collector off while they are made.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc

_TRIM = None


def trim_heap() -> None:
    """Return free heap pages to the OS (glibc ``malloc_trim(0)``; costs about a millisecond)."""
    global _TRIM
    if _TRIM is None:
        try:
            _TRIM = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
            _TRIM.argtypes, _TRIM.restype = [ctypes.c_size_t], ctypes.c_int
        except (OSError, AttributeError):
            _TRIM = False
    if _TRIM:
        _TRIM(0)


@contextlib.contextmanager
def gc_paused():
    """Python's cyclic garbage collector off inside the block (as it was after: a block entered with it off
    leaves it off). For code that allocates many objects without cycles, e.g. search results."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
