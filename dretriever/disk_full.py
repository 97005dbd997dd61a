"""A full disk as a clear error: every command that writes an output (index and datastore builds, imports,
training checkpoints, teacher and negatives files) fails with ``PATH: no space left on device`` and exit status
2, not a traceback. What was finished stays (shards are marked done only after their files are written and
synced), so rerunning the same command once there is space resumes.

The disk-full condition reaches Python in three forms: ``OSError`` with ``ENOSPC``/``EDQUOT`` (file writes),
``sqlite3.OperationalError`` "database or disk is full" (the doc stores) and a faiss ``RuntimeError`` whose
message carries the C library's "No space left on device".
"""

from __future__ import annotations

import errno
from typing import Sequence

OUTPUT_OPTIONS = ("--output", "--output_dir", "--index_root")


def is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return type(exc).__name__ == "OperationalError" and "disk is full" in text or \
        isinstance(exc, RuntimeError) and "No space left on device" in text


def disk_full_message(exc: BaseException, argv: Sequence[str]) -> str:
    """``PATH: no space left on device ...``: PATH is the file being written when known, else the command's
    output option (``--output``, ``--output_dir``), else "the output"."""
    path = getattr(exc, "filename", None)
    if not path:
        for i, word in enumerate(argv):
            name, _, value = word.partition("=")
            if name in OUTPUT_OPTIONS:
                path = value or (argv[i + 1] if i + 1 < len(argv) else None)
                break
    return (f"{path or 'the output'}: no space left on device while writing ({exc}); nothing unfinished was "
            "marked done: free space (or choose another --output) and rerun the same command to resume")
