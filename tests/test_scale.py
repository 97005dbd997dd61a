"""Scale features of the index layer: one pass over the sources, resume inside a shard under random kill -9,
import of precomputed vectors (three formats and their bad inputs), mmap open, parallel shard search,
shared-quantizer search, exact re-ranking from kept vectors, merge into one Pyserini-loadable shard."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dretriever import pyserini_env
from dretriever.cli import main as cli_main
from dretriever.data.beir import load_corpus
from dretriever.encoder import BiEncoder
from dretriever.errors import DretrieverError
from dretriever.index import datastore as ds_module
from dretriever.index import manifest as mf
from dretriever.index.build import build_index, corpus_source
from dretriever.index.datastore import DatastoreArgs, build_datastore
from dretriever.index.docstore import DocStore
from dretriever.index.sharded import ShardedIndex
from dretriever.search.dense import DenseSearcher

from .conftest import assert_same_ranking
from .kill_harness import compare_with_clean, encode_runs_tile, encoded_passages, kill_at_progress, kill_when, timed_run

CLI = [sys.executable, "-m", "dretriever"]
DIM = 32


def run_cli(*args):
    return subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def built(scifact_small, tiny_model, tmp_path_factory):
    """The SciFact slice encoded by the tiny BERT into 3 Flat shards, full float32 vectors kept."""
    out = tmp_path_factory.mktemp("built") / "idx"
    corpus = load_corpus(scifact_small / "corpus.jsonl")
    build_index(corpus_source(corpus, 3, {"path": "slice"}), BiEncoder.from_pretrained(tiny_model), out,
                model=str(tiny_model), precision="fp32", progress=False, keep_vectors="float32")
    return out


def exported(root: Path) -> tuple[list[str], np.ndarray]:
    index = ShardedIndex.open(root)
    ids = [d for s in index.shards for d in s.docids]
    return ids, np.concatenate([np.asarray(s.vectors) for s in index.shards])


def queries(n=16, seed=0) -> np.ndarray:
    q = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def assert_same_results(a: ShardedIndex, b: ShardedIndex, k=20, atol=1e-5):
    q = queries()
    sa, ha = a.search(q, k)
    sb, hb = b.search(q, k)
    for row in range(len(q)):
        assert_same_ranking([a.docid(*h) for h in ha[row]], sa[row], [b.docid(*h) for h in hb[row]], sb[row], atol)


# ---------------------------------------------------------------- import
def write_inputs(tmp: Path, ids: list[str], vectors: np.ndarray, corpus) -> dict[str, list[str]]:
    np.save(tmp / "v.npy", vectors)
    (tmp / "ids.txt").write_text("".join(i + "\n" for i in ids))
    pq.write_table(pa.table({"id": ids, "vector": [v.tolist() for v in vectors],
                             "text": [corpus[i].text for i in ids]}), tmp / "v.parquet")
    with open(tmp / "v.jsonl", "w") as f:
        for i, v in zip(ids, vectors):
            f.write(json.dumps({"id": i, "contents": corpus[i].contents, "vector": v.tolist()}) + "\n")
    return {"npy": [tmp / "v.npy", "--ids", tmp / "ids.txt"], "parquet": [tmp / "v.parquet"],
            "jsonl": [tmp / "v.jsonl"]}


def test_import_of_each_format_searches_like_index_build(built, scifact_small, tiny_model, tmp_path):
    corpus = load_corpus(scifact_small / "corpus.jsonl")
    ids, vectors = exported(built)
    inputs = write_inputs(tmp_path, ids, vectors, corpus)
    reference = ShardedIndex.open(built)
    for fmt, args in inputs.items():
        out = tmp_path / f"imp-{fmt}"
        done = run_cli("index", "import", "--input", *args, "--output", out, "--shards", 2, "--model", tiny_model,
                       "--progress", "false")
        assert done.returncode == 0, done.stderr[-2000:]
        imported = ShardedIndex.open(out)
        assert len(imported) == len(ids) and mf.read_manifest(out)["encoder"] == reference.manifest["encoder"]
        assert_same_results(imported, reference)
        # text queries through the recorded encoder give the built index's run
        qs = {"q1": "cell biology of cancer", "q2": "vitamin D deficiency"}
        assert_run_equal(DenseSearcher.load(out, precision="fp32").search(qs, 10),
                         DenseSearcher.load(built, precision="fp32").search(qs, 10))
        if fmt != "npy":  # text came with the vectors: hits carry it
            docid = imported.docid(0, 0)
            assert imported.texts(0, [docid])[docid]["text"] in (corpus[docid].text, corpus[docid].contents)
    bare = tmp_path / "bare"
    assert run_cli("index", "import", "--input", *inputs["npy"], "--output", bare, "--shards", 2,
                   "--progress", "false").returncode == 0
    assert mf.read_manifest(bare)["encoder"] is None
    assert_same_results(ShardedIndex.open(bare), reference)
    with pytest.raises(DretrieverError, match="cannot encode text queries"):
        DenseSearcher.load(bare)


def assert_run_equal(a, b):
    for qid in b:
        assert_same_ranking([d for d, _ in a[qid]], [s for _, s in a[qid]], [d for d, _ in b[qid]],
                            [s for _, s in b[qid]], 1e-5)


def bad_npy(tmp, vectors, ids):
    np.save(tmp / "v.npy", vectors)
    (tmp / "ids.txt").write_text("".join(i + "\n" for i in ids))
    return [tmp / "v.npy", "--ids", tmp / "ids.txt"]


def bad_jsonl(tmp, rows):
    (tmp / "v.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return [tmp / "v.jsonl"]


V = np.eye(4, DIM, dtype=np.float32)


@pytest.mark.parametrize("case, message", [
    ("npy-short-ids", r"ids\.txt: the ids file ends after 3 ids but v\.npy holds 4 vectors"),
    ("npy-long-ids", r"ids\.txt: the ids file holds 5 ids but v\.npy holds 4 vectors"),
    ("npy-nan", r"v\.npy:3: the vector holds a NaN or infinite value"),
    ("npy-1d", r"v\.npy: expected a 2-D array of shape \(n, dim\), got shape \(32,\)"),
    ("npy-duplicate", r"ids\.txt:4: duplicate document id 'b' \(first at .*ids\.txt:2\)"),
    ("npy-space-id", r"ids\.txt:2: id 'b x' holds whitespace"),
    ("jsonl-dim", r"v\.jsonl:3: 'vector' must be a list of 32 numbers, got 31"),
    ("jsonl-nan", r"v\.jsonl:2: the vector holds a NaN or infinite value"),
    ("jsonl-duplicate", r"v\.jsonl:3: duplicate document id 'a' \(first at .*v\.jsonl:1\)"),
    ("parquet-dim", r"v\.parquet:2: row 2: the vector has 31 values, expected 32"),
    ("model-dim", r"the vectors have dimension 16 but the model .* gives 32"),
])
def test_import_refuses_bad_input_naming_file_and_row(tmp_path, tiny_model, case, message):
    rows = [{"id": i, "contents": "", "vector": V[j].tolist()} for j, i in enumerate("abcd")]
    extra = []
    if case == "npy-short-ids":
        args = bad_npy(tmp_path, V, ["a", "b", "c"])
    elif case == "npy-long-ids":
        args = bad_npy(tmp_path, V, list("abcde"))
    elif case == "npy-nan":
        v = V.copy()
        v[2, 5] = np.nan
        args = bad_npy(tmp_path, v, list("abcd"))
    elif case == "npy-1d":
        args = bad_npy(tmp_path, V[0], ["a"])
    elif case == "npy-duplicate":
        args = bad_npy(tmp_path, V, ["a", "b", "c", "b"])
    elif case == "npy-space-id":
        args = bad_npy(tmp_path, V, ["a", "b x", "c", "d"])
    elif case == "jsonl-dim":
        rows[2]["vector"] = rows[2]["vector"][:31]
        args = bad_jsonl(tmp_path, rows)
    elif case == "jsonl-nan":
        args = [tmp_path / "v.jsonl"]
        (tmp_path / "v.jsonl").write_text(json.dumps(rows[0]) + "\n" +
                                          json.dumps(rows[1]).replace("1.0", "NaN") + "\n")
    elif case == "jsonl-duplicate":
        rows[2]["id"] = "a"
        args = bad_jsonl(tmp_path, rows)
    elif case == "parquet-dim":
        vecs = [v.tolist() for v in V]
        vecs[1] = vecs[1][:31]
        pq.write_table(pa.table({"id": list("abcd"), "vector": vecs}), tmp_path / "v.parquet")
        args = [tmp_path / "v.parquet"]
    else:
        args = bad_npy(tmp_path, np.eye(4, 16, dtype=np.float32), list("abcd"))
        extra = ["--model", tiny_model]
    out = tmp_path / "idx"
    done = run_cli("index", "import", "--input", *args, "--output", out, "--shards", 1, "--progress", "false", *extra)
    assert done.returncode == 2, done.stderr[-2000:]
    import re
    assert re.search(message, done.stderr), done.stderr[-2000:]
    assert not (out / mf.MANIFEST).is_file() or not mf.read_manifest(out)["complete"]


# ---------------------------------------------------------------- open, search, rerank, merge
def import_vectors(tmp: Path, name: str, vectors: np.ndarray, *extra) -> Path:
    ids = [f"d{i}" for i in range(len(vectors))]
    np.save(tmp / f"{name}.npy", vectors)
    (tmp / f"{name}.ids").write_text("".join(i + "\n" for i in ids))
    out = tmp / name
    assert cli_main(["index", "import", "--input", str(tmp / f"{name}.npy"), "--ids", str(tmp / f"{name}.ids"),
                     "--output", str(out), "--progress", "false", *map(str, extra)]) == 0
    return out


def clustered(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(20, DIM))
    x = centers[rng.integers(0, 20, n)] + 0.4 * rng.normal(size=(n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# 8-bit PQ (memory-mapped), OPQ before the IVF (a pre-transform the shared coarse assignment must apply), and
# 4-bit fast-scan PQ (the 10M benchmark's choice; its codes load into memory)
@pytest.fixture(scope="module", params=["IVF32,PQ8", "OPQ8,IVF32,PQ8", "IVF32,PQ16x4fs"])
def ivf_index(tmp_path_factory, request):
    tmp = tmp_path_factory.mktemp("ivf")
    x = clustered(6000)
    return x, import_vectors(tmp, "ivf", x, "--shards", 4, "--factory", request.param, "--train_sample", 3000,
                             "--keep_vectors", "float16")


def test_parallel_and_shared_quantizer_search_equal_sequential_per_shard_search(ivf_index):
    _, root = ivf_index
    index = ShardedIndex.open(root, threads=2)
    index.set_search_params(nprobe=8)
    q = queries(64)
    scores, shards, pos = index.search_arrays(q, 10)
    # sequential, each shard searched by its own faiss index (its own coarse quantizer), merged by hand
    want = []
    for s, shard in enumerate(index.shards):
        d, i = shard.index.search(q, 10)
        want.append((s, d, i))
    all_d = np.concatenate([d for _, d, _ in want], axis=1)
    order = np.argsort(-all_d, axis=1, kind="stable")[:, :10]
    np.testing.assert_allclose(scores, np.take_along_axis(all_d, order, axis=1), rtol=0, atol=1e-6)
    sequential = ShardedIndex.open(root, threads=1)
    sequential.set_search_params(nprobe=8)
    s2, sh2, p2 = sequential.search_arrays(q, 10)
    np.testing.assert_array_equal(scores, s2)
    np.testing.assert_array_equal(shards, sh2)
    np.testing.assert_array_equal(pos, p2)


def test_rerank_scores_candidates_exactly_from_kept_vectors(ivf_index):
    x, root = ivf_index
    index = ShardedIndex.open(root)
    index.set_search_params(nprobe=32)  # every list: the candidates hold the true top-10
    q = queries(32, seed=3)
    x16 = x.astype(np.float16).astype(np.float32)  # the kept vectors: re-ranking is exact for them
    exact_ids = np.argsort(-(q @ x16.T), axis=1, kind="stable")[:, :10]
    approx, ahits = index.search(q, 10)
    scores, hits = index.search(q, 10, rerank=1000)
    recall_pq, recall_rr = [], []
    for row in range(len(q)):
        ids = [int(index.docid(*h)[1:]) for h in hits[row]]
        np.testing.assert_allclose(scores[row], x16[ids] @ q[row], rtol=0, atol=1e-5)  # exact float16 scores
        recall_rr.append(len(set(ids) & set(exact_ids[row])) / 10)
        recall_pq.append(len({int(index.docid(*h)[1:]) for h in ahits[row]} & set(exact_ids[row])) / 10)
    assert np.mean(recall_rr) == 1.0 and np.mean(recall_pq) < 0.9, (np.mean(recall_rr), np.mean(recall_pq))
    with pytest.raises(DretrieverError, match="re-rank"):
        ShardedIndex.open(import_vectors(root.parent, "norr", x[:100], "--shards", 1)).search(q, 10, rerank=50)


def test_merge_of_ivf_shards_equals_sharded_search_and_loads_in_pyserini(ivf_index, tmp_path):
    _, root = ivf_index
    assert cli_main(["index", "merge", "--index", str(root), "--output", str(tmp_path / "merged")]) == 0
    sharded, merged = ShardedIndex.open(root), ShardedIndex.open(tmp_path / "merged")
    assert len(merged.shards) == 1 and len(merged) == len(sharded)
    for index in (sharded, merged):
        index.set_search_params(nprobe=8)
    if "x4fs" in mf.read_manifest(root)["faiss"]["factory"]:
        # fast scan's SIMD top-k works on 16-bit quantized sums, so among near-ties the merged lists (another
        # block order) may keep another document than the shards near the last rank: the same hits, nearly
        q = queries(64)
        for rerank in (0, 50):
            merged.set_search_params(rerank=rerank)
            sharded.set_search_params(rerank=rerank)
            (sm, hm), (ss, hs) = merged.search(q, 10), sharded.search(q, 10)
            overlap = np.mean([len({merged.docid(*h) for h in hm[r]} & {sharded.docid(*h) for h in hs[r]}) / 10
                               for r in range(len(q))])
            assert overlap >= 0.97, (rerank, overlap)
            np.testing.assert_allclose(sm[:, 0], ss[:, 0], rtol=0, atol=1e-5)  # the best hit is the same
    else:
        assert_same_results(merged, sharded, k=10, atol=1e-5)
        merged.set_search_params(rerank=50)
        sharded.set_search_params(rerank=50)
        assert_same_results(merged, sharded, k=10, atol=1e-5)
    assert run_cli("index", "verify", "--index", tmp_path / "merged").returncode == 0
    searcher = pyserini_env.faiss_searcher(tmp_path / "merged" / "shard-00000", None)
    q = queries(4)
    faiss.extract_index_ivf(searcher.index).nprobe = 8
    got = searcher.batch_search(q, [str(i) for i in range(4)], k=10)
    s, hits = merged.search(q, 10, rerank=0)
    for i in range(4):
        assert_same_ranking([h.docid for h in got[str(i)]], [h.score for h in got[str(i)]],
                            [merged.docid(*h) for h in hits[i]], list(s[i]), 1e-5)


def test_hnsw_shards_cannot_be_merged(tmp_path):
    root = import_vectors(tmp_path, "h", clustered(300), "--shards", 2, "--factory", "HNSW16")
    with pytest.raises(DretrieverError, match="HNSW graphs have no merge"):
        from dretriever.index.merge import merge_index
        merge_index(root, tmp_path / "m")


def test_mmap_open_keeps_the_index_out_of_the_heap(tmp_path):
    x = np.random.default_rng(0).normal(size=(300_000, DIM)).astype(np.float32)  # 38 MB of Flat codes
    root = import_vectors(tmp_path, "big", x, "--shards", 2)
    probe = ("import sys; from dretriever.index.sharded import ShardedIndex\n"
             "def anon():\n"
             "    return int(next(l for l in open('/proc/self/status') if l.startswith('RssAnon')).split()[1])\n"
             "before = anon(); index = ShardedIndex.open(sys.argv[1], mmap=sys.argv[2] == '1')\n"
             "import numpy as np; index.search(np.ones((1, 32), np.float32), 10)\n"
             "print(anon() - before)")
    grow = {m: int(subprocess.run([sys.executable, "-c", probe, str(root), m], capture_output=True, text=True,
                                  check=True).stdout) for m in ("1", "0")}
    assert grow["0"] > 30_000, grow  # read into RAM: the 38 MB of codes are in the heap
    assert grow["1"] < 8_000, grow  # mapped: they stay in the page cache


def test_docids_take_reads_any_positions_in_bulk(tmp_path):
    from dretriever.index.docids import DocIds, write_docids

    ids = ["a", "doc#12", "Ünïcode-Ω", "x" * 300, "", "z9"]
    write_docids(tmp_path, ids)
    docids = DocIds(tmp_path)
    positions = [5, 0, 2, 2, 3, 4, 1]  # any order, repeats, an empty id
    assert docids.take(positions) == [ids[p] for p in positions] == [docids[p] for p in positions]
    assert docids.take(np.array([], dtype=np.int64)) == []
    with pytest.raises(IndexError):
        docids.take([0, 6])


def test_rows_label_search_arrays_like_one_lookup_per_hit(built):
    index = ShardedIndex.open(built)
    queries = np.random.default_rng(1).normal(size=(5, index.dim)).astype(np.float32)
    k = len(index) + 3  # more than the index holds: every row ends in empty slots
    scores, shard_of, pos = index.search_arrays(queries, k)
    rows = index.rows(scores, shard_of, pos)
    assert len(rows) == 5
    for r in range(5):
        want = [(index.docid(int(sh), int(p)), float(s), int(sh))
                for s, sh, p in zip(scores[r], shard_of[r], pos[r]) if p >= 0]
        assert rows[r] == want and len(want) == len(index)


# ---------------------------------------------------------------- one pass, resume inside a shard
def passages_corpus(path: Path, n_docs: int) -> Path:
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(500)]
    with open(path, "w") as f:
        for i in range(n_docs):
            text = " ".join(rng.choice(words, size=int(rng.integers(8, 40))))
            f.write(json.dumps({"_id": f"doc{i}", "title": f"t{i % 7}", "text": text}) + "\n")
    return path


def test_sources_are_read_once_whatever_the_shard_count(tmp_path, tiny_model, monkeypatch):
    src = passages_corpus(tmp_path / "c.jsonl", 300)
    reads = []
    real = ds_module.read_records
    monkeypatch.setattr(ds_module, "read_records", lambda *a, **k: (reads.append(a[0]), real(*a, **k))[1])
    manifest = build_datastore(DatastoreArgs(sources=[str(src)], output=str(tmp_path / "ds"), model=str(tiny_model),
                                             shards=8, chunk_size=10, chunk_overlap=2, chunk_docs=50,
                                             progress=False, bm25=True))
    assert reads == [str(src)] and manifest["source_passes"] == 1  # BM25 too reads the doc stores, not the source
    assert sum(e["num_docs"] for e in manifest["shards"]) > 300


KILLED_IN_FINALIZE = """
import os, sqlite3, sys
import dretriever.index.build as build
from dretriever.cli import main

def killed(path, filter_keys=None):  # finalize_docstore's transaction, killed once pages reached the file
    con = sqlite3.connect(path)
    con.execute("PRAGMA cache_size=1")  # spill to the file at once: the journal is hot
    con.execute("BEGIN")
    con.execute("ALTER TABLE docs ADD COLUMN doc_id TEXT")
    con.execute("UPDATE docs SET doc_id = docid")
    os._exit(9)

build.finalize_docstore = killed
main(sys.argv[1:])
"""


def test_a_build_killed_while_its_doc_store_is_finalized_resumes_without_staging_or_encoding_again(tmp_path,
                                                                                                    tiny_model):
    """A kill inside finalize_docstore's transaction leaves a hot rollback journal beside the shard's doc store
    (and the store's pages half rewritten). The rerun rolls it back: the staged rows are intact again, so it neither
    reads the sources again nor encodes the shard again, and it ends equal to a clean build. (A read-only open
    of such a store fails with "attempt to write a readonly database".)"""
    src = passages_corpus(tmp_path / "c.jsonl", 400)
    args = ["datastore", "build", "--sources", str(src), "--model", str(tiny_model), "--shards", "2",
            "--chunking", "words", "--chunk_size", "12", "--chunk_overlap", "2", "--precision", "fp32",
            "--progress", "false"]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    assert subprocess.run(CLI + args + ["--output", str(tmp_path / "clean")], env=env).returncode == 0
    out = tmp_path / "killed"
    died = subprocess.run([sys.executable, "-c", KILLED_IN_FINALIZE, *args, "--output", str(out)], env=env)
    assert died.returncode == 9
    journals = list(out.glob(".shard-*.partial/docs.sqlite-journal"))
    assert len(journals) == 1 and journals[0].stat().st_size > 0
    done = subprocess.run(CLI + args + ["--output", str(out)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    clean_rows = sum(e["num_docs"] for e in mf.read_manifest(tmp_path / "clean")["shards"])
    assert compare_with_clean(tmp_path / "clean", out) == clean_rows
    assert mf.read_manifest(out)["source_passes"] == 1  # the staged rows were kept
    encode_runs_tile(out)
    first, second = ({r["run"] for r in e["encode_runs"]} for e in mf.read_manifest(out)["shards"])
    assert len(first) == len(second) == 1 and first != second  # shard 0 kept the killed run's vectors
    assert not list(out.glob("**/*-journal"))
    store = DocStore(out / "shard-00000" / "docs.sqlite")
    assert "doc_id" in store.columns and len(store.document_ids()) > 0
    store.close()


def test_a_doc_store_left_with_a_hot_journal_opens_with_its_committed_rows(tmp_path):
    """The state a rerun meets when a finalize was killed with the staged store's size unchanged (so the staging
    looks intact): a hot journal. DocStore rolls it back instead of failing on its read-only connection."""
    from dretriever.data.beir import Document
    from dretriever.index.docstore import DocStoreWriter

    path = tmp_path / "docs.sqlite"
    writer = DocStoreWriter(path)
    writer.add((f"d{i}", Document(f"t{i}", "x" * 100)) for i in range(400))
    writer.close()
    only_finalize = KILLED_IN_FINALIZE.replace("main(sys.argv[1:])", "killed(sys.argv[1])")
    died = subprocess.run([sys.executable, "-c", only_finalize, str(path)])
    assert died.returncode == 9 and Path(f"{path}-journal").stat().st_size > 0
    store = DocStore(path)
    assert len(store) == 400 and "doc_id" not in store.columns
    assert store.at([0, 399]) == [("d0", Document("t0", "x" * 100)), ("d399", Document("t399", "x" * 100))]
    store.close()
    assert not Path(f"{path}-journal").exists()


def test_kill_9_at_random_moments_resumes_inside_shards(tmp_path, tiny_model):
    """One kill right after a chunk commit inside a shard; then, on another output, 5 kills at random moments of
    a datastore build. Each result equals a clean build, and no committed chunk was encoded twice (the
    manifest's encode_runs tile every shard's rows exactly once)."""
    src = passages_corpus(tmp_path / "c.jsonl", 1500)
    base = CLI + ["datastore", "build", "--sources", str(src), "--model", str(tiny_model), "--shards", "2",
                  "--chunking", "words", "--chunk_size", "12", "--chunk_overlap", "2", "--chunk_docs", "64",
                  "--batch_size", "32", "--precision", "fp32", "--progress", "false"]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    timed_run(base + ["--output", str(tmp_path / "clean")], env)
    killed_out = tmp_path / "killed"

    def mid_shard():  # a chunk committed, the shard not finished: the kill lands inside a shard for sure
        if not (killed_out / mf.MANIFEST).is_file():
            return False
        return any(0 < e["encoded"] < (e["num_docs"] or 0) for e in mf.read_manifest(killed_out)["shards"])

    assert kill_when(base + ["--output", str(killed_out)], mid_shard, env), "the build ended before a chunk commit"
    assert subprocess.run(base + ["--output", str(killed_out)], env=env, capture_output=True).returncode == 0
    compare_with_clean(tmp_path / "clean", killed_out)
    assert len(encode_runs_tile(killed_out)) == 2  # the encoding was split across the killed run and the rerun

    # 5 kills of a fresh build at random moments of its progress (passages encoded, drawn from the clean build's
    # count: moments timed from the clean run missed the build on a loaded machine), then a rerun to completion
    random_out = tmp_path / "random"
    total = sum(e["num_docs"] for e in mf.read_manifest(tmp_path / "clean")["shards"])

    rng = random.Random(1)
    points = sorted(round(rng.uniform(0.05, 0.9) * total) for _ in range(5))
    report = kill_at_progress(base + ["--output", str(random_out)], lambda: encoded_passages(random_out), points,
                              env=env)
    assert subprocess.run(base + ["--output", str(random_out)], env=env, capture_output=True).returncode == 0
    compare_with_clean(tmp_path / "clean", random_out)
    encode_runs_tile(random_out)
    assert report.kills_landed >= 3, report  # kills inside the build, not after it ended
