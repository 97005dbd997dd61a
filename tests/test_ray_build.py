"""``datastore build --engine ray`` on a real local Ray cluster (``tests/ray_cluster.py``), run as a user runs it:
the CLI joins the cluster with ``--address``. The Ray build of SciFact equals the single-process build, and
kill -9 of its Ray workers (and of its driver) at random moments loses and duplicates nothing."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import psutil
import pytest

from dretriever.index.docstore import FILENAME as DOCSTORE
from dretriever.index.docstore import DocStore


def build_command(corpus: Path, out: Path, model: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "dretriever.cli", "datastore", "build", "--sources", str(corpus), "--output",
            str(out), "--model", str(model), "--chunking", "none", "--shards", "4", "--precision", "fp32",
            "--chunk_docs", "32", "--progress", "false", *extra]


def ray_command(corpus, out, model, address) -> list[str]:
    return build_command(corpus, out, model, "--engine", "ray", "--address", address, "--workers", "2")


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def contents(root: Path) -> list[tuple[list[str], np.ndarray, list]]:
    """Per shard: its ids, its vectors (from the faiss index) and its doc-store rows."""
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["complete"]
    shards = []
    for entry in manifest["shards"]:
        assert entry["state"] == "done"
        folder = root / entry["dir"]
        ids = (folder / "docid").read_text().splitlines()
        index = faiss.read_index(str(folder / "index"))
        store = DocStore(folder / DOCSTORE)
        rows = [(pid, doc.title, doc.text) for pid, doc in store.rows()]
        store.close()
        assert len(ids) == index.ntotal == entry["num_docs"] == len(rows)
        shards.append((ids, index.reconstruct_n(0, index.ntotal), rows))
    return shards


def assert_same_build(a: Path, b: Path) -> None:
    for i, ((ids_a, vec_a, rows_a), (ids_b, vec_b, rows_b)) in enumerate(zip(contents(a), contents(b), strict=True)):
        assert ids_a == ids_b, f"shard {i}: ids differ"
        assert rows_a == rows_b, f"shard {i}: doc store rows differ"
        np.testing.assert_allclose(vec_a, vec_b, atol=1e-5, rtol=0, err_msg=f"shard {i}: vectors differ")


@pytest.fixture(scope="module")
def single_process_build(scifact_dir, tiny_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "ds"
    run(build_command(scifact_dir / "corpus.jsonl", out, tiny_model))
    return out


def test_ray_build_of_scifact_equals_the_single_process_build(ray_cluster, scifact_dir, tiny_model,
                                                                single_process_build, tmp_path):
    out = tmp_path / "ds"
    run(ray_command(scifact_dir / "corpus.jsonl", out, tiny_model, ray_cluster))
    assert_same_build(out, single_process_build)
    manifest = json.loads((out / "manifest.json").read_text())
    assert sum(e["num_docs"] for e in manifest["shards"]) == 5183
    for entry in manifest["shards"]:  # one run encoded every row of every shard, in one piece
        assert [(r["from"], r["to"]) for r in entry["encode_runs"]] == [(0, entry["num_docs"])]


def test_ray_index_build_with_the_int8_backend_equals_the_single_process_build(ray_cluster, scifact_dir,
                                                                                  tiny_model, tmp_path):
    """The Ray encoder actors read the index's calibration passages and quantise the same int8 graph."""
    import shutil

    model = tmp_path / "model"  # the int8 graph is cached beside the model: a copy of our own
    shutil.copytree(tiny_model, model)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join((scifact_dir / "corpus.jsonl").read_text().splitlines(keepends=True)[:300]))
    common = ["--corpus", str(corpus), "--model", str(model), "--shards", "2", "--backend", "onnx-int8",
              "--calibration", "64"]
    index_build = [sys.executable, "-m", "dretriever.cli", "index", "build"]
    run(index_build + common + ["--output", str(tmp_path / "local")])
    run(index_build + common + ["--output", str(tmp_path / "ray"), "--engine", "ray", "--address", ray_cluster,
                                "--workers", "2"])
    local, ray_built = (json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("local", "ray"))
    assert local["encoder"] == ray_built["encoder"] and local["encoder"]["backend"] == "onnx-int8"
    calibrations = [(tmp_path / d / "calibration.jsonl").read_bytes() for d in ("local", "ray")]
    assert calibrations[0] == calibrations[1]
    for a, b in zip(contents(tmp_path / "local"), contents(tmp_path / "ray"), strict=True):
        assert a[0] == b[0]
        np.testing.assert_allclose(a[1], b[1], atol=1e-4, rtol=0)


def encoder_workers() -> list[psutil.Process]:
    """The Ray worker processes running this build's encoder actors (``ray::MapWorker(...EncodeChunks)``)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if cmd.startswith("ray::") and "EncodeChunks" in cmd:
            found.append(p)
    return found


def progress(out: Path) -> float:
    """The committed fraction of the build's rows (0 before staging ends)."""
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return 0.0
    total = sum(e.get("num_docs") or 0 for e in manifest["shards"])  # None until staged
    return sum(e["num_docs"] if e["state"] == "done" else e.get("encoded") or 0
               for e in manifest["shards"]) / max(total, 1)


def test_ray_build_survives_kill_9_of_workers_and_driver(ray_cluster, scifact_dir, tiny_model,
                                                         single_process_build, tmp_path):
    """Three random moments of the build: kill -9 an encoder actor's process at the first two (Ray restarts
    the actor and retries its chunk), and the driver at the third (the rerun resumes from the manifest)."""
    out = tmp_path / "ds"
    cmd = ray_command(scifact_dir / "corpus.jsonl", out, tiny_model, ray_cluster)
    rng = random.Random(15)
    moments = sorted(rng.uniform(0.1, 0.8) for _ in range(3))
    driver = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = []
    deadline = time.monotonic() + 600
    for n, moment in enumerate(moments):
        while progress(out) < moment and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        at = progress(out)
        if driver.poll() is not None or at >= 1.0:
            break
        if n < 2:
            workers = encoder_workers()
            if workers:
                victim = rng.choice(workers)
                os.kill(victim.pid, signal.SIGKILL)
                killed.append(("worker", round(at, 3)))
        else:
            os.kill(driver.pid, signal.SIGKILL)
            killed.append(("driver", round(at, 3)))
    _, stderr = driver.communicate(timeout=600)
    assert [k for k, _ in killed] == ["worker", "worker", "driver"], f"kills landed: {killed}"
    assert driver.returncode == -signal.SIGKILL, stderr[-3000:]
    before = progress(out)
    assert 0 < before < 1, before  # the driver died mid-build: work to resume
    run(cmd)  # the rerun resumes
    assert_same_build(out, single_process_build)
    manifest = json.loads((out / "manifest.json").read_text())
    for entry in manifest["shards"]:  # the runs' pieces tile [0, num_docs): nothing lost or encoded twice
        pieces = [(r["from"], r["to"]) for r in entry["encode_runs"]]
        assert pieces[0][0] == 0 and pieces[-1][1] == entry["num_docs"], pieces
        assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:])), pieces
    assert len({r["run"] for e in manifest["shards"] for r in e["encode_runs"]}) == 2  # the killed run + the rerun


def test_bad_engine_options_are_refused_naming_the_option(tmp_path):
    done = subprocess.run([sys.executable, "-m", "dretriever.cli", "datastore", "build", "--sources", "x.jsonl",
                           "--output", str(tmp_path / "o"), "--address", "auto"], capture_output=True, text=True)
    assert done.returncode != 0 and "address: only used with --engine ray" in done.stderr
    done = subprocess.run([sys.executable, "-m", "dretriever.cli", "datastore", "build", "--sources", "x.jsonl",
                           "--output", str(tmp_path / "o"), "--engine", "spark"], capture_output=True, text=True)
    assert done.returncode != 0 and "engine: expected one of ('local', 'ray'), got 'spark'" in done.stderr
