"""Scale benchmark: N synthetic vectors imported into a sharded IVF-PQ index, searched memory-mapped.

One run, on this machine (CPU model and flags printed):

1. generate ``--vectors`` x 384 vectors and ``--queries`` queries from ``eval/synthetic.py``'s model fitted
   to the MiniLM embeddings of SciFact (seeded; streamed to ``WORKDIR/vectors.npy``, never committed);
2. exact top-10 ground truth by brute force over the whole set (faiss ``knn`` in blocks);
3. ``dretriever index import`` of the vectors into ``--shards`` shards with ``--factory`` (one quantizer
   trained on a sample across shards), full vectors kept as float16 for exact re-ranking: build time;
4. in a fresh process (so that its memory is the index's, not the generator's): open time, anonymous RSS
   after open and its peak during search, queries/s at k=10 for a batch of all queries and for single
   queries, recall@10 for each ``nprobe`` x ``rerank`` setting (medians of ``--repeats`` timings);
5. Flat at ``--flat_vectors`` (the first rows of the same stream) as the exact anchor;
6. disk bytes per vector; a recall-vs-queries/s PNG and a JSON + markdown report.

Artifacts in ``--workdir`` are reused by a rerun with the same settings (the import resumes).

    python eval/bench_scale.py --vectors 10000000 --shards 16 --workdir /work/scale
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dretriever.cli import parse, run_script  # noqa: E402
from dretriever.index import manifest as mf  # noqa: E402
from dretriever.atomic import write_json_atomic, write_text_atomic  # noqa: E402


@dataclass
class ScaleArgs:
    vectors: int = 10_000_000
    queries: int = 1000
    shards: int = 16
    factory: str = "IVF4096,PQ48"
    train_sample: int | None = None
    nprobes: list[int] = field(default_factory=lambda: [8, 16, 32, 64, 128])
    reranks: list[int] = field(default_factory=lambda: [0, 100, 400])
    single_queries: int = 200
    repeats: int = 3
    threads: int = 2
    flat_vectors: int = 1_000_000
    workdir: str = "indexes/scale"
    output_dir: str = "eval/reports/scale"
    seed: int = 0
    query_seed: int = 1
    phase: str = field(default="all", metadata={"help": "all | search (internal: one fresh search process)"})
    index: str = ""


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    flags = next((line.split(":", 1)[1].split() for line in open("/proc/cpuinfo") if line.startswith("flags")), [])
    simd = [f for f in flags if f.startswith(("avx", "amx", "fma")) or f in ("f16c",)]
    return {"cpu": cpu, "cores": os.cpu_count(), "simd": simd, "faiss": faiss.__version__,
            "faiss_opt": faiss.get_compile_options(), "numpy": np.__version__}


def anon_rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon"))


class PeakRss:
    """Samples RssAnon every ``interval`` seconds in a thread; ``peak`` is the largest value seen.

    A sampled peak is a lower bound: a spike shorter than the interval can fall between two samples, and a
    longer run gets more chances to catch one. ``ru_maxrss`` (the kernel's exact high-water mark, file-backed
    pages included) is the figure to compare runs of different lengths by.

    ``label()`` (optional, e.g. the build's current stage) is read with each sample: ``peak_label`` is the
    label at the peak, and ``trace`` keeps ``(seconds, bytes, label)`` whenever RssAnon moved by 4 MiB or more,
    so a report can show where memory grows.
    """

    def __init__(self, label=None, interval: float = 0.01):
        self.peak, self._stop, self.interval = anon_rss(), threading.Event(), interval
        self.label, self.peak_label, self.trace = label, None, []
        self._t = threading.Thread(target=self._run, daemon=True)

    def _sample(self):
        rss, label = anon_rss(), self.label() if self.label else None
        if rss > self.peak:
            self.peak, self.peak_label = rss, label
        if not self.trace or abs(rss - self.trace[-1][1]) >= 4 << 20:
            self.trace.append((round(time.perf_counter() - self._t0, 2), rss, label))

    def _run(self):
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.interval)

    def __enter__(self):
        self._t0 = time.perf_counter()
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self._sample()


# ---------------------------------------------------------------- data
def generate(args: ScaleArgs, work: Path, n: int, name: str) -> tuple[Path, Path]:
    from eval.synthetic import scifact_model

    vec, ids = work / f"{name}.npy", work / f"{name}.ids"
    stamp = work / f"{name}.json"
    want = {"n": n, "seed": args.seed, "generator": "eval.synthetic.scifact_model()"}
    if stamp.is_file() and json.loads(stamp.read_text()) == want and vec.is_file() and ids.is_file():
        return vec, ids
    model = scifact_model()
    t = time.perf_counter()
    model.write_npy(vec, n, seed=args.seed)
    with open(ids, "w") as f:
        for start in range(0, n, 1_000_000):
            f.write("".join(f"v{i}\n" for i in range(start, min(n, start + 1_000_000))))
    print(f"generated {n:,} vectors in {time.perf_counter() - t:.0f} s -> {vec}", flush=True)
    write_json_atomic(stamp, want)
    return vec, ids


def queries(args: ScaleArgs) -> np.ndarray:
    from eval.synthetic import scifact_model

    return scifact_model().queries(args.queries, seed=args.query_seed)


def ground_truth(vec: Path, q: np.ndarray, k: int, cache: Path, block: int = 500_000) -> np.ndarray:
    """Exact top-``k`` row numbers by inner product over every vector (cached)."""
    if cache.is_file():
        return np.load(cache)
    data = np.load(vec, mmap_mode="r")
    best_d = np.full((len(q), k), -np.inf, dtype=np.float32)
    best_i = np.full((len(q), k), -1, dtype=np.int64)
    t = time.perf_counter()
    for start in range(0, len(data), block):
        x = np.ascontiguousarray(data[start:start + block])
        d, i = faiss.knn(q, x, k, metric=faiss.METRIC_INNER_PRODUCT)
        d, i = np.concatenate([best_d, d], 1), np.concatenate([best_i, i + start], 1)
        order = np.argsort(-d, axis=1, kind="stable")[:, :k]
        best_d, best_i = np.take_along_axis(d, order, 1), np.take_along_axis(i, order, 1)
    print(f"ground truth over {len(data):,} vectors in {time.perf_counter() - t:.0f} s", flush=True)
    np.save(cache, best_i)
    return best_i


def import_index(args: ScaleArgs, vec: Path, ids: Path, out: Path, factory: str, keep: str, shards: int) -> float:
    """``dretriever index import`` (in this process); seconds, or the recorded seconds of a finished import."""
    from dretriever.data.embeddings import EmbeddingReader
    from dretriever.index.build import build_index
    from dretriever.index.importing import embedding_source

    done = out / "bench-build.json"
    if done.is_file() and (out / mf.MANIFEST).is_file() and mf.read_manifest(out).get("complete"):
        return json.loads(done.read_text())["build_s"]
    t = time.perf_counter()
    source = embedding_source(EmbeddingReader(vec, ids=ids), shards)
    build_index(source, None, out, model=None, factory=factory, train_sample=args.train_sample,
                keep_vectors=keep, seed=args.seed, progress=True)
    build_s = time.perf_counter() - t
    write_json_atomic(done, {"build_s": build_s})
    return build_s


def disk_bytes(root: Path) -> dict:
    manifest = mf.read_manifest(root)
    total = {}
    for entry in manifest["shards"]:
        for name, size in entry["bytes"].items():
            total[name] = total.get(name, 0) + size
    return total


# ---------------------------------------------------------------- search (fresh process)
def search_phase(args: ScaleArgs) -> dict:
    """Open the index in this fresh process and measure everything that happens after that."""
    from dretriever.index.sharded import ShardedIndex

    faiss.omp_set_num_threads(args.threads)
    work = Path(args.workdir)
    q = np.load(work / "queries.npy")
    gt = np.load(work / f"gt.{Path(args.index).name}.npy")[:, :10]
    base_rss = anon_rss()
    t = time.perf_counter()
    index = ShardedIndex.open(args.index, threads=args.threads)
    open_s = time.perf_counter() - t
    rss_open = anon_rss() - base_rss
    is_ivf = "IVF" in index.manifest["faiss"]["factory"]
    settings = [(p, r) for p in (args.nprobes if is_ivf else [None]) for r in (args.reranks if is_ivf else [0])]
    rows = []
    with PeakRss() as peak:
        for nprobe, rerank in settings:
            index.set_search_params(rerank=rerank, **({"nprobe": nprobe} if nprobe else {}))
            index.search_arrays(q[:20], 10)  # warm-up (page cache)
            times = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                _, shard, pos = index.search_arrays(q, 10)
                times.append(time.perf_counter() - t)
            found = _rows_of(index, shard, pos)
            recall = float(np.mean([len(set(f) & set(g)) / 10 for f, g in zip(found, gt)]))
            single = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                for j in range(args.single_queries):
                    index.search_arrays(q[j:j + 1], 10)
                single.append(time.perf_counter() - t)
            row = {"nprobe": nprobe, "rerank": rerank, "recall@10": recall,
                   "qps_batch": len(q) / statistics.median(times), "batch_seconds": times,
                   "qps_single": args.single_queries / statistics.median(single), "single_seconds": single}
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if not k.endswith("seconds")}), flush=True)
    return {"open_s": open_s, "rss_after_open": rss_open, "rss_peak_search": peak.peak - base_rss,
            "rss_process_base": base_rss, "rows": rows}


def _rows_of(index, shard: np.ndarray, pos: np.ndarray) -> list[list[int]]:
    """Row numbers (``v{row}`` ids) of the hits."""
    return [[int(index.docid(int(s), int(p))[1:]) for s, p in zip(rs, rp) if p >= 0] for rs, rp in zip(shard, pos)]


def run_search(args: ScaleArgs, index: Path) -> dict:
    cmd = [sys.executable, __file__, "--phase", "search", "--index", str(index), "--workdir", args.workdir,
           "--threads", str(args.threads), "--repeats", str(args.repeats), "--single_queries",
           str(args.single_queries), "--nprobes", *map(str, args.nprobes), "--reranks", *map(str, args.reranks)]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- report
def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key, label in ((axes[0], "qps_batch", f"batch of {result['args']['queries']}"),
                           (axes[1], "qps_single", "single queries")):
        rows = result["ivf"]["rows"]
        for rerank in sorted({r["rerank"] for r in rows}):
            pts = [r for r in rows if r["rerank"] == rerank]
            ax.plot([r[key] for r in pts], [r["recall@10"] for r in pts], "o-",
                    label=f"{result['args']['factory']}, rerank {rerank or 'off'}")
            for r in pts:
                ax.annotate(str(r["nprobe"]), (r[key], r["recall@10"]), fontsize=7)
        flat = result["flat"]["rows"][0]
        ax.plot([flat[key]], [flat["recall@10"]], "k*", ms=12,
                label=f"Flat, {result['args']['flat_vectors']:,} vectors (exact anchor)")
        ax.axhline(0.90, color="grey", ls=":", lw=1)
        ax.axvline(200, color="grey", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel(f"queries/s at k=10 ({label}, {result['args']['threads']} threads)")
        ax.set_ylabel("recall@10 vs exact")
        ax.set_title(f"{result['args']['vectors']:,} x 384, {result['args']['shards']} shards (nprobe annotated)")
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(result: dict) -> str:
    a, ivf, flat = result["args"], result["ivf"], result["flat"]
    gib = 1024 ** 3
    per_file = ", ".join(f"{name} {size / a['vectors']:.1f}" for name, size in ivf["disk"].items())
    lines = [f"# Scale benchmark: {a['vectors']:,} synthetic vectors, {a['shards']} shards, `{a['factory']}`", "",
             f"Command: `{result['command']}`  ", f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} "
             f"cores, SIMD {' '.join(result['machine']['simd'])}; faiss {result['machine']['faiss']}  ",
             f"Date: {result['date']}", "",
             f"- build (`index import`: stage, train on a sample across shards, add, write): "
             f"**{ivf['build_s'] / 60:.1f} min**", f"- open: **{ivf['open_s']:.2f} s**; anonymous RSS after open "
             f"**{ivf['rss_after_open'] / gib:.2f} GiB**, peak during search **{ivf['rss_peak_search'] / gib:.2f} GiB** "
             f"(above the {ivf['rss_process_base'] / gib:.2f} GiB of a bare Python with faiss and numpy)",
             f"- disk: **{ivf['disk_bytes_per_vector']:.1f} bytes/vector** in all "
             f"({per_file})", "",
             "| nprobe | rerank | recall@10 | q/s (batch) | q/s (single) |", "|---:|---:|---:|---:|---:|"]
    for r in ivf["rows"]:
        lines.append(f"| {r['nprobe']} | {r['rerank'] or 'off'} | {r['recall@10']:.4f} | {r['qps_batch']:.0f} | "
                     f"{r['qps_single']:.0f} |")
    fr = flat["rows"][0]
    lines += ["", f"Exact anchor: Flat over the first {a['flat_vectors']:,} vectors, {a['shards']} shards: recall@10 "
              f"{fr['recall@10']:.4f}, {fr['qps_batch']:.1f} q/s (batch), {fr['qps_single']:.1f} q/s (single); "
              f"open {flat['open_s']:.2f} s.", "",
              f"Goals: recall@10 >= 0.90 at >= 200 q/s, RSS <= 3 GiB, open <= 5 s. q/s are medians of "
              f"{a['repeats']} timings.", "", "![recall vs q/s](scale.png)"]
    return "\n".join(lines) + "\n"


def main(argv) -> int:
    args = parse(ScaleArgs, argv)
    if args.phase == "search":
        print(json.dumps(search_phase(args)))
        return 0
    work, out = Path(args.workdir), Path(args.output_dir)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    faiss.omp_set_num_threads(args.threads)
    info = machine()
    print(json.dumps(info), flush=True)
    vec, ids = generate(args, work, args.vectors, f"vectors-{args.vectors}")
    q = queries(args)
    np.save(work / "queries.npy", q)
    result = {"command": "python eval/bench_scale.py " + " ".join(argv), "machine": info, "args": asdict(args),
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    for part, n, factory, keep in (("flat", args.flat_vectors, "Flat", "none"),
                                   ("ivf", args.vectors, args.factory, "float16")):
        v, i = (vec, ids) if n == args.vectors else generate(args, work, n, f"vectors-{n}")
        root = work / f"{part}-{n}-{factory.replace(',', '_')}-s{args.shards}"
        ground_truth(v, q, 100, work / f"gt.{root.name}.npy")
        build_s = import_index(args, v, i, root, factory, keep, args.shards)
        print(f"[{part}] built {root} in {build_s:.0f} s", flush=True)
        res = run_search(args, root)
        disk = disk_bytes(root)
        res.update(build_s=build_s, disk=disk, disk_bytes_per_vector=sum(disk.values()) / n, root=str(root))
        result[part] = res
        write_json_atomic(out / "scale.json", result)
    plot(result, out / "scale.png")
    write_text_atomic(out / "scale.md", markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    run_script(main)
