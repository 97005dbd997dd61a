"""Where ``Retriever.batch_search`` spends its time: query encoding, FAISS search and merge, id lookup, hits.

Each stage is timed on its own, ``--runs`` times (medians), with Python's garbage collector off as
``batch_search`` runs it (``heap.gc_paused``), then the whole call; with ``--gc_on_hits`` the hits are also
built once more with the collector on, to show what it costs. The fp32 linear layers' share of the encoding
is read from torch's profiler on one more encoding.

    python eval/profile_search.py --index indexes/scifact.datastore-flat --data $BEIR_DATA/scifact --precision fp32 \
        [--backend onnx]
"""

from __future__ import annotations

import gc
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import faiss

from dretriever.cli import parse, run_script
from dretriever.data.beir import load_beir
from dretriever.heap import gc_paused
from dretriever.search.retriever import Retriever, make_hits

if str(Path(__file__).resolve().parent) not in sys.path:  # eval/hardware.py
    sys.path.insert(0, str(Path(__file__).resolve().parent))


@dataclass
class ProfileArgs:
    index: str = field(metadata={"help": "a Flat or IVF datastore / index folder"})
    data: str = field(default_factory=lambda: os.path.join(os.environ.get("BEIR_DATA", "../shared/beir"), "scifact"))
    precision: str = "fp32"
    backend: str = field(default="", metadata={"help": "the query encoder's backend (default: the fastest for "
                                                       "this CPU: dretriever.autotune)"})
    max_tokens: int = 1024
    k: int = 1000
    runs: int = 5
    threads: int = 2
    gc_on_hits: bool = True


def main(argv) -> int:
    import torch

    from hardware import describe, encoder_flops, gemm_ceiling, machine

    args = parse(ProfileArgs, argv)
    print(describe(machine()))
    texts = list(load_beir(args.data, split="test").queries.values())
    retriever = Retriever.load(args.index, precision=args.precision, backend=args.backend or None)
    faiss.omp_set_num_threads(args.threads)
    retriever.dense.max_tokens = args.max_tokens
    retriever.batch_search(texts[:8], 10)  # warm-up
    index = retriever.index
    stages = {name: [] for name in ("encode", "search", "ids", "hits", "sum of stages", "batch_search")}
    gc_hits = []
    for _ in range(args.runs):
        with gc_paused():
            t0 = time.perf_counter()
            vectors = retriever.dense.encode(texts)
            t1 = time.perf_counter()
            found = index.search_arrays(vectors, args.k)
            t2 = time.perf_counter()
            rows = index.rows(*found)
            t3 = time.perf_counter()
            hits = [make_hits(index, row, False) for row in rows]
            t4 = time.perf_counter()
        for name, secs in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)):
            stages[name].append(secs)
        del hits
        if args.gc_on_hits and gc.isenabled():
            t = time.perf_counter()
            hits = [make_hits(index, row, False) for row in rows]
            gc_hits.append(time.perf_counter() - t)
            del hits
        t = time.perf_counter()
        retriever.batch_search(texts, args.k, with_text=False)
        stages["batch_search"].append(time.perf_counter() - t)
    backend = retriever.dense.encoder.backend
    print(f"{len(texts)} queries, k={args.k}, precision {args.precision}, backend {backend}, "
          f"max_tokens {args.max_tokens}; "
          f"medians of {args.runs} (seconds):")
    for name, secs in stages.items():
        print(f"  {name:15s} {statistics.median(secs):.3f}")
    if gc_hits:
        print(f"  {'hits, gc on':15s} {statistics.median(gc_hits):.3f}")
    if backend != "torch":  # torch's profiler sees no operators inside ONNX Runtime
        return 0

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        retriever.dense.encode(texts)
    ops = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
    total = sum(ops.values())
    linear = sum(v for key, v in ops.items() if key in ("aten::addmm", "aten::mm", "aten::linear", "aten::bmm"))
    config = retriever.dense.encoder.tower("query").config
    flops = encoder_flops(config, retriever.dense.encoder.token_rows(texts, "query").lengths.tolist())
    ceiling = gemm_ceiling(config.hidden_size, config.intermediate_size)["fp32" if args.precision == "fp32" else "bf16"]
    print(f"torch profiler, one encoding: matrix products {linear / 1e6:.3f} s of {total / 1e6:.3f} s of operator "
          f"time ({100 * linear / max(total, 1):.0f} %), torch {torch.__version__}; {flops / 1e9:.1f} GFLOP of useful "
          f"work = {flops / 1e9 / max(linear / 1e6, 1e-9):.0f} GFLOP/s in the matrix products, against a "
          f"{args.precision} GEMM ceiling of {ceiling:.0f} GFLOP/s measured now")
    return 0


if __name__ == "__main__":
    run_script(main)
