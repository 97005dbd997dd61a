"""Per-query scores: their files (trec_eval ``-q`` format) and the analysis a report shows of them.

A per-query file holds ``metric<TAB>qid<TAB>value`` lines, as ``trec_eval -q`` prints them, for every judged
query (a query absent from the run is written with 0, as ``-c`` counts it), and one ``all`` line per metric
with trec_eval's mean. A few KB per system: kept beside each report, it lets a later comparison
(``dretriever compare``) run without the runs, the index or the model.

The analysis: the sorted per-query differences of each system against the baseline (a PNG, one panel per
system), and the largest wins and losses with the query text and the rank of the first relevant document
(judged above 0) in each run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.lines import read_lines
from ..errors import DataError
from ..atomic import write_text_atomic
from ..search.types import Run

PerQuery = dict[str, dict[str, float]]  # metric -> qid -> score


def write_per_query(scores: PerQuery, means: dict[str, float], path: str | Path) -> None:
    lines = [f"{metric}\t{qid}\t{value:.4f}" for metric, by_query in scores.items() for qid, value in by_query.items()]
    lines += [f"{metric}\tall\t{means[metric]:.4f}" for metric in scores]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, "\n".join(lines) + "\n")


def read_per_query(path: str | Path) -> PerQuery:
    """A per-query file (or ``trec_eval -q`` output); the ``all`` lines are skipped."""
    scores: PerQuery = {}
    for number, line in read_lines(path, missing="per-query score file not found"):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3:
            raise DataError(path, f"expected 3 columns (metric qid value), got {len(parts)}", number)
        try:
            value = float(parts[2])
        except ValueError:
            raise DataError(path, f"value must be a number, got {parts[2][:50]!r}", number) from None
        if parts[1] != "all":
            scores.setdefault(parts[0], {})[parts[1]] = value
    if not scores:
        raise DataError(path, "no per-query scores")
    return scores


def first_relevant_rank(hits: list[tuple[str, float]], rels: dict[str, int]) -> int | None:
    return next((rank for rank, (docid, _) in enumerate(hits, start=1) if rels.get(docid, 0) > 0), None)


def differences(baseline: dict[str, float], system: dict[str, float]) -> dict[str, float]:
    return {q: system.get(q, 0.0) - baseline.get(q, 0.0) for q in sorted(set(baseline) | set(system))}


def largest_changes(baseline: dict[str, float], system: dict[str, float], baseline_name: str, system_name: str,
                    queries: dict[str, str] | None = None, qrels: dict[str, dict[str, int]] | None = None,
                    runs: dict[str, Run] | None = None, n: int = 10) -> list[str]:
    """Markdown: the ``n`` largest wins and losses of ``system`` over ``baseline``, with query text and the rank
    of the first relevant document in each run (where runs and qrels are given)."""
    diff = differences(baseline, system)
    wins = sorted((q for q in diff if diff[q] > 0), key=lambda q: (-diff[q], q))[:n]
    losses = sorted((q for q in diff if diff[q] < 0), key=lambda q: (diff[q], q))[:n]

    def rank(name: str, qid: str) -> str:
        if not runs or name not in runs or qrels is None:
            return "-"
        r = first_relevant_rank(runs[name].get(qid, []), qrels.get(qid, {}))
        return "none" if r is None else str(r)

    def text(qid: str) -> str:
        t = (queries or {}).get(qid, "")
        t = t if len(t) <= 90 else t[:87] + "..."
        return t.replace("|", "\\|")

    lines = []
    for kind, picked, verb in (("wins", wins, "above"), ("losses", losses, "below")):
        if not picked:
            lines += ["", f"No query where {system_name} scores {verb} {baseline_name}."]
            continue
        lines += ["", f"The {len(picked)} largest {kind} of {system_name} against {baseline_name}:", ""]
        lines += [f"| query | text | Δ | {baseline_name} | {system_name} | first relevant at (baseline / system) |",
                  "|---|---|---:|---:|---:|---:|"]
        lines += [f"| {q} | {text(q)} | {diff[q]:+.4f} | {baseline.get(q, 0.0):.4f} | {system.get(q, 0.0):.4f} | "
                  f"{rank(baseline_name, q)} / {rank(system_name, q)} |" for q in picked]
    return lines


def plot_differences(diffs: dict[str, dict[str, float]], baseline: str, metric_label: str, path: str | Path,
                     titles: dict[str, str] | None = None) -> None:
    """One panel per system: its per-query differences against ``baseline``, sorted, as bars around a zero line
    (green: the system wins, red: it loses); readable with hundreds of queries."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    systems = list(diffs)
    fig, axes = plt.subplots(len(systems), 1, figsize=(9, 2.6 * len(systems) + 0.6), squeeze=False, sharey=True)
    for ax, system in zip(axes[:, 0], systems):
        d = np.sort(np.fromiter(diffs[system].values(), dtype=np.float64))[::-1]
        x = np.arange(len(d))
        ax.bar(x, d, width=1.0, color=np.where(d > 0, "#2a9d4b", "#d1495b"), linewidth=0)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.axhline(float(d.mean()) if len(d) else 0.0, color="#1f5fbf", linewidth=1, linestyle="--",
                   label=f"mean Δ {d.mean():+.4f}" if len(d) else "mean Δ")
        ax.set_xlim(-0.5, max(len(d), 1) - 0.5)
        ax.set_ylabel(f"Δ {metric_label}")
        ax.set_title((titles or {}).get(system, f"{system} - {baseline}"), fontsize=9)
        ax.legend(fontsize=8, loc="upper right", frameon=False)
        ax.grid(axis="y", alpha=0.3)
    axes[-1, 0].set_xlabel("queries, sorted by difference (left: system better, right: baseline better)")
    fig.suptitle(f"Per-query {metric_label} against {baseline}", fontsize=10)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def analysis(scores: dict[str, PerQuery], baseline: str, metric: str, png: str | Path, comparisons: list,
             queries: dict[str, str] | None = None, qrels: dict[str, dict[str, int]] | None = None,
             runs: dict[str, Run] | None = None, n: int = 10) -> list[str]:
    """Markdown section on ``metric``: the PNG of sorted per-query differences (written to ``png``, one panel per
    system other than ``baseline``) and each system's ``n`` largest wins and losses. ``comparisons``
    (:class:`~.significance.Comparison`) give each panel its difference, interval and p."""
    from .report import LABELS

    label = LABELS.get(metric, metric)
    others = [s for s in scores if s != baseline]
    diffs = {s: differences(scores[baseline][metric], scores[s][metric]) for s in others}
    titles = {c.system: f"{c.system} - {baseline}: Δ {c.difference:+.4f}, CI [{c.interval[0]:+.4f}, "
                        f"{c.interval[1]:+.4f}], p {c.p_value:.4f}, W/T/L {c.wins}/{c.ties}/{c.losses}"
              for c in comparisons if c.metric == metric}
    plot_differences(diffs, baseline, label, png, titles)
    lines = ["", f"### Per-query {label} against {baseline}", "", f"![sorted per-query differences]({Path(png).name})"]
    for s in others:
        lines += largest_changes(scores[baseline][metric], scores[s][metric], baseline, s, queries, qrels, runs, n)
    return lines


def is_run_file(path: str | Path) -> bool:
    """A TREC run (6 columns) rather than per-query scores (3 columns), judged by its first non-empty line."""
    for number, line in read_lines(path, missing="run or per-query score file not found"):
        parts = line.split()
        if parts:
            if len(parts) not in (3, 6):
                raise DataError(path, f"expected a TREC run (6 columns) or per-query scores (3 columns), got "
                                      f"{len(parts)} columns", number)
            return len(parts) == 6
    raise DataError(path, "empty file")


def judged_only(scores: PerQuery, judged: list[str], path: str | Path) -> PerQuery:
    """Per-query scores over exactly the judged queries: one absent scores 0 (trec_eval -c); one not judged is
    an error (the scores belong to other qrels)."""
    for metric, by_query in scores.items():
        extra = sorted(set(by_query) - set(judged))
        if extra:
            raise DataError(path, f"{metric}: {len(extra)} queries not in the qrels (first: {extra[0]!r})")
    return {metric: {q: by_query.get(q, 0.0) for q in judged} for metric, by_query in scores.items()}
