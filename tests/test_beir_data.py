"""The strict BEIR reader: fatal errors name file and line; soft problems are counted and warned."""

import gzip
import json
import logging
import re

import pytest

from dretriever.data.beir import load_beir, load_corpus, load_qrels
from dretriever.data.readers import read_records
from dretriever.errors import DataError


def write_dataset(root, corpus_lines, queries=None, qrels="query-id\tcorpus-id\tscore\nq1\td1\t1\n"):
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_text("".join(l + "\n" for l in corpus_lines))
    queries = queries if queries is not None else [json.dumps({"_id": "q1", "text": "what is d1"})]
    (root / "queries.jsonl").write_text("".join(l + "\n" for l in queries))
    (root / "qrels" / "test.tsv").write_text(qrels)
    return root


def doc(i, text="some text", title="t"):
    return json.dumps({"_id": i, "title": title, "text": text})


def test_malformed_json_names_file_and_line(tmp_path):
    write_dataset(tmp_path, [doc("d1"), doc("d2"), '{"_id": "d3", "text": oops}'])
    with pytest.raises(DataError) as e:
        load_corpus(tmp_path / "corpus.jsonl")
    assert f"{tmp_path / 'corpus.jsonl'}:3:" in str(e.value)
    assert "malformed JSON" in str(e.value)


def test_duplicate_id_names_both_lines(tmp_path):
    write_dataset(tmp_path, [doc("d1"), doc("d2"), doc("d1")])
    with pytest.raises(DataError, match=r"corpus.jsonl:3: duplicate document id 'd1' \(first on line 1\)"):
        load_corpus(tmp_path / "corpus.jsonl")


def test_missing_id(tmp_path):
    write_dataset(tmp_path, [doc("d1"), json.dumps({"title": "x", "text": "y"})])
    with pytest.raises(DataError, match=r"corpus.jsonl:2: missing '_id'"):
        load_corpus(tmp_path / "corpus.jsonl")


def test_empty_corpus(tmp_path):
    write_dataset(tmp_path, [])
    with pytest.raises(DataError, match="corpus is empty"):
        load_corpus(tmp_path / "corpus.jsonl")


def test_queries_without_qrels_is_fatal(tmp_path):
    write_dataset(tmp_path, [doc("d1")], qrels="query-id\tcorpus-id\tscore\nq9\td1\t1\n")
    with pytest.raises(DataError, match=r"test.tsv: no judgments for any query"):
        load_beir(tmp_path)


def test_empty_text_and_unknown_ids_are_counted_and_warned(tmp_path, caplog):
    qrels = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\tnope\t1\nq7\td1\t1\n"
    write_dataset(tmp_path, [doc("d1"), doc("d2", text="", title="")], qrels=qrels)
    with caplog.at_level(logging.WARNING):
        ds = load_beir(tmp_path)
    assert ds.qrels == {"q1": {"d1": 1}}
    assert set(ds.queries) == {"q1"}
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "1 document(s) with empty text" in messages
    assert "dropped 1 judgment(s) naming unknown queries and 1 naming unknown documents" in messages


def test_bad_qrels_row(tmp_path):
    write_dataset(tmp_path, [doc("d1")], qrels="query-id\tcorpus-id\tscore\nq1\td1\tx\n")
    with pytest.raises(DataError, match=r"test.tsv:2: relevance must be an integer"):
        load_qrels(tmp_path / "qrels" / "test.tsv")


def gzip_file(path):
    """``path`` compressed to ``path.gz`` (the plain file removed)."""
    packed = path.with_name(path.name + ".gz")
    packed.write_bytes(gzip.compress(path.read_bytes()))
    path.unlink()
    return packed


def test_a_gzipped_beir_folder_loads_like_the_plain_one(tmp_path):
    lines = [doc("d1", "first"), "", doc("d2", "second", title=""), doc(3, "third")]
    plain = load_beir(write_dataset(tmp_path / "plain", lines))
    packed = write_dataset(tmp_path / "packed", lines)
    gzip_file(packed / "corpus.jsonl"), gzip_file(packed / "queries.jsonl")
    ds = load_beir(packed)
    assert (ds.corpus, ds.queries, ds.qrels) == (plain.corpus, plain.queries, plain.qrels)
    assert list(ds.corpus) == ["d1", "d2", "3"] and ds.corpus.path == str(packed / "corpus.jsonl.gz")
    # the datastore readers: a .jsonl.gz file and a folder holding corpus.jsonl.gz read like corpus.jsonl
    expected = [(r.id, r.title, r.text, r.where.rsplit(":", 1)[1]) for r in read_records(tmp_path / "plain")]
    assert expected == [("d1", "t", "first", "1"), ("d2", "", "second", "3"), ("3", "t", "third", "4")]
    for source in (packed, packed / "corpus.jsonl.gz"):
        got = [(r.id, r.title, r.text, r.where) for r in read_records(source)]
        assert got == [(i, t, x, f"{packed / 'corpus.jsonl.gz'}:{n}") for i, t, x, n in expected]


def test_a_bad_line_inside_a_gzip_file_names_file_and_line(tmp_path):
    write_dataset(tmp_path, [doc("d1"), doc("d2"), '{"_id": "d3", "text": oops}'])
    packed = gzip_file(tmp_path / "corpus.jsonl")
    where = re.escape(str(packed))
    with pytest.raises(DataError, match=rf"^{where}:3: malformed JSON \(Expecting value at column 23\)$"):
        load_beir(tmp_path)
    packed.write_bytes(gzip.compress(b'{"_id": "d1", "text": "a"}\n{"_id": "d\xff2", "text": "b"}\n'))
    with pytest.raises(DataError, match=rf"^{where}:2: not valid UTF-8 \(byte offset 37 in the uncompressed data\)$"):
        load_corpus(tmp_path / "corpus.jsonl")
    whole = gzip.compress(("".join(doc(f"d{i}") + "\n" for i in range(1, 2001))).encode())
    packed.write_bytes(whole[:len(whole) // 2])  # cut short: the lines before the cut are read, then an error
    with pytest.raises(DataError, match=rf"^{where}:\d+: unreadable gzip data \(Compressed file ended before"):
        load_corpus(packed)
    packed.write_bytes(b"not gzip at all\n")
    with pytest.raises(DataError, match=rf"^{where}:1: unreadable gzip data \(Not a gzipped file"):
        list(read_records(packed))


def test_scifact_loads_with_published_counts(scifact_dir):
    ds = load_beir(scifact_dir, split="test")
    assert len(ds.corpus) == 5183
    assert len(ds.queries) == 300
    assert sum(len(v) for v in ds.qrels.values()) == 339
