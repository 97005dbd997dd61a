"""BEIR evaluation through Pyserini: BM25 (Lucene), dense (sharded FAISS) and their fusion.

For each dataset: build or reuse the indexes, retrieve the top-k for every judged query of the split,
write TREC runs, drop hits whose id equals the query id (Pyserini's ``--remove-query``), and score with
Pyserini's trec_eval. Several datasets give one table with an average row.
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
from ..search.dense import DenseSearcher, check_encoder
from ..search.fusion import fuse
from ..search.types import Run, remove_query_ids, write_trec_run
from .metrics import METRICS, score_run, write_trec_qrels
from .report import print_table, write_report

log = logging.getLogger(__name__)
SYSTEMS = ("bm25", "dense", "hybrid")
RESULTS_ENV = "DRETRIEVER_RESULTS"  # `dretriever regress` reads each scored row from this JSONL file


@dataclass
class EvalArgs:
    data: list[str] = field(metadata={"help": "BEIR dataset folders (corpus.jsonl, queries.jsonl, qrels/)"})
    model: str = field(default="sentence-transformers/all-MiniLM-L6-v2", metadata={"help": "dense model"})
    systems: list[str] = field(default_factory=lambda: list(SYSTEMS), metadata={"help": "bm25 dense hybrid"})
    split: str = "test"
    shards: int = 4
    factory: str = field(default="Flat", metadata={"help": "faiss index_factory string (Flat, HNSW32, IVF1024,PQ64)"})
    index_root: str = field(default="indexes", metadata={"help": "where indexes are built and reused"})
    output_dir: str = field(default="eval/reports/latest", metadata={"help": "report.md/json/png and runs/"})
    k: int = 1000
    batch_size: int = 64
    precision: str = "auto"
    fusion: str = field(default="interpolation", metadata={"help": "interpolation (min-max, alpha) | rrf"})
    alpha: float = field(default=0.5, metadata={"help": "weight of the dense run for interpolation"})
    remove_query: bool = True
    label: str | None = field(default=None, metadata={"help": "name of the dense system in the report"})
    backend: str = field(default="torch", metadata={"help": "dense inference backend: torch | onnx | onnx-int8 "
                                                             "(static int8 calibrated on the corpus)"})
    calibration: int = field(default=DEFAULT_PASSAGES, metadata={"help": "onnx-int8: corpus passages to calibrate on"})

    def __post_init__(self):
        unknown = [s for s in self.systems if s not in SYSTEMS]
        if unknown:
            raise DretrieverError(f"systems: unknown {unknown}; choose from {list(SYSTEMS)}")
        if self.k <= 0:
            raise DretrieverError(f"k: must be positive, got {self.k}")
        check_backend(self.backend)
        if self.fusion not in ("rrf", "interpolation"):
            raise DretrieverError(f"fusion: expected rrf or interpolation, got {self.fusion!r}")


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


def evaluate(args: EvalArgs, command: str) -> list[dict]:
    out = Path(args.output_dir)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    label = args.label or slug(args.model) + ("" if args.backend == "torch" else f"+{args.backend}")
    rows: list[dict] = []
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
        for system, run in runs.items():
            if not wanted.get(system, True):
                continue
            if args.remove_query:
                run = remove_query_ids(run)
            rows.append(score_and_record(ds.name, system, run, qrels_path, out / "runs", command))
    metrics = list(METRICS.values())
    notes = [f"Split `{args.split}`, top-{args.k}, scored by Pyserini's trec_eval -c. Dense model `{args.model}` "
             f"({args.factory}, {args.shards} shards); fusion `{args.fusion}`."]
    paths = write_report(rows, out, "BEIR evaluation", metrics, notes)
    print(print_table(rows, metrics))
    print(f"report: {paths['md']}  {paths['json']}  {paths['png']}")
    return rows


def score_and_record(dataset: str, system: str, run: Run, qrels_path: Path, runs_dir: Path, command: str) -> dict:
    """Write the TREC run, score it with Pyserini's trec_eval, and record the row for `dretriever regress`."""
    run_path = runs_dir / f"{dataset}.{slug(system)}.trec"
    write_trec_run(run, run_path, tag=slug(system))
    row = {"dataset": dataset, "system": system, **score_run(qrels_path, run_path), "command": command,
           "run": str(run_path)}
    record(row)
    return row


def record(row: dict) -> None:
    sink = os.environ.get(RESULTS_ENV)
    if sink:
        with open(sink, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
