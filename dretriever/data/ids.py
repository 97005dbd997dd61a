"""The one check every identifier passes where it enters (corpus, queries, qrels, sources, negatives, teacher
files, embedding imports): an id is written as one token of a TREC run, a line of a ``docid`` file and a column
of a qrels file, so an empty id or one holding whitespace (a space, a tab, a newline, or any other Unicode
whitespace) would silently corrupt those files. It is refused at read time, with ``file:line`` and the id.
"""

from __future__ import annotations

from ..errors import DataError


def bad_id_reason(value: str) -> str | None:
    """Why ``value`` cannot be an id (``"is empty"``, ``"holds whitespace (...)"``), or None when it can."""
    if value == "":
        return "is empty"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"holds a lone surrogate ({value[e.start]!r}), which is not valid Unicode"
    for ch in value:
        if ch.isspace():
            return f"holds whitespace ({ch!r}); ids must be one token (they are written to TREC runs and docid files)"
    return None


def check_id(value, path, line: int | None, what: str = "id") -> str:
    """``value`` as an id string (integers are accepted and written in decimal), or a DataError naming the line.

    ``what`` names the id in the message (``"document id"``, ``"'qid'"``)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(path, f"{what} must be a string, got {value!r}"[:300], line)
    value = str(value)
    reason = bad_id_reason(value)
    if reason:
        raise DataError(path, f"{what} {value[:200]!r} {reason}", line)
    return value
