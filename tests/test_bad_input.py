"""Bad identifiers and bad bytes, as a new user meets them: small BEIR-layout datasets made by hand, fed to
``dretriever eval beir --systems bm25``. Each is refused at read time with ``file:line``, the id shown and
exit status 2 (an id holding whitespace used to break trec_eval's run reader with a pandas traceback, an
invalid byte gave a UnicodeDecodeError traceback); a leading byte-order mark is accepted."""

import gzip
import json
import subprocess
import sys

import pytest

from dretriever.cli import main as cli_main
from dretriever.data.beir import load_beir
from dretriever.data.embeddings import EmbeddingReader
from dretriever.data.negatives import read_negatives
from dretriever.data.readers import read_records
from dretriever.errors import DataError
from dretriever.teacher import read_teacher_scores

CLI = [sys.executable, "-m", "dretriever"]

DOCS = [("d1", "Aspirin reduces the risk of heart attack."), ("d2", "Statins lower cholesterol in adults."),
        ("d3", "Vitamin D and bone density in the elderly."), ("d4", "Exercise improves sleep quality.")]
QUERIES = [("q1", "aspirin heart attack"), ("q2", "statins cholesterol")]
QRELS = [("q1", "d1", 1), ("q2", "d2", 1)]


def corpus_bytes(docs=DOCS) -> bytes:
    return "".join(json.dumps({"_id": i, "title": "", "text": t}) + "\n" for i, t in docs).encode()


def make_dataset(root, corpus: bytes | None = None, queries: bytes | None = None, qrels: bytes | None = None):
    root.mkdir(parents=True, exist_ok=True)
    (root / "qrels").mkdir(exist_ok=True)
    (root / "corpus.jsonl").write_bytes(corpus_bytes() if corpus is None else corpus)
    (root / "queries.jsonl").write_bytes(queries if queries is not None else
                                         "".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in QUERIES).encode())
    (root / "qrels" / "test.tsv").write_bytes(qrels if qrels is not None else
                                              ("query-id\tcorpus-id\tscore\n" + "".join(
                                                  f"{q}\t{d}\t{r}\n" for q, d, r in QRELS)).encode())
    return root


def eval_args(data, tmp_path):
    return ["eval", "beir", "--data", str(data), "--systems", "bm25", "--index_root", str(tmp_path / "indexes"),
            "--output_dir", str(tmp_path / "report")]


def with_id(doc_id) -> bytes:
    docs = list(DOCS)
    docs[2] = (doc_id, docs[2][1])
    return corpus_bytes(docs)


def test_space_in_a_corpus_id_exits_2_naming_file_line_and_id(tmp_path):
    data = make_dataset(tmp_path / "ds", corpus=with_id("4983 x"))
    done = subprocess.run(CLI + eval_args(data, tmp_path), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"error: {data / 'corpus.jsonl'}:3: '_id' '4983 x' holds whitespace (' ')" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "report" / "report.json").exists()


def test_invalid_utf8_exits_2_with_the_byte_offset(tmp_path):
    good = corpus_bytes()
    bad = good.replace(b"Statins", b"Stat\xc3\x28ins")  # \xc3 followed by '(' is not UTF-8
    data = make_dataset(tmp_path / "ds", corpus=bad)
    done = subprocess.run(CLI + eval_args(data, tmp_path), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    offset = bad.index(b"\xc3")
    assert f"error: {data / 'corpus.jsonl'}:2: not valid UTF-8 (byte offset {offset} in the file)" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_leading_byte_order_mark_is_accepted(tmp_path):
    data = make_dataset(tmp_path / "ds", corpus=b"\xef\xbb\xbf" + corpus_bytes(),
                        queries=b"\xef\xbb\xbf" + "".join(json.dumps({"_id": q, "text": t}) + "\n"
                                                          for q, t in QUERIES).encode(),
                        qrels=b"\xef\xbb\xbfquery-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\n")
    ds = load_beir(data)
    assert sorted(ds.corpus) == ["d1", "d2", "d3", "d4"] and ds.qrels == {"q1": {"d1": 1}, "q2": {"d2": 1}}
    done = subprocess.run(CLI + eval_args(data, tmp_path), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    row = json.loads((tmp_path / "report" / "report.json").read_text())["rows"][0]
    # each query's one judged document is the only one sharing its words: BM25 ranks it first
    assert row["system"] == "bm25" and row["ndcg_cut_10"] == pytest.approx(1.0)


@pytest.mark.parametrize("where, doc_id, shown", [
    ("corpus", "a\tb", r"'_id' 'a\tb' holds whitespace ('\t')"),
    ("corpus", "a\nb", r"'_id' 'a\nb' holds whitespace ('\n')"),
    ("corpus", "a\u00a0b", "'_id' 'a\\xa0b' holds whitespace ('\\xa0')"),
    ("corpus", "a\u2028b", "'_id' 'a\\u2028b' holds whitespace ('\\u2028')"),
    ("corpus", "", "'_id' '' is empty"),
    ("queries", "q 1", "'_id' 'q 1' holds whitespace (' ')"),
])
def test_bad_ids_through_the_cli(tmp_path, capsys, where, doc_id, shown):
    if where == "corpus":
        data = make_dataset(tmp_path / "ds", corpus=with_id(doc_id))
        line, name = 3, "corpus.jsonl"
    else:
        data = make_dataset(tmp_path / "ds", queries=(json.dumps({"_id": doc_id, "text": "x"}) + "\n").encode())
        line, name = 1, "queries.jsonl"
    assert cli_main(eval_args(data, tmp_path)) == 2
    err = capsys.readouterr().err
    assert f"dretriever eval beir: error: {data / name}:{line}: {shown}" in err, err


def test_a_gzipped_corpus_reports_a_bad_id_by_file_and_line(tmp_path, capsys):
    data = make_dataset(tmp_path / "ds", corpus=gzip.compress(with_id("a b")))
    (data / "corpus.jsonl").rename(data / "corpus.jsonl.gz")
    assert cli_main(eval_args(data, tmp_path)) == 2
    err = capsys.readouterr().err
    assert f"dretriever eval beir: error: {data / 'corpus.jsonl.gz'}:3: '_id' 'a b' holds whitespace (' ')" in err, err


def test_qrels_bad_bytes_and_bad_relevance(tmp_path, capsys):
    data = make_dataset(tmp_path / "ds", qrels=b"query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td\xff2\t1\n")
    assert cli_main(eval_args(data, tmp_path)) == 2
    assert f"{data / 'qrels' / 'test.tsv'}:3: not valid UTF-8 (byte offset 37 in the file)" in capsys.readouterr().err
    data = make_dataset(tmp_path / "ds2", qrels="q1\td1\t\u0663\n".encode())  # an Arabic-Indic 3: int() reads it
    assert cli_main(eval_args(data, tmp_path)) == 2
    assert "test.tsv:1: relevance must be an integer, got '\u0663'" in capsys.readouterr().err


def test_every_reader_refuses_a_bad_id(tmp_path):
    """The same check in the datastore sources, negatives, teacher files and embedding imports."""
    (tmp_path / "src.jsonl").write_text(json.dumps({"id": "a b", "text": "x"}) + "\n")
    with pytest.raises(DataError, match=r"src\.jsonl:1: 'id' 'a b' holds whitespace"):
        list(read_records(tmp_path / "src.jsonl"))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "my notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"my notes\.txt: document id \(the file's path\) 'my notes' holds"):
        list(read_records(tmp_path / "docs"))
    (tmp_path / "neg.jsonl").write_text(json.dumps({"qid": "q1", "negatives": ["d1", "d 2"]}) + "\n")
    with pytest.raises(DataError, match=r"neg\.jsonl:1: negative of query 'q1' 'd 2' holds whitespace"):
        read_negatives(tmp_path / "neg.jsonl")
    (tmp_path / "t.jsonl").write_text(json.dumps({"qid": "q1", "docids": ["d\t1"], "scores": [1.0]}) + "\n")
    with pytest.raises(DataError, match=r"t\.jsonl:1: docid of query 'q1' 'd\\t1' holds whitespace"):
        read_teacher_scores(tmp_path / "t.jsonl")
    (tmp_path / "v.jsonl").write_text(json.dumps({"id": "", "vector": [1.0, 2.0]}) + "\n")
    with pytest.raises(DataError, match=r"v\.jsonl:1: id '' is empty"):
        [b for b in EmbeddingReader(tmp_path / "v.jsonl").batches()]
    (tmp_path / "s.jsonl").write_text('{"_id": "\\ud83d", "text": "x"}\n')  # a lone surrogate: not writable
    with pytest.raises(DataError, match=r"s\.jsonl:1: a string holds a lone surrogate"):
        list(read_records(tmp_path / "s.jsonl"))
