"""Strict streaming readers for precomputed embeddings, the inputs of ``dretriever index import``:

- ``npy``: a float (n, dim) NumPy array (read memory-mapped) plus an ids file, one id per line;
- ``parquet``: an id column and a vector column (list of floats), optionally text and title columns;
- ``jsonl``: Pyserini's encoded-corpus JSON lines: ``{"id": ..., "contents": ..., "vector": [...]}``.

Each yields batches of ``(ids, vectors, docs, first_row)`` with vectors as float32. Bad input is a
:class:`DataError` naming the file and row (JSONL: line): a wrong dimension, ids and vectors of
different lengths, a NaN or infinite value, an empty id or one with whitespace (it would corrupt the
``docid`` file and TREC runs). Duplicate ids are caught when the rows are staged (``index/build.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import DataError
from .beir import Document
from .ids import check_id
from .jsonl import read_jsonl
from .lines import read_lines

FORMATS = ("auto", "npy", "parquet", "jsonl")


@dataclass
class EmbeddingBatch:
    ids: list[str]
    vectors: np.ndarray  # float32 (len(ids), dim)
    docs: list[Document] | None
    first_row: int  # 1-based row (JSONL: line) of ids[0]
    lines: list[int] | None = None  # JSONL: the line of each row (blank lines are skipped)


def check_finite(vectors: np.ndarray, path, first_row: int, lines: list[int] | None = None) -> None:
    bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
    if len(bad):
        row = lines[bad[0]] if lines else first_row + int(bad[0])
        raise DataError(path, "the vector holds a NaN or infinite value", row)


class EmbeddingReader:
    """``EmbeddingReader(path, fmt, ...)``: ``dim``, ``describe()``, ``batches()`` and ``locate(id)``."""

    def __init__(self, path: str | Path, fmt: str = "auto", ids: str | Path | None = None, id_column: str = "id",
                 vector_column: str = "vector", text_column: str | None = None, title_column: str | None = None,
                 batch_rows: int = 65536):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(self.path, "file not found")
        self.fmt = fmt if fmt != "auto" else {".npy": "npy", ".parquet": "parquet", ".pq": "parquet",
                                               ".jsonl": "jsonl", ".json": "jsonl"}.get(self.path.suffix)
        if self.fmt not in FORMATS[1:]:
            raise DataError(self.path, f"cannot tell the format (expected one of {FORMATS[1:]}); pass --format")
        self.ids_path = Path(ids) if ids else None
        self.id_column, self.vector_column = id_column, vector_column
        self.text_column, self.title_column = text_column, title_column
        self.batch_rows = batch_rows
        self.dim = self._dim()

    def describe(self) -> dict:
        out = {"path": str(self.path.resolve()), "format": self.fmt, "bytes": self.path.stat().st_size,
               "dim": self.dim}
        if self.ids_path:
            out["ids"] = {"path": str(self.ids_path.resolve()), "bytes": self.ids_path.stat().st_size}
        return out

    # ------------------------------------------------------------------ formats
    def _dim(self) -> int:
        if self.fmt == "npy":
            if self.ids_path is None:
                raise DataError(self.path, "a .npy file needs its ids (--ids FILE, one id per line)")
            if not self.ids_path.is_file():
                raise DataError(self.ids_path, "file not found")
            arr = self._npy()
            return arr.shape[1]
        if self.fmt == "parquet":
            import pyarrow as pa

            schema = self._parquet().schema_arrow
            for col in (self.id_column, self.vector_column):
                if col not in schema.names:
                    raise DataError(self.path, f"missing column {col!r}; columns are {schema.names}")
            kind = schema.field(self.vector_column).type
            if not (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)) \
                    or not (pa.types.is_floating(kind.value_type) or pa.types.is_integer(kind.value_type)):
                raise DataError(self.path, f"column {self.vector_column!r} must hold lists of numbers, got {kind}")
            if isinstance(kind, pa.FixedSizeListType):
                return kind.list_size
            first = next(self._parquet().iter_batches(batch_size=1, columns=[self.vector_column]), None)
            if first is None or first.num_rows == 0:
                raise DataError(self.path, "the file holds no rows")
            value = first.column(0)[0].as_py()
            if value is None:
                raise DataError(self.path, f"row 1: {self.vector_column!r} is null", 1)
            return len(value)
        for line, obj in read_jsonl(self.path):
            vector = obj.get("vector")
            if not isinstance(vector, list) or not vector:
                raise DataError(self.path, "'vector' must be a non-empty list of numbers", line)
            return len(vector)
        raise DataError(self.path, "the file holds no rows")

    def _npy(self) -> np.ndarray:
        try:
            arr = np.load(self.path, mmap_mode="r")
        except Exception as e:  # noqa: BLE001 - numpy's header parser raises ValueError, EOFError, OSError,
            # SyntaxError, tokenize.TokenError... on a damaged file; each is the same "not a readable array"
            raise DataError(self.path, f"not a readable .npy array ({e})") from None
        if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
            raise DataError(self.path, f"expected a 2-D array of shape (n, dim), got shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.floating):
            raise DataError(self.path, f"expected float vectors, got dtype {arr.dtype}")
        return arr

    def _parquet(self):
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(self.path)
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(self.path, f"not a readable Parquet file ({e})") from None

    def batches(self) -> Iterator[EmbeddingBatch]:
        return {"npy": self._npy_batches, "parquet": self._parquet_batches, "jsonl": self._jsonl_batches}[self.fmt]()

    def _npy_batches(self) -> Iterator[EmbeddingBatch]:
        arr = self._npy()
        n = arr.shape[0]
        lines = read_lines(self.ids_path)
        row = 0
        while row < n:
            ids = []
            for _ in range(min(self.batch_rows, n - row)):
                number, line = next(lines, (None, None))
                if number is None:
                    raise DataError(self.ids_path, f"the ids file ends after {row + len(ids)} ids but "
                                    f"{self.path.name} holds {n} vectors")
                ids.append(check_id(line, self.ids_path, number))
            vectors = np.ascontiguousarray(arr[row:row + len(ids)], dtype=np.float32)
            check_finite(vectors, self.path, row + 1)
            yield EmbeddingBatch(ids, vectors, None, row + 1)
            row += len(ids)
        rest = sum(1 for _, line in lines if line.strip())
        if rest:
            raise DataError(self.ids_path, f"the ids file holds {n + rest} ids but {self.path.name} holds "
                            f"{n} vectors")

    def _parquet_batches(self) -> Iterator[EmbeddingBatch]:
        reader = self._parquet()
        names = reader.schema_arrow.names
        text = self.text_column or ("text" if "text" in names else None)
        title = self.title_column or ("title" if "title" in names else None)
        for col in (text, title):
            if col and col not in names:
                raise DataError(self.path, f"missing column {col!r}; columns are {names}")
        columns = [self.id_column, self.vector_column] + [c for c in (text, title) if c]
        row = 0
        for batch in reader.iter_batches(batch_size=self.batch_rows, columns=columns):
            ids_col = batch.column(self.id_column).to_pylist()
            ids = [check_id(v, self.path, row + j + 1) for j, v in enumerate(ids_col)]
            vcol = batch.column(self.vector_column)
            if vcol.null_count:
                j = next(j for j, v in enumerate(vcol.is_null().to_pylist()) if v)
                raise DataError(self.path, f"row {row + j + 1}: {self.vector_column!r} is null", row + j + 1)
            lengths = np.diff(np.asarray(vcol.offsets)) if hasattr(vcol, "offsets") else np.full(len(ids), self.dim)
            wrong = np.flatnonzero(lengths != self.dim)
            if len(wrong):
                j = int(wrong[0])
                raise DataError(self.path, f"row {row + j + 1}: the vector has {lengths[j]} values, "
                                f"expected {self.dim}", row + j + 1)
            values = np.asarray(vcol.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
            vectors = values.reshape(len(ids), self.dim)
            check_finite(vectors, self.path, row + 1)
            docs = None
            if text:
                texts = batch.column(text).to_pylist()
                titles = batch.column(title).to_pylist() if title else [None] * len(ids)
                docs = [Document(ti or "", te or "") for te, ti in zip(texts, titles)]
            yield EmbeddingBatch(ids, vectors, docs, row + 1)
            row += len(ids)

    def _jsonl_batches(self) -> Iterator[EmbeddingBatch]:
        ids, rows, docs, lines = [], [], [], []
        for line, obj in read_jsonl(self.path):
            ids.append(check_id(obj.get("id", obj.get("docid")), self.path, line))
            vector = obj.get("vector")
            if not isinstance(vector, list) or len(vector) != self.dim:
                got = len(vector) if isinstance(vector, list) else type(vector).__name__
                raise DataError(self.path, f"'vector' must be a list of {self.dim} numbers, got {got}", line)
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vector):
                raise DataError(self.path, "'vector' holds a value that is not a number", line)
            contents = obj.get("contents", "")
            if not isinstance(contents, str):
                raise DataError(self.path, f"'contents' must be a string, got {type(contents).__name__}", line)
            rows.append(vector)
            docs.append(Document("", contents))
            lines.append(line)
            if len(ids) == self.batch_rows:
                yield self._jsonl_batch(ids, rows, docs, lines)
                ids, rows, docs, lines = [], [], [], []
        if ids:
            yield self._jsonl_batch(ids, rows, docs, lines)

    def _jsonl_batch(self, ids, rows, docs, lines) -> EmbeddingBatch:
        vectors = np.asarray(rows, dtype=np.float32)
        check_finite(vectors, self.path, lines[0], lines)
        return EmbeddingBatch(ids, vectors, docs, lines[0], lines)

    def locate(self, docid: str) -> str | None:
        """Where ``docid`` first occurs (``file:row``); the error path of a duplicate id."""
        for batch in self.batches():
            if docid in batch.ids:
                j = batch.ids.index(docid)
                row = batch.lines[j] if batch.lines else batch.first_row + j
                return f"{self.ids_path or self.path}:{row}"
        return None
