"""Search benchmark: the Retriever API against Pyserini on SciFact, and Flat/HNSW/IVF-PQ on synthetic vectors.

Part ``scifact`` (one run, same machine and process, every side at ``--precision``; each setting of the
sweeps timed ``--repeats`` times, then the three sides at their best timed in turn in each of ``--repeats``
rounds, medians reported): the API's ``batch_search`` over the 300 test queries at k=1000 *including query encoding*
(at its best ``--max_tokens`` budget), against (1) Pyserini's ``FaissSearcher.batch_search`` over the same
vectors (the shards merged into one Pyserini index directory) with its ``AutoQueryEncoder`` (under the same
autocast), and (2) sentence-transformers ``encode()`` at its best backend and batch size (swept) followed
by the same sharded FAISS search; whether they return the same results; the search-only rate with
precomputed query vectors; the CPU, its flags, the fp32/bf16 GEMM ceiling and each side's GFLOP/s.

Part ``synthetic``: clustered unit vectors (``--centers`` Gaussian clusters around random unit centres,
noise ``--noise``) in ``--shards`` shards, indexes trained once on a sample across shards; for each
factory and search parameter: queries/s of the sharded exact-merge search (k=10), recall@10 against
exact (Flat) search, and index memory (serialized bytes). Recall against queries/s goes to a PNG.

    nice -n 10 python eval/bench_search.py --part scifact --index /tmp/indexes/scifact.all-MiniLM-L6-v2.Flat.s4 \
        --precision fp32
    nice -n 10 python eval/bench_search.py --part synthetic --sizes 100000 1000000
"""

from __future__ import annotations

import gc
import json
import os
import sys
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import numpy as np

from dretriever import pyserini_env
from dretriever.cli import parse, run_script
from dretriever.data.beir import load_beir
from dretriever.errors import DretrieverError
from dretriever.atomic import write_json_atomic
from dretriever.index.sharded import Shard, ShardedIndex
from dretriever.models import resolve_model
from dretriever.encoder import autocast, autocast_dtype
from dretriever.search.retriever import Retriever

if str(Path(__file__).resolve().parent) not in sys.path:  # eval/hardware.py, eval/st_side.py
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from st_side import SentenceTransformersSide, Timed, describe_versions  # noqa: E402

SETTLE = 0.5  # seconds idle before each timed call (interleaved)
# factory -> (search parameter, values swept); IVF-PQ uses 4-bit fast-scan PQ codes re-ranked exactly
FACTORIES = {
    "Flat": (None, [None]),
    "HNSW32": ("efSearch", [16, 32, 64, 128]),
    "IVF1024,PQ48x4fs,RFlat": ("nprobe", [4, 8, 16, 32, 64]),
}


@dataclass
class BenchArgs:
    part: str = field(default="scifact", metadata={"help": "scifact | synthetic"})
    precision: str = field(default="fp32", metadata={"help": "fp32 | bf16 | auto: every side of part scifact "
                                                              "(auto: each side's default on this CPU)"})
    st_python: str = field(default="", metadata={"help": "the sentence-transformers side's Python (default: "
                                                         ".venv-st, made by scripts/st_venv.sh on first use)"})
    backend: str = field(default="", metadata={"help": "dretriever's query backend (default: the fastest for this "
                                                       "CPU, measured once and cached: dretriever.autotune)"})
    max_tokens: list[int] = field(default_factory=lambda: [256, 512, 1024, 2048, 4096],
                                  metadata={"help": "dretriever token budgets to sweep (0: fixed batches of 128)"})
    st_backends: list[str] = field(default_factory=lambda: ["torch", "onnx", "openvino"])
    st_batch_sizes: list[int] = field(default_factory=lambda: [8, 16, 32, 64, 128])
    index: str = "/tmp/indexes/scifact.all-MiniLM-L6-v2.Flat.s4"
    data: str = field(default_factory=lambda: os.path.join(os.environ.get("BEIR_DATA", "../shared/beir"), "scifact"))
    k: int = 1000
    repeats: int = 3
    threads: int = 2
    sizes: list[int] = field(default_factory=lambda: [100_000, 1_000_000])
    dim: int = 384
    shards: int = 8
    queries: int = 1000
    centers: int = 2000
    noise: float = 0.8
    train_sample: int = 65_536
    hnsw_ef_construction: int = 40
    k_factor: int = 16
    factories: list[str] = field(default_factory=lambda: list(FACTORIES))
    output_dir: str = "eval/reports/search"
    seed: int = 0


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} (faiss {faiss.__version__})"


def timed(fn, repeats: int):
    """(median seconds, every timing, last result) over ``repeats`` calls."""
    times, results = interleaved({"fn": fn}, repeats)
    return statistics.median(times["fn"]), times["fn"], results["fn"]


def interleaved(fns: dict, repeats: int) -> tuple[dict[str, list[float]], dict]:
    """Seconds of each call per round (``repeats`` rounds, every function once per round, in turn) and each
    function's last result. A function that returns a ``Timed`` (eval/st_side.py: work done in another
    process, timed there) counts the seconds it reports. Each call starts from a collected heap, its own last
    result dropped (at k=1000 a side's result is 300,000 objects, and without this whichever side's call the
    garbage collector's full pass happens to fall in pays for every side's results still alive), and after
    :data:`SETTLE` seconds idle, so that the thread pools of the side before (OpenMP, OpenBLAS, OpenVINO), which
    spin for a while after their last task, have stopped taking the cores."""
    times, results = {name: [] for name in fns}, {}
    for _ in range(repeats):
        for name, fn in fns.items():
            results.pop(name, None)
            gc.collect()
            time.sleep(SETTLE)
            start = time.perf_counter()
            result = fn()
            seconds = time.perf_counter() - start
            if hasattr(result, "seconds") and hasattr(result, "value"):
                seconds, result = result.seconds, result.value
            results[name] = result
            times[name].append(seconds)
    return times, results


# ---------------------------------------------------------------- part a: SciFact
def merged_pyserini_dir(index: ShardedIndex, out: Path) -> Path:
    """One Pyserini FAISS directory (``index`` + ``docid``) holding every shard's vectors in shard order."""
    flat = faiss.IndexFlatIP(index.dim)
    for shard in index.shards:
        if not isinstance(shard.index, faiss.IndexFlat):
            raise DretrieverError(f"{shard.dir}: the Pyserini comparison needs a Flat index")
        flat.add(shard.index.reconstruct_n(0, shard.index.ntotal))
    faiss.write_index(flat, str(out / "index"))
    (out / "docid").write_text("".join(d + "\n" for s in index.shards for d in s.docids))
    return out


def st_query_encoders(args: BenchArgs, model: str, prefix: str, side) -> list[tuple[str, object]]:
    """(name, encode function) per sentence-transformers setting to sweep, run in its side venv
    (eval/st_side.py): the backends of ``--precision`` that load there, at every batch size. Each function
    returns a ``Timed``: the seconds ``encode`` took in the worker, and the embeddings."""
    found, missing = side.settings(model, args.precision, args.st_backends, args.st_batch_sizes, prefix=prefix)
    for key, why in missing.items():
        print(f"sentence-transformers {key}: not available ({why})")
    return [(f"{key} batch {bs}", encode) for key, bs, encode in found]


def bench_scifact(args: BenchArgs) -> dict:
    import torch
    from transformers import AutoConfig

    from hardware import describe, encoder_flops, gemm_ceiling, machine as cpu_machine

    ds = load_beir(args.data, split="test")
    qids = list(ds.queries)
    texts = [ds.queries[q] for q in qids]
    retriever = Retriever.load(args.index, precision=args.precision, backend=args.backend or None)
    enc = retriever.index.manifest["encoder"]
    faiss.omp_set_num_threads(args.threads)
    hw = cpu_machine()
    print(describe(hw))
    config = AutoConfig.from_pretrained(resolve_model(enc["model"]))
    ceiling = gemm_ceiling(config.hidden_size, config.intermediate_size)
    lengths = retriever.dense.encoder.token_rows(texts, "query").lengths.tolist()
    flops = encoder_flops(config, lengths)
    print(f"GEMM ceiling ({ceiling['shape']}): fp32 {ceiling['fp32']:.1f}, bf16 {ceiling['bf16']:.1f} GFLOP/s; "
          f"{len(texts)} queries, {sum(lengths)} tokens, {flops / 1e9:.1f} GFLOP; precision {args.precision} on every "
          f"side, backend {retriever.dense.encoder.backend}", flush=True)
    retriever.batch_search(texts[:8], 10)  # warm-up

    # our side at its best token budget (median of --repeats timings each on all queries)
    sweep = {}
    for budget in args.max_tokens:
        retriever.dense.max_tokens = budget or None
        secs = timed(lambda: retriever.batch_search(texts, args.k, with_text=False), args.repeats)[0]
        sweep[f"dretriever max_tokens {budget}"] = len(texts) / secs
    best_budget = max(args.max_tokens, key=lambda b: sweep[f"dretriever max_tokens {b}"])
    retriever.dense.max_tokens = best_budget or None
    text_s, text_all, _ = timed(lambda: retriever.batch_search(texts, args.k), args.repeats)
    qvecs = retriever.dense.encode(texts)
    only_s, only_all, _ = timed(lambda: retriever.index.search(qvecs, args.k), args.repeats)

    # sentence-transformers encode() at its best setting (timed in its worker) + the same sharded FAISS search
    side = SentenceTransformersSide(args.st_python, threads=args.threads)
    print(f"sentence-transformers side: {describe_versions(side.versions)}", flush=True)
    st_encoders = st_query_encoders(args, resolve_model(enc["model"]), enc["query_prefix"], side)
    index = retriever.index

    def st_search(encode):  # the same search and the same bulk id lookup as the API's with_text=False
        encoded = encode(texts)
        start = time.perf_counter()
        rows = index.rows(*index.search_arrays(encoded.value, args.k))
        return Timed(encoded.seconds + time.perf_counter() - start, rows)

    for name, encode in st_encoders:
        encode(texts[:8])
        sweep[f"sentence-transformers {name}"] = len(texts) / timed(lambda: st_search(encode), args.repeats)[0]
    st_name, st_encode = max(st_encoders, key=lambda ne: sweep[f"sentence-transformers {ne[0]}"])
    for name, rate in sweep.items():
        print(f"  sweep: {name:45s} {rate:7.1f} q/s", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        merged_pyserini_dir(retriever.index, Path(tmp))
        encoder = pyserini_env.auto_query_encoder(resolve_model(enc["model"]), pooling=enc["pooling"],
                                                  l2_norm=enc["normalize"], prefix=enc["query_prefix"] or None)
        searcher = pyserini_env.faiss_searcher(tmp, encoder)

        def pyserini_run(n=len(texts), k=args.k):
            with autocast(torch.device("cpu"), args.precision):
                return searcher.batch_search(texts[:n], qids[:n], k=k, threads=args.threads)

        pyserini_run(8, 10)  # warm-up
        # the three sides at their best settings, timed in turn in each of --repeats rounds, so a machine that
        # slows down or speeds up during the run weighs on all of them alike
        times, results = interleaved({"api": lambda: retriever.batch_search(texts, args.k, with_text=False),
                                      "st": lambda: st_search(st_encode), "pyserini": pyserini_run}, args.repeats)
    api_all, st_all, pys_all = times["api"], times["st"], times["pyserini"]
    api_s, st_s, pys_s = (statistics.median(t) for t in (api_all, st_all, pys_all))
    api, st_rows, pys = results["api"], results["st"], results["pyserini"]
    faiss.omp_set_num_threads(args.threads)

    same10 = sum([h.id for h in row[:10]] == [h.docid for h in pys[q][:10]] for q, row in zip(qids, api))
    same10_st = sum([h.id for h in row[:10]] == [d for d, _, _ in st[:10]] for row, st in zip(api, st_rows))
    overlap = statistics.mean(len({h.id for h in row} & {h.docid for h in pys[q]}) / args.k for q, row in zip(qids, api))
    max_diff = float(max(abs(a.score - float(b.score)) for q, row in zip(qids, api) for a, b in zip(row[:10], pys[q][:10])))
    n = len(texts)
    gflops = {name: flops / secs / 1e9 for name, secs in (("api", api_s), ("st", st_s), ("pyserini", pys_s))}
    result = {
        "machine_detail": hw, "gemm_ceiling_gflops": ceiling, "precision": args.precision,
        "backend": retriever.dense.encoder.backend, "query_tokens": sum(lengths),
        "index": args.index, "queries": n, "k": args.k, "repeats": args.repeats, "threads": args.threads,
        "best_max_tokens": best_budget, "best_st": st_name, "sweep_qps": sweep,
        "api_qps": n / api_s, "api_with_text_qps": n / text_s, "search_only_qps": n / only_s,
        "st_encode_plus_search_qps": n / st_s, "pyserini_qps": n / pys_s, "speedup_vs_pyserini": pys_s / api_s,
        "speedup_vs_st": st_s / api_s, "encoder_gflops_incl_search": gflops,
        "speedup_vs_pyserini_per_round": [p / a for p, a in zip(pys_all, api_all)],
        "speedup_vs_st_per_round": [t / a for t, a in zip(st_all, api_all)],
        "seconds": {"api": api_all, "api_with_text": text_all, "search_only": only_all, "st": st_all,
                    "pyserini": pys_all},
        "same_top10_queries": same10, "same_top10_queries_vs_st": same10_st, "mean_top1000_overlap": overlap,
        "max_top10_score_diff": max_diff,
        "versions": {"sentence-transformers side": side.versions},
    }
    side.close()
    bf16 = args.precision == "bf16" or autocast_dtype(torch.device("cpu"), args.precision) == torch.bfloat16
    ceil = ceiling["bf16" if bf16 else "fp32"]
    print(f"queries/s: dretriever {n / api_s:.1f} ({gflops['api']:.1f} GFLOP/s, {100 * gflops['api'] / ceil:.0f} % of "
          f"the GEMM), sentence-transformers {st_name} + search {n / st_s:.1f} ({gflops['st']:.1f} GFLOP/s), Pyserini "
          f"{n / pys_s:.1f} ({gflops['pyserini']:.1f} GFLOP/s); x{pys_s / api_s:.2f} Pyserini, x{st_s / api_s:.2f} "
          f"sentence-transformers; same top-10 {same10}/{n} (Pyserini), {same10_st}/{n} (sentence-transformers)")
    return result


# ---------------------------------------------------------------- part b: synthetic vectors
def clustered(rng: np.random.Generator, centers: np.ndarray, n: int, noise: float, block: int = 100_000):
    """``n`` unit vectors, each a random centre plus Gaussian noise of norm ~``noise``."""
    d = centers.shape[1]
    out = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, block):
        m = min(block, n - start)
        x = centers[rng.integers(0, len(centers), m)] + rng.standard_normal((m, d), dtype=np.float32) * (noise / d ** .5)
        out[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def sharded(indexes: list[faiss.Index], dim: int) -> ShardedIndex:
    return ShardedIndex(Path("."), {"dim": dim, "faiss": {}}, [Shard(Path("."), i, dim=dim) for i in indexes])


def build_shards(factory: str, data: np.ndarray, args: BenchArgs, rng: np.random.Generator) -> tuple[list, float]:
    start = time.perf_counter()
    template = faiss.index_factory(args.dim, factory, faiss.METRIC_INNER_PRODUCT)
    if "HNSW" in factory:
        faiss.downcast_index(template).hnsw.efConstruction = args.hnsw_ef_construction
    if not template.is_trained:
        template.train(data[rng.choice(len(data), min(args.train_sample, len(data)), replace=False)])
    bounds = np.linspace(0, len(data), args.shards + 1).astype(int)
    shards = []
    for i in range(args.shards):
        idx = faiss.clone_index(template)
        idx.add(data[bounds[i]:bounds[i + 1]])
        shards.append(idx)
    return shards, time.perf_counter() - start


def recall_at(found: list[list[tuple[int, int]]], truth: list[list[tuple[int, int]]], k: int = 10) -> float:
    return statistics.mean(len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth))


def bench_synthetic(args: BenchArgs, save=lambda rows: None) -> list[dict]:
    """Rows per (size, factory, parameter); ``save(rows)`` after each factory, so a long run keeps its results."""
    rows = []
    for size in args.sizes:
        rng = np.random.default_rng(args.seed)
        centers = rng.standard_normal((args.centers, args.dim), dtype=np.float32)
        centers /= np.linalg.norm(centers, axis=1, keepdims=True)
        data = clustered(rng, centers, size, args.noise)
        queries = clustered(rng, centers, args.queries, args.noise)
        truth = None
        flat_qps = None
        for factory in args.factories:
            param, values = FACTORIES.get(factory, (None, [None]))
            print(f"[{size}] building {factory} in {args.shards} shards", flush=True)
            shards, build_s = build_shards(factory, data, args, rng)
            index = sharded(shards, args.dim)
            memory = sum(faiss.serialize_index(s).nbytes for s in shards)
            for value in values:
                if param == "nprobe":
                    index.set_search_params(nprobe=value, k_factor_rf=args.k_factor)
                elif param:
                    index.set_search_params(**{param: value})
                index.search(queries[:10], 10)  # warm-up
                secs, all_s, (_, hits) = timed(lambda: index.search(queries, 10), args.repeats)
                if truth is None:
                    if factory != "Flat":
                        raise DretrieverError("factories: put Flat first (it gives the exact neighbours)")
                    truth, flat_qps = hits, len(queries) / secs
                row = {"vectors": size, "dim": args.dim, "shards": args.shards, "factory": factory,
                       "param": f"{param}={value}" if param else "", "qps": len(queries) / secs,
                       "speedup_vs_flat": len(queries) / secs / flat_qps, "recall@10": recall_at(hits, truth),
                       "memory_bytes": memory, "build_s": build_s, "seconds": all_s}
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "seconds"}), flush=True)
            save(rows)
            del shards, index
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["vectors"] for r in rows})
    fig, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 4.5), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        for factory in dict.fromkeys(r["factory"] for r in rows):
            pts = [r for r in rows if r["vectors"] == size and r["factory"] == factory]
            ax.plot([r["qps"] for r in pts], [r["recall@10"] for r in pts], "o-", label=factory)
            for r in pts:
                if r["param"]:
                    ax.annotate(r["param"].split("=")[1], (r["qps"], r["recall@10"]), fontsize=7)
        ax.axhline(0.95, color="grey", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("queries/s (k=10, all shards, exact merge)")
        ax.set_ylabel("recall@10 vs exact")
        ax.set_title(f"{size:,} x {rows[0]['dim']} vectors, {rows[0]['shards']} shards")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv) -> int:
    args = parse(BenchArgs, argv)
    faiss.omp_set_num_threads(args.threads)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"machine": machine(), "command": "python eval/bench_search.py " + " ".join(argv), "args": asdict(args),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if args.part == "scifact":
        result = bench_scifact(args)
        write_json_atomic(out / "bench_search_scifact.json", {**meta, **result})
        print(json.dumps({k: v for k, v in result.items() if k != "seconds"}, indent=1))
    elif args.part == "synthetic":
        tag = "_".join(str(s) for s in args.sizes)

        def save(rows):
            write_json_atomic(out / f"bench_search_synthetic_{tag}.json", {**meta, "rows": rows})
            plot(rows, out / f"bench_search_synthetic_{tag}.png")

        bench_synthetic(args, save)
        print(f"wrote {out}/bench_search_synthetic_{tag}.json and .png")
    else:
        raise DretrieverError(f"part: expected scifact or synthetic, got {args.part!r}")
    return 0


if __name__ == "__main__":
    run_script(main)
