"""Every Lucene build ends with every document given in the index, or fails naming the first one missing.

Anserini reads its input with Jackson, which refuses a JSON string over 20,000,000 characters and then stops
reading that file: a document of 20,000,001 characters (the smallest that is lost) used to take itself and its
neighbours out of the BM25 index while the build succeeded (a 60 MB line left 8 of 200 documents). Now the
text given to Lucene is cut at ``MAX_CHARS`` with a warning, and the count is checked after each build.
"""

import json
import logging

import pytest

from dretriever import pyserini_env
from dretriever.cli import main as cli_main
from dretriever.data.beir import load_corpus
from dretriever.encoder import BiEncoder
from dretriever.errors import DretrieverError
from dretriever.index import bm25
from dretriever.index.changes import add_documents, delete_documents
from dretriever.index.datastore import DatastoreArgs, build_datastore

HUGE = 20_000_001  # characters: one more than Jackson's StreamReadConstraints allow in a JSON string
DOCS = [("d1", "aspirin reduces heart attacks"), ("d2", "statins lower cholesterol"), ("d3", "x" * HUGE),
        ("d4", "vitamin d and bone density"), ("d5", "exercise improves sleep quality")]


def write_corpus(path, docs=DOCS):
    path.write_text("".join(json.dumps({"_id": i, "title": "", "text": t}) + "\n" for i, t in docs))
    return path


def lucene_docs(index_dir) -> dict[str, int]:
    """``{docid: length of its indexed contents}`` of every document in a Lucene index."""
    searcher = pyserini_env.lucene_searcher(str(index_dir))
    try:
        found = {}
        for i in range(searcher.num_docs):
            raw = json.loads(searcher.doc(i).raw())
            found[raw["id"]] = len(raw["contents"])
        return found
    finally:
        searcher.close()


@pytest.fixture
def fast_tokenizer(monkeypatch):
    """The encoder sees at most 1,000 characters of each passage (the tokenizer takes 20 s over 20 M): for the
    one-word 'x' passages here that is the same single [UNK] token (a word over 100 characters is [UNK])."""
    tokenize = BiEncoder.tokenize
    monkeypatch.setattr(BiEncoder, "tokenize", lambda self, texts, side, pad=True:
                        tokenize(self, [t[:1000] for t in texts], side, pad))


def test_beir_eval_bm25_indexes_every_document_and_warns_about_the_huge_one(tmp_path, caplog):
    data = tmp_path / "tiny"
    (data / "qrels").mkdir(parents=True)
    corpus = write_corpus(data / "corpus.jsonl")
    (data / "queries.jsonl").write_text(json.dumps({"_id": "q4", "text": "vitamin bone density"}) + "\n"
                                        + json.dumps({"_id": "q5", "text": "exercise sleep"}) + "\n")
    (data / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq4\td4\t1\nq5\td5\t1\n")
    with caplog.at_level(logging.WARNING, logger="dretriever.index.bm25"):
        assert cli_main(["eval", "beir", "--data", str(data), "--systems", "bm25", "--index_root",
                         str(tmp_path / "idx"), "--output_dir", str(tmp_path / "report")]) == 0
    assert [r.getMessage() for r in caplog.records] == [
        f"{corpus}:3: document 'd3': BM25 indexes the first 1000000 of its {HUGE} characters "
        "(index/bm25.py MAX_CHARS)"]
    assert lucene_docs(tmp_path / "idx" / "tiny.bm25-flat" / "lucene") == {
        "d1": 29, "d2": 25, "d3": bm25.MAX_CHARS, "d4": 26, "d5": 31}
    row = json.loads((tmp_path / "report" / "report.json").read_text())["rows"][0]
    assert row["system"] == "bm25" and row["ndcg_cut_10"] == pytest.approx(1.0)  # the documents after it count


def test_a_document_lucene_drops_fails_the_build_naming_it(tmp_path, monkeypatch):
    monkeypatch.setattr(bm25, "MAX_CHARS", 10 ** 9)  # no cut: Lucene gets the 20,000,001 characters and drops them
    corpus = load_corpus(write_corpus(tmp_path / "corpus.jsonl"))
    with pytest.raises(DretrieverError) as e:
        bm25.build_bm25_index(corpus, tmp_path / "bm25")
    assert str(e.value) == (f"Lucene indexed 1 of 5 documents and reported no error; the first missing is "
                            f"{tmp_path / 'corpus.jsonl'}:2: document 'd2'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.jsonl"]


def build(tiny_model, out, corpus, bm25_index=True):
    build_datastore(DatastoreArgs(sources=[str(corpus)], output=str(out), model=str(tiny_model), chunking="words",
                                  chunk_size=40, chunk_overlap=10, bm25=bm25_index, progress=False, precision="fp32",
                                  shards=1))


def test_datastore_build_bm25_and_the_delete_rebuild_keep_the_huge_passage(tmp_path, tiny_model, fast_tokenizer,
                                                                          caplog):
    out = tmp_path / "ds"
    with caplog.at_level(logging.WARNING, logger="dretriever.index.bm25"):
        build(tiny_model, out, write_corpus(tmp_path / "corpus.jsonl"))
    assert [r.getMessage() for r in caplog.records] == [
        f"document 'd3#0': BM25 indexes the first 1000000 of its {HUGE} characters (index/bm25.py MAX_CHARS)"]
    assert lucene_docs(out / "bm25" / "lucene") == {"d1#0": 29, "d2#0": 25, "d3#0": bm25.MAX_CHARS, "d4#0": 26,
                                                    "d5#0": 31}
    (tmp_path / "ids").write_text("d1\n")
    delete_documents(out, tmp_path / "ids")
    manifest = json.loads((out / "manifest.json").read_text())
    assert lucene_docs(out / manifest["bm25"] / "lucene") == {"d2#0": 25, "d3#0": bm25.MAX_CHARS, "d4#0": 26,
                                                              "d5#0": 31}


def test_datastore_add_rebuild_keeps_the_huge_passage(tmp_path, tiny_model, fast_tokenizer):
    out = tmp_path / "ds"
    build(tiny_model, out, write_corpus(tmp_path / "base.jsonl", DOCS[:2]))
    add_documents(out, [str(write_corpus(tmp_path / "added.jsonl", DOCS[2:]))], precision="fp32", progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert lucene_docs(out / manifest["bm25"] / "lucene") == {"d1#0": 29, "d2#0": 25, "d3#0": bm25.MAX_CHARS,
                                                              "d4#0": 26, "d5#0": 31}


def test_fewer_rows_than_expected_fail_the_build(tmp_path):
    rows = [("a", load_corpus(write_corpus(tmp_path / "c.jsonl", DOCS[:1]))["d1"])]
    with pytest.raises(DretrieverError, match=r"^BM25 index .*bm25: 1 rows were given, 2 expected$"):
        bm25.build_bm25_index(iter(rows), tmp_path / "bm25", stamp={"num_docs": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl"]
