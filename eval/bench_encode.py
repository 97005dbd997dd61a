"""Document-encoding throughput: sentence-transformers ``encode()`` (its defaults) against dretriever.

Both encode the same SciFact documents (title + text, max 256 tokens) with all-MiniLM-L6-v2 in one
process, alternating, ``--runs`` times. Prints docs/s of each (median), the ratio, and the minimum cosine
between the two embeddings of each document. dretriever runs with ``--precision`` (default auto: bf16
autocast on CPUs with native bf16, fp32 elsewhere).

    python eval/bench_encode.py --data ../shared/beir/scifact --docs 1000 --runs 3
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/beir/scifact")
    p.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    p.add_argument("--docs", type=int, default=1000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--batch_size", type=int, default=64, help="dretriever batch size (its default: 64)")
    p.add_argument("--precision", default="auto")
    args = p.parse_args()

    from sentence_transformers import SentenceTransformer

    from dretriever.data.beir import load_corpus
    from dretriever.encoder import BiEncoder, autocast_dtype
    from dretriever.models import resolve_model

    corpus = load_corpus(Path(args.data) / "corpus.jsonl")
    docs = [d.contents for d in list(corpus.values())[: args.docs]]
    st = SentenceTransformer(resolve_model(args.model), device="cpu")
    ours = BiEncoder.from_pretrained(args.model)
    dtype = autocast_dtype(ours.device, args.precision)
    print(f"machine: {cpu_name()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
          f"native bf16: {torch.ops.mkldnn._is_mkldnn_bf16_supported()}")
    print(f"{len(docs)} documents; dretriever precision={args.precision} -> {dtype or 'fp32'}, "
          f"batch {args.batch_size}; sentence-transformers encode() defaults (batch 32, fp32)")

    st.encode(docs[:32])  # warm-up both
    ours.encode_docs(docs[:32], precision=args.precision)
    st_rates, our_rates, min_cos = [], [], []
    for run in range(args.runs):
        t = time.perf_counter()
        ref = st.encode(docs, convert_to_numpy=True)
        st_rates.append(len(docs) / (time.perf_counter() - t))
        t = time.perf_counter()
        emb = ours.encode_docs(docs, batch_size=args.batch_size, precision=args.precision)
        our_rates.append(len(docs) / (time.perf_counter() - t))
        cos = (emb * ref).sum(1) / (np.linalg.norm(emb, axis=1) * np.linalg.norm(ref, axis=1))
        min_cos.append(float(cos.min()))
        print(f"run {run + 1}: sentence-transformers {st_rates[-1]:.1f} docs/s, dretriever {our_rates[-1]:.1f} docs/s, "
              f"ratio {our_rates[-1] / st_rates[-1]:.2f}, min cosine {min_cos[-1]:.6f}", flush=True)
    st_med, our_med = statistics.median(st_rates), statistics.median(our_rates)
    result = {"docs": len(docs), "runs": args.runs, "st_docs_per_s": round(st_med, 2),
              "dretriever_docs_per_s": round(our_med, 2), "ratio": round(our_med / st_med, 3),
              "min_cosine": min(min_cos), "precision": str(dtype or "fp32"), "machine": cpu_name()}
    print(f"median: sentence-transformers {st_med:.1f} docs/s, dretriever {our_med:.1f} docs/s, "
          f"ratio {our_med / st_med:.2f}, min cosine {min(min_cos):.6f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
