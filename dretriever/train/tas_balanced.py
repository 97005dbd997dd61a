"""TAS-Balanced (Hofstätter et al., "Efficiently Teaching an Effective Dense Retriever with Balanced Topic
Aware Sampling", SIGIR 2021).

* Topic-aware sampling: the training queries are clustered once, before training, with k-means on
  their embeddings by the starting model (``n_clusters``; 0 = auto, one cluster per 32 queries); every batch
  holds exactly ``batch_size`` queries drawn cluster by cluster, at least ``clusters_per_batch`` clusters
  (:class:`dretriever.train.samplers.ClusterBatchSampler`).
* Balanced margin sampling: per query and epoch, one of its positives is drawn uniformly (seeded by the
  seed, the epoch and the query), its pairs with the negatives get the pairwise teacher's margin
  ``t(pos) - t(neg)``; margins are put into ``margin_bins`` bins, a bin is drawn uniformly, then a pair
  in it (:class:`dretriever.train.samplers.BalancedMarginSampler`). Positives are the judged documents
  the teacher scored; negatives are the teacher's top ``negative_depth`` candidates not judged relevant.
* Dual supervision: Margin-MSE against the pairwise teacher (scores from ``dretriever teacher``:
  usually a cross-encoder; here any teacher file) plus ``inbatch_weight`` (0.75) times an in-batch loss
  against a second teacher that scores every (query, document) pair of the batch: Margin-MSE of each
  query's positive against every other document of the batch (``inbatch_loss: margin_mse``) or the KL
  divergence of the softmaxes over the batch's documents (``inbatch_loss: kl``). The second teacher is a
  bi-encoder (``inbatch_teacher``, TAS-B used ColBERT); its vectors are computed once at setup (documents
  taken from ``inbatch_teacher_index`` when given, else encoded).

Scales: the student's scores are ``student_scale * q . d`` (cosine for normalised encoders: margins within
[-2, 2]); teacher scores are multiplied by ``teacher_scale`` / ``inbatch_teacher_scale``, and Margin-MSE
needs the margins on one scale. At setup, the *margin calibration factor* is the least-squares factor
``sum(m_s m_t) / sum(m_s^2)`` between the pairwise teacher's margins ``m_t`` and the starting student's unscaled
margins ``m_s`` on ``calibration_pairs`` pairs drawn by the balanced sampler (seeded); it is logged, and
``student_scale: auto`` (the default) uses it. A teacher file whose scores look min-max normalised per query
(every score in [0, 1], each query's maximum 1: ``dretriever teacher --teacher fusion``) gets a warning: its
margins are not comparable across queries, so no single scale matches them.
A document judged relevant to a query is never an in-batch negative of that query (masked), and neither is
its own sampled negative (the pairwise term supervises that pair, with the pairwise teacher).
In-batch negatives are this process's batch (TAS-B trained on one GPU).

What differs from matchmaker (the official code): teachers are any ``dretriever teacher`` file (TAS-B: an
ensemble of BERT cross-encoders over BM25 candidates, raw logits) and any bi-encoder in-batch (TAS-B:
ColBERT); negatives are the pairwise teacher's top ``negative_depth`` unjudged candidates; queries with many
positives draw one per epoch (below); the student's scale is calibrated at setup instead of fixed; training
runs in epochs (each query once; the epoch's last, partial batch is topped up with queries already used).

Many positives: each query contributes one sampled pair per epoch, whatever its number of positives, and
every positive has the same chance of being that pair's positive (drawn before the margin bin, so a
positive with many low-margin pairs is not favoured); the pair loss is a mean over queries and the
in-batch loss a mean over queries of each query's mean over its valid (unmasked) columns, so neither
grows with the positives. The pairs are never listed one by one (:class:`~dretriever.train.samplers.
QueryPairs`). With one positive per query the draws are exactly those of earlier versions.
``positive_depth`` (a choice of ours; matchmaker's MS MARCO queries have about one positive) keeps only the
judged positives among the teacher's N highest-scored candidates (a query with none there keeps its best-scored
positive): where judgments are many and shallow (NFCorpus: 42.7 per query, the teacher ranks a typical one at 209),
a uniformly drawn positive scores below most of its negatives, and Margin-MSE then mostly teaches the order of
weak positives under unjudged candidates.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import DretrieverError
from ..teacher import read_teacher_scores
from .config import check_file
from .data import load_train_data
from .losses.kl import kl_distill
from .losses.margin_mse import inbatch_margin_mse, margin_mse
from .samplers import BalancedMarginSampler, ClusterBatchSampler, QueryPairs, cluster_queries
from .method import MethodBase

log = logging.getLogger(__name__)
INBATCH_LOSSES = ("margin_mse", "kl")


@dataclass
class TasBalancedArgs:
    teacher: str = field(default="", metadata={"help": "pairwise teacher scores, a `dretriever teacher` JSONL file "
                                                       "(required)"})
    teacher_scale: float = field(default=1.0, metadata={"help": "multiplies the pairwise teacher's scores "
                                                                "(default 1.0, a factor)"})
    negative_depth: int = field(default=100, metadata={"help": "negatives: the teacher's top N unjudged documents "
                                                               "per query (default 100, documents)"})
    positive_depth: int = field(default=0, metadata={"help": "positives: a query's judged documents among the "
                                                             "teacher's N highest scores (default 0 = every judged "
                                                             "document the teacher scored; a query with none there "
                                                             "keeps its best-scored one; documents)"})
    margin_bins: int = field(default=10, metadata={"help": "equal-width bins of balanced margin sampling "
                                                           "(default 10, bins)"})
    n_clusters: int = field(default=0, metadata={"help": "k-means clusters of the training queries (default 0 = "
                                                         "auto: training queries // 32, at least 1; clusters)"})
    clusters_per_batch: int = field(default=1, metadata={"help": "minimum clusters per batch (default 1, clusters): "
                                                                 "each gives batch_size // clusters_per_batch queries, "
                                                                 "one that runs out is continued by another"})
    inbatch_teacher: str = field(default="", metadata={"help": "bi-encoder scoring every in-batch pair (default '' = "
                                                               "no in-batch term; a model path or name)"})
    inbatch_teacher_index: str = field(default="", metadata={"help": "index built with inbatch_teacher, whose "
                                                                     "document vectors are reused (default '' = "
                                                                     "encode the documents; a folder)"})
    inbatch_teacher_scale: float = field(default=1.0, metadata={"help": "multiplies the in-batch teacher's scores "
                                                                        "(default 1.0, a factor)"})
    inbatch_weight: float = field(default=0.75, metadata={"help": "weight of the in-batch loss (default 0.75, "
                                                                  "a factor)"})
    inbatch_loss: str = field(default="margin_mse", metadata={"help": "margin_mse | kl (default margin_mse)"})
    student_scale: str = field(default="auto", metadata={"help": "multiplies the student's dot products (default "
                                                                 "auto = the margin calibration factor; or a "
                                                                 "positive number, a factor)"})
    calibration_pairs: int = field(default=512, metadata={"help": "training pairs of the margin calibration at "
                                                                  "setup (default 512, pairs; 0 = skip, needs a "
                                                                  "numeric student_scale)"})
    kl_temperature: float = field(default=1.0, metadata={"help": "softmax temperature of both sides with "
                                                                 "inbatch_loss kl (default 1.0, score units)"})

    def __post_init__(self):
        check_file("teacher", self.teacher)
        if self.inbatch_teacher_index and not self.inbatch_teacher:
            raise DretrieverError("inbatch_teacher_index: set inbatch_teacher (the model the index was built with)")
        if self.inbatch_loss not in INBATCH_LOSSES:
            raise DretrieverError(f"inbatch_loss: expected one of {INBATCH_LOSSES}, got {self.inbatch_loss!r}")
        for name in ("negative_depth", "margin_bins", "clusters_per_batch"):
            if getattr(self, name) <= 0:
                raise DretrieverError(f"{name}: must be positive, got {getattr(self, name)}")
        for name in ("n_clusters", "calibration_pairs", "positive_depth"):
            if getattr(self, name) < 0:
                raise DretrieverError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if str(self.student_scale).strip().lower() == "auto":
            self.student_scale = "auto"
            if not self.calibration_pairs:
                raise DretrieverError("student_scale: auto needs calibration_pairs > 0")
        else:
            try:
                self.student_scale = float(self.student_scale)
            except ValueError:
                raise DretrieverError(f"student_scale: expected auto or a number, got {self.student_scale!r}") from None
        for name in ("teacher_scale", "inbatch_teacher_scale", "kl_temperature") + (
                ("student_scale",) if self.student_scale != "auto" else ()):
            if not getattr(self, name) > 0:
                raise DretrieverError(f"{name}: must be positive, got {getattr(self, name)}")
        if self.inbatch_weight < 0:
            raise DretrieverError(f"inbatch_weight: must be >= 0, got {self.inbatch_weight}")


ARGS = TasBalancedArgs


def build_pairs(teacher: dict[str, list[tuple[str, float]]], qrels: dict[str, dict[str, int]], depth: int,
                scale: float = 1.0, positive_depth: int = 0) -> dict[str, QueryPairs]:
    """Per query, every (judged positive, top-``depth`` unjudged candidate) pair scored by the teacher, kept as
    the two lists (iterating a :class:`QueryPairs` gives the pairs).

    ``positive_depth`` > 0 keeps only the judged positives among the query's ``positive_depth`` highest teacher
    scores (every scored document counts, judged or not; ties in file order); a query with no positive there keeps
    its one best-scored positive, so no query drops out."""
    pairs: dict[str, QueryPairs] = {}
    for qid, judged in qrels.items():
        hits = teacher.get(qid, [])
        scored = dict(hits)
        positives = [d for d, r in judged.items() if r > 0 and d in scored]
        if positive_depth and positives:
            top = {d for d, _ in sorted(hits, key=lambda h: -h[1])[:positive_depth]}
            positives = [d for d in positives if d in top] or [max(positives, key=lambda d: scored[d])]
        negatives = [d for d, _ in hits if d not in judged][:depth]
        if positives and negatives:
            pairs[qid] = QueryPairs([(p, scale * scored[p]) for p in positives],
                                    [(n, scale * scored[n]) for n in negatives])
    return pairs


def looks_min_max(teacher: dict[str, list[tuple[str, float]]], tol: float = 1e-6) -> bool:
    """Whether every score lies in [0, 1] and each query's maximum is 1 (per-query min-max normalised)."""
    hits = [h for h in teacher.values() if h]
    return bool(hits) and all(-tol <= s <= 1 + tol for h in hits for _, s in h) and \
        all(abs(max(s for _, s in h) - 1) <= tol for h in hits)


def margin_calibration_factor(student_margins, teacher_margins) -> float:
    """The least-squares ``c`` minimising ``sum((c * student - teacher)^2)``: ``sum(s t) / sum(s^2)``."""
    s = np.asarray(student_margins, dtype=np.float64)
    t = np.asarray(teacher_margins, dtype=np.float64)
    ss = float(s @ s)
    return float(s @ t) / ss if ss > 0 else float("nan")


def inbatch_mask(qids: list[str], pos_ids: list[str], neg_ids: list[str], qrels: dict[str, dict[str, int]]):
    """(B, 2B) valid columns (True) of the in-batch loss over the batch's documents, positives then negatives.

    Row i keeps its own positive (column i, the anchor) and drops every other document judged relevant to its
    query and its own sampled negative (column B + i, and any copy of that document): the pairwise term
    supervises that pair with the pairwise teacher (matchmaker excludes both own columns from the in-batch term)."""
    ids = pos_ids + neg_ids
    return torch.tensor([[j == i or (d not in qrels[q] and d != neg_ids[i]) for j, d in enumerate(ids)]
                         for i, q in enumerate(qids)])


class TasBalanced(MethodBase):
    # No method state to checkpoint: batches and pairs are pure functions of (seed, epoch, query)
    name = "tas-balanced"

    def __init__(self, args: TasBalancedArgs, train_args):
        self.args, self.train_args = args, train_args

    # ------------------------------------------------------------------ Method protocol
    def setup(self, encoder, accelerator) -> None:
        a, ta = self.args, self.train_args
        if not ta.data:
            raise DretrieverError("data: TAS-Balanced needs a BEIR dataset folder with qrels/<train_split>.tsv")
        self.data = load_train_data(ta.data, ta.train_split, ta.dev_queries, dev_split=ta.dev_split)
        teacher = read_teacher_scores(a.teacher)
        unknown = sorted({d for hits in teacher.values() for d, _ in hits} - set(self.data.corpus))
        if unknown:
            raise DretrieverError(f"teacher: {a.teacher} names {len(unknown)} document(s) missing from "
                                  f"{ta.data}, e.g. {unknown[0]!r}")
        if looks_min_max(teacher):
            log.warning("teacher: the scores of %s look min-max normalised per query (all in [0, 1], each query's "
                        "maximum 1): their margins are not comparable across queries, so no one student_scale "
                        "matches them; prefer raw scores (e.g. a cross-encoder's logits)", a.teacher)
        pairs = build_pairs(teacher, self.data.qrels, a.negative_depth, a.teacher_scale, a.positive_depth)
        if a.positive_depth:
            kept = sum(len(p.positives) for p in pairs.values())
            log.info("positive_depth %d: %d positives over %d queries (%.1f per query; a query with none in the "
                     "teacher's top %d keeps its best-scored one)", a.positive_depth, kept, len(pairs),
                     kept / max(1, len(pairs)), a.positive_depth)
        if not pairs:
            raise DretrieverError(f"teacher: {a.teacher} scores no judged positive of the {ta.train_split} queries")
        if len(pairs) < len(self.data.queries):
            log.warning("teacher: %d of %d training queries lack a scored positive or negative in %s; skipped",
                        len(self.data.queries) - len(pairs), len(self.data.queries), a.teacher)
        self.qids = sorted(pairs)
        self.margins = BalancedMarginSampler(pairs, a.margin_bins, seed=ta.seed)
        self.world, self.rank = accelerator.num_processes, accelerator.process_index
        emb = encoder.encode_queries([self.data.queries[q] for q in self.qids], batch_size=ta.eval_batch_size,
                                     precision=ta.precision)
        n_clusters = min(a.n_clusters or max(1, len(self.qids) // 32), len(self.qids))
        self.clusters = cluster_queries(emb, n_clusters, seed=ta.seed)
        self.sampler = ClusterBatchSampler(self.clusters, ta.batch_size * self.world, a.clusters_per_batch, ta.seed)
        self.calibration_factor = self._calibrate(encoder, emb) if a.calibration_pairs else None
        if a.student_scale == "auto":
            if not self.calibration_factor > 0:
                raise DretrieverError(f"student_scale: auto, but the margin calibration factor is "
                                      f"{self.calibration_factor}: the teacher's margins do not grow with the "
                                      f"starting student's; set student_scale to a number")
            self.student_scale = self.calibration_factor
        else:
            self.student_scale = float(a.student_scale)
        self.inbatch = self._inbatch_teacher(pairs) if a.inbatch_teacher and a.inbatch_weight > 0 else None

    def _calibrate(self, encoder, query_vectors) -> float:
        """The margin calibration factor on ``calibration_pairs`` balanced-sampled training pairs (queries drawn
        with replacement, seeded; the starting model's vectors), logged."""
        a, ta = self.args, self.train_args
        rng = random.Random(f"{ta.seed}:calibration")
        rows = [rng.randrange(len(self.qids)) for _ in range(a.calibration_pairs)]
        pairs = [self.margins.sample(self.qids[r], epoch=-1, draw=k) for k, r in enumerate(rows)]
        docs = sorted({d for p in pairs for d in (p.positive, p.negative)})
        dvecs = encoder.encode_docs([self.data.corpus[d].contents for d in docs], batch_size=ta.eval_batch_size,
                                    precision=ta.precision, progress=ta.progress)
        at = {d: i for i, d in enumerate(docs)}
        q = query_vectors[rows]
        student = (q * (dvecs[[at[p.positive] for p in pairs]] - dvecs[[at[p.negative] for p in pairs]])).sum(1)
        factor = margin_calibration_factor(student, [p.margin for p in pairs])
        log.info("margin calibration factor %.4f: least squares of the pairwise teacher's margins (x teacher_scale "
                 "%g) on the starting student's unscaled margins, %d pairs; student_scale %s", factor,
                 a.teacher_scale, len(pairs), "auto (this factor)" if a.student_scale == "auto" else a.student_scale)
        return factor

    def _inbatch_teacher(self, pairs: dict[str, QueryPairs]):
        """Vectors of the in-batch teacher: every training query and every document a pair can draw."""
        from ..encoder import BiEncoder
        from ..index.sharded import ShardedIndex
        from .adore import doc_vectors

        a, ta = self.args, self.train_args
        teacher = BiEncoder.from_pretrained(a.inbatch_teacher)
        docs = sorted({d for ps in pairs.values() for d in ps.documents()})
        if a.inbatch_teacher_index:
            from ..search.dense import check_encoder

            index = ShardedIndex.open(a.inbatch_teacher_index)
            check_encoder(index.manifest, teacher, a.inbatch_teacher_index)
            where = {d: (s, i) for s, shard in enumerate(index.shards) for i, d in enumerate(shard.docids)}
            missing = [d for d in docs if d not in where]
            if missing:
                raise DretrieverError(f"inbatch_teacher_index: {a.inbatch_teacher_index} lacks document {missing[0]!r}")
            dvecs = doc_vectors(index, [where[d] for d in docs])
        else:
            dvecs = teacher.encode_docs([self.data.corpus[d].contents for d in docs], batch_size=ta.eval_batch_size,
                                        precision=ta.precision, progress=ta.progress)
        qvecs = teacher.encode_queries([self.data.queries[q] for q in self.qids], batch_size=ta.eval_batch_size,
                                       precision=ta.precision)
        return ({q: i for i, q in enumerate(self.qids)}, torch.from_numpy(qvecs),
                {d: i for i, d in enumerate(docs)}, torch.from_numpy(dvecs))

    def batches(self, epoch: int):
        out = []
        for group in self.sampler.batches(epoch):
            local = group[self.rank::self.world]
            if len(group) < self.world or not local:
                continue
            items = [(self.qids[i], self.margins.sample(self.qids[i], epoch)) for i in local]
            out.append(items)
        return out

    def samples(self, batch) -> int:
        return len(batch)  # batch_size (full batches)

    def inbatch_teacher_scores(self, qids: list[str], doc_ids: list[str]) -> torch.Tensor:
        """The in-batch teacher's (B, M) scores, times ``inbatch_teacher_scale``."""
        q_row, tq, d_row, td = self.inbatch
        return self.args.inbatch_teacher_scale * (tq[[q_row[x] for x in qids]] @ td[[d_row[d] for d in doc_ids]].T)

    def loss(self, encoder, batch):
        a, scale = self.args, self.student_scale
        qids = [q for q, _ in batch]
        pos_ids = [p.positive for _, p in batch]
        neg_ids = [p.negative for _, p in batch]
        corpus = self.data.corpus
        q = encoder.embed(encoder.tokenize([self.data.queries[x] for x in qids], "query"), "query").float()
        docs = encoder.embed(encoder.tokenize([corpus[d].contents for d in pos_ids + neg_ids], "doc"), "doc").float()
        B = len(batch)
        pos, neg = docs[:B], docs[B:]
        t_pos = torch.tensor([p.teacher_pos for _, p in batch], device=q.device)
        t_neg = torch.tensor([p.teacher_neg for _, p in batch], device=q.device)
        s_pos = scale * (q * pos).sum(-1)
        s_neg = scale * (q * neg).sum(-1)
        pair_loss = margin_mse(s_pos, s_neg, t_pos, t_neg)
        logs = {"pair_loss": float(pair_loss.detach()), "student_margin": float((s_pos - s_neg).mean().detach()),
                "teacher_margin": float((t_pos - t_neg).mean()), "batch_queries": B, "student_scale": scale}
        loss = pair_loss
        if self.inbatch is not None:
            teacher = self.inbatch_teacher_scores(qids, pos_ids + neg_ids).to(q.device)
            student = scale * q @ docs.T
            mask = inbatch_mask(qids, pos_ids, neg_ids, self.data.qrels).to(q.device)
            if a.inbatch_loss == "kl":
                inbatch = kl_distill(student, teacher, a.kl_temperature, a.kl_temperature, mask)
            else:
                inbatch = inbatch_margin_mse(student, teacher, torch.arange(B, device=q.device), mask)
            loss = loss + a.inbatch_weight * inbatch
            logs["inbatch_loss"] = float(inbatch.detach())
        return loss, logs
