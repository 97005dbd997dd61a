"""Strict JSON-lines reading: every bad line is reported as ``file:line``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from ..errors import DataError


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-blank line; raise :class:`DataError` on bad JSON."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(path, f"malformed JSON ({e.msg} at column {e.colno})", number) from None
            if not isinstance(obj, dict):
                raise DataError(path, f"expected a JSON object, got {type(obj).__name__}", number)
            yield number, obj


def required_id(obj: dict, path: Path, line: int, key: str = "_id") -> str:
    """The record's id as a non-empty string, or a DataError naming the line."""
    if key not in obj:
        raise DataError(path, f"missing '{key}'", line)
    value = obj[key]
    if not isinstance(value, (str, int)) or isinstance(value, bool) or str(value).strip() == "":
        raise DataError(path, f"'{key}' must be a non-empty string, got {value!r}", line)
    return str(value)
