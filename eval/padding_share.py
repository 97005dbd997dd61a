"""How much of a training step's encoder work is padding, per dataset: where padding-free batches help.

A contrastive step (STAR, the sentence-transformers trainer's MNRL) encodes ``--batch`` queries, their
positives and one negative each, every group padded to its longest row. This draws seeded batches of a
BEIR dataset's training queries (a judged positive and a random corpus document as the negative, the
document lengths a step meets) and prints, per side, the share of the encoder's FLOPs (counted as in
``hardware.encoder_flops``: projections and feed-forward per token, attention per token pair) spent on
padding when:

- ``padded``: each group is one batch padded to its longest row (both trainers today);
- ``sorted/N``: a group's rows sorted by length and cut into N sub-batches, each padded to its own longest
  (what a padding-aware step could do with no change to the loss);
- ``unpadded``: 0 by definition (variable-length attention), the ceiling.

No model runs: only the tokenizer. The speed-up a padding-free step could give over ``padded`` is at most
``1 / (1 - share)`` of the encoder's time.

    python eval/padding_share.py --data ../shared/beir/scifact --data ../shared/beir/nfcorpus
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
for p in (str(REPO), str(REPO / "eval")):
    if p not in sys.path:
        sys.path.insert(0, p)

from hardware import encoder_flops  # noqa: E402

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def padded_flops(config, lengths: np.ndarray, pieces: int) -> float:
    """FLOPs of encoding rows of ``lengths`` in ``pieces`` length-sorted sub-batches, each padded to its
    longest row."""
    total = 0.0
    for part in np.array_split(np.sort(lengths), pieces):
        if len(part):
            total += encoder_flops(config, [int(part.max())] * len(part))
    return total


def share(config, groups: list[np.ndarray], pieces: int) -> float:
    """Padding's share of the FLOPs of encoding ``groups`` (each group one batch of a step), each cut into
    ``pieces`` length-sorted sub-batches."""
    useful = sum(encoder_flops(config, g.tolist()) for g in groups)
    return 1 - useful / sum(padded_flops(config, g, pieces) for g in groups)


def label(pieces: int) -> str:
    return "padded" if pieces == 1 else f"sorted/{pieces}"


def dataset_lengths(data: Path, split: str, tok, batch: int, batches: int, q_max: int, d_max: int, seed: int):
    """(query groups, positive groups, negative groups) of token lengths for ``batches`` seeded batches."""
    from dretriever.data.beir import load_beir

    ds = load_beir(data, split=split)
    qids = sorted(q for q in ds.qrels if q in ds.queries and any(r > 0 for r in ds.qrels[q].values()))
    docs = sorted(ds.corpus)
    rng = random.Random(seed)
    if len(qids) < batch:
        raise SystemExit(f"{data}: {len(qids)} {split} queries with a positive, fewer than --batch {batch}")

    def lengths(texts, max_length):
        return np.array([len(x) for x in tok(texts, truncation=True, max_length=max_length)["input_ids"]])

    groups = ([], [], [])
    for _ in range(batches):
        picked = rng.sample(qids, batch)
        pos = [rng.choice(sorted(d for d, r in ds.qrels[q].items() if r > 0 and d in ds.corpus)) for q in picked]
        neg = [rng.choice(docs) for _ in picked]
        groups[0].append(lengths([ds.queries[q] for q in picked], q_max))
        groups[1].append(lengths([ds.corpus[d].contents for d in pos], d_max))
        groups[2].append(lengths([ds.corpus[d].contents for d in neg], d_max))
    return groups


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", action="append", required=True, help="a BEIR dataset folder (repeatable)")
    p.add_argument("--split", default="train")
    p.add_argument("--model", default=MODEL)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--batches", type=int, default=50, help="seeded batches drawn per dataset")
    p.add_argument("--query_max_length", type=int, default=256, help="as bench_train.py (both sides 256)")
    p.add_argument("--doc_max_length", type=int, default=256)
    p.add_argument("--pieces", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    from transformers import AutoConfig, AutoTokenizer

    from dretriever.models import resolve_model

    config = AutoConfig.from_pretrained(resolve_model(a.model))
    tok = AutoTokenizer.from_pretrained(resolve_model(a.model))
    pieces = sorted(set([1] + a.pieces))
    print(f"batch {a.batch}, {a.batches} seeded batches per dataset, max length query {a.query_max_length} / "
          f"doc {a.doc_max_length}, {a.model}")
    print("padding's share of the encoder FLOPs per group of a step, by batching; mean real tokens per row, "
          "and the share of rows cut at the max length")
    for data in a.data:
        groups = dataset_lengths(Path(data), a.split, tok, a.batch, a.batches, a.query_max_length,
                                 a.doc_max_length, a.seed)
        name = Path(data).name
        for side, g, cap in zip(("queries", "positives", "negatives"), groups,
                                (a.query_max_length, a.doc_max_length, a.doc_max_length)):
            rows = np.concatenate(g)
            print(f"  {name:10s} {side:9s} " + "  ".join(f"{label(n)} {100 * share(config, g, n):5.1f} %" for n in pieces)
                  + f"   mean {rows.mean():6.1f} tokens, {100 * (rows == cap).mean():4.1f} % at {cap}")
        step = [g for side in groups for g in side]
        whole = share(config, step, 1)
        print(f"  {name:10s} {'step':9s} " + "  ".join(f"{label(n)} {100 * share(config, step, n):5.1f} %" for n in pieces)
              + f"   (a padding-free step: at most {1 / (1 - whole):.2f}x the padded one's encoder speed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
