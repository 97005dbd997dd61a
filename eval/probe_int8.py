"""Probe for issue 13's int8 backend: does static int8 (ONNX Runtime, calibrated on the user's own passages)
pay on this CPU, and what does it cost in quality?

The model's fp32 ONNX export (the ``onnx`` backend's, ``dretriever/runtime.py``) is quantised by
``dretriever.quantize.quantize_int8`` (QDQ, int8 weights per channel, uint8 activations, only the ``MatMul``s
with a weight: attention's products of two activations stay fp32, and with ``--ffn_out_fp32`` the
feed-forward output projections too), calibrated on ``--calibration`` passages drawn (seeded) from the corpus.
``--ffn_out_fp32 true`` with MinMax is the recipe the ``onnx-int8`` backend adopted; the probe keeps the other
choices to measure them. Then, in one process, medians of ``--runs``: queries/s and documents/s of torch fp32,
ONNX fp32 and ONNX int8 (the same token-budget batches and pooling for all three); min/mean cosine of int8
to torch fp32; and, with ``--ndcg``, SciFact nDCG@10 of int8 queries over int8 documents against fp32 queries
over fp32 documents (brute force over the whole corpus, Pyserini's trec_eval).

    python eval/probe_int8.py --data $BEIR_DATA/scifact --ndcg true --ffn_out_fp32 true
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dretriever.cli import parse, run_script
from dretriever.data.beir import load_beir
from dretriever.encoder import BiEncoder
from dretriever.evaluation.metrics import score_run, write_trec_qrels
from dretriever.models import resolve_model
from dretriever.quantize import quantize_int8, weighted_matmuls
from dretriever.runtime import OnnxSession
from dretriever.search.types import write_trec_run
from dretriever.token_batches import plan_batches

if str(Path(__file__).resolve().parent) not in sys.path:  # eval/hardware.py, eval/bench_search.py
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_search import timed  # noqa: E402
from hardware import describe, machine  # noqa: E402


@dataclass
class ProbeArgs:
    data: str = field(default_factory=lambda: os.path.join(os.environ.get("BEIR_DATA", "../shared/beir"), "scifact"))
    model: str = "sentence-transformers/all-MiniLM-L6-v2"
    calibration: int = field(default=256, metadata={"help": "passages drawn from the corpus to calibrate on"})
    method: str = field(default="MinMax", metadata={"help": "calibration: MinMax | Entropy | Percentile"})
    ffn_out_fp32: bool = field(default=False, metadata={"help": "leave the feed-forward output products in fp32"})
    docs: int = field(default=300, metadata={"help": "documents timed"})
    runs: int = 3
    max_tokens: int = 1024
    ndcg: bool = field(default=False, metadata={"help": "also encode the whole corpus in fp32 and int8 and score both"})
    seed: int = 0


def encode(encoder: BiEncoder, texts: list[str], side: str, tower, max_tokens: int) -> np.ndarray:
    """``tower`` None: torch; else an :class:`OnnxSession`. Pooling and normalisation are the encoder's."""
    rows = encoder.token_rows(texts, side)
    out = np.empty((len(texts), encoder.dim), dtype=np.float32)
    with torch.inference_mode():
        for idx in plan_batches(rows.lengths, 128, max_tokens):
            batch = rows.batch(idx)
            if tower is None:
                out[idx] = encoder.embed(batch, side).float().numpy()
            else:
                out[idx] = encoder._pool(tower(batch), batch["attention_mask"]).numpy()
    return out


def quantize(fp32: Path, out: Path, encoder: BiEncoder, passages: list[str], method: str,
             ffn_out_fp32: bool = False) -> Path:
    """The backend's quantisation (``dretriever.quantize``) with this probe's choices: the calibration method,
    and whether the feed-forward output products stay fp32 (the backend's recipe) or are quantised too."""
    rows = encoder.token_rows(passages, "doc")
    batches = (rows.batch(idx) for idx in plan_batches(rows.lengths, 32, 4096))
    kept = (lambda graph: weighted_matmuls(graph)[1]) if ffn_out_fp32 else activation_products
    quantize_int8(fp32, out, batches, kept=kept, method=method)
    print(f"int8 graph: calibration {method}, feed-forward outputs {'fp32' if ffn_out_fp32 else 'int8'}")
    return out


def activation_products(graph) -> list[str]:
    """Attention's two MatMuls of activations by activations (the only ones without a weight)."""
    weights = {w.name for w in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "MatMul" and not weights & set(n.input)]


def rate(fn, n: int, runs: int) -> float:
    return n / timed(fn, runs)[0]


def ndcg(vectors_q: np.ndarray, qids: list[str], vectors_d: np.ndarray, dids: list[str], tmp: Path, tag: str) -> float:
    """nDCG@10 of brute-force top-1000 runs (a document with its query's id removed, as BEIR's runs do)."""
    scores = vectors_q @ vectors_d.T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :1000]
    run = {q: [(dids[j], float(scores[i, j])) for j in top[i] if dids[j] != q] for i, q in enumerate(qids)}
    write_trec_run(run, tmp / f"{tag}.trec", tag)
    return score_run(tmp / "qrels", tmp / f"{tag}.trec")["ndcg_cut_10"]


def main(argv) -> int:

    args = parse(ProbeArgs, argv)
    print(describe(machine()))
    ds = load_beir(args.data, split="test")
    qids = list(ds.queries)
    queries = [ds.queries[q] for q in qids]
    dids = list(ds.corpus)
    rng = np.random.default_rng(args.seed)
    calibration = [ds.corpus[dids[i]].contents for i in rng.choice(len(dids), args.calibration, replace=False)]
    timed_docs = [ds.corpus[d].contents for d in dids[:args.docs]]

    encoder = BiEncoder.from_pretrained(resolve_model(args.model), backend="onnx")
    encoder.eval()
    fp32_path = encoder.runtime("query").path  # exported once, cached beside the model
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        onnx32 = OnnxSession(fp32_path)
        t = time.perf_counter()
        int8 = OnnxSession(quantize(fp32_path, tmp / "int8.onnx", encoder, calibration, args.method,
                                    args.ffn_out_fp32))
        print(f"quantised in {time.perf_counter() - t:.1f} s, calibrated on {len(calibration)} passages", flush=True)
        sides = {"torch fp32": None, "onnx fp32": onnx32, "onnx int8": int8}
        for tower in sides.values():
            encode(encoder, queries[:16], "query", tower, args.max_tokens)  # warm-up
        vecs = {name: encode(encoder, queries, "query", tower, args.max_tokens) for name, tower in sides.items()}
        docvecs = {name: encode(encoder, timed_docs, "doc", tower, args.max_tokens) for name, tower in sides.items()}
        for name, tower in sides.items():
            q = rate(lambda: encode(encoder, queries, "query", tower, args.max_tokens), len(queries), args.runs)
            d = rate(lambda: encode(encoder, timed_docs, "doc", tower, args.max_tokens), len(timed_docs), args.runs)
            cq = np.einsum("ij,ij->i", vecs[name], vecs["torch fp32"])
            cd = np.einsum("ij,ij->i", docvecs[name], docvecs["torch fp32"])
            print(f"{name:11s} queries {q:6.1f}/s  docs {d:5.1f}/s  cosine to torch fp32: queries min {cq.min():.4f} "
                  f"mean {cq.mean():.4f}, docs min {cd.min():.4f} mean {cd.mean():.4f}", flush=True)
        if args.ndcg:
            write_trec_qrels(ds.qrels, tmp / "qrels")
            texts = [ds.corpus[d].contents for d in dids]
            results = {}
            for name in ("torch fp32", "onnx int8"):
                t = time.perf_counter()
                corpus = encode(encoder, texts, "doc", sides[name], 4096)
                results[name] = ndcg(vecs[name], qids, corpus, dids, tmp, name.replace(" ", "-"))
                secs = time.perf_counter() - t
                print(f"{name}: SciFact nDCG@10 {results[name]:.4f} (corpus encoded in {secs:.0f} s)", flush=True)
            print(f"int8 - fp32: {results['onnx int8'] - results['torch fp32']:+.4f} (the issue's bar: within 0.005)")
    return 0


if __name__ == "__main__":
    run_script(main)
