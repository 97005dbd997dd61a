"""`dretriever compare`: paired tests of TREC runs (Pyserini's format) or per-query score files, from disk."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dretriever.evaluation.metrics import score_run_per_query
from dretriever.evaluation.perquery import read_per_query

CLI = [sys.executable, "-m", "dretriever"]
QUERIES = [f"q{i}" for i in range(1, 14)]
DOWN = 1 - 0.6309  # a relevant document at rank 2 instead of 1: nDCG@10 1 / log2(3), printed 0.6309


def write_inputs(tmp_path):
    """13 judged queries with one relevant document each. Run A finds it first everywhere; run B second for
    q1-q6, first for q7-q12 and returns nothing for q13; run C equals A."""
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\td{q}\t1\n" for q in QUERIES))
    (tmp_path / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": f"question {q}"}) + "\n"
                                                    for q in QUERIES))

    def run(name, second):
        lines = []
        for q in QUERIES:
            if name == "B" and q == "q13":
                continue
            docs = [f"x{q}", f"d{q}"] if q in second else [f"d{q}", f"x{q}"]
            lines += [f"{q} Q0 {d} {r} {10 - r:.6f} {name}" for r, d in enumerate(docs, start=1)]
        (tmp_path / f"{name}.trec").write_text("\n".join(lines) + "\n")
        return tmp_path / f"{name}.trec"

    return run("A", set()), run("B", set(QUERIES[:6])), run("C", set())


def compare(*args):
    done = subprocess.run(CLI + ["compare", *map(str, args)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_per_query_scores_agree_with_trec_eval_means(tmp_path):
    a, b, _ = write_inputs(tmp_path)
    (tmp_path / "qrels.trec").write_text("".join(f"{q} 0 d{q} 1\n" for q in QUERIES))
    means, per_query = score_run_per_query(tmp_path / "qrels.trec", b)
    assert list(per_query["ndcg_cut_10"]) == QUERIES  # q13, absent from the run, is there with 0
    assert per_query["ndcg_cut_10"] == {**{q: 0.6309 for q in QUERIES[:6]}, **{q: 1.0 for q in QUERIES[6:12]},
                                        "q13": 0.0}
    assert means["ndcg_cut_10"] == round((6 * 0.6309 + 6) / 13, 4) == 0.7527
    assert means["recall_100"] == round(12 / 13, 4)


def test_compare_two_pyserini_runs_from_disk(tmp_path):
    a, b, c = write_inputs(tmp_path)
    out = tmp_path / "out"
    report = json.loads(compare(a, b, c, "--qrels", tmp_path / "qrels.tsv", "--format", "json", "--output_dir", out,
                                "--queries", tmp_path / "queries.jsonl"))
    assert report["baseline"] == "A" and report["resamples"] == 10000 and report["seed"] == 0
    assert "randomization test" in report["test"] and "bootstrap" in report["test"]
    got = {(x["metric"], x["system"]): x for x in report["comparisons"]}
    assert list(got) == [("ndcg_cut_10", "B"), ("ndcg_cut_10", "C"), ("recall_100", "B"), ("recall_100", "C")]
    ndcg = got["ndcg_cut_10", "B"]
    assert ndcg["difference"] == pytest.approx(-(6 * DOWN + 1) / 13)
    assert (ndcg["wins"], ndcg["ties"], ndcg["losses"], ndcg["queries"]) == (0, 6, 7, 13)
    # 7 non-zero differences, all negative: only they and their mirror are as extreme; 2^13 <= 10000, exact
    assert ndcg["p_value"] == pytest.approx(2 / 2 ** 7)
    assert ndcg["p_holm"] == pytest.approx(2 * 2 / 2 ** 7)  # Holm over B and C (C: p = 1)
    low, high = ndcg["interval"]  # inside the differences' range [-1, 0], around their mean, below 0
    assert -1 <= low < ndcg["difference"] < high < 0
    recall = got["recall_100", "B"]
    assert recall["difference"] == pytest.approx(-1 / 13) and recall["p_value"] == 1.0
    assert (recall["wins"], recall["ties"], recall["losses"]) == (0, 12, 1)
    same = got["ndcg_cut_10", "C"]
    assert (same["p_value"], same["interval"], same["difference"]) == (1.0, [0.0, 0.0], 0.0)

    md = (out / "compare.md").read_text()
    assert "| nDCG@10 | B | A | 0.7527 | 1.0000 | -0.2473 |" in md
    assert "| q13 | question q13 | -1.0000 | 1.0000 | 0.0000 | 1 / none |" in md  # the largest loss
    assert "| q1 | question q1 | -0.3691 | 1.0000 | 0.6309 | 1 / 2 |" in md
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "compare.json").read_text())["comparisons"] == report["comparisons"]

    # the per-query files it kept give the same table, without runs
    kept = [out / "perquery" / f"{n}.perquery.tsv" for n in "ABC"]
    assert read_per_query(kept[1])["ndcg_cut_10"]["q13"] == 0.0
    again = json.loads(compare(*kept, "--qrels", tmp_path / "qrels.tsv", "--format", "json"))
    assert again["comparisons"] == report["comparisons"]
    table = compare(*kept[:2])  # no qrels needed for per-query files; markdown by default
    assert "| nDCG@10 | B | A | 0.7527 | 1.0000 | -0.2473 |" in table and "| 0/6/7 |" in table


def test_compare_rejects_bad_input(tmp_path):
    a, b, _ = write_inputs(tmp_path)
    for args, message in [([a], "runs: need a baseline and at least one more input, got 1"),
                          ([a, b], "qrels: needed to score the run"),
                          ([a, b, "--qrels", tmp_path / "qrels.tsv", "--format", "xml"], "format: expected md or json"),
                          ([a, b, "--qrels", tmp_path / "qrels.tsv", "--metric", "ndcg@10"], "metric: expected a trec_eval")]:
        done = subprocess.run(CLI + ["compare", *map(str, args)], capture_output=True, text=True, timeout=300)
        assert done.returncode == 2 and message in done.stderr, done.stderr[-2000:]
