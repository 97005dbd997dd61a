"""Datastore build: readers (JSONL, Parquet, text folders) with file:line errors, chunking, sharded
build from every source kind, IVF-PQ trained once across shards, and resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dretriever.cli import main as cli_main
from dretriever.data.readers import Fields, read_records
from dretriever.encoder import BiEncoder
from dretriever.errors import DataError, DretrieverError
from dretriever.index import manifest as mf
from dretriever.index.chunking import ChunkConfig, Chunker, parent_id
from dretriever.index.datastore import DatastoreArgs, build_datastore, shard_of
from dretriever.index.sharded import ShardedIndex

WORDS = ["--chunking", "words", "--chunk_size", "24", "--chunk_overlap", "6"]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_corpus(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.open()]


@pytest.fixture(scope="module")
def corpus120(scifact_small, tmp_path_factory) -> Path:
    """The first 120 SciFact documents: enough to split into a few thousand passages, quick to encode."""
    return write_jsonl(tmp_path_factory.mktemp("corpus120") / "corpus.jsonl",
                       read_corpus(scifact_small / "corpus.jsonl")[:120])


# ---------------------------------------------------------------- readers
def test_jsonl_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "c.jsonl"
    bad.write_text('{"_id": "a", "text": "x"}\n{"_id": "b", "text": 5}\n')
    with pytest.raises(DataError, match=r"c\.jsonl:2: 'text' must be a string"):
        list(read_records(bad))
    bad.write_text('{"_id": "a", "text": "x"}\n\n{"_id": "b", "body": "y"}\n')
    with pytest.raises(DataError, match=r"c\.jsonl:3: missing 'text'"):
        list(read_records(bad))
    bad.write_text('{"_id": "a", "text": "x"}\n{"_id": "b", "text": "y"\n')
    with pytest.raises(DataError, match=r"c\.jsonl:2: malformed JSON"):
        list(read_records(bad))
    bad.write_text('{"text": "x"}\n')
    with pytest.raises(DataError, match=r"c\.jsonl:1: missing '_id'"):
        list(read_records(bad))


def test_jsonl_fields_and_metadata(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"id": 7, "body": "some text", "heading": "H", "year": 2020}])
    (rec,) = read_records(path, fields=Fields(text_field="body", title_field="heading"))
    assert (rec.id, rec.title, rec.text, rec.metadata) == ("7", "H", "some text", {"year": 2020})
    assert rec.where == f"{path}:1"


def test_parquet_reader_and_errors(tmp_path):
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"_id": ["a", "b"], "title": ["A", None], "text": ["alpha beta", "gamma"]}), path)
    recs = list(read_records(path))
    assert [(r.id, r.title, r.text) for r in recs] == [("a", "A", "alpha beta"), ("b", "", "gamma")]
    pq.write_table(pa.table({"_id": ["a", "b"], "text": ["alpha", None]}), path)
    with pytest.raises(DataError, match=r"c\.parquet:2: row 2: missing 'text'"):
        list(read_records(path))
    pq.write_table(pa.table({"_id": ["a"], "body": ["alpha"]}), path)
    with pytest.raises(DataError, match=r"c\.parquet: missing column\(s\) \['text'\]"):
        list(read_records(path))


def test_text_folder_reader(tmp_path):
    (tmp_path / "docs" / "sub").mkdir(parents=True)
    (tmp_path / "docs" / "b.txt").write_text("second file")
    (tmp_path / "docs" / "sub" / "a.md").write_text("first\nfile")
    (tmp_path / "docs" / "empty.txt").write_text("  \n")
    (tmp_path / "docs" / "skip.bin").write_bytes(b"\x00\x01")
    recs = list(read_records(tmp_path / "docs"))
    assert [(r.id, r.text) for r in recs] == [("b", "second file"), ("sub/a", "first\nfile")]
    (tmp_path / "docs" / "c.txt").write_bytes(b"line one\nline \xff two\n")
    with pytest.raises(DataError, match=r"c\.txt:2: not valid UTF-8"):
        list(read_records(tmp_path / "docs"))
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match="no text files"):
        list(read_records(tmp_path / "nothing"))


# ---------------------------------------------------------------- chunking
def test_word_chunks_overlap_and_cover_the_text():
    text = " ".join(f"w{i}" for i in range(10))
    chunks = Chunker(ChunkConfig("words", 4, 1)).split(text)
    assert chunks == ["w0 w1 w2 w3", "w3 w4 w5 w6", "w6 w7 w8 w9"]
    assert Chunker(ChunkConfig("words", 4, 0)).split(text) == ["w0 w1 w2 w3", "w4 w5 w6 w7", "w8 w9"]
    assert Chunker(ChunkConfig("none", 4, 0)).split("  keep  as is ") == ["  keep  as is "]
    assert Chunker(ChunkConfig("words", 4, 1)).split("") == [""]
    with pytest.raises(DretrieverError, match="chunk_overlap"):
        ChunkConfig("words", 4, 4)
    with pytest.raises(DretrieverError, match="chunking"):
        ChunkConfig("sentences", 4, 1)


def test_token_chunks_are_substrings_with_bounded_token_counts(tiny_model):
    tok = BiEncoder.from_pretrained(tiny_model).tokenizer
    text = "Retrieval-augmented generation (RAG) grounds a language model in passages, e.g. from PubMed."
    chunks = Chunker(ChunkConfig("tokens", 8, 2), tok).split(text)
    assert len(chunks) > 2
    for chunk in chunks:
        assert chunk in text
        assert len(tok(chunk, add_special_tokens=False)["input_ids"]) <= 8
    assert text.startswith(chunks[0]) and text.endswith(chunks[-1])
    assert parent_id("doc#1#12") == "doc#1" and parent_id("plain") == "plain"


# ---------------------------------------------------------------- build
def build(tiny_model, out: Path, sources: list[str], *extra: str) -> int:
    return cli_main(["datastore", "build", "--sources", *sources, "--output", str(out), "--model", str(tiny_model),
                     "--shards", "3", "--progress", "false", *extra])


def shard_rows(root: Path) -> dict[str, tuple[int, str]]:
    """passage id -> (shard, text) over every shard, failing on a duplicate."""
    index = ShardedIndex.open(root)
    rows: dict[str, tuple[int, str]] = {}
    for s, shard in enumerate(index.shards):
        for pid, rec in shard.store.get_many(shard.docids).items():
            assert pid not in rows
            rows[pid] = (s, rec["text"])
        assert len(shard.docids) == len(set(shard.docids)) == len(shard.store)
    return rows


def test_datastore_from_jsonl_matches_chunking_and_sharding(tmp_path, tiny_model, corpus120):
    corpus = corpus120
    assert build(tiny_model, tmp_path / "ds", [str(corpus)], *WORDS) == 0
    rows = shard_rows(tmp_path / "ds")
    chunker = Chunker(ChunkConfig("words", 24, 6))
    expected = {}
    for doc in read_corpus(corpus):
        for j, text in enumerate(chunker.split(doc["text"])):
            expected[f"{doc['_id']}#{j}"] = (shard_of(doc["_id"], 3), text)
    assert rows == expected
    assert len(rows) > 2 * len(read_corpus(corpus))  # documents really were split
    manifest = mf.read_manifest(tmp_path / "ds")
    assert manifest["complete"] and manifest["source"]["chunking"] == {"mode": "words", "size": 24, "overlap": 6}


def test_jsonl_parquet_and_text_folder_give_identical_shards(tmp_path, tiny_model, scifact_small):
    docs = sorted(read_corpus(scifact_small / "corpus.jsonl")[:60], key=lambda d: d["_id"])  # a folder reads sorted
    for d in docs:
        d["title"] = ""  # a text folder has no titles
    write_jsonl(tmp_path / "c.jsonl", docs)
    pq.write_table(pa.table({k: [d[k] for d in docs] for k in ("_id", "title", "text")}), tmp_path / "c.parquet")
    (tmp_path / "txt").mkdir()
    for d in docs:
        (tmp_path / "txt" / f"{d['_id']}.txt").write_text(d["text"])
    sums = []
    for name, src in (("j", "c.jsonl"), ("p", "c.parquet"), ("t", "txt")):
        assert build(tiny_model, tmp_path / name, [str(tmp_path / src)], *WORDS) == 0
        sums.append([{f: e["sha256"][f] for f in ("index", "docid")}
                     for e in mf.read_manifest(tmp_path / name)["shards"]])
    assert sums[0] == sums[1] == sums[2]


def test_duplicate_document_id_names_both_lines(tmp_path, tiny_model):
    src = write_jsonl(tmp_path / "c.jsonl", [{"_id": "a", "text": "x"}, {"_id": "b", "text": "y"},
                                             {"_id": "a", "text": "z"}])
    with pytest.raises(DataError, match=r"c\.jsonl:3: duplicate document id 'a' \(first at .*c\.jsonl:1\)"):
        build_datastore(DatastoreArgs(sources=[str(src)], output=str(tmp_path / "ds"), model=str(tiny_model),
                                      shards=2, progress=False))
    assert not mf.read_manifest(tmp_path / "ds")["complete"]
    with pytest.raises(DretrieverError, match="incomplete"):
        ShardedIndex.open(tmp_path / "ds")


def test_cli_reports_bad_input_and_exits_2(tmp_path, tiny_model, capsys):
    src = tmp_path / "c.jsonl"
    src.write_text('{"_id": "a", "text": "x"}\n{"_id": "b"\n')
    assert build(tiny_model, tmp_path / "ds", [str(src)]) == 2
    assert f"{src}:2: malformed JSON" in capsys.readouterr().err
    assert build(tiny_model, tmp_path / "ds2", [str(tmp_path / "missing.jsonl")]) == 2
    assert build(tiny_model, tmp_path / "ds3", [str(src)], "--chunk_overlap", "500") == 2


def test_ivfpq_is_trained_once_on_a_sample_across_shards(tmp_path, tiny_model, corpus120):
    assert build(tiny_model, tmp_path / "ds", [str(corpus120)], *WORDS,
                 "--factory", "IVF4,PQ8x4", "--train_sample", "600") == 0
    manifest = mf.read_manifest(tmp_path / "ds")
    assert manifest["faiss"]["trained_index"] == "trained.index" and manifest["faiss"]["train_sample"] == 600
    index = ShardedIndex.open(tmp_path / "ds")
    centroids = [faiss.extract_index_ivf(s.index).quantizer.reconstruct_n(0, 4) for s in index.shards]
    assert all(np.array_equal(centroids[0], c) for c in centroids[1:])
    assert len(index) == sum(e["num_docs"] for e in manifest["shards"]) > 600


def test_kill_during_build_resumes_without_lost_or_duplicated_passages(tmp_path, tiny_model, corpus120):
    corpus = str(corpus120)
    args = ["--sources", corpus, "--model", str(tiny_model), "--shards", "4", "--chunking", "words",
            "--chunk_size", "16", "--chunk_overlap", "4", "--chunk_docs", "64", "--batch_size", "16",
            "--progress", "false"]
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "dretriever", "datastore", "build", *args, "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (out / mf.MANIFEST).is_file() and mf.read_manifest(out)["shards"][0]["state"] == "done":
            break
        time.sleep(0.01)
    assert proc.poll() is None, f"the build ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    before = mf.read_manifest(out)
    assert not before["complete"] and before["shards"][-1]["state"] == "staged"

    assert cli_main(["datastore", "build", *args, "--output", str(out)]) == 0
    after = mf.read_manifest(out)
    assert after["complete"]
    assert after["shards"][0]["finished_at"] == before["shards"][0]["finished_at"]  # done shard was skipped
    assert not [p for p in out.iterdir() if p.name.startswith(".shard-")]  # no stale temporary shard left

    chunker = Chunker(ChunkConfig("words", 16, 4))
    expected = {f"{d['_id']}#{j}": (shard_of(d["_id"], 4), text)
                for d in read_corpus(corpus120) for j, text in enumerate(chunker.split(d["text"]))}
    assert shard_rows(out) == expected  # every passage once, in its shard, vectors and ids aligned
