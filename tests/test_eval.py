"""Evaluation: fusion maths, Pyserini's trec_eval plumbing, the report, and `dretriever regress`."""

import json
import subprocess
import sys

import pytest
import pytrec_eval
import yaml

from dretriever.errors import DataError
from dretriever.evaluation.regressions import load_entries
from dretriever.search.fusion import interpolate, rrf
from dretriever.search.types import read_trec_run, remove_query_ids

CLI = [sys.executable, "-m", "dretriever"]


def test_rrf_by_hand():
    a = {"q": [("d1", 9.0), ("d2", 8.0)]}
    b = {"q": [("d2", 0.5), ("d3", 0.4)]}
    fused = dict(rrf([a, b], rrf_k=60)["q"])
    assert fused["d2"] == pytest.approx(1 / 62 + 1 / 61)
    assert fused["d1"] == pytest.approx(1 / 61)
    assert fused["d3"] == pytest.approx(1 / 62)
    assert [d for d, _ in rrf([a, b])["q"]] == ["d2", "d1", "d3"]


def test_interpolation_by_hand():
    dense = {"q": [("d1", 0.9), ("d2", 0.5), ("d3", 0.1)]}
    sparse = {"q": [("d3", 30.0), ("d1", 10.0)]}
    fused = dict(interpolate(dense, sparse, alpha=0.25)["q"])
    assert fused["d1"] == pytest.approx(0.25 * 1.0 + 0.75 * 0.0)
    assert fused["d2"] == pytest.approx(0.25 * 0.5 + 0.75 * 0.0)
    assert fused["d3"] == pytest.approx(0.25 * 0.0 + 0.75 * 1.0)
    with pytest.raises(ValueError):
        interpolate(dense, sparse, alpha=1.5)


def test_remove_query_ids():
    assert remove_query_ids({"7": [("7", 1.0), ("8", 0.5)]}) == {"7": [("8", 0.5)]}


def pytrec_per_query(qrels_path, run_path, measure="ndcg_cut.10"):
    qrels = {}
    for line in open(qrels_path):
        q, _, d, r = line.split()
        qrels.setdefault(q, {})[d] = int(r)
    run = {q: {d: s for d, s in hits} for q, hits in read_trec_run(run_path).items()}
    per_query = pytrec_eval.RelevanceEvaluator(qrels, {measure}).evaluate(run)
    # trec_eval -c averages over every judged query, counting queries without hits as 0
    return {q: per_query.get(q, {}).get(measure.replace(".", "_"), 0.0) for q in qrels}


def pytrec_ndcg10(qrels_path, run_path):
    per_query = pytrec_per_query(qrels_path, run_path)
    return sum(per_query.values()) / len(per_query)


def test_eval_beir_end_to_end(scifact_small, tiny_model, tmp_path):
    from dretriever.evaluation.perquery import read_per_query
    from dretriever.evaluation.significance import compare, holm

    out = tmp_path / "report"
    done = subprocess.run(CLI + ["eval", "beir", "--data", str(scifact_small), "--model", str(tiny_model),
                                 "--shards", "2", "--index_root", str(tmp_path / "indexes"), "--output_dir", str(out),
                                 "--baseline", "dense"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    rows = report["rows"]
    assert [r["system"] for r in rows] == ["bm25", "tiny_bert0", "hybrid(tiny_bert0+bm25,interpolation)"]
    qrels = out / "runs" / "scifact_small0.test.qrels"
    for r in rows:
        assert r["command"].startswith("dretriever eval beir --data")
        assert r["ndcg_cut_10"] == pytest.approx(pytrec_ndcg10(qrels, r["run"]), abs=1e-4)
        # the per-query scores kept beside the report: trec_eval -q's, every judged query, averaging to the row
        per_query = read_per_query(r["perquery"])["ndcg_cut_10"]
        assert r["perquery"] == str(out / "perquery" / f"scifact_small0.{r['run'].split('.')[-2]}.perquery.tsv")
        assert per_query == pytest.approx(pytrec_per_query(qrels, r["run"]), abs=5e-5)
        assert sum(per_query.values()) / len(per_query) == pytest.approx(r["ndcg_cut_10"], abs=1e-4)
    bm25, dense, hybrid = (r["ndcg_cut_10"] for r in rows)
    assert bm25 > 0.5 > dense  # a random tiny encoder is far below BM25
    md = (out / "report.md").read_text()
    assert "| scifact_small0 | bm25 |" in md
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # --baseline dense: bm25 and hybrid, each metric, against the tiny encoder (Holm over the two)
    assert report["baseline"] == "tiny_bert0"
    sig = report["significance"]
    assert (sig["resamples"], sig["seed"]) == (10000, 0) and "randomization test" in sig["test"]
    got = {(c["metric"], c["system"]): c for c in sig["comparisons"]}
    assert sorted(got) == sorted((m, s) for m in ("ndcg_cut_10", "recall_100", "recall_1000")
                                 for s in ("bm25", "hybrid(tiny_bert0+bm25,interpolation)"))
    by_name = {r["system"]: read_per_query(r["perquery"]) for r in rows}
    again = compare(by_name["tiny_bert0"]["ndcg_cut_10"], by_name["bm25"]["ndcg_cut_10"], "ndcg_cut_10",
                    "tiny_bert0", "bm25")
    c = got["ndcg_cut_10", "bm25"]
    assert (c["p_value"], c["interval"], c["wins"], c["losses"]) == (again.p_value, list(again.interval),
                                                                     again.wins, again.losses)
    assert c["difference"] == pytest.approx(bm25 - dense, abs=1e-4) and c["p_value"] < 0.001 < c["interval"][0]
    assert c["wins"] + c["ties"] + c["losses"] == c["queries"] == 50
    hybrid_c = got["ndcg_cut_10", "hybrid(tiny_bert0+bm25,interpolation)"]
    assert [c["p_holm"], hybrid_c["p_holm"]] == holm([c["p_value"], hybrid_c["p_value"]])
    assert "## scifact_small0: each system against tiny_bert0" in md
    assert "| scifact_small0 | nDCG@10 | bm25 | tiny_bert0 |" in md
    assert "![sorted per-query differences](perquery-scifact_small0.png)" in md
    assert "largest wins of bm25 against tiny_bert0" in md
    assert (out / "perquery-scifact_small0.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_regress_passes_and_fails_on_real_runs(scifact_small, tmp_path):
    command = (f"dretriever eval beir --data {scifact_small} --systems bm25 --index_root {tmp_path / 'idx'} "
               f"--output_dir {tmp_path / 'out'}")
    subprocess.run(CLI + command.split()[1:], check=True, capture_output=True)
    truth = pytrec_ndcg10(tmp_path / "out" / "runs" / f"{scifact_small.name}.test.qrels",
                          tmp_path / "out" / "runs" / f"{scifact_small.name}.bm25.trec")
    entries = [
        {"name": "small.bm25", "dataset": scifact_small.name, "metric": "ndcg_cut_10", "expected": round(truth, 4),
         "tolerance": 0.0005, "command": command, "cost": "seconds"},
        {"name": "small.bm25-wrong", "dataset": scifact_small.name, "metric": "ndcg_cut_10", "expected": truth + 0.1,
         "tolerance": 0.0005, "command": command, "cost": "seconds"},
        {"name": "small.slow", "dataset": "x", "metric": "ndcg_cut_10", "expected": 0, "tolerance": 0,
         "command": "exit 3", "cost": "hours"},
    ]
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "r.yaml").write_text(yaml.safe_dump(entries))
    ok = subprocess.run(CLI + ["regress", "--file", str(tmp_path / "eval" / "r.yaml"), "--only", "small.bm25"],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "OK   small.bm25" in ok.stdout and "regress: 1 passed, 0 failed" in ok.stdout
    bad = subprocess.run(CLI + ["regress", "--file", str(tmp_path / "eval" / "r.yaml"), "--max_cost", "minutes"],
                         capture_output=True, text=True)
    assert bad.returncode == 1
    assert "FAIL small.bm25-wrong" in bad.stdout and "small.slow" not in bad.stdout


def test_regressions_file_is_validated(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("- name: a\n  dataset: d\n  metric: m\n  expected: 1\n  tolerance: 0\n  command: x\n  cost: weeks\n")
    with pytest.raises(DataError, match=r"r.yaml: entry 1 \(a\): cost must be one of"):
        load_entries(p)
    p.write_text("- name: a\n  dataset: d\n")
    with pytest.raises(DataError, match="missing field"):
        load_entries(p)


def _row(value: float) -> str:
    return f"echo '{{\"dataset\": \"d\", \"system\": \"s\", \"ndcg_cut_10\": {value}}}' >> $DRETRIEVER_RESULTS"


def test_regress_runs_required_entries_first_and_skips_dependents_of_a_failure(tmp_path):
    def entry(name, command, **kw):
        return {"name": name, "dataset": "d", "metric": "ndcg_cut_10", "expected": 0.5, "tolerance": 0.01,
                "command": command, "cost": "hours", **kw}

    entries = [
        entry("model", f"touch model.bin && {_row(0.5)}"),
        entry("on-model", f"test -f model.bin && {_row(0.5)}", requires=["model"]),
        entry("broken", f"touch broken.ran && {_row(0.9)}"),
        entry("on-broken", f"touch on-broken.ran && {_row(0.5)}", requires=["broken"]),
    ]
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "r.yaml").write_text(yaml.safe_dump(entries))
    run = subprocess.run(CLI + ["regress", "--file", str(tmp_path / "eval" / "r.yaml"), "--only", "on-model"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert [line.split()[1] for line in run.stdout.splitlines() if line.startswith("OK")] == ["model", "on-model"]
    assert not (tmp_path / "broken.ran").exists()
    run = subprocess.run(CLI + ["regress", "--file", str(tmp_path / "eval" / "r.yaml"), "--only", "on-broken"],
                         capture_output=True, text=True)
    assert run.returncode == 1
    assert "FAIL broken" in run.stdout and "FAIL on-broken" in run.stdout
    assert "not run: required entries failed: ['broken']" in run.stdout
    assert (tmp_path / "broken.ran").exists() and not (tmp_path / "on-broken.ran").exists()


@pytest.mark.parametrize("second, message", [
    ({"requires": ["later"]}, r"entry 1 \(a\): requires 'later', which is not an entry above it"),
    ({"requires": "b"}, r"entry 1 \(a\): requires must be a list"),
])
def test_requires_must_name_an_earlier_entry(tmp_path, second, message):
    p = tmp_path / "r.yaml"
    base = {"dataset": "d", "metric": "m", "expected": 1, "tolerance": 0, "command": "x", "cost": "hours"}
    p.write_text(yaml.safe_dump([{"name": "a", **base, **second}, {"name": "later", **base}]))
    with pytest.raises(DataError, match=message):
        load_entries(p)
    p.write_text(yaml.safe_dump([{"name": "slow", **base}, {"name": "a", **base, "cost": "minutes",
                                                           "requires": ["slow"]}]))
    with pytest.raises(DataError, match=r"requires 'slow', whose cost 'hours' exceeds its own"):
        load_entries(p)


def test_repository_regressions_file_is_valid():
    from pathlib import Path

    entries = load_entries(Path(__file__).resolve().parent.parent / "eval" / "regressions.yaml")
    names = {e.name for e in entries}
    assert {"scifact.bm25-flat", "scifact.all-minilm-l6-v2"} <= names


def test_max_cost_selects_each_tier_up_to_it_with_requirements_and_rejects_an_unknown_tier(tmp_path):
    from dretriever.evaluation.regressions import select

    base = {"dataset": "d", "metric": "m", "expected": 1, "tolerance": 0, "command": "x"}
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump([{"name": "s", **base, "cost": "seconds"}, {"name": "m", **base, "cost": "minutes"},
                                 {"name": "h1", **base, "cost": "hour", "requires": ["m"]},
                                 {"name": "h", **base, "cost": "hours"}]))
    entries = load_entries(p)
    assert [e.name for e in select(entries, "minutes", None)] == ["s", "m"]
    assert [e.name for e in select(entries, "hour", None)] == ["s", "m", "h1"]
    assert [e.name for e in select(entries, "hours", None)] == ["s", "m", "h1", "h"]
    assert [e.name for e in select(entries, "seconds", ["h1"])] == ["m", "h1"]
    with pytest.raises(DataError, match=r"--max_cost.*must be one of \('seconds', 'minutes', 'hour', 'hours'\), got 'day'"):
        select(entries, "day", None)


def test_several_datasets_get_an_average_row(tmp_path):
    from dretriever.evaluation.report import write_report

    rows = [{"dataset": d, "system": s, "ndcg_cut_10": v, "command": "c"}
            for d, s, v in [("a", "bm25", 0.2), ("b", "bm25", 0.4), ("a", "dense", 0.6), ("b", "dense", 0.8)]]
    paths = write_report(rows, tmp_path, "t", ["ndcg_cut_10"])
    saved = json.loads(paths["json"].read_text())["rows"]
    averages = {r["system"]: r["ndcg_cut_10"] for r in saved if r["dataset"] == "average"}
    assert averages == pytest.approx({"bm25": 0.3, "dense": 0.7})
    assert "| average | dense | 0.7000 |" in paths["md"].read_text()


def test_regress_checks_a_claimed_direction_against_the_baseline(tmp_path, capsys):
    from dretriever.evaluation.regressions import run_all, select

    # Per-query nDCG@10 over 8 queries (sixteenths: exact sums); rows point at them as eval beir's rows do.
    scores = {"base": [4] * 8,
              "up": [5] * 8,                        # +1/16 on every query: p = 2/256
              "mixed": [9, 7, 8, 3, 10, 6, 11, 2],  # +5 +3 +4 -1 +6 +2 +7 -2: p = 14/256 (test_significance)
              "down": [3] * 8}                      # -1/16 on every query: p = 2/256
    for name, values in scores.items():
        (tmp_path / f"{name}.tsv").write_text("".join(f"ndcg_cut_10\tq{i}\t{v / 16}\n" for i, v in enumerate(values)))

    def rows(*names):
        return " && ".join(f"echo '{{\"dataset\": \"d\", \"system\": \"{n}\", \"ndcg_cut_10\": "
                           f"{sum(scores[n]) / 128}, \"perquery\": \"{n}.tsv\"}}' >> $DRETRIEVER_RESULTS" for n in names)

    def entry(name, system, **kw):
        return {"name": name, "dataset": "d", "system": system, "metric": "ndcg_cut_10",
                "expected": sum(scores[system]) / 128, "tolerance": 0.0001, "cost": "seconds",
                "command": rows("base") if system == "base" else rows("up", "mixed", "down"), **kw}

    entries = [entry("base", "base"),
               entry("up.better", "up", baseline="base", direction="better"),
               entry("mixed.better", "mixed", baseline="base", direction="better"),
               entry("mixed.not-worse", "mixed", baseline="base", direction="not-worse"),
               entry("down.not-worse", "down", baseline="base", direction="not-worse"),
               entry("down.no-claim", "down", baseline="base")]
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(entries))

    def regress(*only):
        results = run_all(select(load_entries(tmp_path / "r.yaml"), "minutes", list(only)), "unused", tmp_path)
        out = capsys.readouterr().out
        lines = {line.split()[1]: line for line in out.splitlines() if line[:4] in ("OK  ", "FAIL")}
        return {r["name"]: r for r in results}, lines, out

    results, lines, _ = regress("up.better", "mixed.not-worse", "down.no-claim")
    assert list(results) == ["base", "up.better", "mixed.not-worse", "down.no-claim"]  # the baseline runs first
    assert all(r["ok"] for r in results.values())
    assert "vs base: +0.0625 [+0.0625, +0.0625] p 0.0078 (better: holds)" in lines["up.better"]
    assert (results["up.better"]["difference"], results["up.better"]["p_value"]) == (0.0625, 2 / 256)
    assert "vs base: +0.1875 [" in lines["mixed.not-worse"] and "p 0.0547 (not-worse: holds)" in lines["mixed.not-worse"]
    assert "vs base: -0.0625 [-0.0625, -0.0625] p 0.0078 [" in lines["down.no-claim"]  # printed, not claimed

    results, lines, out = regress("mixed.better", "down.not-worse")
    assert [r["ok"] for r in results.values()] == [True, False, False]
    assert lines["mixed.better"].startswith("FAIL") and "p 0.0547 (better: FAILS)" in lines["mixed.better"]
    assert lines["down.not-worse"].startswith("FAIL") and "p 0.0078 (not-worse: FAILS)" in lines["down.not-worse"]
    assert results["mixed.better"]["p_value"] == 14 / 256 and results["mixed.better"]["direction_holds"] is False
    assert "claimed better than base, which no longer holds at p < 0.05" in out


@pytest.mark.parametrize("fields, message", [
    ({"baseline": "a", "direction": "worse"}, r"entry 2 \(b\): direction must be one of \('better', 'not-worse'\)"),
    ({"direction": "better"}, r"entry 2 \(b\): direction 'better' needs a baseline entry"),
    ({"baseline": "c"}, r"entry 2 \(b\): baseline 'c', which is not an entry above it"),
])
def test_baseline_and_direction_are_validated(tmp_path, fields, message):
    p = tmp_path / "r.yaml"
    base = {"dataset": "d", "metric": "m", "expected": 1, "tolerance": 0, "command": "x", "cost": "hours"}
    p.write_text(yaml.safe_dump([{"name": "a", **base}, {"name": "b", **base, **fields}, {"name": "c", **base}]))
    with pytest.raises(DataError, match=message):
        load_entries(p)
