"""Streaming readers for raw-text sources: JSONL files, Parquet files and folders of plain-text files.

Each reader yields :class:`Record` s one at a time (memory stays bounded however large the source) and
reports bad input as ``file:line`` (JSONL line, Parquet row, or the text file itself):

- JSONL: one object per line; the id is ``id_field`` (default ``_id``, else ``id``), the text
  ``text_field`` (default ``text``), the title ``title_field`` (default ``title``, optional); every
  other key goes into the metadata. A BEIR dataset folder (holding ``corpus.jsonl``) reads as JSONL.
  ``.jsonl.gz`` (and a folder's ``corpus.jsonl.gz``) read the same through gzip, with the same line numbers.
- Parquet: the same fields as columns, read in record batches.
- A folder of text files (``*.txt``, ``*.md``, recursively, in sorted order): the id is the path
  relative to the folder without its suffix, the text the file's UTF-8 content.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ..errors import DataError
from .ids import check_id
from .jsonl import read_jsonl, required_id
from .lines import or_gzip

log = logging.getLogger(__name__)

FORMATS = ("auto", "jsonl", "parquet", "text")
TEXT_SUFFIXES = (".txt", ".md")


@dataclass
class Fields:
    """Which keys (JSONL) or columns (Parquet) hold a record's id, title and text."""

    id_field: str | None = None  # None: "_id" if present, else "id"
    text_field: str = "text"
    title_field: str = "title"


@dataclass
class Record:
    id: str
    title: str
    text: str
    metadata: dict = field(default_factory=dict)
    where: str = ""  # "file:line" of the record, for error messages


def source_format(path: str | Path, fmt: str = "auto") -> tuple[str, Path]:
    """The format of ``path`` (``jsonl``, ``parquet`` or ``text``) and the file or folder to read."""
    path = Path(path)
    if fmt not in FORMATS:
        raise DataError(path, f"format must be one of {FORMATS}, got {fmt!r}")
    if not path.exists():
        raise DataError(path, "source not found")
    if fmt != "auto":
        return fmt, path
    if path.is_dir():
        corpus = or_gzip(path / "corpus.jsonl")
        return ("jsonl", corpus) if corpus.is_file() else ("text", path)
    if path.suffix in (".jsonl", ".json") or path.name.endswith((".jsonl.gz", ".json.gz")):
        return "jsonl", path
    if path.suffix in (".parquet", ".pq"):
        return "parquet", path
    raise DataError(path, "cannot tell the format from the name (.jsonl, .jsonl.gz, .parquet or a folder); "
                        "pass --format")


def describe(path: str | Path, fmt: str = "auto") -> dict:
    """What a build records about a source, so that a resumed build can refuse a changed one."""
    fmt, path = source_format(path, fmt)
    files = text_files(path) if fmt == "text" else [path]
    return {"path": str(path.resolve()), "format": fmt, "files": len(files),
            "bytes": sum(f.stat().st_size for f in files)}


def read_records(path: str | Path, fmt: str = "auto", fields: Fields | None = None) -> Iterator[Record]:
    """Stream the records of one source."""
    fmt, path = source_format(path, fmt)
    fields = fields or Fields()
    if fmt == "jsonl":
        return read_jsonl_records(path, fields)
    if fmt == "parquet":
        return read_parquet_records(path, fields)
    return read_text_dir(path)


def _record(obj: dict, fields: Fields, path: Path, line: int, unit: str = "line") -> Record:
    key = fields.id_field or ("_id" if "_id" in obj or "id" not in obj else "id")
    where = f"row {line}: " if unit == "row" else ""
    if key not in obj or obj[key] is None:
        raise DataError(path, f"{where}missing '{key}'", line)
    doc_id = required_id(obj, path, line, key=key)
    text = obj.get(fields.text_field)
    title = obj.get(fields.title_field)
    if text is None:
        raise DataError(path, f"{where}missing '{fields.text_field}' (text_field names the key holding the text)",
                        line)
    if not isinstance(text, str):
        raise DataError(path, f"{where}'{fields.text_field}' must be a string, got {type(text).__name__}", line)
    if title is not None and not isinstance(title, str):
        raise DataError(path, f"{where}'{fields.title_field}' must be a string, got {type(title).__name__}", line)
    meta = {k: v for k, v in obj.items() if k not in (key, fields.text_field, fields.title_field)}
    return Record(doc_id, title or "", text, meta, f"{path}:{line}")


def read_jsonl_records(path: Path, fields: Fields) -> Iterator[Record]:
    for line, obj in read_jsonl(path):
        yield _record(obj, fields, path, line)


def read_parquet_records(path: Path, fields: Fields, batch_rows: int = 4096) -> Iterator[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        reader = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(path, f"not a readable Parquet file ({e})") from None
    columns = reader.schema_arrow.names
    wanted = [fields.text_field] + ([fields.id_field] if fields.id_field else [])
    missing = [c for c in wanted if c not in columns]
    if not fields.id_field and "_id" not in columns and "id" not in columns:
        missing.append("_id or id")
    if missing:
        raise DataError(path, f"missing column(s) {missing}; columns are {columns}")
    row = 0
    for batch in reader.iter_batches(batch_size=batch_rows):
        for obj in batch.to_pylist():
            row += 1
            yield _record(obj, fields, path, row, unit="row")


def text_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
    if not files:
        raise DataError(folder, f"no text files ({', '.join(TEXT_SUFFIXES)}) in this folder")
    return files


def read_text_dir(folder: Path) -> Iterator[Record]:
    empty = 0
    for path in text_files(folder):
        text = read_text_file(path)
        if not text.strip():
            empty += 1
            continue
        rel = path.relative_to(folder)
        doc_id = check_id(os.path.splitext(rel.as_posix())[0], path, None, "document id (the file's path)")
        yield Record(doc_id, "", text, {"file": rel.as_posix()}, f"{path}:1")
    if empty:
        log.warning("%s: skipped %d empty text file(s)", folder, empty)


def read_text_file(path: Path) -> str:
    """A text file's content (a leading BOM dropped); bad bytes raise ``file:line: not valid UTF-8 (...)``."""
    data = path.read_bytes()
    start = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError as e:
        bad = start + e.start
        raise DataError(path, f"not valid UTF-8 (byte offset {bad} in the file)", data.count(b"\n", 0, bad) + 1) \
            from None
