"""Strict JSON-lines reading: every bad line is reported as ``file:line``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from ..errors import DataError
from .ids import check_id
from .lines import check_encodable, read_lines


def parse_json_line(text: str, path, number: int):
    """One line's JSON value, or a DataError: malformed JSON, an integer too long to convert, nesting too deep."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(path, f"malformed JSON ({e.msg} at column {e.colno})", number) from None
    except ValueError as e:  # e.g. an integer literal over Python's 4300-digit conversion limit
        raise DataError(path, f"malformed JSON ({e})", number) from None
    except RecursionError:
        raise DataError(path, "malformed JSON (nested too deeply)", number) from None
    if "\\ud" in text or "\\uD" in text:  # an escape that may decode to a lone surrogate: look (rare, so cheap)
        _check_strings(value, path, number)
    return value


def _check_strings(value, path, number: int) -> None:
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            check_encodable(v, path, number, "a string")
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-blank line (``.gz``: through gzip); raise :class:`DataError` on
    bad JSON or bytes."""
    path = Path(path)
    for number, line in read_lines(path):
        if not line.strip():
            continue
        obj = parse_json_line(line, path, number)
        if not isinstance(obj, dict):
            raise DataError(path, f"expected a JSON object, got {type(obj).__name__}", number)
        yield number, obj


def required_id(obj: dict, path: Path, line: int, key: str = "_id") -> str:
    """The record's id (a string or an integer, one non-empty token), or a DataError naming the line and id."""
    if key not in obj:
        raise DataError(path, f"missing '{key}'", line)
    return check_id(obj[key], path, line, what=f"'{key}'")
