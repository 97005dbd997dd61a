"""The strict BEIR reader: fatal errors name file and line; soft problems are counted and warned."""

import json
import logging

import pytest

from dretriever.data.beir import load_beir, load_corpus, load_qrels
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


def test_scifact_loads_with_published_counts(scifact_dir):
    ds = load_beir(scifact_dir, split="test")
    assert len(ds.corpus) == 5183
    assert len(ds.queries) == 300
    assert sum(len(v) for v in ds.qrels.values()) == 339
