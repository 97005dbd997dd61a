"""BEIR evaluation through Pyserini: BM25 (Lucene), dense (sharded FAISS) and their fusion.

For each dataset: build or reuse the indexes, retrieve the top-k for every judged query of the split,
write TREC runs, drop hits whose id equals the query id (Pyserini's ``--remove-query``), and score with
Pyserini's trec_eval (``-c -q``: means and per-query scores from one call; the per-query scores are kept
under ``<output_dir>/perquery/``). Several datasets give one table with an average row. Every system is
compared with a baseline (``--baseline``, default the report's first system) by paired tests over the queries
(evaluation/significance.py), with a per-query analysis (evaluation/perquery.py).

Two-stage evaluation (``--rerank MODEL --rerank_depth 100``): each first-stage system is also reported reranked by
the cross-encoder (``<system>+rerank``, search/rerank.py: its top ``rerank_depth`` reordered, that many hits
kept), right below it, with the cost (pairs scored, seconds, pairs/s; a pair an earlier system of the dataset already
scored is reused, not scored again) and a paired test of each reranked system
against its own first stage (Holm over the reranked systems), with its per-query analysis.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..data.beir import BeirDataset, ensure_dataset, load_beir
from ..encoder import BiEncoder
from ..errors import DretrieverError
from ..index.build import build_index, corpus_source
from ..index.bm25 import build_bm25_index
from ..search.bm25 import BM25Searcher
from ..index.sharded import ShardedIndex
from ..quantize import DEFAULT_PASSAGES, Calibration
from ..runtime import check_backend
from ..token_batches import parse_max_tokens
from ..search.dense import DenseSearcher, check_encoder
from ..search.fusion import fuse
from ..search.rerank import Reranker
from ..search.types import Run, remove_query_ids, write_trec_run
from .metrics import METRICS, score_run_per_query, write_trec_qrels
from .perquery import analysis, read_per_query, write_per_query
from .report import print_table, significance_markdown, write_report
from .significance import RESAMPLES, SEED, compare, compare_all, describe, holm

log = logging.getLogger(__name__)
SYSTEMS = ("bm25", "dense", "hybrid")
RESULTS_ENV = "DRETRIEVER_RESULTS"  # `dretriever regress` reads each scored row from this JSONL file


@dataclass
class EvalArgs:
    data: list[str] = field(metadata={"help": "BEIR dataset folders (corpus.jsonl, queries.jsonl, qrels/)"})
    model: str = field(default="sentence-transformers/all-MiniLM-L6-v2", metadata={"help": "dense model"})
    systems: list[str] = field(default_factory=lambda: list(SYSTEMS), metadata={"help": "bm25 dense hybrid"})
    split: str = field(default="test", metadata={"help": "qrels split to evaluate: qrels/<split>.tsv"})
    shards: int = field(default=4, metadata={"help": "FAISS shards of a dense index that is built here, a count"})
    factory: str = field(default="Flat", metadata={"help": "faiss index_factory string (Flat, HNSW32, IVF1024,PQ64)"})
    index_root: str = field(default="indexes", metadata={"help": "where indexes are built and reused"})
    output_dir: str = field(default="eval/reports/latest", metadata={"help": "report.md/json/png and runs/"})
    k: int = field(default=1000, metadata={"help": "hits retrieved per query, a count"})
    batch_size: int = field(default=64, metadata={"help": "texts per encoding batch, at most"})
    precision: str = field(default="auto", metadata={"help": "encoding precision: auto (bf16 where the CPU or GPU "
                                                             "runs it natively, else fp32) | fp32 | bf16 | fp16"})
    fusion: str = field(default="interpolation", metadata={"help": "interpolation (min-max, alpha) | rrf"})
    alpha: float = field(default=0.5, metadata={"help": "weight of the dense run for interpolation"})
    remove_query: bool = field(default=True, metadata={"help": "drop hits whose id is the query's own id (BEIR's "
                                                                "convention)"})
    label: str | None = field(default=None, metadata={"help": "name of the dense system in the report"})
    backend: str = field(default="torch", metadata={"help": "dense inference backend: torch | onnx | onnx-int8 "
                                                             "(static int8 calibrated on the corpus) | openvino "
                                                             "(fp32, or bf16 at precision auto where the CPU has "
                                                             "it)"})
    calibration: int = field(default=DEFAULT_PASSAGES, metadata={"help": "onnx-int8: corpus passages to calibrate on"})
    baseline: str | None = field(default=None, metadata={
        "help": "system every other one is tested against: its report name or bm25 | dense | hybrid "
                "(default: the report's first system)"})
    resamples: int = field(default=RESAMPLES, metadata={"help": "resamples of the bootstrap interval and of the "
                                                                "randomization test (default: 10000)"})
    seed: int = field(default=SEED, metadata={"help": "seed of the bootstrap and randomization test (default: 0)"})
    rerank: str | None = field(default=None, metadata={
        "help": "cross-encoder (a sentence-transformers CrossEncoder folder or hub id): each system is also reported "
                "reranked (<system>+rerank), with its cost and a paired test against its first stage (default: none)"})
    rerank_depth: int = field(default=100, metadata={"help": "first-stage hits reranked per query (the reranked run "
                                                             "holds that many)"})
    rerank_max_length: int | None = field(default=None, metadata={"help": "tokens of a (query, document) pair kept "
                                                                          "(default: the model's)"})
    rerank_max_tokens: str = field(default="auto", metadata={"help": "padded tokens per reranking batch: auto | "
                                                                     "none | N"})
    rerank_backend: str = field(default="torch", metadata={
        "help": "the cross-encoder's inference backend: torch | onnx (fp32 ONNX Runtime) | openvino "
                "(fp32, or bf16 at precision auto where the CPU has it); the export is cached beside the model"})
    rerank_precision: str | None = field(default=None, metadata={
        "help": "the cross-encoder's precision: auto | fp32 | bf16 (default: --precision), so a first stage kept "
                "in fp32 can be reranked at the CPU's fastest precision"})

    def __post_init__(self):
        unknown = [s for s in self.systems if s not in SYSTEMS]
        if unknown:
            raise DretrieverError(f"systems: unknown {unknown}; choose from {list(SYSTEMS)}")
        if self.k <= 0:
            raise DretrieverError(f"k: must be positive, got {self.k}")
        check_backend(self.backend)
        if self.resamples < 1:
            raise DretrieverError(f"resamples: must be positive, got {self.resamples}")
        if self.fusion not in ("rrf", "interpolation"):
            raise DretrieverError(f"fusion: expected rrf or interpolation, got {self.fusion!r}")
        if self.rerank_depth < 1:
            raise DretrieverError(f"rerank_depth: must be positive, got {self.rerank_depth}")
        parse_max_tokens(self.rerank_max_tokens)
        check_backend(self.rerank_backend)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", os.path.basename(text.rstrip("/")) or text).strip("-")


def dense_index_dir(index_root: str | Path, dataset: str, model: str, factory: str, shards: int,
                    backend: str = "torch") -> Path:
    suffix = "" if backend == "torch" else f".{backend}"
    return Path(index_root) / f"{dataset}.{slug(model)}.{slug(factory)}.s{shards}{suffix}"


def dense_searcher(ds: BeirDataset, model: str, index_root: str | Path, shards: int = 4, factory: str = "Flat",
                   batch_size: int = 64, precision: str = "auto", progress: bool = True, backend: str = "torch",
                   calibration: int = DEFAULT_PASSAGES) -> DenseSearcher:
    """Build (or reuse, when finished with the same settings) the dataset's index for ``model``; search it.
    ``onnx-int8`` calibrates on ``calibration`` passages drawn (seeded) from the corpus."""
    root = dense_index_dir(index_root, ds.name, model, factory, shards, backend)
    sample = None
    if backend == "onnx-int8":
        sample = Calibration.sample([doc.contents for doc in ds.corpus.values()], calibration)
    encoder = BiEncoder.from_pretrained(model, backend=backend, calibration=sample)
    source = corpus_source(ds.corpus, shards, {"path": str(ds.path.resolve() / "corpus.jsonl")})
    build_index(source, encoder, root, model=model, factory=factory, batch_size=batch_size, precision=precision,
                progress=progress)
    index = ShardedIndex.open(root)
    check_encoder(index.manifest, encoder, root)
    return DenseSearcher(index, encoder, batch_size=batch_size, precision=precision)


def dense_run(args: EvalArgs, ds: BeirDataset) -> Run:
    searcher = dense_searcher(ds, args.model, args.index_root, args.shards, args.factory, args.batch_size,
                              args.precision, backend=args.backend, calibration=args.calibration)
    return searcher.search(ds.queries, k=args.k)


def bm25_run(args: EvalArgs, ds: BeirDataset) -> Run:
    root = build_bm25_index(ds.corpus, Path(args.index_root) / f"{ds.name}.bm25-flat")
    return BM25Searcher(root).search(ds.queries, k=args.k)


def dense_label(args: EvalArgs) -> str:
    return args.label or slug(args.model) + ("" if args.backend == "torch" else f"+{args.backend}")


def system_names(args: EvalArgs) -> dict[str, str]:
    """``{bm25 | dense | hybrid: the name its rows carry}`` for the systems asked for, in report order."""
    label = dense_label(args)
    names = {"bm25": "bm25", "dense": label, "hybrid": f"hybrid({label}+bm25,{args.fusion})"}
    return {kind: names[kind] for kind in SYSTEMS if kind in args.systems}


def baseline_name(args: EvalArgs) -> str:
    names = system_names(args)
    if args.rerank:
        names.update({f"{kind}+rerank": f"{name}+rerank" for kind, name in list(names.items())})
    if args.baseline is None:
        return next(iter(names.values()))
    if args.baseline in names.values():
        return args.baseline
    if args.baseline in names:
        return names[args.baseline]
    raise DretrieverError(f"baseline: {args.baseline!r} is none of the systems evaluated {list(names.values())} "
                          f"(or {list(names)})")


def evaluate(args: EvalArgs, command: str) -> list[dict]:
    """Retrieve, score and compare every system on every dataset; write the report; return the rows."""
    out = Path(args.output_dir)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    label = dense_label(args)
    baseline = baseline_name(args)
    reranker = None
    if args.rerank:  # loaded first: a bad model fails before any index is built
        reranker = Reranker.load(args.rerank, max_length=args.rerank_max_length,
                                 max_tokens=parse_max_tokens(args.rerank_max_tokens),
                                 precision=args.rerank_precision or args.precision, backend=args.rerank_backend)
    rows: list[dict] = []
    sections: list[str] = []
    comparisons: list[dict] = []
    reranked: list[dict] = []  # per dataset and first stage: the cost and the paired tests against it
    for data in args.data:
        ds = load_beir(ensure_dataset(Path(data).parent, Path(data).name), split=args.split)
        log.info("%s: %d documents, %d %s queries", ds.name, len(ds.corpus), len(ds.queries), args.split)
        qrels_path = out / "runs" / f"{ds.name}.{args.split}.qrels"
        write_trec_qrels(ds.qrels, qrels_path)
        runs: dict[str, Run] = {}
        if "bm25" in args.systems or "hybrid" in args.systems:
            runs["bm25"] = bm25_run(args, ds)
        if "dense" in args.systems or "hybrid" in args.systems:
            runs[label] = dense_run(args, ds)
        if "hybrid" in args.systems:
            runs[f"hybrid({label}+bm25,{args.fusion})"] = fuse(runs[label], runs["bm25"], args.fusion, args.alpha, args.k)
        wanted = {"bm25": "bm25" in args.systems, label: "dense" in args.systems}
        scored: dict[str, Run] = {}
        memo: dict[tuple[str, str], float] = {}  # (qid, docid) -> cross-encoder score, shared by the systems
        for system, run in runs.items():
            if not wanted.get(system, True):
                continue
            if args.remove_query:
                run = remove_query_ids(run)
            scored[system] = run
            rows.append(score_and_record(ds.name, system, run, qrels_path, out / "runs", command, out / "perquery"))
            if reranker is not None:
                name, run, cost = rerank_system(reranker, system, run, ds, args.rerank_depth, memo)
                scored[name] = run
                rows.append({**score_and_record(ds.name, name, run, qrels_path, out / "runs", command,
                                                out / "perquery"), **cost})
        if reranker is not None:
            found = rerank_significance(ds, rows, scored, args, out)
            reranked += found["systems"]
            sections += found["md"]
        if len(scored) > 1:
            found = significance(ds, [r for r in rows if r["dataset"] == ds.name], baseline, scored, args, out)
            comparisons += found["comparisons"]
            sections += found["md"]
    metrics = list(METRICS.values())
    notes = [f"Split `{args.split}`, top-{args.k}, scored by Pyserini's trec_eval -c. Dense model `{args.model}` "
             f"({args.factory}, {args.shards} shards); fusion `{args.fusion}`."]
    if reranker is not None:
        notes.append(f"`+rerank`: the system's top {args.rerank_depth} reordered by the cross-encoder `{args.rerank}` "
                     f"(raw logits, pairs of at most {reranker.max_length} tokens, precision {reranker.precision}, "
                     f"backend {reranker.backend}); "
                     f"a reranked run holds those {args.rerank_depth} hits only, so its R@1000 is its first stage's "
                     f"R@{args.rerank_depth}.")
    extra = {"baseline": baseline, "significance": {"test": describe(args.resamples, args.seed),
                                                    "resamples": args.resamples, "seed": args.seed,
                                                    "comparisons": comparisons}} if comparisons else {}
    if reranker is not None:
        extra["rerank"] = {"model": args.rerank, "depth": args.rerank_depth, "max_length": reranker.max_length,
                           "precision": reranker.precision, "backend": reranker.backend,
                           "systems": reranked}
    paths = write_report(rows, out, "BEIR evaluation", metrics, notes, sections, extra)
    print(print_table(rows, metrics))
    if comparisons:
        print("\n".join(significance_markdown(comparisons)))
    print(f"report: {paths['md']}  {paths['json']}  {paths['png']}")
    return rows


def significance(ds: BeirDataset, rows: list[dict], baseline: str, runs: dict[str, Run], args: EvalArgs,
                 out: Path) -> dict:
    """One dataset's paired comparisons against ``baseline`` (every metric) and the report section showing them
    with the per-query analysis of the first metric (``perquery-<dataset>.png``)."""
    metrics = list(METRICS.values())
    scores = {r["system"]: read_per_query(r["perquery"]) for r in rows}
    found = compare_all(scores, baseline, metrics, args.resamples, args.seed)
    table = [{"dataset": ds.name, **c.to_dict()} for c in found]
    md = ["", f"## {ds.name}: each system against {baseline}", "", describe(args.resamples, args.seed), "",
          *significance_markdown(table)]
    md += analysis(scores, baseline, metrics[0], out / f"perquery-{ds.name}.png", found, ds.queries, ds.qrels, runs)
    return {"comparisons": table, "md": md}


def rerank_system(reranker: Reranker, system: str, run: Run, ds: BeirDataset, depth: int,
                  memo: dict[tuple[str, str], float] | None = None) -> tuple[str, Run, dict]:
    """``<system>+rerank``: ``run``'s top ``depth`` reordered by ``reranker``, and what it cost (pairs, seconds,
    pairs/s, read off the reranker's counters around this one run: the pairs it scored, not those ``memo`` held
    from an earlier system of the dataset)."""
    pairs, seconds = reranker.pairs, reranker.seconds
    out = reranker.rerank_run(run, ds.queries, lambda docid: ds.corpus[docid].contents, depth, memo=memo)
    pairs, seconds = reranker.pairs - pairs, reranker.seconds - seconds
    log.info("%s: reranked %s's top %d: %d pairs in %.1f s (%.1f pairs/s)", ds.name, system, depth, pairs, seconds,
             pairs / seconds if seconds else 0.0)
    return f"{system}+rerank", out, {"rerank_pairs": pairs, "rerank_seconds": round(seconds, 3),
                                     "pairs_per_second": round(pairs / seconds, 2) if seconds else None}


def rerank_significance(ds: BeirDataset, rows: list[dict], runs: dict[str, Run], args: EvalArgs, out: Path) -> dict:
    """One dataset's reranked systems, each against its own first stage: the cost, the paired comparisons on every
    metric (Holm over the reranked systems, per metric) and, on the first metric, the per-query analysis
    (``perquery-<dataset>.<system>.png``); returns ``systems`` (for report.json) and ``md`` (report lines)."""
    metrics = list(METRICS.values())
    mine = {r["system"]: r for r in rows if r["dataset"] == ds.name}
    pairs = [(s.removesuffix("+rerank"), s) for s in mine if s.endswith("+rerank")]
    scores = {s: read_per_query(mine[s]["perquery"]) for pair in pairs for s in pair}
    found = []
    for metric in metrics:
        group = [compare(scores[first][metric], scores[second][metric], metric, first, second, args.resamples,
                         args.seed) for first, second in pairs]
        for c, adjusted in zip(group, holm([c.p_value for c in group])):
            c.p_holm = adjusted
        found += group
    table = [{"dataset": ds.name, **c.to_dict()} for c in found]
    md = ["", f"## {ds.name}: each reranked system against its first stage", "",
          f"Reranked by `{args.rerank}`, top {args.rerank_depth} per query.", "",
          "| system | pairs scored (not scored for a system above) | seconds | pairs/s |", "|---|---:|---:|---:|"]
    md += [f"| {second} | {mine[second]['rerank_pairs']} | {mine[second]['rerank_seconds']:.1f} | "
           f"{mine[second]['pairs_per_second'] or 0:.1f} |" for _, second in pairs]
    md += ["", describe(args.resamples, args.seed) + " Holm: over the reranked systems.", "",
           *significance_markdown(table)]
    for first, second in pairs:
        md += analysis({first: scores[first], second: scores[second]}, first, metrics[0],
                       out / f"perquery-{ds.name}.{slug(second)}.png", [c for c in found if c.system == second],
                       ds.queries, ds.qrels, runs)
    systems = [{"dataset": ds.name, "system": second, "first_stage": first,
                **{k: mine[second][k] for k in ("rerank_pairs", "rerank_seconds", "pairs_per_second")},
                "comparisons": [c for c in table if c["system"] == second]} for first, second in pairs]
    return {"systems": systems, "md": md}


def score_and_record(dataset: str, system: str, run: Run, qrels_path: Path, runs_dir: Path, command: str,
                     perquery_dir: Path | None = None) -> dict:
    """Write the TREC run, score it with Pyserini's trec_eval, write its per-query scores
    (``<perquery_dir, default runs_dir>/<dataset>.<system>.perquery.tsv``) and record the row, with the path of
    that file under ``perquery``, for `dretriever regress`."""
    run_path = runs_dir / f"{dataset}.{slug(system)}.trec"
    write_trec_run(run, run_path, tag=slug(system))
    means, per_query = score_run_per_query(qrels_path, run_path)
    perquery_path = Path(perquery_dir or runs_dir) / f"{dataset}.{slug(system)}.perquery.tsv"
    write_per_query(per_query, means, perquery_path)
    row = {"dataset": dataset, "system": system, **means, "command": command, "run": str(run_path),
           "perquery": str(perquery_path)}
    record(row)
    return row


def record(row: dict) -> None:
    sink = os.environ.get(RESULTS_ENV)
    if sink:
        with open(sink, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
