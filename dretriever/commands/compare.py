"""Is the difference between runs real? Paired tests of TREC runs (anyone's) or per-query score files.

    dretriever compare BASELINE_RUN RUN [RUN ...] --qrels QRELS [--metric ndcg_cut_10 recall_100]
        [--format md|json] [--output_dir DIR]

Each input is a TREC run (scored by Pyserini's trec_eval ``-c -q``) or a per-query score file
(``trec_eval -q`` format, as ``dretriever eval beir`` keeps under ``<output_dir>/perquery/``). Every input after
the first is tested against the first (evaluation/significance.py); with several, Holm's correction runs over
them per metric. ``--output_dir`` also writes compare.md/json, the per-query picture and the runs' per-query
scores.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..cli import command_line, parse
from ..data.beir import load_qrels, load_queries
from ..errors import DretrieverError
from ..evaluation.metrics import measures, score_run_per_query, write_trec_qrels
from ..evaluation.perquery import analysis, is_run_file, judged_only, read_per_query, write_per_query
from ..evaluation.report import significance_markdown
from ..evaluation.significance import RESAMPLES, SEED, compare_all, describe
from ..atomic import write_json_atomic, write_text_atomic
from ..search.types import read_trec_run

SUFFIXES = (".perquery.tsv", ".trec", ".run", ".txt", ".tsv")


@dataclass
class CompareArgs:
    runs: list[str] = field(default_factory=list, metadata={
        "help": "TREC runs or per-query score files, the first being the baseline; may also come first on the "
                "command line without --runs (default: none; two or more are needed)"})
    qrels: str | None = field(default=None, metadata={
        "help": "judgments, TREC (qid 0 docid rel) or BEIR tsv; needed to score runs; with per-query files, a "
                "judged query missing from one scores 0 (default: none)"})
    metric: list[str] = field(default_factory=lambda: ["ndcg_cut_10", "recall_100"], metadata={
        "help": "trec_eval measures, as printed (ndcg_cut_10) or as -m arguments (ndcg_cut.10) "
                "(default: ndcg_cut_10 recall_100)"})
    names: list[str] = field(default_factory=list, metadata={
        "help": "a name per input, in order (default: each file's name without .trec/.perquery.tsv)"})
    queries: str | None = field(default=None, metadata={
        "help": "queries.jsonl whose texts the per-query analysis shows (with --output_dir; default: none)"})
    format: str = field(default="md", metadata={"help": "what is printed: md (a table) | json (default: md)"})
    output_dir: str | None = field(default=None, metadata={
        "help": "write compare.md, compare.json, compare.png (sorted per-query differences on the first metric) "
                "and the runs' per-query scores here (default: print only)"})
    resamples: int = field(default=RESAMPLES, metadata={
        "help": "resamples of the bootstrap interval and the randomization test (default: 10000)"})
    seed: int = field(default=SEED, metadata={"help": "seed of the bootstrap and the randomization test (default: 0)"})

    def __post_init__(self):
        if len(self.runs) < 2:
            raise DretrieverError(f"runs: need a baseline and at least one more input, got {len(self.runs)}")
        if self.names and len(self.names) != len(self.runs):
            raise DretrieverError(f"names: {len(self.names)} names for {len(self.runs)} inputs")
        if self.format not in ("md", "json"):
            raise DretrieverError(f"format: expected md or json, got {self.format!r}")
        if self.resamples < 1:
            raise DretrieverError(f"resamples: must be positive, got {self.resamples}")


def default_name(path: str) -> str:
    name = Path(path).name
    return next((name[: -len(s)] for s in SUFFIXES if name.endswith(s) and len(name) > len(s)), name)


def load_scores(args: CompareArgs, names: list[str], tmp: Path) -> tuple[dict, dict, dict | None]:
    """``({name: {metric: {qid: score}}}, {name: run} for the run inputs, qrels or None)``."""
    wanted = measures(args.metric)
    qrels = load_qrels(args.qrels) if args.qrels else None
    if qrels is not None:
        trec_qrels = tmp / "qrels"
        write_trec_qrels(qrels, trec_qrels)  # BEIR tsv or TREC in, TREC out (what trec_eval reads)
    scores, runs = {}, {}
    for name, path in zip(names, args.runs):
        if is_run_file(path):
            if qrels is None:
                raise DretrieverError(f"qrels: needed to score the run {path}")
            means, scores[name] = score_run_per_query(trec_qrels, path, wanted)
            runs[name] = read_trec_run(path)
            if args.output_dir:
                write_per_query(scores[name], means, Path(args.output_dir) / "perquery" / f"{name}.perquery.tsv")
        else:
            found = read_per_query(path)
            missing = [m for m in wanted.values() if m not in found]
            if missing:
                raise DretrieverError(f"metric: {path} holds no per-query {missing} (it has {sorted(found)})")
            found = {m: found[m] for m in wanted.values()}
            scores[name] = judged_only(found, list(qrels), path) if qrels is not None else found
    return scores, runs, qrels


def main(argv) -> int:
    argv = list(argv)
    lead = next((i for i, a in enumerate(argv) if a.startswith("-")), len(argv))
    if lead:  # inputs given first, without --runs
        argv = ["--runs", *argv[:lead], *argv[lead:]]
    args = parse(CompareArgs, argv)
    names = args.names or [default_name(p) for p in args.runs]
    if len(set(names)) != len(names):
        names = list(args.runs)
    if len(set(names)) != len(names):
        raise DretrieverError("runs: the same input is given twice")
    metrics = list(measures(args.metric).values())
    with tempfile.TemporaryDirectory() as tmp:
        scores, runs, qrels = load_scores(args, names, Path(tmp))
    found = compare_all(scores, names[0], metrics, args.resamples, args.seed)
    table = [c.to_dict() for c in found]
    report = {"baseline": names[0], "inputs": dict(zip(names, args.runs)), "qrels": args.qrels,
              "test": describe(args.resamples, args.seed), "resamples": args.resamples, "seed": args.seed,
              "comparisons": table, "command": command_line()}
    md = [describe(args.resamples, args.seed), "", *significance_markdown(table)]
    if args.output_dir:
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        queries = load_queries(args.queries) if args.queries else None
        section = analysis(scores, names[0], metrics[0], out / "compare.png", found, queries, qrels, runs)
        inputs = [f"- {n}: `{p}`" for n, p in zip(names, args.runs)]
        write_text_atomic(out / "compare.md", "\n".join([f"# Against {names[0]}", "", *inputs, "", *md, *section,
                                                         "", "Produced by:", "", f"    {command_line()}"]) + "\n")
        write_json_atomic(out / "compare.json", report)
    print(json.dumps(report, indent=1) if args.format == "json" else "\n".join(md))
    return 0
