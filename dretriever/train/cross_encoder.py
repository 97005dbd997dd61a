"""Cross-encoder reranker training: a sequence-pair classifier (:class:`dretriever.cross_encoder.CrossEncoderModel`,
one raw logit per (query, document) pair) started from any Hugging Face encoder, trained on a BEIR train split
with hard negatives a first stage mined (``dretriever mine``), saved as a sentence-transformers CrossEncoder
folder (``final/``, ``best/``), so ``CrossEncoder(path).predict(pairs)`` gives its scores.

Batches: ``batch_size`` training queries per process, each with one of its positives and ``hard_negatives``
negatives sampled without replacement (fresh every epoch) from ranks ``[neg_start, neg_depth)`` of its mined
list (0-based; judged documents are never negatives); a query with fewer candidates there has fewer
negatives (masked in the loss, never repeated). Every pair is scored in one forward pass of the model.

Loss (``loss``): ``listwise`` (default) is the softmax cross-entropy of each query's positive against its
own negatives (:mod:`dretriever.train.losses.listwise`; no in-batch negatives: each would cost a forward
pass); ``bce`` is pointwise binary cross-entropy with ``pos_weight`` (default: ``hard_negatives``, which
balances the labels; :mod:`dretriever.train.losses.bce`), sentence-transformers' documented recipe. Both are
computed in fp32 on the logits (the forward runs under the recipe's precision). Each log row carries
``constant_loss``: what a constant score would get on the same batches (``ln(1 + n)`` for listwise). A new
head on a bi-encoder's weights starts there; a loss that stays there means the model is not learning (the
lr, the steps or the negatives are wrong) and its reranking would scramble the first stage.

Many positives and graded relevance (as STAR): each query takes one of its judged positives (any grade > 0)
per epoch, drawn uniformly by a generator seeded with the seed and the epoch, so every positive gets its
turn over the epochs; its other relevant documents never serve as its negatives; the loss is a mean over
queries, so a query with hundreds of positives weighs as much as one with a single positive. Grades weigh
only in the dev nDCG@10.

Dev evaluation (checkpoint selection): each dev query's top ``dev_candidates`` mined documents (from
``dev_negatives``) plus its judged documents are reranked; nDCG@10 (:mod:`dretriever.train.rerank_dev`).

Lengths: a pair is truncated as a whole, longest first, to ``max_length`` tokens, as ``CrossEncoder.predict``
does, so training and inference see the same tokens (the loop's query/document length fields do not apply).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

import torch

from ..cross_encoder import CrossEncoderModel
from ..data.negatives import read_negatives
from ..errors import DretrieverError
from .config import check_file
from .data import epoch_query_batches, load_train_data, negative_pools
from .losses.bce import bce_constant_loss, binary_cross_entropy_loss
from .losses.listwise import listwise_constant_loss, listwise_softmax_loss
from .method import MethodBase

log = logging.getLogger(__name__)
LOSSES = ("listwise", "bce")
# loop fields that have no meaning for a cross-encoder (a pair has one length; one model scores both sides)
UNSUPPORTED = ("query_max_length", "doc_max_length", "train_query_max_length", "train_doc_max_length")


@dataclass
class CrossEncoderArgs:
    negatives: str = field(default="", metadata={
        "help": "hard negatives from `dretriever mine` on the train split (JSONL file); required, no default"})
    neg_start: int = field(default=9, metadata={
        "help": "first mined rank (0-based) negatives are sampled from: ranks [neg_start, neg_depth) (default 9: "
                "rank 10, past the unjudged relevant documents a first stage puts at the top)"})
    neg_depth: int = field(default=100, metadata={
        "help": "end of the mined ranks sampled from, exclusive (default 100: what a reranker sees)"})
    hard_negatives: int = field(default=7, metadata={
        "help": "negatives per query per batch, in documents (default 7: 8 pairs per query)"})
    loss: str = field(default="listwise", metadata={
        "help": "listwise (softmax over the positive and its negatives; default) | bce (pointwise, pos_weight)"})
    pos_weight: float | None = field(default=None, metadata={
        "help": "loss bce: weight of a positive pair, a factor (default None = hard_negatives, balanced labels)"})
    head_lr: float | None = field(default=None, metadata={
        "help": "peak lr of the parameters the starting model lacks (a new classification head), after warm-up "
                "(default None = lr; a started cross-encoder has no new parameters)"})
    max_length: int | None = field(default=None, metadata={
        "help": "tokens of a (query, document) pair, truncated longest first as CrossEncoder.predict does; saved "
                "with the model (default None: the starting cross-encoder's, else 256)"})

    def __post_init__(self):
        check_file("negatives", self.negatives)
        if self.neg_start < 0:
            raise DretrieverError(f"neg_start: must be >= 0, got {self.neg_start}")
        if self.neg_depth <= self.neg_start:
            raise DretrieverError(f"neg_depth: must exceed neg_start ({self.neg_start}), got {self.neg_depth}")
        if self.hard_negatives <= 0:
            raise DretrieverError(f"hard_negatives: must be positive, got {self.hard_negatives}")
        if self.loss not in LOSSES:
            raise DretrieverError(f"loss: expected one of {LOSSES}, got {self.loss!r}")
        if self.pos_weight is not None and not self.pos_weight > 0:
            raise DretrieverError(f"pos_weight: must be positive, got {self.pos_weight}")
        if self.head_lr is not None and not self.head_lr > 0:
            raise DretrieverError(f"head_lr: must be positive, got {self.head_lr}")
        if self.max_length is not None and self.max_length <= 0:
            raise DretrieverError(f"max_length: must be positive, got {self.max_length}")


ARGS = CrossEncoderArgs


class CrossEncoder(MethodBase):
    # No method state to checkpoint: batches are a pure function of (seed, epoch)
    name = "cross-encoder"

    def __init__(self, args: CrossEncoderArgs, train_args):
        self.args, self.train_args = args, train_args
        self.pos_weight = args.pos_weight if args.pos_weight is not None else float(args.hard_negatives)

    # ------------------------------------------------------------------ the loop's model and dev evaluation
    def load_model(self, train_args) -> CrossEncoderModel:
        """The model the loop trains instead of a bi-encoder: ``model`` with a one-logit head."""
        for name in UNSUPPORTED:
            if getattr(train_args, name) is not None:
                raise DretrieverError(f"{name}: not used by the cross-encoder (a pair is truncated as a whole); "
                                      f"set max_length")
        if train_args.untie:
            raise DretrieverError("untie: a cross-encoder has one tower (it reads query and document together)")
        if train_args.grad_cache_chunk:
            raise DretrieverError("grad_cache_chunk: the gradient cache is for bi-encoders' in-batch negatives; "
                                  "a cross-encoder's pairs are independent (lower batch_size, raise grad_accum)")
        return CrossEncoderModel.from_pretrained(train_args.model, max_length=self.args.max_length)

    def param_lrs(self, model) -> dict[str, float]:
        """``head_lr`` for the parameters the starting model lacked (logged), none when unset."""
        if self.args.head_lr is None:
            return {}
        log.info("cross-encoder: head_lr %g for %d new parameter tensors (%s); lr %g for the others",
                 self.args.head_lr, len(model.new_parameters), ", ".join(model.new_parameters) or "none",
                 self.train_args.lr)
        return {name: self.args.head_lr for name in model.new_parameters}

    def dev_evaluator(self, train_args):
        """Reranks each dev query's mined candidates and judged documents (called after :meth:`setup`)."""
        from .rerank_dev import RerankDevEvaluator

        if not train_args.dev_negatives:
            raise DretrieverError("dev_negatives: the cross-encoder's dev evaluation reranks mined candidates; give "
                                  "a `dretriever mine` file that covers the dev queries")
        mined, _ = read_negatives(train_args.dev_negatives)
        return RerankDevEvaluator(self.data.corpus, self.data.dev_queries, self.data.dev_qrels, mined,
                                  train_args.dev_candidates, batch_size=train_args.eval_batch_size,
                                  precision=train_args.precision)

    # ------------------------------------------------------------------ Method protocol
    def setup(self, model, accelerator) -> None:
        ta, a = self.train_args, self.args
        if not ta.data:
            raise DretrieverError("data: the cross-encoder needs a BEIR dataset folder with qrels/<train_split>.tsv")
        self.data = load_train_data(ta.data, ta.train_split, ta.dev_queries, dev_split=ta.dev_split)
        negatives, _ = read_negatives(a.negatives)
        self.pool = negative_pools(self.data, negatives, a.neg_start, a.neg_depth)
        if not self.pool:
            raise DretrieverError(f"negatives: no training query of {ta.data} has negatives at ranks "
                                  f"[{a.neg_start}, {a.neg_depth}) of {a.negatives}")
        if len(self.pool) < len(self.data.queries):
            log.warning("negatives: %d of %d training queries have no negatives at ranks [%d, %d) of %s; skipped",
                        len(self.data.queries) - len(self.pool), len(self.data.queries), a.neg_start, a.neg_depth,
                        a.negatives)
        self.qids = sorted(self.pool)
        self.world, self.rank = accelerator.num_processes, accelerator.process_index
        self.global_batch = ta.batch_size * self.world
        if len(self.qids) < self.global_batch:
            raise DretrieverError(f"batch_size: {len(self.qids)} training queries < one global batch "
                                  f"({self.global_batch})")
        full = sum(len(p) >= a.hard_negatives for p in self.pool.values())
        log.info("cross-encoder: %d training queries (%d with %d negatives at ranks [%d, %d)), max_length %d, "
                 "loss %s; a constant score scores %s: watch constant_loss in the log", len(self.qids), full,
                 a.hard_negatives, a.neg_start, a.neg_depth, model.config.max_length, a.loss,
                 self._constant_text())

    def _constant_text(self) -> str:
        n = self.args.hard_negatives
        if self.args.loss == "listwise":
            return f"ln({n + 1}) = {listwise_constant_loss(torch.zeros(1, n + 1)):.4f}"
        return f"{bce_constant_loss(torch.zeros(1, n + 1), pos_weight=self.pos_weight):.4f} (pos_weight " \
               f"{self.pos_weight:g})"

    def batches(self, epoch: int):
        """This process's share of each global batch: ``(qid, positive, [negatives])`` items."""
        a = self.args
        rng = random.Random(f"cross-encoder:{self.train_args.seed}:{epoch}")
        out = []
        B = self.train_args.batch_size
        for qids in epoch_query_batches(self.qids, rng, self.global_batch):
            items = []
            for qid in qids:
                pos = rng.choice(sorted(self.data.positives(qid)))  # one positive per query per epoch, seeded
                pool = self.pool[qid]
                items.append((qid, pos, rng.sample(pool, min(a.hard_negatives, len(pool)))))
            out.append(items[self.rank * B:(self.rank + 1) * B])
        return out

    def samples(self, batch) -> int:
        return len(batch)

    def loss(self, model, batch):
        """Every pair of the batch in one forward pass; the (B, 1 + n) logits (positive first, padding masked)
        into the loss in fp32."""
        n = self.args.hard_negatives
        corpus, queries = self.data.corpus, self.data.queries
        rows = [[pos] + negs for _, pos, negs in batch]
        q_texts = [queries[qid] for (qid, _, _), docs in zip(batch, rows) for _ in docs]
        d_texts = [corpus[d].contents for docs in rows for d in docs]
        with model.autocast():
            logits = model.score(model.tokenize(q_texts, d_texts)).float()
        mask = torch.zeros(len(batch), 1 + n, dtype=torch.bool, device=logits.device)
        for i, docs in enumerate(rows):
            mask[i, :len(docs)] = True
        scores = torch.zeros(len(batch), 1 + n, dtype=logits.dtype, device=logits.device).masked_scatter(mask, logits)
        if self.args.loss == "listwise":
            loss, constant = listwise_softmax_loss(scores, mask), listwise_constant_loss(scores, mask)
        else:
            loss = binary_cross_entropy_loss(scores, mask, self.pos_weight)
            constant = bce_constant_loss(scores, mask, self.pos_weight)
        with torch.no_grad():
            neg = scores[:, 1:].masked_fill(~mask[:, 1:], float("-inf"))
            has = mask[:, 1:].any(1)
            logs = {"constant_loss": constant, "pos_score": float(scores[:, 0].mean()),
                    "neg_score": float(scores[:, 1:][mask[:, 1:]].mean()) if has.any() else 0.0,
                    "acc_vs_negatives": float((scores[:, 0] > neg.max(1).values).float().mean())}
        return loss, logs
