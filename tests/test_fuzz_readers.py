"""Property-based tests of every reader (hypothesis): for arbitrary bytes, and for arbitrary JSON values in each
field of an otherwise valid record, a reader returns records or raises :class:`DataError` naming the file (and
the line, where one is at fault); never another exception. ``pytest --slow`` (or DRETRIEVER_FUZZ_EXAMPLES=N)
runs more examples; ``DRETRIEVER_FUZZ_REPORT=FILE`` writes the examples tried per reader (eval/reliability.py).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dretriever.data.beir import load_beir, load_corpus, load_qrels, load_queries
from dretriever.data.embeddings import EmbeddingReader
from dretriever.data.negatives import read_negatives
from dretriever.data.readers import read_records
from dretriever.errors import DataError
from dretriever.search.types import read_trec_run
from dretriever.teacher import read_teacher_scores

TRIED: Counter = Counter()  # examples per reader
REFUSED: Counter = Counter()  # of which ended in a DataError (the rest returned records)

# ---------------------------------------------------------------------------- strategies
TRICKY = st.sampled_from(["", " ", "a b", "a\tb", "a\nb", "\u00a0", "a\u2028b", "\ud800", "\ufeff", "x" * 300,
                          "0", "-1", "1.5", "NaN", "null", "\x00", "é", "🙂"])
TEXT = st.text(max_size=20) | TRICKY
SCALAR = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-10 ** 30, max_value=10 ** 30)
          | st.floats() | TEXT)
JSON = st.recursive(SCALAR, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
                    max_leaves=8)
NEWLINE = st.sampled_from([b"\n", b"\r\n", b"\r", b""])


def record_lines(template: dict) -> st.SearchStrategy[bytes]:
    """One JSON line: the template, with any of its fields replaced by an arbitrary value or dropped."""
    keys = list(template)

    @st.composite
    def one(draw):
        obj = dict(template)
        for key in draw(st.lists(st.sampled_from(keys), max_size=len(keys), unique=True)):
            if draw(st.booleans()):
                obj[key] = draw(JSON)
            else:
                del obj[key]
        if draw(st.integers(0, 9)) == 0:
            obj[draw(TEXT)] = draw(JSON)
        return json.dumps(obj).encode("utf-8", "surrogatepass") if draw(st.booleans()) else \
            json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass")

    return one()


def file_bytes(line: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Lines from ``line``, valid-looking JSON values, raw bytes and blank lines, joined by assorted newlines,
    sometimes after a BOM."""
    any_line = line | st.binary(max_size=40) | JSON.map(lambda v: json.dumps(v).encode()) | st.just(b"")

    @st.composite
    def whole(draw):
        lines = draw(st.lists(any_line, min_size=0, max_size=6))
        out = b"".join(piece + draw(NEWLINE) for piece in lines)
        return (b"\xef\xbb\xbf" if draw(st.integers(0, 5)) == 0 else b"") + out

    return whole() | st.binary(max_size=200)


def check(reader_name: str, path: Path | tuple, call):
    """Run ``call()``; a DataError must name ``path`` (one of them, or a file under it) and a line inside it."""
    TRIED[reader_name] += 1
    try:
        return call()
    except DataError as e:
        REFUSED[reader_name] += 1
        assert any(e.path.startswith(str(p)) for p in (path if isinstance(path, tuple) else (path,))), str(e)
        assert str(e).startswith(e.path)
        if e.line is not None and Path(e.path).is_file() and Path(e.path).suffix not in (".parquet", ".npy"):
            assert 1 <= e.line <= Path(e.path).read_bytes().count(b"\n") + 1, str(e)
        return None


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    yield
    out = os.environ.get("DRETRIEVER_FUZZ_REPORT")
    if out:
        Path(out).write_text(json.dumps({k: {"examples": n, "data_errors": REFUSED[k], "unexpected": 0}
                                         for k, n in sorted(TRIED.items())}, indent=1) + "\n")


def write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------------------- BEIR
@given(file_bytes(record_lines({"_id": "d1", "title": "t", "text": "x"})))
def test_beir_corpus(fuzz_dir, data):
    path = write(fuzz_dir, "corpus.jsonl", data)
    check("beir corpus", path, lambda: load_corpus(path))


@given(file_bytes(record_lines({"_id": "q1", "text": "x"})))
def test_beir_queries(fuzz_dir, data):
    path = write(fuzz_dir, "queries.jsonl", data)
    check("beir queries", path, lambda: load_queries(path))


QRELS_LINE = st.lists(TEXT | st.integers().map(str), min_size=0, max_size=5).map(
    lambda cols: "\t".join(cols).encode("utf-8", "surrogatepass"))


@given(file_bytes(QRELS_LINE | st.sampled_from([b"query-id\tcorpus-id\tscore", b"q1\td1\t1", b"1\t0\t2",
                                                 b"q1 0 d1 1", b"q1\td9\t1", b"q9\td1\t1"])))
def test_beir_qrels_and_dataset(fuzz_dir, data):
    root = fuzz_dir / "beir"
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_text('{"_id": "d1", "text": "x"}\n{"_id": "0", "text": "y"}\n')
    (root / "queries.jsonl").write_text('{"_id": "q1", "text": "x"}\n{"_id": "1", "text": "y"}\n')
    path = write(root / "qrels", "test.tsv", data)
    check("beir qrels", path, lambda: load_qrels(path))
    check("beir dataset (qrels)", root, lambda: load_beir(root))


# ---------------------------------------------------------------------------- datastore sources
@given(file_bytes(record_lines({"_id": "d1", "title": "t", "text": "x", "url": "u"})))
def test_source_jsonl(fuzz_dir, data):
    path = write(fuzz_dir, "source.jsonl", data)
    check("source jsonl", path, lambda: list(read_records(path)))


COLUMN_VALUES = st.one_of(st.lists(st.none() | st.text(max_size=8) | TRICKY, min_size=1, max_size=4),
                          st.lists(st.none() | st.integers(-2 ** 63, 2 ** 63 - 1), min_size=1, max_size=4),
                          st.lists(st.none() | st.floats(), min_size=1, max_size=4),
                          st.lists(st.none() | st.binary(max_size=8), min_size=1, max_size=4),
                          st.lists(st.none() | st.lists(st.integers(-5, 5), max_size=3), min_size=1, max_size=4),
                          st.lists(st.booleans(), min_size=1, max_size=4))


VALID_COLUMNS = {"_id": ["d1", "d2", "d3", "d4"], "id": ["a", "b", "c", "d"], "text": ["x", "y", "z", "w"],
                 "title": ["t", None, "u", ""], "extra": [1, 2, 3, 4],
                 "vector": [[0.5, 1.0], [1.0, 0.0], [0.0, 1.0], [0.25, 0.25]]}


@st.composite
def tables(draw, names):
    """A table with some of ``names`` as columns, each either valid (most often) or of arbitrary values."""
    import pyarrow as pa

    n = draw(st.integers(0, 4))
    columns = {}
    for name in draw(st.lists(st.sampled_from(names), unique=True, min_size=len(names) - 2, max_size=len(names))):
        values = VALID_COLUMNS[name][:n] if draw(st.integers(0, 2)) else (draw(COLUMN_VALUES) * 4)[:n]
        try:
            columns[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, UnicodeEncodeError):
            columns[name] = pa.array([None] * n)
    return pa.table(columns) if columns else pa.table({"other": pa.array([1] * n)})


@given(tables(["_id", "id", "text", "title", "extra"]) | st.binary(max_size=100))
def test_source_parquet(fuzz_dir, table):
    import pyarrow.parquet as pq

    path = fuzz_dir / "source.parquet"
    if isinstance(table, bytes):
        path.write_bytes(table)
    else:
        pq.write_table(table, path)
    check("source parquet", path, lambda: list(read_records(path)))


FILE_NAME = st.text(st.characters(blacklist_characters="/\x00"), min_size=1, max_size=10) | TRICKY.filter(
    lambda s: s and "/" not in s and "\x00" not in s) | st.just("caf\udce9")  # b"caf\xe9": Latin-1 on disk


@given(st.lists(st.tuples(FILE_NAME, st.sampled_from([".txt", ".md", ".bin"]), st.binary(max_size=60)
                          | TEXT.map(lambda t: t.encode("utf-8", "surrogatepass"))), min_size=1, max_size=4))
def test_source_text_folder(fuzz_dir, files):
    import shutil

    folder = fuzz_dir / "texts"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    for name, suffix, data in files:
        # a str name as UTF-8 (a lone surrogate as its surrogateescape byte: names that are not UTF-8 on disk)
        raw = os.fsencode(folder) + b"/" + name.encode("utf-8", "surrogateescape" if "\ud800" not in name
                                                       else "surrogatepass") + suffix.encode()
        try:
            with open(raw, "wb") as f:
                f.write(data)
        except OSError:  # a name the filesystem refuses (too long): not the reader's input
            pass
    check("source text folder", folder, lambda: list(read_records(folder)))


# ---------------------------------------------------------------------------- training inputs
@given(file_bytes(record_lines({"qid": "q1", "negatives": ["d1", "d2"], "scores": [1.0, 0.5]})
                  | record_lines({"_meta": {"index": "i"}})))
def test_negatives(fuzz_dir, data):
    path = write(fuzz_dir, "negatives.jsonl", data)
    check("negatives", path, lambda: read_negatives(path))


@given(file_bytes(record_lines({"qid": "q1", "docids": ["d1", "d2"], "scores": [1.0, 0.5]})))
def test_teacher_scores(fuzz_dir, data):
    path = write(fuzz_dir, "teacher.jsonl", data)
    check("teacher scores", path, lambda: read_teacher_scores(path))


# ---------------------------------------------------------------------------- embedding imports
@given(file_bytes(record_lines({"id": "d1", "contents": "x", "vector": [0.1, 0.2]})))
def test_embeddings_jsonl(fuzz_dir, data):
    path = write(fuzz_dir, "vectors.jsonl", data)
    check("embeddings jsonl", path, lambda: [b for b in EmbeddingReader(path).batches()])


@given(file_bytes(TEXT.map(lambda t: t.encode("utf-8", "surrogatepass"))), st.integers(1, 4))
def test_embeddings_npy_ids(fuzz_dir, data, rows):
    np.save(fuzz_dir / "vectors.npy", np.ones((rows, 2), dtype=np.float32))
    ids = write(fuzz_dir, "ids.txt", data)
    check("embeddings npy ids", (ids, fuzz_dir / "vectors.npy"), lambda: [b for b in EmbeddingReader(fuzz_dir / "vectors.npy", ids=ids).batches()])


@st.composite
def npy_bytes(draw):
    """A saved array of some shape and dtype, sometimes cut short or with a byte changed; or raw bytes."""
    import io

    shape = tuple(draw(st.lists(st.integers(0, 3), min_size=0, max_size=3)))
    dtype = draw(st.sampled_from(["float32", "float16", "float64", "int32", "bool", "U3", "complex64"]))
    buf = io.BytesIO()
    np.save(buf, np.ones(shape, dtype=dtype))
    data = bytearray(buf.getvalue())
    if data and draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data) - 1))]
    if data and draw(st.booleans()):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


@given(npy_bytes() | st.binary(max_size=300))
def test_embeddings_npy_bytes(fuzz_dir, data):
    path = write(fuzz_dir, "raw.npy", data)
    ids = write(fuzz_dir, "raw-ids.txt", b"a\nb\n")
    check("embeddings npy file", (path, ids), lambda: [b for b in EmbeddingReader(path, ids=ids).batches()])


@given(tables(["id", "vector", "text", "title"]) | st.binary(max_size=100))
def test_embeddings_parquet(fuzz_dir, table):
    import pyarrow.parquet as pq

    path = fuzz_dir / "vectors.parquet"
    if isinstance(table, bytes):
        path.write_bytes(table)
    else:
        pq.write_table(table, path)
    check("embeddings parquet", path, lambda: [b for b in EmbeddingReader(path).batches()])


# ---------------------------------------------------------------------------- runs
RUN_LINE = st.lists(TEXT | st.sampled_from(["q1", "Q0", "d1", "1", "0.5", "tag", "nan", "inf", "1e999"]),
                    max_size=7).map(lambda cols: " ".join(cols).encode("utf-8", "surrogatepass"))


@given(file_bytes(RUN_LINE | st.just(b"q1 Q0 d1 1 0.5 tag")))
def test_trec_run(fuzz_dir, data):
    path = write(fuzz_dir, "run.trec", data)
    check("trec run", path, lambda: read_trec_run(path))
