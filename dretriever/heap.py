"""Give freed heap memory back to the operating system between the chunks of a long job.

glibc keeps memory that a process has freed inside its heaps, to reuse it. A long build allocates and frees
the same working set (a chunk's token lists, a batch's activations) thousands of times, and the heap's free
space fragments: the process's resident memory then creeps up with the number of chunks, not with their size.
``malloc_trim(0)`` releases every free page (also from the middle of a heap) after each chunk, which keeps
the peak bounded by one chunk's working set. Elsewhere (macOS, musl) it is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util

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
