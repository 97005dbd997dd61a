"""The baseline our trainers must beat: a plain fine-tune with sentence-transformers' own trainer.

Same starting model and the same training queries as dretriever's recipes (``load_train_data``: the dev queries
are carved off, or the dataset's own ``--dev_split`` is held out), trained the way sentence-transformers'
documentation trains a retriever:

* hard negatives mined by ``sentence_transformers.util.mine_hard_negatives`` with the starting model over the
  whole corpus (every judged (query, document) pair is given, so all of a query's judged documents are excluded
  from its negatives); one negative per pair, drawn at random from ranks ``[range_min, range_max)``;
* one judged positive per query per epoch (drawn afresh each epoch, seeded), with that pair's mined negative:
  rows ``(anchor, positive, negative)``; the epochs' rows are concatenated and trained as one pass, so each
  query appears once per epoch-block, though the trainer shuffles across blocks;
* ``MultipleNegativesRankingLoss`` (in-batch negatives + the hard negatives of the batch; scale 20 = temperature
  0.05) or its cached variant (``--loss cached``, the gradient cache: larger batches at the same memory), batches
  without duplicate texts (``BatchSamplers.NO_DUPLICATES``), AdamW, linear warm-up 10 % then decay, bf16 autocast
  where the CPU has it (``--precision auto``).

The model is saved in the sentence-transformers layout (``OUT/final``) and scored by ``dretriever eval beir``
(Pyserini's FAISS + trec_eval), so its figures and per-query scores compare with ours by ``dretriever compare``:

    python eval/baseline_st.py --data ../shared/beir/nfcorpus --dev_split dev --output_dir /work/runs/st-nfcorpus
    dretriever eval beir --data ../shared/beir/nfcorpus --split dev --model /work/runs/st-nfcorpus/final \\
        --systems dense hybrid --fusion interpolation --alpha 0.5 --shards 2 --precision fp32 \\
        --index_root indexes/st --label st-baseline --output_dir eval/reports/nfcorpus/st-baseline

A rerun resumes from the trainer's last checkpoint in ``OUT/checkpoints`` (saved every ``--save_steps``).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from pathlib import Path

from dretriever.cli import run_script
from dretriever.encoder import autocast_dtype
from dretriever.errors import DretrieverError
from dretriever.models import resolve_model
from dretriever.train.data import load_train_data

log = logging.getLogger("baseline_st")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python eval/baseline_st.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="BEIR dataset folder (corpus.jsonl, queries.jsonl, qrels/)")
    p.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2", help="starting model (default: MiniLM)")
    p.add_argument("--output_dir", required=True, help="where OUT/final, OUT/checkpoints and OUT/summary.json go")
    p.add_argument("--train_split", default="train", help="qrels/<split>.tsv to train on (default: train)")
    p.add_argument("--dev_queries", type=int, default=80,
                   help="training queries carved off as dev, the same ones as the recipes' (default: 80; "
                        "0 with --dev_split)")
    p.add_argument("--dev_split", default="", help="the dataset's own dev qrels to hold out instead (e.g. dev)")
    p.add_argument("--epochs", type=int, default=2, help="epochs: one positive per query each (default: 2)")
    p.add_argument("--batch_size", type=int, default=32, help="queries per batch (default: 32)")
    p.add_argument("--lr", type=float, default=2e-5, help="peak learning rate (default: 2e-5)")
    p.add_argument("--warmup", type=float, default=0.1, help="warm-up share of the steps (default: 0.1)")
    p.add_argument("--loss", choices=["mnrl", "cached"], default="mnrl",
                   help="MultipleNegativesRankingLoss or CachedMultipleNegativesRankingLoss (default: mnrl)")
    p.add_argument("--mini_batch_size", type=int, default=16, help="cached loss: texts per forward (default: 16)")
    p.add_argument("--range_min", type=int, default=10, help="mined negatives: first rank drawn from (default: 10)")
    p.add_argument("--range_max", type=int, default=100, help="mined negatives: ranks drawn below (default: 100)")
    p.add_argument("--max_seq_length", type=int, default=256, help="tokens per text (default: 256, MiniLM's)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="auto: bf16 autocast where the CPU has native bf16, else fp32 (default: auto)")
    p.add_argument("--save_steps", type=int, default=20, help="checkpoint every N steps (default: 20)")
    p.add_argument("--seed", type=int, default=42, help="seed of the positive draws, mining and trainer (default: 42)")
    return p.parse_args(argv)


def judged_pairs(data) -> list[tuple[str, str]]:
    """Every judged (query text, document text) pair: what mining is given, so no judged document is a negative."""
    corpus, queries = data.corpus, data.queries
    pairs: list[tuple[str, str]] = []
    for qid in sorted(queries):
        for did in sorted(data.positives(qid)):
            if did not in corpus:
                raise DretrieverError(f"qrels: document {did!r} of query {qid!r} is not in the corpus")
            pairs.append((queries[qid], corpus[did].contents))
    return pairs


def epoch_rows(data, mined: dict[tuple[str, str], str], epochs: int, seed: int) -> list[dict]:
    """``(anchor, positive, negative)`` rows: per epoch, one judged positive per query (seeded draw)."""
    rows = []
    for epoch in range(epochs):
        rng = random.Random(f"st-baseline:{seed}:{epoch}")
        for qid in sorted(data.queries):
            positives = sorted(data.positives(qid))
            did = rng.choice(positives)
            q, d = data.queries[qid], data.corpus[did].contents
            neg = mined.get((q, d))
            if neg is not None:
                rows.append({"anchor": q, "positive": d, "negative": neg})
    return rows


def main(argv) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    import torch
    from datasets import Dataset
    from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments, losses)
    from sentence_transformers.training_args import BatchSamplers
    from sentence_transformers.util import mine_hard_negatives
    from transformers import set_seed

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    set_seed(args.seed)
    t0 = time.time()
    data = load_train_data(args.data, args.train_split, args.dev_queries, dev_split=args.dev_split)
    model = SentenceTransformer(resolve_model(args.model), device="cpu")
    model.max_seq_length = args.max_seq_length

    mined_path = out / "mined.jsonl"
    if mined_path.is_file():  # mining is deterministic; a rerun reads it back
        mined = {(r["anchor"], r["positive"]): r["negative"] for r in map(json.loads, mined_path.open())}
    else:
        pairs = judged_pairs(data)
        corpus = [d.contents for d in data.corpus.values()]
        pair_set = Dataset.from_dict({"anchor": [q for q, _ in pairs], "positive": [d for _, d in pairs]})
        triplets = mine_hard_negatives(pair_set, model, corpus=corpus, range_min=args.range_min,
                                       range_max=args.range_max, num_negatives=1, sampling_strategy="random",
                                       batch_size=64, use_faiss=True, verbose=False)
        mined = {(r["anchor"], r["positive"]): r["negative"] for r in triplets}
        tmp = mined_path.with_suffix(".tmp")
        with tmp.open("w") as f:
            for (a, p), n in mined.items():
                f.write(json.dumps({"anchor": a, "positive": p, "negative": n}) + "\n")
        tmp.replace(mined_path)
    rows = epoch_rows(data, mined, args.epochs, args.seed)
    log.info("%d training queries, %d mined pairs, %d rows over %d epochs (%.0f s)", len(data.queries), len(mined),
             len(rows), args.epochs, time.time() - t0)
    if not rows:
        raise DretrieverError("no training rows: mining found no negative for any pair")

    if args.loss == "cached":
        loss = losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=args.mini_batch_size)
    else:
        loss = losses.MultipleNegativesRankingLoss(model)
    bf16 = args.precision == "bf16" or (args.precision == "auto" and
                                        autocast_dtype(torch.device("cpu"), "auto") == torch.bfloat16)
    targs = SentenceTransformerTrainingArguments(
        output_dir=str(out / "checkpoints"), num_train_epochs=1, per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr, warmup_ratio=args.warmup, lr_scheduler_type="linear", bf16=bf16, use_cpu=True,
        batch_sampler=BatchSamplers.NO_DUPLICATES, save_strategy="steps", save_steps=args.save_steps,
        save_total_limit=2, logging_steps=5, seed=args.seed, report_to=[], dataloader_drop_last=False)
    trainer = SentenceTransformerTrainer(model=model, args=targs, train_dataset=Dataset.from_list(rows), loss=loss)
    ckpts = sorted((out / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    trainer.train(resume_from_checkpoint=str(ckpts[-1]) if ckpts else None)
    final = out / "final"
    model.save(str(final))
    summary = {"command": "python eval/baseline_st.py " + " ".join(argv), "rows": len(rows),
               "train_queries": len(data.queries), "bf16": bf16, "wall_s": round(time.time() - t0, 1),
               "log": trainer.state.log_history}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"saved {final} ({summary['wall_s']} s)")
    return 0


if __name__ == "__main__":
    run_script(main)
