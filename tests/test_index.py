"""Sharded index build: Pyserini-loadable shards, checksums, resume after kill -9, bad input, accelerate."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dretriever import pyserini_env
from dretriever.data.beir import load_beir, load_corpus
from dretriever.encoder import BiEncoder
from dretriever.errors import DretrieverError
from dretriever.index.build import build_index, corpus_source
from dretriever.index.manifest import read_manifest
from dretriever.index.sharded import ShardedIndex
from dretriever.models import resolve_model
from dretriever.search.dense import DenseSearcher

from .conftest import assert_same_ranking, make_tiny_bert

CLI = [sys.executable, "-m", "dretriever"]


def build(corpus_path, model, out, shards=3, factory="Flat", **kw):
    corpus = load_corpus(corpus_path)
    source = corpus_source(corpus, shards, {"path": str(corpus_path)})
    return build_index(source, BiEncoder.from_pretrained(model), out, model=str(model), factory=factory,
                       progress=False, **kw)


def all_docids(root):
    m = read_manifest(root)
    return [line for s in m["shards"] for line in (Path(root) / s["dir"] / "docid").read_text().splitlines()]


# Exact-order comparisons across different batchings run in fp32: under bf16 autocast (precision "auto" on a
# CPU with native bf16) a text's vector depends on its batch's padding by ~1e-3, enough to swap near-ties.
def test_shards_cover_corpus_and_merge_like_one_index(scifact_small, tiny_model, tmp_path):
    m3 = build(scifact_small / "corpus.jsonl", tiny_model, tmp_path / "s3", shards=3, precision="fp32")
    build(scifact_small / "corpus.jsonl", tiny_model, tmp_path / "s1", shards=1, precision="fp32")
    corpus = load_corpus(scifact_small / "corpus.jsonl")
    assert m3["complete"] and [s["state"] for s in m3["shards"]] == ["done"] * 3
    assert sorted(all_docids(tmp_path / "s3")) == sorted(corpus) and len(set(all_docids(tmp_path / "s3"))) == len(corpus)
    ds = load_beir(scifact_small)
    run3 = DenseSearcher.load(tmp_path / "s3", precision="fp32").search(ds.queries, k=50)
    run1 = DenseSearcher.load(tmp_path / "s1", precision="fp32").search(ds.queries, k=50)
    for qid in ds.queries:
        assert_same_ranking([d for d, _ in run3[qid]], [s for _, s in run3[qid]],
                            [d for d, _ in run1[qid]], [s for _, s in run1[qid]], atol=1e-6)
    hit_shard, pos = ShardedIndex.open(tmp_path / "s3").search(np.zeros((1, 32), np.float32) + 0.1, 1)[1][0][0]
    index = ShardedIndex.open(tmp_path / "s3")
    docid = index.docid(hit_shard, pos)
    assert index.texts(hit_shard, [docid])[docid]["text"] == corpus[docid].text


def test_same_ranking_as_pyserini_faiss_searcher(scifact_small, tmp_path):
    model = "sentence-transformers/all-MiniLM-L6-v2"
    build(scifact_small / "corpus.jsonl", model, tmp_path / "idx", shards=1, precision="fp32")
    ds = load_beir(scifact_small)
    ours = DenseSearcher.load(tmp_path / "idx", precision="fp32").search(ds.queries, k=100)  # Pyserini's is fp32
    encoder = pyserini_env.auto_query_encoder(resolve_model(model), pooling="mean", l2_norm=True)
    searcher = pyserini_env.faiss_searcher(tmp_path / "idx" / "shard-00000", encoder)
    qids = list(ds.queries)
    theirs = searcher.batch_search([ds.queries[q] for q in qids], qids, k=100)
    for qid in qids:
        assert_same_ranking([h.docid for h in theirs[qid]], [h.score for h in theirs[qid]],
                            [d for d, _ in ours[qid]], [s for _, s in ours[qid]], atol=1e-4)


def test_kill_9_then_rerun_completes_without_reencoding(scifact_small, tmp_path):
    """Kill the build after two shards are done; the rerun finishes the rest and keeps the done ones."""
    out = tmp_path / "idx"
    cmd = CLI + ["index", "build", "--corpus", str(scifact_small / "corpus.jsonl"), "--output", str(out),
                 "--shards", "8", "--model", "sentence-transformers/all-MiniLM-L6-v2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    done_before = []
    while time.time() < deadline and proc.poll() is None:
        if (out / "manifest.json").is_file():
            shards = json.loads((out / "manifest.json").read_text())["shards"]
            done_before = [s for s in shards if s["state"] == "done"]
            if len(done_before) >= 2:
                break
        time.sleep(0.05)
    assert proc.poll() is None, "the build finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = read_manifest(out)
    assert not killed["complete"]
    done_before = [s for s in killed["shards"] if s["state"] == "done"]
    assert 2 <= len(done_before) < 8
    with pytest.raises(DretrieverError, match="incomplete"):
        ShardedIndex.open(out)

    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    final = read_manifest(out)
    assert final["complete"]
    for before in done_before:  # finished shards were skipped: same files, same finish time
        after = next(s for s in final["shards"] if s["dir"] == before["dir"])
        assert after["finished_at"] == before["finished_at"] and after["sha256"] == before["sha256"]
    ids = all_docids(out)
    assert len(ids) == len(set(ids)) and set(ids) == set(load_corpus(scifact_small / "corpus.jsonl"))
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]  # the killed process's partial shard is gone
    assert len(ShardedIndex.open(out)) == len(ids)


def test_tampered_shard_is_caught_and_rebuilt(scifact_small, tiny_model, tmp_path):
    out = tmp_path / "idx"
    first = build(scifact_small / "corpus.jsonl", tiny_model, out, shards=2)
    with open(out / "shard-00001" / "docid", "a") as f:  # a size change: caught by every open
        f.write("junk\n")
    with pytest.raises(DretrieverError, match="docid has .* bytes, the manifest says"):
        ShardedIndex.open(out)
    again = build(scifact_small / "corpus.jsonl", tiny_model, out, shards=2)
    assert again["shards"][0]["finished_at"] == first["shards"][0]["finished_at"]
    assert again["shards"][1]["sha256"] == first["shards"][1]["sha256"]
    assert again["shards"][1]["encode_runs"][0]["run"] != first["shards"][1]["encode_runs"][0]["run"]  # re-encoded

    data = bytearray((out / "shard-00000" / "index").read_bytes())  # same size, one byte off: only sha256 sees it
    data[-1] ^= 0xFF
    (out / "shard-00000" / "index").write_bytes(bytes(data))
    assert len(ShardedIndex.open(out)) == len(load_corpus(scifact_small / "corpus.jsonl"))
    with pytest.raises(DretrieverError, match="index does not match its sha256"):
        ShardedIndex.open(out, verify=True)
    done = run_cli("index", "verify", "--index", str(out))
    assert done.returncode == 1 and "shard-00000: index does not match its sha256" in done.stdout
    assert "shard-00001: ok" in done.stdout
    build(scifact_small / "corpus.jsonl", tiny_model, out, shards=2)
    assert run_cli("index", "verify", "--index", str(out)).returncode == 0


def test_wrong_model_is_refused(scifact_small, tiny_model, tmp_path):
    out = tmp_path / "idx"
    build(scifact_small / "corpus.jsonl", tiny_model, out, shards=1)
    other = make_tiny_bert(tmp_path / "other", seed=1)
    with pytest.raises(DretrieverError, match="differ from those the index was built with"):
        DenseSearcher.load(out, model=str(other))
    wider = make_tiny_bert(tmp_path / "wider", seed=0, hidden=48)
    with pytest.raises(DretrieverError, match="index dimension is 32 but the model gives 48"):
        DenseSearcher.load(out, model=str(wider))
    with pytest.raises(DretrieverError, match="different encoder"):
        build(scifact_small / "corpus.jsonl", other, out, shards=1)


@pytest.mark.parametrize("factory", ["IVF8,Flat", "HNSW16"])
def test_approximate_factories(scifact_small, tiny_model, tmp_path, factory):
    out = tmp_path / "idx"
    m = build(scifact_small / "corpus.jsonl", tiny_model, out, shards=2, factory=factory)
    assert (m["faiss"]["trained_index"] == "trained.index") == factory.startswith("IVF")
    index = ShardedIndex.open(out)
    if factory.startswith("IVF"):
        index.set_search_params(nprobe=8)  # all lists: exact
    else:
        index.set_search_params(efSearch=512)
    build(scifact_small / "corpus.jsonl", tiny_model, tmp_path / "flat", shards=1)
    exact = ShardedIndex.open(tmp_path / "flat")
    q = np.random.default_rng(0).normal(size=(8, 32)).astype(np.float32)
    scores, hits = index.search(q, 10)
    want, want_hits = exact.search(q, 10)
    assert scores.shape == (8, 10) and np.all(np.diff(scores, axis=1) <= 1e-6)
    got_ids = [{index.docid(s, p) for s, p in row} for row in hits]
    want_ids = [{exact.docid(s, p) for s, p in row} for row in want_hits]
    recall = np.mean([len(g & w) / 10 for g, w in zip(got_ids, want_ids)])
    if factory.startswith("IVF"):  # every list probed: an exhaustive search, so exactly the Flat results
        assert recall == 1.0, recall
        np.testing.assert_allclose(scores, want, rtol=0, atol=1e-5)
    else:  # HNSW stays approximate even at efSearch 512 on 400 points
        assert recall >= 0.9, recall


def run_cli(*args, cwd=None):
    return subprocess.run(CLI + list(args), capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("lines, message", [
    (['{"_id": "a", "text": "x"}', '{"_id": "b", "text": '], ":2: malformed JSON"),
    (['{"_id": "a", "text": "x"}', '{"_id": "a", "text": "y"}'], ":2: duplicate document id 'a'"),
    (['{"_id": "a", "text": "x"}', '{"text": "y"}'], ":2: missing '_id'"),
    ([], ": the corpus is empty"),
])
def test_cli_bad_corpus_exits_non_zero_and_leaves_no_index(tmp_path, tiny_model, lines, message):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(line + "\n" for line in lines))
    done = run_cli("index", "build", "--corpus", str(corpus), "--output", str(tmp_path / "idx"), "--model", str(tiny_model))
    assert done.returncode == 2
    assert f"error: {corpus}{message}" in done.stderr
    assert not (tmp_path / "idx").exists()


def test_torchrun_two_cpu_processes_build_their_own_shards(scifact_small, tiny_model, tmp_path):
    """The README's command for several CPU processes, run as written: two ranks, each building its own shards
    (accelerate starts several CPU processes only through mpirun; ``accelerate launch --cpu --num_processes 2``
    ran one process that built every shard)."""
    out = tmp_path / "idx"
    torchrun = str(Path(sys.executable).parent / "torchrun")
    done = subprocess.run([torchrun, "--nproc_per_node", "2", "-m", "dretriever", "index", "build", "--corpus",
                           str(scifact_small / "corpus.jsonl"), "--output", str(out), "--shards", "4", "--model",
                           str(tiny_model)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(line.split("index build: ")[1] for line in done.stderr.splitlines()
                  if "index build: world size" in line) == ["world size 2 (this is rank 0)",
                                                             "world size 2 (this is rank 1)"], done.stderr[-3000:]
    m = read_manifest(out)
    assert m["complete"] and all(s["state"] == "done" for s in m["shards"])
    runs = [{r["run"] for r in s["encode_runs"]} for s in m["shards"]]
    assert all(len(r) == 1 for r in runs), runs
    # rank r builds shards r, r + 2: two distinct build runs (processes), each owning its shards
    assert runs[0] == runs[2] and runs[1] == runs[3] and runs[0] != runs[1], runs
    ids = all_docids(out)
    assert len(ids) == len(set(ids)) == len(load_corpus(scifact_small / "corpus.jsonl"))
