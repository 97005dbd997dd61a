"""Reports people read: a Markdown table, JSON, and a PNG bar chart, each row with its command; and the table of
paired comparisons against a baseline (evaluation/significance.py)."""

from __future__ import annotations

from pathlib import Path

from ..atomic import write_json_atomic, write_text_atomic

LABELS = {"ndcg_cut_10": "nDCG@10", "recall_100": "R@100", "recall_1000": "R@1000"}


def with_average(rows: list[dict], metrics: list[str]) -> list[dict]:
    """Append, per system, an ``average`` row over datasets (as BEIR tables do) when there are several."""
    datasets = sorted({r["dataset"] for r in rows})
    if len(datasets) < 2:
        return rows
    out = list(rows)
    for system in dict.fromkeys(r["system"] for r in rows):
        mine = [r for r in rows if r["system"] == system]
        if len(mine) == len(datasets):
            out.append({"dataset": "average", "system": system,
                        **{m: sum(r[m] for r in mine) / len(mine) for m in metrics}, "command": ""})
    return out


def markdown(rows: list[dict], metrics: list[str], title: str, notes: list[str] = ()) -> str:
    lines = [f"# {title}", "", *notes, ""] if notes else [f"# {title}", ""]
    lines += ["| dataset | system | " + " | ".join(LABELS.get(m, m) for m in metrics) + " |",
              "|---|---|" + "---:|" * len(metrics)]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['system']} | " + " | ".join(f"{r[m]:.4f}" for m in metrics) + " |")
    commands = list(dict.fromkeys(r["command"] for r in rows if r.get("command")))
    if commands:
        lines += ["", "Produced by:", ""] + [f"    {c}" for c in commands]
    return "\n".join(lines) + "\n"


def significance_markdown(comparisons: list[dict], confidence: float = 0.95) -> list[str]:
    """Markdown table of :meth:`Comparison.to_dict` rows (with a ``dataset`` column when they carry one)."""
    by_dataset = any("dataset" in c for c in comparisons)
    head = "| dataset " if by_dataset else ""
    lines = [f"{head}| metric | system | baseline | system mean | baseline mean | Δ | {confidence:.0%} CI | p | "
             "p (Holm) | W/T/L |", "|---" * (by_dataset + 3) + "|" + "---:|" * 7]
    for c in comparisons:
        holm = "" if c.get("p_holm") is None else f"{c['p_holm']:.4f}"
        lines.append((f"| {c['dataset']} " if by_dataset else "") +
                     f"| {LABELS.get(c['metric'], c['metric'])} | {c['system']} | {c['baseline']} | "
                     f"{c['system_mean']:.4f} | {c['baseline_mean']:.4f} | {c['difference']:+.4f} | "
                     f"[{c['interval'][0]:+.4f}, {c['interval'][1]:+.4f}] | {c['p_value']:.4f} | {holm} | "
                     f"{c['wins']}/{c['ties']}/{c['losses']} |")
    return lines


def bar_chart(rows: list[dict], metric: str, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    systems = list(dict.fromkeys(r["system"] for r in rows))
    width = 0.8 / max(len(systems), 1)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(datasets) * max(1, len(systems)) / 2), 3.6))
    x = np.arange(len(datasets))
    for j, system in enumerate(systems):
        values = [next((r[metric] for r in rows if r["dataset"] == d and r["system"] == system), 0.0) for d in datasets]
        bars = ax.bar(x + j * width - 0.4 + width / 2, values, width, label=system)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(x, datasets)
    ax.set_ylabel(LABELS.get(metric, metric))
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), frameon=False)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)


def write_report(rows: list[dict], out_dir: str | Path, title: str, metrics: list[str], notes: list[str] = (),
                 sections: list[str] = (), extra: dict | None = None) -> dict:
    """Write ``report.md``, ``report.json`` and ``report.png`` under ``out_dir``; returns their paths.
    ``sections``: Markdown lines appended to report.md; ``extra``: keys added to report.json."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = with_average(rows, metrics)
    paths = {"md": out_dir / "report.md", "json": out_dir / "report.json", "png": out_dir / "report.png"}
    text = markdown(rows, metrics, title, notes)
    write_text_atomic(paths["md"], text + ("\n".join(sections) + "\n" if sections else ""))
    write_json_atomic(paths["json"], {"title": title, "notes": list(notes), "rows": rows, **(extra or {})})
    bar_chart(rows, metrics[0], paths["png"], title)
    return paths


def print_table(rows: list[dict], metrics: list[str]) -> str:
    return markdown(with_average(rows, metrics), metrics, "results").split("\n", 2)[2]

