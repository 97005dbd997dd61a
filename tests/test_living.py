"""Living datastores: add / delete / re-add / compact equal a fresh build (dense Flat and BM25, every SciFact test
query), generations and the journal under kill -9, writer lock, metadata filters (exact for Flat, k hits for
IVF), bad input through the CLI, and the server's hot reload."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dretriever import Retriever
from dretriever.cli import main as cli_main
from dretriever.errors import DretrieverError
from dretriever.index import generations as gen
from dretriever.index import manifest as mf
from dretriever.index.changes import add_documents, compact, delete_documents
from dretriever.index.datastore import DatastoreArgs, build_datastore

from .conftest import assert_same_ranking, make_tiny_bert

CHUNKS = dict(chunking="words", chunk_size=120, chunk_overlap=20)
CLI = [sys.executable, "-m", "dretriever"]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def changed(doc: dict) -> dict:
    """The document with new text (a correction): its passages and their vectors change."""
    return {**doc, "text": "Corrected: " + " ".join(reversed(doc["text"].split()))}


def sequence(docs: list[dict]) -> dict:
    """80 % built, 20 % added, 500 deleted, 100 of those re-added with changed text; and the final corpus."""
    rng = np.random.default_rng(0)
    order = rng.permutation(len(docs))
    base = [docs[i] for i in sorted(order[:int(0.8 * len(docs))])]
    added = [docs[i] for i in sorted(order[int(0.8 * len(docs)):])]
    gone = [docs[i]["_id"] for i in rng.choice(len(docs), size=500, replace=False)]
    back = {d: None for d in gone[:100]}
    by_id = {d["_id"]: d for d in docs}
    readded = [changed(by_id[d]) for d in back]
    final = [d for d in base + added if d["_id"] not in set(gone)] + readded
    return {"base": base, "added": added, "deleted": gone, "readded": readded, "final": final}


def build(src: Path, out: Path, model: Path, shards: int = 3, **kw) -> dict:
    return build_datastore(DatastoreArgs(sources=[str(src)], output=str(out), model=str(model), shards=shards,
                                         precision="fp32", progress=False, **CHUNKS, **kw))


def assert_same_results(a: Retriever, b: Retriever, queries: list[str], mode: str, k: int = 10, **kw):
    ra, rb = a.batch_search(queries, k, mode=mode, **kw), b.batch_search(queries, k, mode=mode, **kw)
    for x, y in zip(ra, rb):
        assert len(x) == len(y) == k
        assert_same_ranking([h.id for h in x], [h.score for h in x], [h.id for h in y], [h.score for h in y],
                            atol=1e-5 if mode == "dense" else 1e-4)
        for h in x:  # hits carry the live text (a replaced passage's new text, never its old one)
            assert h.text == y[[g.id for g in y].index(h.id)].text if h.id in [g.id for g in y] else True


@pytest.fixture(scope="module")
def scifact_sequence(scifact_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("living")
    docs = [json.loads(line) for line in (scifact_dir / "corpus.jsonl").open()]
    seq = sequence(docs)
    files = {name: write_jsonl(tmp / f"{name}.jsonl", seq[name]) for name in ("base", "added", "readded", "final")}
    (tmp / "deleted.txt").write_text("".join(d + "\n" for d in seq["deleted"]) + "no-such-doc\n")
    queries = [json.loads(line)["text"] for line in (scifact_dir / "queries.jsonl").open()]
    qids = {line.split("\t")[0] for line in list((scifact_dir / "qrels" / "test.tsv").open())[1:]}
    test_queries = [json.loads(line)["text"] for line in (scifact_dir / "queries.jsonl").open()
                    if json.loads(line)["_id"] in qids]
    assert len(test_queries) == 300 and queries
    return tmp, seq, files, test_queries


def test_add_delete_readd_equals_a_fresh_build(scifact_sequence, tiny_model, tmp_path):
    tmp, seq, files, queries = scifact_sequence
    live = tmp_path / "live"
    build(files["base"], live, tiny_model, bm25=True)
    first = Retriever.load(live, precision="fp32")  # a reader of generation 0, kept open through the changes
    before = first.batch_search(queries[:20], 10)

    r1 = add_documents(live, [str(files["added"])], shards=2, precision="fp32", progress=False)
    assert (r1.generation, r1.added_documents, r1.replaced_documents) == (1, len(seq["added"]), 0)
    r2 = delete_documents(live, tmp / "deleted.txt")
    assert (r2.generation, r2.deleted_documents, r2.unknown_ids, r2.unknown_sample) == (2, 500, 1, ["no-such-doc"])
    r3 = add_documents(live, [str(files["readded"])], shards=1, precision="fp32", progress=False)
    assert (r3.generation, r3.added_documents, r3.replaced_documents) == (3, 100, 0)  # deleted before: not live

    fresh = tmp_path / "fresh"
    build(files["final"], fresh, tiny_model, bm25=True)
    a, b = Retriever.load(live, precision="fp32"), Retriever.load(fresh, precision="fp32")
    assert a.generation == 3 and len(a.index) == len(b.index) and len(a.index.shards) == 6
    assert_same_results(a, b, queries, "dense")
    assert_same_results(a, b, queries, "bm25")
    assert [[h.id for h in r] for r in first.batch_search(queries[:20], 10)] == [[h.id for h in r] for r in before]

    # replacing live documents: re-adding the changed ones again tombstones their previous passages
    r4 = add_documents(live, [str(files["readded"])], shards=1, precision="fp32", progress=False)
    assert (r4.generation, r4.replaced_documents) == (4, 100)
    a = Retriever.load(live, precision="fp32")
    assert_same_results(a, b, queries, "dense")
    # stored vectors by id read the live row of a replaced passage, never its tombstoned one
    ids = sorted(b.index.positions)
    assert sorted(a.index.positions) == ids and len(ids) == len(b.index)
    np.testing.assert_allclose(a.index.vectors_of(ids), b.index.vectors_of(ids), atol=1e-5)
    assert a.index.vectors_of(ids[:3] + ["no-such-passage"]) is None
    manifest = mf.read_manifest(live)
    # GC kept generations 3 and 4 only: generation 2's shard folders and files are gone, 3's are there
    assert sorted(p.name for p in (live / gen.GENERATIONS).iterdir()) == ["000003.json", "000004.json"]
    assert sorted(p.name for p in live.glob("bm25*")) == ["bm25.g000003", "bm25.g000004"]

    r5 = compact(live)
    assert r5.generation == 5 and r5.compacted_shards > 0
    c = Retriever.load(live, precision="fp32")
    assert not any(e.get("deleted") for e in mf.read_manifest(live)["shards"])
    assert len(c.index) == len(b.index) == sum(s.index.ntotal for s in c.index.shards)
    assert_same_results(c, b, queries, "dense")
    assert_same_results(c, b, queries, "bm25")
    assert manifest["generation"] == 4


def test_changes_refuse_bad_input_through_the_cli(scifact_small, tiny_model, tmp_path, capsys):
    docs = [json.loads(line) for line in (scifact_small / "corpus.jsonl").open()][:60]
    src = write_jsonl(tmp_path / "c.jsonl", docs[:40])
    more = write_jsonl(tmp_path / "more.jsonl", docs[40:])
    build(src, tmp_path / "ds", tiny_model, shards=2)
    other = make_tiny_bert(tmp_path / "other", seed=1)
    ds = str(tmp_path / "ds")
    assert cli_main(["datastore", "add", "--datastore", ds, "--sources", str(more), "--model", str(other),
                     "--progress", "false"]) == 2
    err = capsys.readouterr().err
    assert "is not the encoder this datastore was built with" in err and "fingerprint" in err
    assert mf.read_manifest(tmp_path / "ds").get("generation", 0) == 0 and not (tmp_path / "ds" / gen.JOURNAL).exists()

    (tmp_path / "ids.txt").write_text(f"{docs[0]['_id']}\nnope-1\n\nnope-2\n{docs[0]['_id']}\n")
    assert cli_main(["datastore", "delete", "--datastore", ds, "--ids", str(tmp_path / "ids.txt")]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (report["deleted_documents"], report["unknown_ids"], report["unknown_sample"]) == (1, 2, ["nope-1", "nope-2"])
    assert cli_main(["datastore", "delete", "--datastore", ds, "--ids", str(tmp_path / "missing.txt")]) == 2
    assert "ids file not found" in capsys.readouterr().err

    # a second writer is refused, naming the holder
    with gen.writer_lock(tmp_path / "ds"):
        done = subprocess.run(CLI + ["datastore", "delete", "--datastore", ds, "--ids", str(tmp_path / "ids.txt")],
                              capture_output=True, text=True)
    assert done.returncode == 2 and "another writer is changing this datastore" in done.stderr
    assert '"pid"' in done.stderr

    # a pending (interrupted) change blocks a different one until it is rerun or aborted
    gen.write_journal(tmp_path / "ds", {"op": "add", "args": {"sources": ["x"], "format": "auto", "shards": 1},
                                        "base": 1, "generation": 2, "phase": "start"})
    assert cli_main(["datastore", "compact", "--datastore", ds]) == 2
    assert "an interrupted add" in capsys.readouterr().err
    assert cli_main(["datastore", "compact", "--datastore", ds, "--abort_pending", "true"]) == 0
    assert mf.read_manifest(tmp_path / "ds")["generation"] == 2


# ---------------------------------------------------------------- filters
def filtered_corpus(path: Path, n: int) -> Path:
    rng = np.random.default_rng(1)
    words = [f"w{i}" for i in range(300)]
    rows = [{"_id": f"doc{i:04d}", "title": "", "text": " ".join(rng.choice(words, size=12)),
             "year": int(2000 + i % 20), "source": ["pubmed", "pmc", "arxiv", "web"][i % 4],
             "score": float(i % 7) / 2} for i in range(n)]
    rows[5].pop("year")  # a missing value matches no filter on it
    return write_jsonl(path, rows)


@pytest.fixture(scope="module")
def filtered(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("filtered")
    src = filtered_corpus(tmp / "c.jsonl", 800)
    out = {}
    for factory in ("Flat", "IVF8,PQ8"):
        out[factory] = tmp / factory.replace(",", "_")
        build_datastore(DatastoreArgs(sources=[str(src)], output=str(out[factory]), model=str(tiny_model), shards=3,
                                      factory=factory, chunking="none", precision="fp32", progress=False,
                                      keep_vectors="float32", filter_keys="year:int,source,score:float",
                                      train_sample=800))
    return src, out


def brute_force(index, q: np.ndarray, keep, k: int):
    """Exact filtered top-k over every live row (reconstructed Flat vectors)."""
    rows = [(s, p) for s, shard in enumerate(index.shards) for p in range(shard.index.ntotal)]
    meta = {}
    for s, shard in enumerate(index.shards):
        for pid, rec in shard.store.get_many(shard.docids, with_pos=True).items():
            meta[(s, rec["pos"])] = rec["metadata"] | {"doc_id": rec["metadata"]["doc_id"]}
    allowed = [r for r in rows if keep(meta[r]) and r[1] not in set(index.shards[r[0]].deleted.tolist())]
    vecs = np.stack([index.shards[s].index.reconstruct(p) for s, p in allowed])
    scores = q @ vecs.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [[allowed[j] for j in row] for row in order], np.take_along_axis(scores, order, axis=1)


CASES = [
    ({"source": "pmc"}, lambda m: m["source"] == "pmc"),
    ({"year": {"in": [2003, 2011]}}, lambda m: m.get("year") in (2003, 2011)),
    ({"year": {"gte": 2005, "lt": 2008}, "source": {"in": ["pubmed", "web"]}},
     lambda m: 2005 <= m.get("year", -1) < 2008 and m["source"] in ("pubmed", "web")),
    ({"score": {"gt": 1.5}}, lambda m: m["score"] > 1.5),
    ({"doc_id": {"prefix": "doc07"}}, lambda m: m["doc_id"].startswith("doc07")),
    ({"year": 2001, "doc_id": {"prefix": "doc00"}}, lambda m: m.get("year") == 2001 and m["doc_id"].startswith("doc00")),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_filtered_flat_equals_brute_force_and_ivf_returns_k(filtered, case):
    from dretriever.index.sharded import ShardedIndex

    spec, keep = CASES[case]
    _, roots = filtered
    q = np.random.default_rng(case).normal(size=(8, 32)).astype(np.float32)
    flat = ShardedIndex.open(roots["Flat"])
    want, want_scores = brute_force(flat, q, keep, 10)
    ivf = ShardedIndex.open(roots["IVF8,PQ8"])  # same rows at the same positions, float32 vectors kept
    ivf.exact_limit = 10**9
    for index, plan in ((flat, "index"), (ivf, "exact")):  # the selector inside faiss; the exact scan of the matches
        scores, hits = index.search(q, 10, filter=spec)
        assert index.last_plan == plan
        for r in range(len(q)):
            assert_same_ranking([index.docid(*h) for h in hits[r]], scores[r][:len(hits[r])],
                                [flat.docid(*h) for h in want[r]], want_scores[r], atol=1e-5)
    ivf.exact_limit = 0
    ivf.set_search_params(nprobe=1, rerank=0)
    n_match = len(want[0]) if len(want[0]) < 10 else 10
    scores, hits = ivf.search(q, 10, filter=spec)
    assert all(len(h) == n_match for h in hits)  # k hits whenever k rows match, even with one list probed
    for r in range(len(q)):
        assert all(keep_hit(ivf, h, keep) for h in hits[r])


def keep_hit(index, hit, keep) -> bool:
    shard, pos = hit
    rec = index.shards[shard].store.get_many([index.docid(shard, pos)])
    return keep(next(iter(rec.values()))["metadata"])


def test_filters_with_tombstones_and_bad_filters(filtered, tiny_model, tmp_path):
    src, roots = filtered
    import shutil

    root = tmp_path / "ds"
    shutil.copytree(roots["Flat"], root)
    (tmp_path / "ids").write_text("".join(f"doc{i:04d}\n" for i in range(0, 800, 2)))
    delete_documents(root, tmp_path / "ids")
    r = Retriever.load(root, precision="fp32")
    from dretriever.index.merge import merge_index

    with pytest.raises(DretrieverError, match="has deleted rows; run `dretriever datastore compact"):
        merge_index(root, tmp_path / "merged")  # merging would bring the deleted rows back
    hits = r.search("w1 w2 w3", k=50, filter={"source": {"in": ["pubmed", "arxiv"]}})  # even ids: all deleted
    assert hits == []
    hits = r.search("w1 w2 w3", k=50, filter={"source": "pmc"})
    assert len(hits) == 50 and all(h.metadata["source"] == "pmc" for h in hits)
    for spec, message in [({"colour": "red"}, r"filter\.colour: unknown key; this datastore filters on: doc_id, year"),
                          ({"year": "2001"}, r"filter\.year: expected int, got str"),
                          ({"year": {"in": [2001, "x"]}}, r"filter\.year\.in\[1\]: expected int"),
                          ({"source": {"gte": 3}}, r"filter\.source\.gte: ranges need a numeric key"),
                          ({"year": {"near": 3}}, r"filter\.year\.near: unknown operator")]:
        with pytest.raises(DretrieverError, match=message):
            r.search("w1", k=5, filter=spec)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"_id": "a", "text": "x", "year": 2001},
                                                {"_id": "b", "text": "y", "year": "2002"}])
    with pytest.raises(DretrieverError, match=r"bad\.jsonl:2: metadata 'year': expected int, got str"):
        build_datastore(DatastoreArgs(sources=[str(bad)], output=str(tmp_path / "bad"), model=str(tiny_model), shards=1,
                                      filter_keys="year:int",
                                      progress=False))


# ---------------------------------------------------------------- hot reload
def test_server_filters_and_hot_reloads_a_new_generation(filtered, tiny_model, tmp_path):
    import shutil

    import httpx

    from dretriever.search.server import create_app
    from tests.uvicorn_thread import serving

    _, roots = filtered
    root = tmp_path / "ds"
    shutil.copytree(roots["Flat"], root)
    app = create_app(Retriever.load(root, precision="fp32"), api_key="k")
    with serving(app) as url:
        with httpx.Client(base_url=url, headers={"X-API-Key": "k"}, timeout=60) as http:
            r = http.post("/search", json={"query": "w5 w6", "k": 5, "filter": {"year": {"gte": 2018}}})
            assert r.status_code == 200 and r.headers["X-Dretriever-Generation"] == "0"
            assert r.json()["generation"] == 0 and all(h["metadata"]["year"] >= 2018 for h in r.json()["hits"])
            for body, field in [({"query": "w", "filter": {"colour": "red"}}, "filter"),
                                ({"query": "w", "filter": {"year": "2001"}}, "filter"),
                                ({"queries": ["w"], "filter": {"year": {"in": "x"}}}, "filter")]:
                bad = http.post("/batch_search" if "queries" in body else "/search", json=body)
                assert bad.status_code == 422 and bad.json()["field"] == field, bad.text
                assert "filter." in bad.json()["error"]
            bm25 = http.post("/search", json={"query": "w", "mode": "bm25", "filter": {"year": 2001}})
            assert bm25.status_code == 400  # this datastore has no BM25: the mode is refused
            assert httpx.post(f"{url}/admin/reload").status_code == 401
            write_jsonl(tmp_path / "new.jsonl", [{"_id": "zz-new", "text": "w5 w6 w5 w6", "year": 2030,
                                                  "source": "web", "score": 1.0}])
            add_documents(root, [str(tmp_path / "new.jsonl")], precision="fp32", progress=False)
            assert http.post("/search", json={"query": "w5", "filter": {"year": 2030}}).json()["hits"] == []
            done = http.post("/admin/reload")
            assert done.status_code == 200 and done.json() == {"generation": 1, "previous": 0, "passages": 801}
            r = http.post("/search", json={"query": "w5", "filter": {"year": 2030}})
            assert r.headers["X-Dretriever-Generation"] == "1" and [h["doc_id"] for h in r.json()["hits"]] == ["zz-new"]


# ---------------------------------------------------------------- kill -9
@pytest.fixture(scope="module")
def small_sequence(scifact_small, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("small_sequence")
    docs = [json.loads(line) for line in (scifact_small / "corpus.jsonl").open()]
    rng = np.random.default_rng(2)
    order = rng.permutation(len(docs))
    base, added = [docs[i] for i in sorted(order[:320])], [docs[i] for i in sorted(order[320:])]
    gone = [docs[i]["_id"] for i in rng.choice(len(docs), size=100, replace=False)]
    readded = [changed(d) for d in docs if d["_id"] in set(gone[:20])]
    final = [d for d in base + added if d["_id"] not in set(gone)] + readded
    for name, rows in (("base", base), ("added", added), ("readded", readded), ("final", final)):
        write_jsonl(tmp / f"{name}.jsonl", rows)
    (tmp / "deleted.txt").write_text("".join(d + "\n" for d in gone))
    queries = [json.loads(line)["text"] for line in (scifact_small / "queries.jsonl").open()]
    return tmp, queries


def driver(out: Path, model: Path, data: Path, steps: str = "build,add,delete,readd") -> list[str]:
    return CLI[:1] + ["-m", "tests.living_driver", str(out), str(model), str(data), steps]


def test_kill_9_during_a_change_leaves_the_previous_generation_and_a_rerun_finishes(small_sequence, tiny_model,
                                                                                     tmp_path):
    """A kill right after the add's new shards are built (journal in its commit phase, nothing published): the
    published generation still opens and answers; the rerun finishes the add without encoding again."""
    from .kill_harness import kill_when

    data, queries = small_sequence
    out = tmp_path / "ds"
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent.parent)}
    build(data / "base.jsonl", out, tiny_model, bm25=True)  # the commit phase rebuilds BM25: seconds to land in
    (tmp_path / "ds.steps").write_text('["build"]')
    before = Retriever.load(out, precision="fp32").batch_search(queries, 10)

    def committing():
        journal = gen.read_journal(out)
        return journal is not None and journal["phase"] == "commit"

    assert kill_when(driver(out, tiny_model, data, "add"), committing, env), "the add ended before its commit phase"
    assert mf.read_manifest(out).get("generation", 0) == 0 and gen.read_journal(out)["phase"] == "commit"
    assert [[h.id for h in r] for r in Retriever.load(out, precision="fp32").batch_search(queries, 10)] == \
           [[h.id for h in r] for r in before]
    done = subprocess.run(driver(out, tiny_model, data, "add"), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = mf.read_manifest(out)
    assert manifest["generation"] == 1 and not gen.read_journal(out) and not list(out.glob(".change-*"))
    added = len((data / "added.jsonl").read_text().splitlines())
    assert [(c["op"], c["added_documents"]) for c in manifest["changes"]] == [("add", added)]
    assert len(manifest["shards"]) == 5 and manifest["bm25"] == "bm25.g000001"
    assert len(Retriever.load(out, precision="fp32").index) == sum(e["num_docs"] for e in manifest["shards"])


def sequence_progress(out: Path) -> tuple[int, int]:
    """How far the living driver's sequence at ``out`` is: (steps finished, passages encoded so far, counting the
    published shards and a pending add's work folder). Monotone over the sequence, so kill points can be drawn
    from it: within the build, each add, the delete (between its step marker and the next) and the re-add."""
    from .kill_harness import encoded_passages

    marker = out.with_name(out.name + ".steps")
    steps = len(json.loads(marker.read_text())) if marker.is_file() else 0
    pending = sum(encoded_passages(work) for work in out.glob(".change-*") if work.is_dir())
    return steps, encoded_passages(out) + pending


def test_kill_9_at_random_moments_of_the_sequence_ends_identical(small_sequence, tiny_model, tmp_path):
    from .kill_harness import draw_points, finish, kill_at_progress, trajectory

    data, queries = small_sequence
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent.parent)}
    clean = tmp_path / "clean"
    _, states = trajectory(driver(clean, tiny_model, data), lambda: sequence_progress(clean), env)
    # 5 kill points among the states the clean run went through (drawn from its progress, not its duration)
    killed = tmp_path / "killed"
    points = draw_points(states, kills=5, seed=3)
    report = kill_at_progress(driver(killed, tiny_model, data), lambda: sequence_progress(killed), points, env=env)
    finish(driver(killed, tiny_model, data), env)
    assert report.kills_landed >= 3, report
    fresh = tmp_path / "fresh"
    build(data / "final.jsonl", fresh, tiny_model, bm25=True)
    b = Retriever.load(fresh, precision="fp32")
    for root in (clean, killed):
        a = Retriever.load(root, precision="fp32")
        assert len(a.index) == len(b.index)
        assert_same_results(a, b, queries, "dense")
        assert_same_results(a, b, queries, "bm25")
        assert not gen.read_journal(root) and not list(root.glob(".change-*"))


def test_compact_copies_ivf_codes_so_results_do_not_change(filtered, tmp_path):
    import shutil

    from dretriever.index.sharded import ShardedIndex

    _, roots = filtered
    root = tmp_path / "ivf"
    shutil.copytree(roots["IVF8,PQ8"], root)
    (tmp_path / "ids").write_text("".join(f"doc{i:04d}\n" for i in range(0, 800, 3)))
    delete_documents(root, tmp_path / "ids")
    q = np.random.default_rng(5).normal(size=(16, 32)).astype(np.float32)

    def run():
        index = ShardedIndex.open(root)
        index.set_search_params(nprobe=4)
        scores, hits = index.search(q, 20, filter={"year": {"lt": 2015}})
        return scores, [[index.docid(*h) for h in row] for row in hits], index

    before_scores, before_ids, _ = run()
    report = compact(root)
    after_scores, after_ids, index = run()
    assert report.compacted_shards == 3 and len(index) == sum(s.index.ntotal for s in index.shards) == 800 - 267
    np.testing.assert_array_equal(after_scores, before_scores)  # the same PQ codes in the same lists
    assert after_ids == before_ids
    assert sorted(p.name for p in root.glob("shard-*")) == [f"shard-{i:05d}" for i in range(6)]  # gen 1 kept
    removed = gen.collect_garbage(root, keep=1)  # only the current generation: the pre-compaction shards go
    assert sorted(removed) == ["shard-00000", "shard-00001", "shard-00002"]
    assert not list(root.glob("shard-*/deleted.*")) and len(ShardedIndex.open(root)) == 533
