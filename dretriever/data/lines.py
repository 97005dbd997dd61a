"""Line-by-line reading of text inputs, decoded strictly one line at a time.

Every reader of a line-based file (JSON lines, qrels, id lists) goes through :func:`read_lines`, so that
every one reports bad bytes the same way: ``file:line: not valid UTF-8 (byte offset N in the file)``. A
UTF-8 byte-order mark at the start of the file is accepted and dropped (other tools write one and read it).
Lines end at ``\\n`` only; a ``\\r`` before it (CRLF files) is dropped too. A file whose name ends in ``.gz``
is read through gzip, with the same line numbers (byte offsets then count in the uncompressed data), and
corrupt or truncated gzip data is reported at the line where it was hit.
"""

from __future__ import annotations

import codecs
import gzip
import zlib
from pathlib import Path
from typing import Iterator

from ..errors import DataError


def decode_line(raw: bytes, path, number: int, offset: int, data: str = "the file") -> str:
    """``raw`` as text, or a DataError giving the first bad byte's offset in ``data`` (``offset``: the line's)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(path, f"not valid UTF-8 (byte offset {offset + e.start} in {data})", number) from None


def is_gzip(path: str | Path) -> bool:
    return str(path).endswith(".gz")


def or_gzip(path: str | Path) -> Path:
    """``path``, or ``path.gz`` where only that one exists (``corpus.jsonl`` read from ``corpus.jsonl.gz``)."""
    path = Path(path)
    packed = path.with_name(path.name + ".gz")
    return packed if not path.exists() and not is_gzip(path) and packed.is_file() else path


def read_lines(path: str | Path, missing: str = "file not found") -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for every line (blank ones too), without the line ending."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, missing)
    packed = is_gzip(path)
    data = "the uncompressed data" if packed else "the file"
    offset = number = 0
    with (gzip.open(path, "rb") if packed else path.open("rb")) as f:
        while True:
            try:
                raw = f.readline()
            except (OSError, EOFError, zlib.error) as e:  # gzip: corrupt, truncated, or not gzip at all
                raise DataError(path, f"unreadable {'gzip data' if packed else 'file'} ({e})", number + 1) from None
            if not raw:
                return
            number += 1
            start = offset
            offset += len(raw)
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw, start = raw[len(codecs.BOM_UTF8):], start + len(codecs.BOM_UTF8)
            if raw.endswith(b"\n"):
                raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
            yield number, decode_line(raw, path, number, start, data)


def check_encodable(value: str, path, number: int | None, what: str) -> str:
    """``value`` if it can be written as UTF-8; JSON's ``\\ud800`` escapes decode to lone surrogates that can
    not (SQLite, the ``docid`` file and the tokenizer would fail on them far from the input)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DataError(path, f"{what} holds a lone surrogate ({value[e.start]!r} at character {e.start}), "
                        "which is not valid Unicode", number) from None
    return value
