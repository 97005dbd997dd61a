"""``dretriever mine``: static hard negatives for STAR (and friends) from a built dense index.

Every judged query of ``--split`` is searched with the index's own query encoder; its judged documents
(any relevance, so that partially relevant ones are not used as negatives) and a document whose id
equals the query id are removed, and the next ``--depth`` ids are written, best first. On a datastore
(``dretriever datastore build``), whose rows are passages ``DOC#i``, each document counts once, at its best
passage, under its document id: the ids the trainers look up in the BEIR corpus.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..cli import command_line, parse
from ..data.beir import load_beir
from ..data.negatives import write_negatives
from ..errors import DretrieverError
from ..index.chunking import parent_id
from ..search.dense import DenseSearcher

log = logging.getLogger(__name__)


@dataclass
class MineArgs:
    index: str = field(metadata={"help": "a complete dense index (dretriever index build)"})
    data: str = field(metadata={"help": "BEIR dataset folder whose queries are mined"})
    output: str = field(metadata={"help": "negatives JSONL to write"})
    split: str = field(default="train", metadata={"help": "qrels split whose queries are mined (qrels/SPLIT.tsv)"})
    depth: int = field(default=200, metadata={"help": "negatives kept per query, in documents (STAR: 200)"})
    model: str | None = field(default=None, metadata={"help": "query encoder (default: the index's model)"})
    batch_size: int = field(default=128, metadata={"help": "queries per encoding batch, at most"})
    precision: str = field(default="auto", metadata={"help": "query encoding precision: auto (bf16 where the CPU or "
                                                             "GPU runs it natively, else fp32) | fp32 | bf16 | fp16"})

    def __post_init__(self):
        if self.depth <= 0:
            raise DretrieverError(f"depth: must be positive, got {self.depth}")
        if not Path(self.index, "manifest.json").is_file():
            raise DretrieverError(f"index: {self.index!r} has no manifest.json")


def mine(args: MineArgs, command: str = "") -> dict:
    t0 = time.time()
    ds = load_beir(args.data, split=args.split)
    searcher = DenseSearcher.load(args.index, model=args.model, batch_size=args.batch_size, precision=args.precision)
    max_judged = max(len(d) for d in ds.qrels.values())
    passages = "chunking" in searcher.index.manifest.get("source", {})  # a datastore: rows are passages
    run = searcher.search(ds.queries, k=args.depth + max_judged + 1)
    rows, short = [], 0
    for qid in ds.queries:
        judged = ds.qrels.get(qid, {})
        ranked = best_passage_per_document(run[qid]) if passages else run[qid]
        hits = [(d, s) for d, s in ranked if d not in judged and d != qid][:args.depth]
        short += len(hits) < args.depth
        rows.append({"qid": qid, "positives": sorted(d for d, r in judged.items() if r > 0),
                     "negatives": [d for d, _ in hits], "scores": [round(s, 6) for _, s in hits]})
    meta = {"index": str(args.index), "model": args.model or searcher.index.manifest["encoder"]["model"],
            "data": str(args.data), "split": args.split, "depth": args.depth, "queries": len(rows),
            "command": command}
    write_negatives(args.output, rows, meta)
    if short:
        log.warning("%d of %d queries got fewer than %d negatives (too few unjudged %s in the top %d)", short,
                    len(rows), args.depth, "documents" if passages else "rows", args.depth + max_judged + 1)
    log.info("%s: %d queries, depth %d, %.1fs", args.output, len(rows), args.depth, time.time() - t0)
    return meta


def best_passage_per_document(hits: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """A ranking of passages ``DOC#i`` as one of documents: each document once, at its best passage's score."""
    seen, out = set(), []
    for pid, score in hits:
        doc = parent_id(pid)
        if doc not in seen:
            seen.add(doc)
            out.append((doc, score))
    return out


def main(argv) -> int:
    args = parse(MineArgs, argv)
    meta = mine(args, command_line())
    print(f"{args.output}: hard negatives for {meta['queries']} queries (depth {meta['depth']})")
    return 0
