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


def pytrec_ndcg10(qrels_path, run_path):
    qrels = {}
    for line in open(qrels_path):
        q, _, d, r = line.split()
        qrels.setdefault(q, {})[d] = int(r)
    run = {q: {d: s for d, s in hits} for q, hits in read_trec_run(run_path).items()}
    per_query = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"}).evaluate(run)
    # trec_eval -c averages over every judged query, counting queries without hits as 0
    return sum(per_query.get(q, {}).get("ndcg_cut_10", 0.0) for q in qrels) / len(qrels)


def test_eval_beir_end_to_end(scifact_small, tiny_model, tmp_path):
    out = tmp_path / "report"
    done = subprocess.run(CLI + ["eval", "beir", "--data", str(scifact_small), "--model", str(tiny_model),
                                 "--shards", "2", "--index_root", str(tmp_path / "indexes"), "--output_dir", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert [r["system"] for r in rows] == ["bm25", "tiny_bert0", "hybrid(tiny_bert0+bm25,interpolation)"]
    for r in rows:
        assert r["command"].startswith("dretriever eval beir --data")
        assert r["ndcg_cut_10"] == pytest.approx(pytrec_ndcg10(out / "runs" / "scifact_small0.test.qrels", r["run"]), abs=1e-4)
    bm25, dense, hybrid = (r["ndcg_cut_10"] for r in rows)
    assert bm25 > 0.5 > dense  # a random tiny encoder is far below BM25
    assert "| scifact_small0 | bm25 |" in (out / "report.md").read_text()
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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


def test_several_datasets_get_an_average_row(tmp_path):
    from dretriever.evaluation.report import write_report

    rows = [{"dataset": d, "system": s, "ndcg_cut_10": v, "command": "c"}
            for d, s, v in [("a", "bm25", 0.2), ("b", "bm25", 0.4), ("a", "dense", 0.6), ("b", "dense", 0.8)]]
    paths = write_report(rows, tmp_path, "t", ["ndcg_cut_10"])
    saved = json.loads(paths["json"].read_text())["rows"]
    averages = {r["system"]: r["ndcg_cut_10"] for r in saved if r["dataset"] == "average"}
    assert averages == pytest.approx({"bm25": 0.3, "dense": 0.7})
    assert "| average | dense | 0.7000 |" in paths["md"].read_text()
