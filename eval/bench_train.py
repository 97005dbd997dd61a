"""Training throughput: dretriever's STAR step against sentence-transformers' own trainer (MNRL).

Same model, same SciFact training triples (query, positive, one hard negative mined by zero-shot MiniLM) in
the same order and batches on both sides (the sentence-transformers trainer's shuffling is replaced by a
sequential batch sampler), batch 32, max length 256, AdamW + a linear schedule stepped every step on both
sides, at the precisions given (compare equal ones). The two are measured in one process, interleaved run by
run (so background load hits both alike); each run times ``--steps`` optimizer steps after ``--warmup``
untimed ones. Prints the CPU and its flags, the fp32/bf16 GEMM ceiling, per-run pairs/s, the medians and the
achieved GFLOP/s of each (forward + backward counted as 3x the forward's useful work, padding excluded).

    python eval/bench_train.py --runs 3 --steps 4 [--st_precisions fp32 bf16] [--ours_precision fp32]

A "pair" is one training query with its positive and negative (one row of the batch).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def triples(data: Path, negatives: Path | None, n: int) -> list[tuple[str, str, str, str, str]]:
    """``(qid, query, pos_id, neg_id)``-style rows: (qid, query, pos text, neg text, pos id)."""
    from dretriever.data.beir import load_beir
    from dretriever.data.negatives import read_negatives

    ds = load_beir(data, split="train")
    negs = read_negatives(negatives)[0] if negatives and negatives.is_file() else {}
    out = []
    ids = list(ds.corpus)
    for i, qid in enumerate(sorted(ds.qrels)):
        pos = sorted(d for d, r in ds.qrels[qid].items() if r > 0)[0]
        cands = [d for d in negs.get(qid, []) if d not in ds.qrels[qid]][3:30] or \
            [d for d in ids[i:] if d not in ds.qrels[qid]]
        neg = cands[i % len(cands)]
        out.append((qid, ds.queries[qid], pos, neg))
        if len(out) == n:
            break
    return out, ds


def bench_ours(rows, ds, batch: int, steps: int, warmup: int, precision: str, data: Path, neg_file: Path,
               device: str = "cpu", dropout: float | None = None) -> float:
    """Seconds per STAR optimizer step (Star.loss + backward + clip + AdamW + schedule), fp32 or autocast."""
    from dretriever.encoder import BiEncoder, autocast
    from dretriever.train.config import TrainArgs
    from dretriever.train.star import Star, StarArgs

    ta = TrainArgs(method="star", model=MODEL, output_dir="/tmp/bench-star", data=str(data), batch_size=batch,
                   precision=precision, query_max_length=256, doc_max_length=256)
    star = Star(StarArgs(negatives=str(neg_file), neg_start=3, neg_depth=30, temperature=0.05), ta)

    class Acc:
        num_processes, process_index = 1, 0

    enc = BiEncoder.from_pretrained(MODEL, query_max_length=256, doc_max_length=256).to(device)
    if dropout is not None:
        enc.set_dropout(dropout)
    enc.train()
    star.setup(enc, Acc())
    # the benchmark's fixed triples, in STAR's batch format
    items = [(q, p, [n]) for q, _, p, n in rows]
    batches = [{"global": items[i:i + batch], "local": items[i:i + batch]} for i in range(0, len(items) - batch + 1, batch)]
    opt = torch.optim.AdamW(enc.parameters(), lr=2e-5)
    from transformers import get_scheduler

    # the linear decay the sentence-transformers trainer (HF Trainer) also steps every step
    schedule = get_scheduler("linear", opt, num_warmup_steps=0, num_training_steps=warmup + steps)
    times = []
    for s in range(warmup + steps):
        b = batches[s % len(batches)]
        t = time.perf_counter()
        with autocast(enc.device, precision):
            loss, _ = star.loss(enc, b)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(enc.parameters(), 1.0)
        opt.step()
        schedule.step()
        opt.zero_grad(set_to_none=True)
        if device != "cpu":
            torch.cuda.synchronize()
        if s >= warmup:
            times.append(time.perf_counter() - t)
    return sum(times) / len(times)


def bench_st(rows, ds, batch: int, steps: int, warmup: int, precision: str, device: str = "cpu",
             dropout: float | None = None) -> float:
    """Seconds per step of SentenceTransformerTrainer + MultipleNegativesRankingLoss on (anchor, pos, neg)."""
    from datasets import Dataset
    from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments)
    from sentence_transformers.losses import MultipleNegativesRankingLoss
    from torch.utils.data import BatchSampler, SequentialSampler
    from transformers import TrainerCallback

    from dretriever.encoder import set_dropout
    from dretriever.models import resolve_model

    model = SentenceTransformer(resolve_model(MODEL), device=device)
    model.max_seq_length = 256
    if dropout is not None:
        set_dropout(model, dropout)
    n = batch * (warmup + steps)
    reps = (n + len(rows) - 1) // len(rows)
    rr = (rows * reps)[:n]
    dataset = Dataset.from_dict({"anchor": [r[1] for r in rr], "positive": [ds.corpus[r[2]].contents for r in rr],
                                 "negative": [ds.corpus[r[3]].contents for r in rr]})
    stamps = []

    class InOrder(SentenceTransformerTrainer):
        """The rows in the order given (HF's trainer shuffles): the same triples in the same batches as ours."""

        def get_batch_sampler(self, dataset, batch_size, drop_last, *a, **kw):
            return BatchSampler(SequentialSampler(range(len(dataset))), batch_size, drop_last)

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if device != "cpu":
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())

    args = SentenceTransformerTrainingArguments(
        output_dir="/tmp/bench-st", per_device_train_batch_size=batch, max_steps=warmup + steps, learning_rate=2e-5,
        warmup_ratio=0.0, bf16=precision == "bf16", fp16=False, use_cpu=device == "cpu", report_to="none",
        save_strategy="no", logging_strategy="no", dataloader_drop_last=True, seed=0)
    trainer = InOrder(model=model, args=args, train_dataset=dataset,
                                         loss=MultipleNegativesRankingLoss(model, scale=20.0), callbacks=[Timer()])
    trainer.train()
    # the timed steps = from the end of the last warm-up step to the end of the last step, so each one includes
    # fetching and collating (tokenizing) its batch, as ours includes tokenizing inside Star.loss
    return (stamps[-1] - stamps[warmup - 1]) / (len(stamps) - warmup)


def main(argv=None) -> int:
    global MODEL
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "beir" / "scifact"))
    p.add_argument("--negatives", default=str(REPO / "outputs" / "negatives" / "scifact.train.minilm.top200.jsonl"))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--ours_precision", default="fp32")
    p.add_argument("--st_precisions", nargs="+", default=["fp32"])
    p.add_argument("--device", default="cpu", help="cpu or cuda (both sides run there)")
    p.add_argument("--model", default=MODEL, help="the encoder both sides train (a hub name or a folder)")
    p.add_argument("--dropout", type=float, default=None,
                   help="dropout probability on both sides (default: the model's, 0.1 for MiniLM)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--output", default="", help="write the results as JSON here")
    a = p.parse_args(argv)
    if a.warmup < 1:
        p.error("--warmup must be >= 1 (the timing starts at the end of the last warm-up step)")
    if a.threads:
        torch.set_num_threads(a.threads)
    MODEL = a.model
    data, negf = Path(a.data), Path(a.negatives)
    rows, ds = triples(data, negf, a.batch * (a.steps + a.warmup))
    sys.path.insert(0, str(REPO / "eval"))
    from hardware import describe, encoder_flops, gemm_ceiling, machine
    from transformers import AutoConfig, AutoTokenizer

    from dretriever.models import resolve_model

    hw = machine()
    print(describe(hw))
    config = AutoConfig.from_pretrained(resolve_model(MODEL))
    ceiling = gemm_ceiling(config.hidden_size, config.intermediate_size)
    print(f"GEMM ceiling ({ceiling['shape']}): fp32 {ceiling['fp32']:.1f}, bf16 {ceiling['bf16']:.1f} GFLOP/s", flush=True)
    tok = AutoTokenizer.from_pretrained(resolve_model(MODEL))
    timed_rows = rows[a.batch * a.warmup:]  # what the timed steps train on (both sides)
    texts = [r[1] for r in timed_rows] + [ds.corpus[d].contents for r in timed_rows for d in (r[2], r[3])]
    lengths = [len(ids) for ids in tok(texts, truncation=True, max_length=256)["input_ids"]]
    flops_per_pair = 3 * encoder_flops(config, lengths) / len(timed_rows)  # forward + backward ~ 3 forwards
    results: dict[str, list[float]] = {f"dretriever-star-{a.ours_precision}": []}
    results.update({f"st-trainer-mnrl-{sp}": [] for sp in a.st_precisions})
    for run in range(a.runs):
        s = bench_ours(rows, ds, a.batch, a.steps, a.warmup, a.ours_precision, data, negf, a.device, a.dropout)
        results[f"dretriever-star-{a.ours_precision}"].append(a.batch / s)
        print(f"run {run}: dretriever STAR ({a.ours_precision}) {a.batch / s:.3f} pairs/s", flush=True)
        for sp in a.st_precisions:
            s = bench_st(rows, ds, a.batch, a.steps, a.warmup, sp, a.device, a.dropout)
            results[f"st-trainer-mnrl-{sp}"].append(a.batch / s)
            print(f"run {run}: sentence-transformers trainer MNRL ({sp}) {a.batch / s:.3f} pairs/s", flush=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    best_st = max(v for k, v in med.items() if k.startswith("st-"))
    ours = med[f"dretriever-star-{a.ours_precision}"]
    print("\nmedian pairs/s (batch %d, max length 256, 1 negative, %d timed steps x %d runs, torch threads %d, "
          "dropout %s):" % (a.batch, a.steps, a.runs, torch.get_num_threads(), "model's" if a.dropout is None else a.dropout))
    for k, v in med.items():
        ceil = ceiling["bf16" if k.endswith("bf16") else "fp32"]
        print(f"  {k:32s} {v:.3f}  ({v * flops_per_pair / 1e9:.1f} GFLOP/s, {100 * v * flops_per_pair / 1e9 / ceil:.0f} %"
              f" of the {'bf16' if k.endswith('bf16') else 'fp32'} GEMM)")
    print(f"  speed-up over the faster sentence-transformers setting: {ours / best_st:.2f}x")
    if a.output:
        Path(a.output).parent.mkdir(parents=True, exist_ok=True)
        Path(a.output).write_text(json.dumps({"runs": results, "median": med, "speedup": ours / best_st,
                                              "machine": hw, "gemm_ceiling_gflops": ceiling,
                                              "gflop_per_pair": flops_per_pair / 1e9, "args": vars(a)}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
