"""ADORE (Zhan et al., "Optimizing Dense Retrieval Model Training with Hard Negatives", SIGIR 2021).

Only the query encoder trains. Documents stay the fixed vectors of an index built with the starting
model (``dretriever index build``, or the index ``dretriever eval beir`` builds): its manifest
fingerprint must match the starting model, and it must keep exact vectors (a Flat index, or kept
vectors; :func:`check_exact_vectors`). Every step:

1. embed the batch's queries (with gradients);
2. search the index with the *detached* query vectors for the top ``top_k`` (ADORE: 200);
3. append the query's judged positives that the search missed (rank ``top_k + 1``, beyond the cut):
   with ``append_positives: if-none-retrieved`` (DRhard's) only when the top ``top_k`` holds none of its
   positives, with ``always`` at every step; at most ``max_appended_positives`` of them: when more are
   missed, a sample drawn afresh for each epoch (seeded by the recipe's seed, the epoch and the query);
4. score the candidates as ``q . d / temperature`` against their fixed index vectors and apply the
   RankNet loss of :mod:`dretriever.train.losses.ranknet`, each pair (i more relevant than j) weighted by
   its ΔnDCG@cut: ``|2^rel_i - 2^rel_j| |g(rank_i) - g(rank_j)| / IDCG`` with ``g(r) = 1/r``
   (or ``1/log2(r+1)``) cut to zero beyond ``min(metric_cut, top_k)``, the judged grades of the qrels as
   ``rel`` and IDCG from all of the query's judged grades; a query's loss is divided by its number of
   pairs (``normalize: pairs``, DRhard's) or of relevant candidates (``positives``), then averaged over
   the batch.

The hard negatives are thus always the current query encoder's own top ranks ("dynamic" negatives)
while the document side never changes, so no re-indexing is needed during or after training, and the
dev evaluation scores the dev queries against the index's vectors of the dev documents
(:meth:`Adore.dev_doc_vectors`) instead of encoding them at each evaluation.

Many positives (e.g. NFCorpus: 42.7 judged documents per query, up to 1,363, grades 1 and 2): graded
pairs between positives count, weights come from the grades, a query's loss is a mean (over its pairs, or
its positives) so it keeps the scale of a one-positive query, and the appended positives are bounded, so
the candidate list stays at most ``top_k + max_appended_positives`` long.

Saving: the encoder is untied at setup (the document tower becomes a frozen copy of the starting model),
so the saved model is a query encoder plus the unchanged document encoder; indexing with it reproduces
the starting index, and ``dretriever eval beir --model <saved>`` evaluates it as it was trained.
``dretriever adore index`` (:func:`reuse_index`) makes that index from the starting one without
encoding anything (after checking the document tower's fingerprint).

Differences from DRhard's ``adore/train.py`` (the same: AdamW with linear warm-up and decay, no weight decay
on biases and LayerNorm, gradients clipped at norm 1, the top 200, the reciprocal discount, a per-query mean
over pairs, positives appended only when none is retrieved, the batch mean):

- a temperature on the scores (default: 0.05 for an encoder that L2-normalises its embeddings, whose cosine
  margins cannot exceed 2; 1.0 otherwise, as DRhard's raw RoBERTa inner products);
- graded relevance: DRhard's labels are binary and its weights ``|g(r_i) - g(r_j)|``; ours are ΔnDCG
  (gains ``2^rel - 1``, pairs between two grades, divided by IDCG), which equals DRhard's weight for a query
  with one positive of any grade and is DRhard's divided by IDCG for several binary positives;
- appended positives are bounded by ``max_appended_positives`` (DRhard appends all of them) and share
  rank ``top_k + 1`` (DRhard's rank them ``top_k + 1, top_k + 2, ...``; both discount them to 0 with a cut at
  ``top_k`` or below, the only cuts here); ``append_positives: always`` and ``normalize: positives`` are
  options DRhard lacks;
- ``metric_cut`` defaults to DRhard's passage command (200); a cut above ``top_k`` (or 0) cuts at ``top_k``.
  DRhard's own default, None, zeroes every weight (``arr[None:] = 0``);
- the index is sharded and may be searched approximately (a warning: the top ``top_k`` is then that search's;
  DRhard searches a Flat index of its vectors); the candidates are always scored against exact stored
  vectors;
- any number of processes (each searches for its own queries; DRhard runs one), and checkpoints can be
  chosen on a dev split (DRhard saves each epoch).
"""

from __future__ import annotations

import copy
import logging
import os
import random
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import faiss
import numpy as np
import torch

from ..encoder import BiEncoder
from ..errors import DretrieverError
from ..index import vectors as vector_files
from ..index.sharded import ShardedIndex
from .data import load_train_data
from .losses.ranknet import DISCOUNTS, NORMALIZATIONS, ideal_dcg, lambda_weights, ranknet_loss
from .temperature import resolve_temperature


APPEND = ("if-none-retrieved", "always")


@dataclass
class AdoreArgs:
    index: str = field(default="", metadata={
        "help": "index built with the starting model, whose exact document vectors stay fixed (Flat, or kept "
                "float32/float16 vectors); required, no default"})
    top_k: int = field(default=200, metadata={
        "help": "documents retrieved per query per step, in documents (default 200, DRhard's)"})
    metric_cut: int = field(default=200, metadata={
        "help": "rank beyond which a candidate's discount is 0, in ranks (default 200, DRhard's passage command); "
                "0 or above top_k: cut at top_k, so appended positives always lie beyond it"})
    discount: str = field(default="reciprocal", metadata={
        "help": "rank discount g(r) of the pair weights: reciprocal (1/r, DRhard's; default) | log2 (1/log2(r+1))"})
    weighted: bool = field(default=True, metadata={
        "help": "ΔnDCG pair weights (default true); false: plain RankNet, every pair weighs 1"})
    normalize: str = field(default="pairs", metadata={
        "help": "a query's summed pair losses divided by its number of pairs (pairs: DRhard's; default) or of "
                "its relevant candidates (positives: about top_k - 1 times larger with one positive)"})
    temperature: float | None = field(default=None, metadata={
        "help": "scores = q . d / temperature, unitless (default None = auto: 0.05 for an encoder that "
                "L2-normalises its embeddings, 1.0 for raw inner products as DRhard)"})
    append_positives: str = field(default="if-none-retrieved", metadata={
        "help": "which judged positives join a query's candidates after its top_k (rank top_k + 1): "
                "if-none-retrieved (default, DRhard's: its missed positives, only when the top_k holds none of "
                "them) | always (its missed positives, every step)"})
    max_appended_positives: int = field(default=32, metadata={
        "help": "bound on the positives appended per query per step, in documents (default 32; a seeded sample "
                "per epoch when more are missed; DRhard appends all)"})

    def __post_init__(self):
        if not self.index:
            raise DretrieverError("index: missing; name the index built with the starting model")
        if self.top_k <= 0:
            raise DretrieverError(f"top_k: must be positive, got {self.top_k}")
        if self.metric_cut < 0:
            raise DretrieverError(f"metric_cut: must be >= 0, got {self.metric_cut}")
        if self.discount not in DISCOUNTS:
            raise DretrieverError(f"discount: expected one of {DISCOUNTS}, got {self.discount!r}")
        if self.normalize not in NORMALIZATIONS:
            raise DretrieverError(f"normalize: expected one of {NORMALIZATIONS}, got {self.normalize!r}")
        if self.temperature is not None and not self.temperature > 0:
            raise DretrieverError(f"temperature: must be positive, got {self.temperature}")
        if self.append_positives not in APPEND:
            raise DretrieverError(f"append_positives: expected one of {APPEND}, got {self.append_positives!r}")
        if self.max_appended_positives < 0:
            raise DretrieverError(f"max_appended_positives: must be >= 0, got {self.max_appended_positives}")

    @property
    def cut(self) -> int:
        """The metric cut in effect: ``metric_cut``, at most ``top_k`` (0: ``top_k``)."""
        return min(self.metric_cut, self.top_k) if self.metric_cut else self.top_k


ARGS = AdoreArgs
log = logging.getLogger(__name__)
DOC_SETTINGS = ("pooling", "normalize", "doc_prefix", "doc_max_length")  # what the fixed vectors depend on
F16 = vector_files.filename("float16")


def check_index_matches(index: ShardedIndex, encoder: BiEncoder) -> None:
    """The index must hold the starting model's document vectors (same weights, same settings)."""
    built = index.manifest["encoder"]
    doc_view = encoder if encoder.tied else BiEncoder(encoder.doc_model, encoder.tokenizer, encoder.config)
    if built["fingerprint"] not in {encoder.fingerprint(), doc_view.fingerprint()}:
        raise DretrieverError(f"index: {index.root} was built with other weights ({built['model']}) than the "
                              "starting model; ADORE needs the starting model's document vectors")
    c = encoder.config
    differ = [k for k in DOC_SETTINGS if built[k] != getattr(c, k)]
    if differ:
        raise DretrieverError(f"index: {index.root} was built with other document settings ({', '.join(differ)})")


def check_exact_vectors(index: ShardedIndex) -> None:
    """ADORE scores its candidates against the starting model's document vectors: refuse an index that keeps
    none (an approximate factory without kept vectors would give its lossy reconstruction, or fail), and warn
    when the vectors are float16 or the search is approximate (the top_k is then the index's, not the exact
    one; DRhard searches a Flat index)."""
    factory = index.manifest["faiss"]["factory"]
    if not all(s.scannable() for s in index.shards):
        raise DretrieverError(f"index: {index.root} (factory {factory!r}) keeps no exact document vectors; ADORE "
                              "needs them: build it with --factory Flat (index build's default), or keep its vectors "
                              "(index import --keep_vectors float32)")
    if any(s.vectors_file == F16 for s in index.shards):
        log.warning("index: %s scores candidates against float16 kept vectors (relative error ~5e-4)", index.root)
    if not all(isinstance(s.index, faiss.IndexFlat) for s in index.shards):
        log.warning("index: %s (factory %r) searches approximately: each step's top_k is that search's, not the "
                    "exact top_k (DRhard searches a Flat index)", index.root, factory)


def doc_vectors(index: ShardedIndex, hits: list[tuple[int, int]]) -> np.ndarray:
    """The stored vectors of ``(shard, position)`` hits, in order."""
    try:
        return index.vectors_at(hits)
    except RuntimeError as e:  # faiss raises RuntimeError for indexes without stored vectors
        raise DretrieverError(f"index: {index.root} cannot return its vectors ({e}); build a Flat index "
                              "for ADORE") from None


class Adore:
    name = "adore"

    def __init__(self, args: AdoreArgs, train_args):
        self.args, self.train_args = args, train_args

    # ------------------------------------------------------------------ Method protocol
    def setup(self, encoder: BiEncoder, accelerator) -> None:
        ta = self.train_args
        if not ta.data:
            raise DretrieverError("data: ADORE needs a BEIR dataset folder with qrels/<train_split>.tsv")
        self.index = ShardedIndex.open(self.args.index)
        check_index_matches(self.index, encoder)
        check_exact_vectors(self.index)
        self.args = replace(self.args, temperature=resolve_temperature(self.args.temperature, encoder, "adore"))
        if self.args.cut != self.args.metric_cut:
            log.info("adore: metric cut %d (metric_cut %d, top_k %d)", self.args.cut, self.args.metric_cut,
                     self.args.top_k)
        if encoder.tied:  # the document tower stays the starting model, saved beside the trained query tower
            encoder.doc_model = copy.deepcopy(encoder.query_model)
        for p in encoder.doc_model.parameters():
            p.requires_grad_(False)
        self.position = self.index.positions
        self.data = load_train_data(ta.data, ta.train_split, ta.dev_queries, dev_split=ta.dev_split)
        missing = {d for q in self.data.queries for d in self.data.positives(q) if d not in self.position}
        if missing:
            raise DretrieverError(f"index: {self.index.root} lacks {len(missing)} judged document(s) of "
                                  f"{ta.data}, e.g. {sorted(missing)[0]!r}; was it built from this corpus?")
        self.qids = sorted(self.data.queries)
        cut = self.args.cut
        self.ideal = {q: float(ideal_dcg(torch.tensor([sorted(self.data.qrels[q].values(), reverse=True)]), cut,
                                         self.args.discount)[0]) for q in self.qids}
        self.world, self.rank = accelerator.num_processes, accelerator.process_index
        self.global_batch = ta.batch_size * self.world
        if len(self.qids) < self.global_batch:
            raise DretrieverError(f"batch_size: {len(self.qids)} training queries < one global batch "
                                  f"({self.global_batch})")

    def batches(self, epoch: int):
        """This process's share of each global batch: ``{"qids": [...], "epoch": epoch}``."""
        rng = random.Random(f"adore:{self.train_args.seed}:{epoch}")
        order = self.qids[:]
        rng.shuffle(order)
        B = self.train_args.batch_size
        return [{"qids": order[start + self.rank * B:start + (self.rank + 1) * B], "epoch": epoch}
                for start in range(0, len(order) - self.global_batch + 1, self.global_batch)]

    def appended(self, qid: str, found: set[str], epoch: int = 0) -> list[str]:
        """The judged positives of ``qid`` missing from ``found`` that join its candidates (with
        ``append_positives: if-none-retrieved``, none when ``found`` holds one of them): all of them, or a
        sample of ``max_appended_positives`` (seeded by seed, epoch and query) when more are missed."""
        positives = self.data.positives(qid)
        missed = [d for d in positives if d not in found]
        if self.args.append_positives == "if-none-retrieved" and len(missed) < len(positives):
            return []
        bound = self.args.max_appended_positives
        if len(missed) > bound:
            rng = random.Random(f"adore-append:{self.train_args.seed}:{epoch}:{qid}")
            keep = set(rng.sample(sorted(missed), bound))
            missed = [d for d in missed if d in keep]
        return missed

    def candidates(self, qvecs: np.ndarray, qids: list[str], epoch: int = 0):
        """Per query: hits (shard, position) of the top_k plus appended missed positives, their ranks and their
        labels (the judged grade, 0 for unjudged documents)."""
        scores, shard_of, pos = self.index.search_arrays(qvecs, self.args.top_k)
        rows = []
        for b, (qid, top) in enumerate(zip(qids, self.index.rows(scores, shard_of, pos))):  # ids read in bulk
            live = pos[b] >= 0
            row = list(zip(shard_of[b, live].tolist(), pos[b, live].tolist()))
            ids = [d for d, _, _ in top]
            ranks = list(range(1, len(row) + 1))
            for d in self.appended(qid, set(ids), epoch):
                ids.append(d)
                row.append(self.position[d])
                ranks.append(self.args.top_k + 1)
            grades = self.data.qrels[qid]
            rows.append((row, ranks, [grades.get(d, 0) for d in ids]))
        return rows

    def loss(self, encoder, batch):
        qids, epoch = (batch["qids"], batch["epoch"]) if isinstance(batch, dict) else (list(batch), 0)
        q = encoder.embed(encoder.tokenize([self.data.queries[x] for x in qids], "query"), "query")
        rows = self.candidates(q.detach().float().cpu().numpy(), qids, epoch)
        n = max(len(r) for r, _, _ in rows)
        B, D = len(qids), self.index.dim
        docs = np.zeros((B, n, D), dtype=np.float32)
        ranks = torch.full((B, n), self.args.top_k + 1, dtype=torch.long)
        labels = torch.zeros((B, n), dtype=torch.long)
        mask = torch.zeros((B, n), dtype=torch.bool)
        for b, (row, rk, lab) in enumerate(rows):
            docs[b, :len(row)] = doc_vectors(self.index, row)
            ranks[b, :len(row)] = torch.tensor(rk)
            labels[b, :len(row)] = torch.tensor(lab)
            mask[b, :len(row)] = True
        docs_t = torch.from_numpy(docs).to(q.device)
        labels, mask, ranks = labels.to(q.device), mask.to(q.device), ranks.to(q.device)
        scores = torch.einsum("bd,bnd->bn", q.float(), docs_t) / self.args.temperature
        if self.args.weighted:
            ideal = torch.tensor([self.ideal[x] for x in qids], device=q.device)
            weights = lambda_weights(ranks, self.args.cut, self.args.discount, labels, ideal)
        else:
            weights = None
        loss = ranknet_loss(scores, labels, weights, mask, self.args.normalize)
        first_pos = [min((r for r, l in zip(rk, lab) if l > 0), default=self.args.top_k + 1) for _, rk, lab in rows]
        logs = {"first_positive_rank": float(np.mean(first_pos)),
                "positive_in_top10": float(np.mean([r <= 10 for r in first_pos])),
                "mrr@10": float(np.mean([1.0 / r if r <= 10 else 0.0 for r in first_pos])),
                "positives": float(np.mean([sum(l > 0 for l in lab) for _, _, lab in rows])),
                "appended": float(np.mean([sum(r > self.args.top_k for r in rk) for _, rk, _ in rows]))}
        return loss, logs

    def dev_doc_vectors(self, doc_ids: list[str]) -> np.ndarray | None:
        """The fixed index vectors of the dev documents (what encoding them would give: the document tower never
        trains), or None when the index lacks one of them or keeps no exact vectors."""
        vectors = self.index.vectors_of(doc_ids)
        missing = [d for d in doc_ids if d not in self.position] if vectors is None else []
        if missing:
            log.warning("dev corpus: %s lacks %d of the %d dev documents (e.g. %r); they are encoded instead",
                        self.index.root, len(missing), len(doc_ids), missing[0])
        elif vectors is None:
            log.warning("dev corpus: %s keeps no exact vectors; the dev documents are encoded instead", self.index.root)
        return vectors

    def trainable_parameters(self, encoder):
        return list(encoder.query_model.parameters())

    def after_step(self, encoder) -> None:
        pass

    def state_dict(self) -> dict:
        return {}  # batches are a pure function of (seed, epoch); candidates come from the current model

    def load_state_dict(self, state: dict) -> None:
        pass


def reuse_index(start_index: str | Path, model: str, out: str | Path) -> dict:
    """Index an ADORE-trained ``model`` without encoding: its document tower is the starting model, so the
    starting index's shards are its shards. Checks the document tower's fingerprint and settings, links
    (or copies) the shard files into ``out`` and writes a manifest naming ``model``. Returns the manifest.
    """
    from ..index import manifest as mf
    from ..index.build import TRAINED, encoder_info

    start = ShardedIndex.open(start_index)
    encoder = BiEncoder.from_pretrained(model)
    check_index_matches(start, encoder)
    out = Path(out)
    if out.exists():
        raise DretrieverError(f"{out}: exists; choose another output folder or remove it")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for src in [start.root / e["dir"] for e in start.manifest["shards"]] + (
            [start.root / TRAINED] if (start.root / TRAINED).is_file() else []):
        if src.is_dir():
            shutil.copytree(src, tmp / src.name, copy_function=_link_or_copy)
        else:
            tmp.mkdir(parents=True, exist_ok=True)
            _link_or_copy(src, tmp / src.name)
    manifest = {**start.manifest, "encoder": encoder_info(encoder, model),
                "reused_from": {"index": str(start.root.resolve()), "model": start.manifest["encoder"]["model"],
                                "fingerprint": start.manifest["encoder"]["fingerprint"]}}
    mf.write_manifest(tmp, manifest)
    os.replace(tmp, out)
    return mf.read_manifest(out)


def _link_or_copy(src, dst) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system
        shutil.copy2(src, dst)
