"""Metadata filters at scale: exactness of filtered Flat, recall and speed of filtered IVF-PQ, k hits always.

Synthetic vectors (``eval/synthetic.py``, fitted to SciFact's MiniLM embeddings) are built into two datastores
of ``--shards`` shards each, a Flat one and an IVF-PQ one with float16 vectors kept for re-ranking, through the
real build (``Builder``: doc stores with the typed, indexed filter columns). Each row gets two metadata keys:
``cat`` (int, 100 values, 1 % of the rows each, assigned by a hash of the row number, not by the vectors) and
``num`` (float, uniform in [0, 100)). Filters: ``cat = 7`` (1 %), ``num < 50`` (50 %), ``cat in 0..9 and
num >= 50`` (5 %). For each, over ``--queries`` query vectors:

- Flat, as planned (exact scan of the matching rows when few) and forced through the faiss selector: top-10
  equal to brute-force filtered search over the float32 vectors (scores within 1e-4, ids up to score ties);
- IVF-PQ with re-ranking from float16, per ``--nprobes``, as planned and forced through the selector: recall@10 against the filtered exact result,
  queries/s (one batch of ``--queries``, warm page cache, including the filter's SQL and bitmap), the plan the planner chose, and the number of queries with fewer than 10 hits (0).

    python eval/bench_filters.py                                   # 1M vectors (the lead's quiet-machine run)
    python eval/bench_filters.py --vectors 100000 --factory IVF256,PQ48 --workdir /tmp/bf  # a quick check

Writes ``filters.json`` / ``filters.md`` to ``--output_dir``; exits 1 when a check fails.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: make ``eval`` importable
    sys.path.insert(0, str(REPO))

from dretriever.cli import parse, run_script  # noqa: E402
from dretriever.data.beir import Document  # noqa: E402
from dretriever.atomic import write_json_atomic, write_text_atomic  # noqa: E402
from dretriever.index.build import Batch, ShardedSource, build_index  # noqa: E402
from dretriever.index.sharded import ShardedIndex  # noqa: E402

FILTERS = {
    "1%": {"cat": 7},
    "5%": {"cat": {"in": list(range(10))}, "num": {"gte": 50.0}},
    "50%": {"num": {"lt": 50.0}},
}


@dataclass
class FilterArgs:
    vectors: int = 1_000_000
    shards: int = 4
    factory: str = "IVF1024,PQ48"
    train_sample: int = 65_536
    nprobes: list[int] = field(default_factory=lambda: [16, 32, 64])
    rerank: int = 200
    queries: int = 200
    k: int = 10
    seed: int = 0
    generator: str = field(default="scifact", metadata={"help": "scifact: the mixture fitted to SciFact MiniLM "
                                                                "embeddings (encodes SciFact once, cached); gaussian: "
                                                                "one fitted to a seeded Gaussian mixture (quick checks)"})
    workdir: str = field(default="/tmp/dretriever-bench-filters", metadata={"help": "scratch (removed at the end)"})
    output_dir: str = "eval/reports/filters"
    keep_work: bool = False


def metadata(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``cat`` (100 values, hashed row number) and ``num`` (uniform [0, 100)) of row numbers ``rows``."""
    h = (rows.astype(np.uint64) * np.uint64(2654435761)) % np.uint64(2 ** 32)
    cat = (h % np.uint64(100)).astype(np.int64)
    num = ((h >> np.uint64(8)) % np.uint64(100_000)).astype(np.float64) / 1000.0
    return cat, num


def source(model, n: int, shards: int, seed: int) -> ShardedSource:
    def batches():
        start = 0
        for x in model.iter_sample(n, seed=seed, chunk=8192):
            rows = np.arange(start, start + len(x))
            cat, num = metadata(rows)
            ids = [f"v{i}" for i in rows]
            docs = [Document("", "", {"doc_id": i, "cat": int(c), "num": float(v)}) for i, c, v in zip(ids, cat, num)]
            yield Batch(rows % shards, ids, docs, x, origin="synthetic", rows=rows + 1)
            start += len(x)

    return ShardedSource(shards, batches, {"synthetic": "eval.synthetic.scifact_model()", "n": n, "seed": seed},
                         dim=model.dim)


def build(model, args: FilterArgs, out: Path, factory: str, keep: str) -> ShardedIndex:
    if not (out / "manifest.json").is_file() or not json.loads((out / "manifest.json").read_text()).get("complete"):
        t = time.perf_counter()
        build_index(source(model, args.vectors, args.shards, args.seed), None, out, None, factory=factory,
                    train_sample=min(args.train_sample, args.vectors), keep_vectors=keep, progress=False,
                    chunk_docs=65536, filter_keys={"cat": "int", "num": "float"})
        print(f"built {out.name} ({factory}) in {time.perf_counter() - t:.0f} s", flush=True)
    index = ShardedIndex.open(out)
    return index


def exact(X: np.ndarray, mask: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    rows = np.flatnonzero(mask)
    best_d = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    for a in range(0, len(rows), 262_144):
        block = rows[a:a + 262_144]
        d = q @ np.asarray(X[block]).T
        d = np.concatenate([best_d, d], axis=1)
        i = np.concatenate([best_i, np.broadcast_to(block, (len(q), len(block)))], axis=1)
        top = np.argsort(-d, axis=1, kind="stable")[:, :k]
        best_d, best_i = np.take_along_axis(d, top, axis=1), np.take_along_axis(i, top, axis=1)
    return best_d, best_i


def row_numbers(index: ShardedIndex, shard_of: np.ndarray, pos: np.ndarray) -> np.ndarray:
    out = np.full(pos.shape, -1, np.int64)
    for (r, c), p in np.ndenumerate(pos):
        if p >= 0:
            out[r, c] = int(index.docid(int(shard_of[r, c]), int(p))[1:])
    return out


def main(argv) -> int:
    from eval.synthetic import scifact_model

    args = parse(FilterArgs, argv)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    if args.generator == "scifact":
        model = scifact_model()
    else:
        from eval.synthetic import VectorModel

        rng = np.random.default_rng(args.seed)
        centers = rng.normal(size=(64, 384))
        sample = centers[rng.integers(0, 64, 20_000)] + 0.8 * rng.normal(size=(20_000, 384))
        model = VectorModel.fit(sample / np.linalg.norm(sample, axis=1, keepdims=True), cells=16, rank=16,
                                seed=args.seed)
    q = model.queries(args.queries, seed=args.seed + 1)
    X = np.concatenate(list(model.iter_sample(args.vectors, seed=args.seed)))
    cat, num = metadata(np.arange(args.vectors))
    masks = {"1%": cat == 7, "5%": (cat < 10) & (num >= 50.0), "50%": num < 50.0}
    flat = build(model, args, work / "flat", "Flat", "none")
    ivf = build(model, args, work / "ivfpq", args.factory, "float16")
    report = {"command": "python eval/bench_filters.py " + " ".join(argv), "args": asdict(args),
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "filters": {}}
    ok = True
    for index in (flat, ivf):  # warm the page cache (indexes are memory-mapped): timings are of warm searches
        index.search_arrays(q, args.k)
    for name, spec in FILTERS.items():
        mask = masks[name]
        want_d, want_i = exact(X, mask, q, args.k)
        entry = {"filter": spec, "matching": int(mask.sum()), "flat": {}, "ivfpq": []}
        for plan, limit in (("planned", None), ("selector", 0)):
            if limit is not None:
                flat.exact_limit = limit
            t = time.perf_counter()
            scores, shard_of, pos = flat.search_arrays(q, args.k, filter=spec)
            secs = time.perf_counter() - t
            got = row_numbers(flat, shard_of, pos)
            equal = bool(np.allclose(scores, want_d, atol=1e-4) and all(
                set(got[r][np.abs(scores[r] - scores[r][-1]) > 1e-4]) <= set(want_i[r]) for r in range(len(q))))
            entry["flat"][plan] = {"plan": flat.last_plan, "equal_to_brute_force": equal, "qps": len(q) / secs}
            ok &= equal
            flat.exact_limit = 50_000
        for nprobe in args.nprobes:
            for limit in (None, 0):
                ivf.set_search_params(nprobe=nprobe, rerank=args.rerank)
                ivf.exact_limit = 50_000 if limit is None else 0
                t = time.perf_counter()
                scores, shard_of, pos = ivf.search_arrays(q, args.k, filter=spec)
                secs = time.perf_counter() - t
                got = row_numbers(ivf, shard_of, pos)
                recall = float(np.mean([len(set(got[r]) & set(want_i[r])) / args.k for r in range(len(q))]))
                short = int(((pos >= 0).sum(axis=1) < min(args.k, int(mask.sum()))).sum())
                entry["ivfpq"].append({"nprobe": nprobe, "rerank": args.rerank, "forced_selector": limit == 0,
                                       "plan": ivf.last_plan, "recall@10": recall, "qps": len(q) / secs,
                                       "queries_short_of_k": short})
                ok &= short == 0
        best = max(e["recall@10"] for e in entry["ivfpq"] if not e["forced_selector"])
        entry["ivfpq_best_recall_planned"] = best
        ok &= best >= 0.95
        report["filters"][name] = entry
        print(json.dumps({name: entry}), flush=True)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    report["passed"] = bool(ok)
    write_json_atomic(out / "filters.json", report)
    lines = ["# Filtered search", "", f"`{report['command']}` ({report['date']}), {args.vectors:,} vectors, "
             f"{args.shards} shards, {args.factory} + float16 re-rank {args.rerank}", "",
             "| filter | matching | Flat planned (plan, = brute force, q/s) | Flat selector (= brute force, q/s) |",
             "|---|---|---|---|"]
    for name, e in report["filters"].items():
        p, s = e["flat"]["planned"], e["flat"]["selector"]
        lines.append(f"| {name} `{json.dumps(e['filter'])}` | {e['matching']:,} | {p['plan']}, {p['equal_to_brute_force']}, "
                     f"{p['qps']:.0f} | {s['equal_to_brute_force']}, {s['qps']:.0f} |")
    lines += ["", "| filter | nprobe | plan | recall@10 | q/s | queries short of k |", "|---|---|---|---|---|---|"]
    for name, e in report["filters"].items():
        for r in e["ivfpq"]:
            lines.append(f"| {name} | {r['nprobe']} | {r['plan']}{' (forced)' if r['forced_selector'] else ''} | "
                         f"{r['recall@10']:.3f} | {r['qps']:.0f} | {r['queries_short_of_k']} |")
    lines += ["", f"all checks passed: **{ok}**", ""]
    write_text_atomic(out / "filters.md", "\n".join(lines))
    print("\n".join(lines))
    if not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    run_script(main)
