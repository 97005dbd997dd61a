"""Teacher scores for distillation (TAS-Balanced's Margin-MSE): score each training query's candidates.

Teachers (``--teacher``):

* ``cross-encoder``: the usual teacher of Margin-MSE / TAS-Balanced (a BERT cross-encoder trained on
  the target task; ``--cross_encoder`` names a sentence-transformers ``CrossEncoder`` folder or hub id,
  e.g. the ``best/`` folder ``dretriever train recipes/cross-encoder.yaml`` saves). It re-scores the
  candidates of a first stage (``--candidates bm25 | dense | fusion``) once, under ``--precision``. Raw
  logits are written (identity activation, whatever the folder's default: no sigmoid), since margins of
  logits are what Margin-MSE regresses on; their scale is not a bi-encoder's, and TAS-Balanced's margin
  calibration (``student_scale: auto``) matches the student to it. The cost (pairs scored, seconds, pairs/s)
  goes into ``<output>.meta.json`` and is printed.
* ``dense``: a bi-encoder (``--model``); score = query . document (cosine for normalised models).
* ``bm25``: Pyserini's Lucene BM25 (k1=0.9, b=0.4), the raw BM25 score.
* ``fusion``: dense and BM25 fused with :func:`dretriever.search.fusion.fuse` (``--fusion rrf`` or
  ``interpolation`` with ``--alpha``: the dense weight after per-query min-max normalisation).

Candidates of a query are its top ``--depth`` documents (a cross-encoder's: the first stage's), plus (``--positives``, the default) every
document the split's qrels judge relevant, scored by the same teacher even when it lies outside the
top ``depth``: distillation needs the teacher's score of each positive. For a fused teacher, each
run (dense, BM25) holds its top ``depth`` plus the positives with their true scores before fusing.

Output format (``--output``, JSON lines, one query per line, candidates sorted by score, best first)::

    {"qid": "1", "docids": ["d7", "d3", ...], "scores": [0.93, 0.88, ...]}

Beside it, ``<output>.meta.json`` records the teacher settings and the command. The file is built
in ``<output>.partial`` query chunk by query chunk (a rerun with the same settings resumes after the
last whole chunk) and renamed into place when complete, so ``<output>`` is always whole.
Read it back with :func:`read_teacher_scores`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .data.beir import BeirDataset, load_beir
from .data.ids import check_id
from .data.jsonl import read_jsonl, required_id
from .errors import DataError, DretrieverError
from .atomic import fsync_dir, write_json_atomic
from .search.types import Run

log = logging.getLogger(__name__)
TEACHERS = ("cross-encoder", "dense", "bm25", "fusion")
FORMAT = "dretriever-teacher-scores/1"


@dataclass
class TeacherArgs:
    data: str = field(metadata={"help": "BEIR dataset folder (corpus.jsonl, queries.jsonl, qrels/)"})
    output: str = field(metadata={"help": "teacher score file (JSON lines)"})
    teacher: str = field(default="fusion", metadata={"help": "cross-encoder | dense | bm25 | fusion"})
    model: str = field(default="sentence-transformers/all-MiniLM-L6-v2",
                       metadata={"help": "bi-encoder of the dense and fusion teachers and first stages"})
    cross_encoder: str = field(default="", metadata={"help": "CrossEncoder folder or hub id (teacher=cross-encoder; "
                                                             "e.g. a `dretriever train` cross-encoder's best/), "
                                                             "scored as raw logits"})
    candidates: str = field(default="bm25", metadata={"help": "first stage of the cross-encoder: bm25|dense|fusion"})
    split: str = field(default="train", metadata={"help": "qrels split whose queries are scored"})
    depth: int = field(default=200, metadata={"help": "candidates per query, in documents"})
    positives: bool = field(default=True, metadata={"help": "score every judged positive too"})
    fusion: str = field(default="interpolation", metadata={"help": "rrf | interpolation"})
    alpha: float = field(default=0.5, metadata={"help": "dense weight of the interpolation, in [0, 1]"})
    index_root: str = field(default="indexes", metadata={"help": "where the BM25 and dense indexes are (re)used"})
    shards: int = field(default=4, metadata={"help": "shards of the dense index built for the dense/fusion teachers "
                                                     "and first stages, a count"})
    factory: str = field(default="Flat", metadata={"help": "faiss index_factory string of that index"})
    batch_size: int = field(default=64, metadata={"help": "texts (or query-document pairs) per encoding batch, "
                                                          "at most"})
    precision: str = field(default="auto", metadata={"help": "encoding precision: auto (bf16 where the CPU or GPU "
                                                             "runs it natively, else fp32) | fp32 | bf16 | fp16"})
    chunk_queries: int = field(default=256, metadata={"help": "queries per resumable chunk, a count"})
    progress: bool = field(default=True, metadata={"help": "show progress bars (--progress false: none)"})

    def __post_init__(self):
        if self.teacher not in TEACHERS:
            raise DretrieverError(f"teacher: expected one of {TEACHERS}, got {self.teacher!r}")
        if self.teacher == "cross-encoder" and not self.cross_encoder:
            raise DretrieverError("cross_encoder: required with --teacher cross-encoder (a CrossEncoder model)")
        local = self.cross_encoder.startswith(("/", "./", "../", "~"))
        if local and not Path(self.cross_encoder).expanduser().is_dir():
            raise DretrieverError(f"cross_encoder: folder {self.cross_encoder!r} not found")
        if self.candidates not in ("bm25", "dense", "fusion"):
            raise DretrieverError(f"candidates: expected bm25, dense or fusion, got {self.candidates!r}")
        if self.fusion not in ("rrf", "interpolation"):
            raise DretrieverError(f"fusion: expected rrf or interpolation, got {self.fusion!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise DretrieverError(f"alpha: must lie in [0, 1], got {self.alpha}")
        if self.depth <= 0 or self.chunk_queries <= 0:
            raise DretrieverError("depth and chunk_queries must be positive")

    def settings(self) -> dict:
        """What the scores depend on (a resumed file must have been started with the same)."""
        keep = ("teacher", "model", "cross_encoder", "candidates", "split", "depth", "positives", "fusion", "alpha",
                "factory")
        out = {k: v for k, v in asdict(self).items() if k in keep}
        out["data"] = str(Path(self.data).resolve())
        return out


# ---------------------------------------------------------------------------- reading
def read_teacher_scores(path: str | Path) -> dict[str, list[tuple[str, float]]]:
    """``{qid: [(docid, score), ...]}`` from a teacher file; bad lines raise ``DataError`` (file:line)."""
    path = Path(path)
    out: dict[str, list[tuple[str, float]]] = {}
    for line, obj in read_jsonl(path):
        qid = required_id(obj, path, line, key="qid")
        if qid in out:
            raise DataError(path, f"duplicate query id {qid!r}", line)
        docids, scores = obj.get("docids"), obj.get("scores")
        if not isinstance(docids, list) or not isinstance(scores, list):
            raise DataError(path, "'docids' and 'scores' must be lists", line)
        if len(docids) != len(scores):
            raise DataError(path, f"{len(docids)} docids but {len(scores)} scores", line)
        if not all(isinstance(d, str) for d in docids):
            raise DataError(path, "every docid must be a string", line)
        for d in docids:
            check_id(d, path, line, f"docid of query {qid!r}")
        if len(set(docids)) != len(docids):
            raise DataError(path, f"query {qid!r} lists a document twice", line)
        if not all(isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) for s in scores):
            raise DataError(path, "every score must be a finite number", line)
        out[qid] = list(zip(docids, map(float, scores)))
    if not out:
        raise DataError(path, "no teacher scores")
    return out


# ---------------------------------------------------------------------------- scorers
class Bm25Scorer:
    """BM25 top-k from Lucene plus the exact BM25 score of any named document."""

    def __init__(self, ds: BeirDataset, index_root: str | Path):
        from . import pyserini_env
        from .index.bm25 import build_bm25_index
        from .search.bm25 import BM25Searcher

        root = build_bm25_index(ds.corpus, Path(index_root) / f"{ds.name}.bm25-flat")
        self.searcher = BM25Searcher(root)
        self.reader = pyserini_env.load("pyserini.index.lucene").LuceneIndexReader(str(root / "lucene"))

    def run(self, queries: dict[str, str], k: int, extra: dict[str, set[str]]) -> Run:
        run = self.searcher.search(queries, k=k)
        for qid, hits in run.items():
            have = {d for d, _ in hits}
            for docid in sorted(extra.get(qid, set()) - have):
                hits.append((docid, float(self.reader.compute_query_document_score(docid, queries[qid]))))
            hits.sort(key=lambda x: -x[1])
        return run


class DenseScorer:
    """Dense top-k from a (built or reused) index plus the exact score of any named document."""

    def __init__(self, args: TeacherArgs, ds: BeirDataset):
        from .evaluation.beir import dense_searcher

        self.searcher = dense_searcher(ds, args.model, args.index_root, args.shards, args.factory,
                                       args.batch_size, args.precision, args.progress)
        self.corpus = ds.corpus

    def run(self, queries: dict[str, str], k: int, extra: dict[str, set[str]]) -> Run:
        qids = list(queries)
        qvecs = self.searcher.encode([queries[q] for q in qids])
        rows = self.searcher.index.rows(*self.searcher.index.search_arrays(qvecs, k))
        run: Run = {}
        missing: list[tuple[int, str]] = []
        for n, (qid, row) in enumerate(zip(qids, rows)):
            run[qid] = [(docid, score) for docid, score, _ in row]
            have = {d for d, _ in run[qid]}
            missing += [(n, d) for d in sorted(extra.get(qid, set()) - have)]
        if missing:
            docs = sorted({d for _, d in missing})
            dvecs = self.searcher.index.vectors_of(docs)  # the index's own vectors: the scores of the top-k
            if dvecs is None:  # an index without exact vectors (IVF-PQ, HNSW): encode them
                dvecs = self.searcher.encoder.encode_docs([self.corpus[d].contents for d in docs],
                                                          batch_size=self.searcher.batch_size,
                                                          precision=self.searcher.precision)
            row_of = {d: i for i, d in enumerate(docs)}
            for n, d in missing:
                run[qids[n]].append((d, float(qvecs[n] @ dvecs[row_of[d]])))
            for hits_ in run.values():
                hits_.sort(key=lambda x: -x[1])
        return run


class FusionScorer:
    def __init__(self, args: TeacherArgs, ds: BeirDataset):
        self.dense, self.bm25 = DenseScorer(args, ds), Bm25Scorer(ds, args.index_root)
        self.method, self.alpha = args.fusion, args.alpha

    def run(self, queries: dict[str, str], k: int, extra: dict[str, set[str]]) -> Run:
        from .search.fusion import fuse

        dense, sparse = self.dense.run(queries, k, extra), self.bm25.run(queries, k, extra)
        return cut(fuse(dense, sparse, self.method, self.alpha, k=len(self.dense.corpus)), k, extra)


class CrossEncoderScorer:
    """Re-scores a first stage's candidates with a sentence-transformers CrossEncoder (raw logits)."""

    def __init__(self, args: TeacherArgs, ds: BeirDataset, first_stage):
        import torch
        from sentence_transformers import CrossEncoder

        from .models import resolve_model

        self.model = CrossEncoder(resolve_model(args.cross_encoder), activation_fn=torch.nn.Identity())
        if self.model.num_labels != 1:
            raise DretrieverError(f"cross_encoder: {args.cross_encoder} has {self.model.num_labels} labels; a "
                                  f"teacher needs one score per pair (num_labels 1)")
        self.first_stage, self.corpus = first_stage, ds.corpus
        self.batch_size, self.progress, self.precision = args.batch_size, args.progress, args.precision
        self.pairs_scored, self.scoring_s = 0, 0.0

    def cost(self) -> dict:
        """Pairs scored by this process so far, their seconds and pairs/s."""
        return {"pairs_scored": self.pairs_scored, "scoring_s": round(self.scoring_s, 2),
                "pairs_per_s": round(self.pairs_scored / self.scoring_s, 2) if self.scoring_s else None}

    def run(self, queries: dict[str, str], k: int, extra: dict[str, set[str]]) -> Run:
        import time

        from .encoder import autocast

        first = cut(self.first_stage.run(queries, k, extra), k, extra)
        pairs, where = [], []
        for qid, hits in first.items():
            for docid, _ in hits:
                pairs.append((queries[qid], self.corpus[docid].contents))
                where.append((qid, docid))
        t = time.perf_counter()
        with autocast(self.model.device, self.precision):
            scores = self.model.predict(pairs, batch_size=self.batch_size, show_progress_bar=False)
        self.scoring_s += time.perf_counter() - t
        self.pairs_scored += len(pairs)
        run: Run = {qid: [] for qid in first}
        for (qid, docid), s in zip(where, np.asarray(scores, dtype=np.float64).reshape(-1)):
            run[qid].append((docid, float(s)))
        for hits in run.values():
            hits.sort(key=lambda x: -x[1])
        return run


def cut(run: Run, k: int, extra: dict[str, set[str]]) -> Run:
    """Each query's top ``k`` plus its ``extra`` documents further down, in score order."""
    return {qid: hits[:k] + [h for h in hits[k:] if h[0] in extra.get(qid, set())] for qid, hits in run.items()}


def make_scorer(args: TeacherArgs, ds: BeirDataset):
    kinds = {"bm25": lambda: Bm25Scorer(ds, args.index_root), "dense": lambda: DenseScorer(args, ds),
             "fusion": lambda: FusionScorer(args, ds)}
    if args.teacher == "cross-encoder":
        return CrossEncoderScorer(args, ds, kinds[args.candidates]())
    return kinds[args.teacher]()


# ---------------------------------------------------------------------------- writing
def _resume(partial: Path, meta_path: Path, meta: dict) -> set[str]:
    """Query ids already in ``partial`` (cut back to its last whole line), or start afresh."""
    if not partial.is_file() or not meta_path.is_file() or json.loads(meta_path.read_text()) != meta:
        partial.unlink(missing_ok=True)
        write_json_atomic(meta_path, meta)
        return set()
    data = partial.read_bytes()
    whole = data[:data.rfind(b"\n") + 1]
    if len(whole) != len(data):
        partial.write_bytes(whole)
    done = {json.loads(line)["qid"] for line in whole.decode("utf-8").splitlines() if line.strip()}
    log.info("%s: resuming after %d scored queries", partial, len(done))
    return done


def write_teacher_scores(args: TeacherArgs, command: str = "") -> Path:
    """Score every query of ``args.split`` and write ``args.output`` (resumable, renamed into place)."""
    ds = load_beir(args.data, split=args.split)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    partial_meta = out.with_name(out.name + ".partial.meta.json")
    meta = {"format": FORMAT, **args.settings()}
    done = _resume(partial, partial_meta, meta)
    todo = [q for q in ds.queries if q not in done]
    cost = None
    if todo:
        scorer = make_scorer(args, ds)
        bar = tqdm(total=len(ds.queries), initial=len(done), desc="teacher", unit="query", disable=not args.progress)
        with open(partial, "a", encoding="utf-8") as f:
            for start in range(0, len(todo), args.chunk_queries):
                qids = todo[start:start + args.chunk_queries]
                extra = {q: {d for d, r in ds.qrels[q].items() if r > 0} for q in qids} if args.positives else {}
                run = scorer.run({q: ds.queries[q] for q in qids}, args.depth, extra)
                for qid in qids:
                    hits = run.get(qid, [])
                    f.write(json.dumps({"qid": qid, "docids": [d for d, _ in hits],
                                        "scores": [round(s, 6) for _, s in hits]}) + "\n")
                f.flush()
                os.fsync(f.fileno())
                bar.update(len(qids))
        bar.close()
        cost = scorer.cost() if hasattr(scorer, "cost") else None
        if cost:
            log.info("teacher: %d pairs scored in %.1f s (%s pairs/s)", cost["pairs_scored"], cost["scoring_s"],
                     cost["pairs_per_s"])
    os.replace(partial, out)
    fsync_dir(out.parent)
    write_json_atomic(out.with_name(out.name + ".meta.json"),
                      {**meta, "queries": len(ds.queries), "command": command, **({"cost": cost} if cost else {})})
    partial_meta.unlink(missing_ok=True)
    return out
