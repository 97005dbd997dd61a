"""eval/sweep_train.py: every grid combination trains once, runs are ranked by dev, a rerun trains nothing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.train_helpers import make_toy_beir, write_random_negatives, write_recipe


def _sweep(*args, cwd):
    return subprocess.run([sys.executable, str(REPO / "eval" / "sweep_train.py"), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def test_sweep_trains_each_combination_and_ranks_by_dev(tmp_path, tiny_model):
    data = make_toy_beir(tmp_path / "toy")
    negatives = write_random_negatives(data, tmp_path / "neg.jsonl")
    recipe = write_recipe(tmp_path / "star.yaml", method="star", model=str(tiny_model), data=str(data),
                          output_dir=str(tmp_path / "unused"), negatives=str(negatives), neg_start=0, neg_depth=10,
                          batch_size=4, precision="fp32", max_steps=2, dev_queries=8, dev_corpus=0,
                          eval_at_start=False)
    out, root = tmp_path / "sweep.json", tmp_path / "runs"
    args = [recipe, "--grid", "lr=1e-5,1e-3", "hard_negatives=1,2", "--set", "temperature=0.1",
            "--output_root", root, "--score_split", "train", "--output", out]
    first = _sweep(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert sorted(r["run"] for r in rows) == sorted(
        f"lr={lr}_hard_negatives={h}" for lr in ("1e-5", "1e-3") for h in ("1", "2"))
    devs = [r["best_dev_ndcg@10"] for r in rows]
    assert devs == sorted(devs, reverse=True)                      # ranked by the selection criterion
    for r in rows:
        assert r["steps"] == 2 and 0.0 <= r["train_ndcg@10"] <= 1.0
        assert r["dev_curve"] and r["dev_curve"][-1][0] == 2       # dev evaluated at the end of each run
        targs = json.loads((root / r["run"] / "train_args.json").read_text())
        assert targs["train"]["lr"] == float(r["lr"]) and targs["method"]["temperature"] == 0.1
        assert targs["method"]["hard_negatives"] == int(r["hard_negatives"])
    assert first.stdout.count("trained ") == 4
    # each setting against the starting model, query by query, Holm over the four settings
    from dretriever.evaluation.significance import compare, holm

    saved = json.loads(out.read_text())
    start = saved["start"]
    assert start["model"] == str(tiny_model)
    for r in [start, *rows]:  # the per-query scores are those the column averages
        per_query = r["per_query_ndcg@10"]
        assert sum(per_query.values()) / len(per_query) == pytest.approx(r["train_ndcg@10"], abs=1e-6)
    for r in rows:
        c = compare(start["per_query_ndcg@10"], r["per_query_ndcg@10"])
        assert r["vs_start"]["p_value"] == c.p_value and r["vs_start"]["interval"] == list(c.interval)
        assert r["vs_start"]["difference"] == pytest.approx(r["train_ndcg@10"] - start["train_ndcg@10"], abs=1e-6)
    assert [r["vs_start"]["p_holm"] for r in rows] == holm([r["vs_start"]["p_value"] for r in rows])
    assert f"| start: {tiny_model} |" in first.stdout and "The setting chosen on dev (" in first.stdout

    second = _sweep(*args, cwd=tmp_path)                           # finished runs are not trained again
    assert second.returncode == 0, second.stderr[-2000:]
    assert "trained " not in second.stdout
    assert [r["run"] for r in json.loads(out.read_text())["rows"]] == [r["run"] for r in rows]


def test_sweep_rejects_a_malformed_grid(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", method="star")
    bad = _sweep(recipe, "--grid", "lr", "--output_root", tmp_path / "runs", cwd=tmp_path)
    assert bad.returncode == 2
    assert "--grid: expected field=value, got 'lr'" in bad.stderr
    assert not (tmp_path / "runs").exists()


def test_sweep_set_takes_an_empty_value_and_grid_does_not():
    from dretriever.errors import DretrieverError
    from eval.sweep_train import parse_pairs

    assert parse_pairs(["dev_negatives=", "lr=2e-5"], multi=False) == {"dev_negatives": [""], "lr": ["2e-5"]}
    assert parse_pairs(["lr=2e-5,1e-4"], multi=True) == {"lr": ["2e-5", "1e-4"]}
    for bad, multi in ((["lr="], True), (["=1"], False), (["lr"], False)):
        with pytest.raises(DretrieverError, match="expected field=value"):
            parse_pairs(bad, multi=multi)
