"""Grid search over a training recipe, selected on the recipe's dev split.

Every combination of ``--grid`` values trains with ``dretriever train RECIPE --field value ...`` into its own
folder under ``--output_root`` (a rerun resumes or skips finished runs); the checkpoint each run selected on
its dev split (``best/``, else ``final/``) is then scored on ``--score_split`` of the recipe's dataset with the
in-process exact scorer (whole corpus, trec_eval's nDCG@10 formula). The table is ordered by dev score, the
selection criterion; the held-out column is reported, never used to choose. Report a chosen configuration
through ``dretriever eval beir`` (Pyserini's trec_eval), not through this column.

The starting model (the recipe's ``model``) is scored the same way, and each setting's held-out nDCG@10 is
compared with it query by query (evaluation/significance.py: the mean paired difference, its 95 % bootstrap
interval, the randomization test's p and that p after Holm's correction over the settings), so that a setting
whose gain lies inside the noise is shown as such.

    python eval/sweep_train.py recipes/star.yaml --grid lr=5e-5,1e-4,2e-4 epochs=3,6 \\
        --set precision=fp32 --output_root outputs/sweep/star --parallel 2 --output eval/reports/star/sweep.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dretriever.cli import run_script
from dretriever.errors import DretrieverError
from dretriever.evaluation.significance import ALPHA, RESAMPLES, SEED, compare, holm


def parse_pairs(items: list[str], multi: bool) -> dict[str, list[str]]:
    """``field=v1,v2`` (``--grid``, multi) or ``field=value`` (``--set``). A ``--set`` value may be empty
    (``dev_negatives=``: the command line's ``--dev_negatives ""``, a field switched off); a grid value may not."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or (multi and not value):
            raise DretrieverError(f"{'--grid' if multi else '--set'}: expected field=value, got {item!r}")
        out[key] = value.split(",") if multi else [value]
    return out


def combinations(grid: dict[str, list[str]]) -> list[dict[str, str]]:
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def run_name(combo: dict[str, str]) -> str:
    return "_".join(f"{k}={v}" for k, v in combo.items()) or "recipe"


def train_one(recipe: str, out: Path, overrides: dict[str, str]) -> dict:
    summary = out / "train_summary.json"
    if not summary.is_file():
        out.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "dretriever", "train", recipe, "--output_dir", str(out), "--progress", "false"]
        for k, v in overrides.items():
            cmd += [f"--{k}", v]
        t = time.time()
        with (out / "train.log").open("w") as log:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
        if rc != 0:
            raise DretrieverError(f"{out}: training failed (exit {rc}); see {out / 'train.log'}")
        print(f"trained {out.name} in {time.time() - t:.0f} s", flush=True)
    result = json.loads(summary.read_text())
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]
    result["dev_curve"] = [(r["step"], round(r["dev_ndcg@10"], 4)) for r in rows if "dev_ndcg@10" in r]
    return result


def held_out_scorer(data: str, split: str):
    """``score(model_path) -> {split_ndcg@10, ..., per_query_ndcg@10: {qid: score}}``: the exact in-process
    scorer over the whole corpus (the per-query scores are those its mean averages)."""
    import torch

    from dretriever.encoder import BiEncoder
    from dretriever.train.data import DevEvaluator, load_train_data

    held_out = load_train_data(data, split)  # queries with a positive judgment in `split`, and their qrels
    evaluator = DevEvaluator(held_out.corpus, held_out.queries, held_out.qrels, corpus_size=0)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    def score(model: str) -> dict:
        metrics = evaluator(BiEncoder.from_pretrained(model).to(device))
        return {**{k.replace("dev_", f"{split}_"): v for k, v in metrics.items()},
                "per_query_ndcg@10": {q: round(v, 6) for q, v in evaluator.per_query_ndcg.items()}}

    return score


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe")
    p.add_argument("--grid", nargs="+", default=[], help="field=v1,v2,... (every combination is trained)")
    p.add_argument("--set", nargs="*", default=[], help="field=value applied to every run")
    p.add_argument("--output_root", required=True)
    p.add_argument("--parallel", type=int, default=1, help="runs trained at once")
    p.add_argument("--score_split", default="test", help="held-out qrels split scored for each selected model")
    p.add_argument("--output", default="", help="write the table as JSON here (default: none)")
    p.add_argument("--resamples", type=int, default=RESAMPLES,
                   help="resamples of the bootstrap interval and randomization test against the starting model "
                        "(default: 10000)")
    p.add_argument("--seed", type=int, default=SEED, help="seed of the bootstrap and randomization test (default: 0)")
    a = p.parse_args(argv)
    import yaml

    if not Path(a.recipe).is_file():
        raise DretrieverError(f"recipe: file {a.recipe!r} not found")
    recipe = yaml.safe_load(Path(a.recipe).read_text())
    fixed = {k: v[0] for k, v in parse_pairs(a.set, multi=False).items()}
    combos = combinations(parse_pairs(a.grid, multi=True))
    data = fixed.get("data", recipe.get("data", ""))
    root = Path(a.output_root)

    def job(combo):
        return train_one(a.recipe, root / run_name(combo), {**fixed, **combo})

    with ThreadPoolExecutor(max(1, a.parallel)) as pool:
        trained = list(pool.map(job, combos))
    score = held_out_scorer(data, a.score_split)
    rows = []
    for combo, result in zip(combos, trained):
        model = result["best"] or result["final"]
        rows.append({"run": run_name(combo), **combo, "best_dev_ndcg@10": result["best_dev_ndcg@10"],
                     "best_step": result["best_step"], "steps": result["steps"], "train_wall_s": result.get("wall_s"),
                     "dev_curve": result["dev_curve"], "model": model, **score(model)})
    rows.sort(key=lambda r: -(r["best_dev_ndcg@10"] or 0))
    key = f"{a.score_split}_ndcg@10"
    start_model = fixed.get("model", recipe.get("model"))
    if not start_model:
        raise DretrieverError(f"recipe: {a.recipe} names no model to start from (and compare with)")
    start = {"model": start_model, **score(start_model)}
    against_start(rows, start, a.resamples, a.seed)
    print(f"\n| run | dev nDCG@10 (selection) | at step / of | {a.score_split} nDCG@10 (in-process) | "
          f"{a.score_split} R@100 | Δ vs start [95% CI] | p | p (Holm) |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| start: {start['model']} | | | {start[key]:.4f} | {start[f'{a.score_split}_recall@100']:.4f} | | | |")
    for r in rows:
        dev = "" if r["best_dev_ndcg@10"] is None else f"{r['best_dev_ndcg@10']:.4f}"
        v = r["vs_start"]
        print(f"| {r['run']} | {dev} | {r['best_step']} / {r['steps']} | {r[key]:.4f} | "
              f"{r[f'{a.score_split}_recall@100']:.4f} | {v['difference']:+.4f} [{v['interval'][0]:+.4f}, "
              f"{v['interval'][1]:+.4f}] | {v['p_value']:.4f} | {v['p_holm']:.4f} |")
    best = rows[0]["vs_start"]
    verdict = "beats it" if best["difference"] > 0 and best["p_holm"] < ALPHA else "is not shown to differ from it"
    print(f"\nThe setting chosen on dev ({rows[0]['run']}) {verdict} on {a.score_split} at p (Holm) < {ALPHA}: "
          f"Δ {best['difference']:+.4f}, p (Holm) {best['p_holm']:.4f}. Paired randomization test and percentile "
          f"bootstrap over the {a.score_split} queries ({a.resamples} resamples, seed {a.seed}); Holm over the "
          f"{len(rows)} settings.")
    if a.output:
        Path(a.output).parent.mkdir(parents=True, exist_ok=True)
        Path(a.output).write_text(json.dumps({"command": "python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])]),
                                              "device": device_name(), "start": start, "rows": rows},
                                             indent=2) + "\n")
    return 0


def against_start(rows: list[dict], start: dict, resamples: int, seed: int) -> None:
    """Add ``vs_start`` to each row: its per-query held-out nDCG@10 against the starting model's (difference,
    95 % interval, p, p after Holm over the rows)."""
    found = [compare(start["per_query_ndcg@10"], r["per_query_ndcg@10"], "ndcg@10", "start", r["run"], resamples,
                     seed) for r in rows]
    for r, c, adjusted in zip(rows, found, holm([c.p_value for c in found])):
        r["vs_start"] = {"difference": c.difference, "interval": list(c.interval), "p_value": c.p_value,
                         "p_holm": adjusted, "wins": c.wins, "ties": c.ties, "losses": c.losses}


def device_name() -> str:
    import platform

    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"


if __name__ == "__main__":
    run_script(main)
