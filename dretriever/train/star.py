"""STAR (Zhan et al., "Optimizing Dense Retrieval Model Training with Hard Negatives", SIGIR 2021).

Batches: ``batch_size`` training queries per process, each with one of its positives and
``hard_negatives`` static hard negatives sampled (fresh every epoch) from ranks ``[neg_start, neg_depth)``
of the list ``dretriever mine`` wrote from a warm-up model's index (positives already excluded). The
other queries' positives are the random negatives ("in-batch"); positives and hard negatives are gathered
from every process, and every query is scored against all of them (DRhard shares the hard negatives of a
batch across its queries too). Loss: the pairwise softmax of :mod:`dretriever.train.losses.pairwise`,
averaged over all valid (query, positive, negative) pairs; pairs whose negative is judged relevant to the
query are masked out. ``loss: softmax`` swaps in one cross-entropy per query over the same candidates
(the listwise loss of DPR / sentence-transformers' MultipleNegativesRankingLoss). At lr 1e-4 the softmax
holds SciFact's level (test 0.7843 against the pairwise recipe's 0.7883, ``eval/reports/star-softmax``) and on
NFCorpus dev beats zero-shot where the pairwise recipe does not (``eval/reports/nfcorpus``); the default stays
the paper's until ``recipes/star.yaml`` switches (see its comment).

Many positives: each query takes one of its judged positives per epoch, drawn uniformly by a generator
seeded with the seed and the epoch (so every positive gets its turn over the epochs, never always the
first); its other relevant documents are masked wherever they appear in the batch (as other queries'
positives or as hard negatives, which are mined with the positives excluded), and the loss is a mean over
queries of each query's mean over its valid pairs, so a query with many positives weighs as much as one
with a single positive and the loss keeps its scale.

Differences from DRhard: AdamW + linear warm-up/decay rather than LAMB; a temperature on the scores
(default: 0.05 for an encoder that L2-normalises its embeddings, 1.0 otherwise, as DRhard's RoBERTa's raw
inner product).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

import torch

from ..data.negatives import read_negatives
from ..errors import DretrieverError
from . import distributed as du
from .config import check_file
from .data import epoch_query_batches, load_train_data, negative_pools
from .losses.contrastive import contrastive_loss
from .losses.pairwise import pairwise_softmax_loss
from .method import MethodBase
from .temperature import resolve_temperature


LOSSES = ("pairwise", "softmax")


@dataclass
class StarArgs:
    negatives: str = field(default="", metadata={
        "help": "hard negatives from `dretriever mine` (JSONL file); required, no default"})
    neg_start: int = field(default=0, metadata={
        "help": "first mined rank (0-based) hard negatives are sampled from: ranks [neg_start, neg_depth) "
                "(default 0)"})
    neg_depth: int = field(default=200, metadata={
        "help": "end of the mined ranks sampled from, exclusive (default 200: STAR's top 200 of the warm-up "
                "model)"})
    hard_negatives: int = field(default=1, metadata={
        "help": "hard negatives per query per batch, in documents (default 1)"})
    temperature: float | None = field(default=None, metadata={
        "help": "scores = q . d / temperature, unitless (default None = auto: 0.05 for an encoder that "
                "L2-normalises its embeddings, 1.0 for raw inner products as DRhard)"})
    share_hard_negatives: bool = field(default=True, metadata={
        "help": "score every query against every hard negative of the global batch (default true, as DRhard); "
                "false: only its own"})
    gather: bool = field(default=True, metadata={
        "help": "share positives and negatives across processes (default true)"})
    loss: str = field(default="pairwise", metadata={
        "help": "pairwise (the paper's; default) | softmax (listwise cross-entropy over the same candidates)"})

    def __post_init__(self):
        check_file("negatives", self.negatives)
        if self.neg_start < 0:
            raise DretrieverError(f"neg_start: must be >= 0, got {self.neg_start}")
        if self.neg_depth <= self.neg_start:
            raise DretrieverError(f"neg_depth: must exceed neg_start ({self.neg_start}), got {self.neg_depth}")
        if self.hard_negatives < 0:
            raise DretrieverError(f"hard_negatives: must be >= 0, got {self.hard_negatives}")
        if self.temperature is not None and not self.temperature > 0:
            raise DretrieverError(f"temperature: must be positive, got {self.temperature}")
        if self.loss not in LOSSES:
            raise DretrieverError(f"loss: expected one of {LOSSES}, got {self.loss!r}")


ARGS = StarArgs


class Star(MethodBase):
    # No method state to checkpoint: batches are a pure function of (seed, epoch)
    name = "star"

    def __init__(self, args: StarArgs, train_args):
        self.args, self.train_args = args, train_args

    # ------------------------------------------------------------------ Method protocol
    def setup(self, encoder, accelerator) -> None:
        ta = self.train_args
        if not ta.data:
            raise DretrieverError("data: STAR needs a BEIR dataset folder with qrels/<train_split>.tsv")
        self.args = replace(self.args, temperature=resolve_temperature(self.args.temperature, encoder, "star"))
        self.data = load_train_data(ta.data, ta.train_split, ta.dev_queries, dev_split=ta.dev_split)
        negatives, _ = read_negatives(self.args.negatives)
        self.pool = negative_pools(self.data, negatives, self.args.neg_start, self.args.neg_depth,
                                   keep_empty=self.args.hard_negatives == 0)
        missing = len(self.data.queries) - len(self.pool)
        if not self.pool:
            raise DretrieverError(f"negatives: no training query of {ta.data} has negatives in {self.args.negatives}")
        self.qids = sorted(self.pool)
        self.world, self.rank = accelerator.num_processes, accelerator.process_index
        self.global_batch = ta.batch_size * self.world
        if len(self.qids) < self.global_batch:
            raise DretrieverError(f"batch_size: {len(self.qids)} training queries < one global batch "
                                  f"({self.global_batch})")
        self.missing = missing

    def batches(self, epoch: int):
        """This process's share of each global batch (a list, so the loop knows the epoch length)."""
        rng = random.Random(f"star:{self.train_args.seed}:{epoch}")
        out = []
        B = self.train_args.batch_size
        for qids in epoch_query_batches(self.qids, rng, self.global_batch):
            items = []
            for qid in qids:
                pos = rng.choice(sorted(self.data.positives(qid)))  # one positive per query per epoch, seeded
                pool = self.pool[qid]
                k = min(self.args.hard_negatives, len(pool))
                negs = rng.sample(pool, k) if k else []
                negs += [rng.choice(pool) for _ in range(self.args.hard_negatives - k)] if pool else []
                items.append((qid, pos, negs))
            out.append({"global": items, "local": items[self.rank * B:(self.rank + 1) * B]})
        return out

    def samples(self, batch) -> int:
        return len(batch["local"])

    def loss(self, encoder, batch):
        a, corpus, qrels = self.args, self.data.corpus, self.data.qrels
        gather = a.gather and du.is_distributed()
        local = batch["local"]
        items = batch["global"] if gather else local
        q = encoder.embed(encoder.tokenize([self.data.queries[x] for x, _, _ in local], "query"), "query")
        pos = encoder.embed(encoder.tokenize([corpus[p].contents for _, p, _ in local], "doc"), "doc")
        neg_ids_local = [n for _, _, negs in local for n in negs]
        neg = (encoder.embed(encoder.tokenize([corpus[n].contents for n in neg_ids_local], "doc"), "doc")
               if neg_ids_local else None)
        if gather:
            pos = du.all_gather_with_grad(pos)
            neg = du.all_gather_with_grad(neg) if neg is not None else None
        offset = self.rank * len(local) if gather else 0
        labels = torch.arange(len(local), device=q.device) + offset
        pos_ids = [p for _, p, _ in items]
        neg_ids = [n for _, _, negs in items for n in negs]
        rand_mask = torch.tensor([[p not in qrels[qid] for p in pos_ids] for qid, _, _ in local], device=q.device)
        if a.share_hard_negatives:
            hard_mask = torch.tensor([[n not in qrels[qid] for n in neg_ids] for qid, _, _ in local], device=q.device)
        else:  # each query only against its own hard negatives
            per = a.hard_negatives
            hard_mask = torch.zeros(len(local), len(neg_ids), dtype=torch.bool, device=q.device)
            for i in range(len(local)):
                j = (offset + i) * per
                hard_mask[i, j:j + per] = True
        if a.loss == "pairwise":
            loss = pairwise_softmax_loss(q, pos, labels, rand_mask, neg, hard_mask if neg is not None else None,
                                         a.temperature)
        else:  # one softmax per query over its positive and every valid negative
            docs = pos if neg is None else torch.cat([pos, neg])
            valid = rand_mask if neg is None else torch.cat([rand_mask, hard_mask], dim=1)
            loss = contrastive_loss(q, docs, labels, a.temperature, mask=~valid)
        with torch.no_grad():
            s_pos = (q * pos[labels]).sum(-1)
            logs = {"pos_score": float(s_pos.mean())}
            if neg is not None:
                own = torch.stack([neg[(offset + i) * a.hard_negatives] for i in range(len(local))])
                logs["hard_neg_score"] = float((q * own).sum(-1).mean())
                logs["acc_vs_own_hard"] = float((s_pos > (q * own).sum(-1)).float().mean())
        return loss, logs
