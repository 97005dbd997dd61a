"""The kill harness: run a command, kill -9 it at random moments, rerun it to completion.

``kill_and_resume(cmd, clean_seconds, kills=5, seed=0)`` draws ``kills`` moments of the build, sorted, uniformly
from 5-95 % of its clean duration, and starts ``cmd`` ``kills`` times on the same output: run ``k`` gets SIGKILL
once it has had its start-up (``startup_seconds``: imports and model load, paid again by every run) plus the
build time between moments ``k-1`` and ``k``, so the kills fall at those moments of the build's progress (a
delay measured from the clean duration alone would outlast the shorter resumed runs and never land). Then it
reruns ``cmd`` once without interruption. The caller compares the result with a clean build: :func:`compare_with_clean` (same ids
per shard, vectors within ``atol``) and :func:`encode_runs_tile` (no committed chunk encoded twice). Used by
``tests/test_scale.py`` and by ``eval/bench_pipeline.py`` (its 100k-passage kill run).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class KillReport:
    clean_seconds: float
    delays: list[float] = field(default_factory=list)
    killed: list[bool] = field(default_factory=list)  # False: the run had finished before its kill
    final_returncode: int | None = None

    @property
    def kills_landed(self) -> int:
        return sum(self.killed)


def timed_run(cmd: list[str], env: dict | None = None, timeout: float = 600) -> float:
    start = time.monotonic()
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(f"{cmd} failed: {done.stderr.decode()[-2000:]}")
    return time.monotonic() - start


def kill_and_resume(cmd: list[str], clean_seconds: float, kills: int = 5, seed: int = 0,
                    env: dict | None = None, timeout: float = 600, startup_seconds: float = 0.0) -> KillReport:
    """Kill ``cmd`` ``kills`` times at random moments of its build, then run it to completion."""
    rng = random.Random(seed)
    report = KillReport(clean_seconds)
    work = max(clean_seconds - startup_seconds, 0.0)
    moments = sorted(rng.uniform(0.05, 0.95) for _ in range(kills))
    for before, moment in zip([0.0] + moments, moments):
        delay = startup_seconds + (moment - before) * work
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=delay)
            report.killed.append(False)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            report.killed.append(True)
        report.delays.append(delay)
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout)
    report.final_returncode = done.returncode
    if done.returncode != 0:
        raise AssertionError(f"the rerun after {kills} kills failed: {done.stderr.decode()[-2000:]}")
    return report


def startup_seconds(cmd: list[str], started, env: dict | None = None, timeout: float = 300) -> float:
    """Seconds a run of ``cmd`` takes before ``started()`` holds (say, its output's manifest exists): the imports
    and model load that every rerun pays again. The run is killed there; give ``cmd`` a scratch output."""
    t = time.monotonic()
    if not kill_when(cmd, started, env, timeout):
        raise AssertionError(f"{cmd} ended before it started")
    return time.monotonic() - t


def kill_when(cmd: list[str], ready, env: dict | None = None, timeout: float = 300) -> bool:
    """Start ``cmd`` and SIGKILL it as soon as ``ready()`` is true (polled every 10 ms); False if it ended first."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if ready():
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return True
        except (OSError, ValueError):  # a file being replaced while read: poll again
            pass
        time.sleep(0.01)
    proc.wait()
    return False


def shard_ids_and_vectors(root: Path) -> list[tuple[list[str], "np.ndarray"]]:
    """Each shard's ids in row order and its vectors (reconstructed from a Flat index)."""
    from dretriever.index.sharded import ShardedIndex

    index = ShardedIndex.open(root)
    return [(list(s.docids), s.index.reconstruct_n(0, s.index.ntotal)) for s in index.shards]


def compare_with_clean(clean: Path, resumed: Path, atol: float = 1e-6) -> int:
    """Assert both indexes hold the same ids per shard, in the same order, with vectors equal within ``atol``
    (so none lost, none twice); returns the number of rows compared."""
    import numpy as np

    rows = 0
    a, b = shard_ids_and_vectors(clean), shard_ids_and_vectors(resumed)
    assert len(a) == len(b), f"{len(a)} vs {len(b)} shards"
    for (ids_a, vec_a), (ids_b, vec_b) in zip(a, b):
        assert ids_a == ids_b, "the shards hold different ids"
        assert len(set(ids_b)) == len(ids_b), "an id is in a shard twice"
        np.testing.assert_allclose(vec_a, vec_b, rtol=0, atol=atol)
        rows += len(ids_a)
    return rows


def encode_runs_tile(root: Path) -> set[str]:
    """Assert that every shard's ``encode_runs`` tile its rows exactly once (a committed chunk is never encoded
    again by a later run) and that no partial file is left; returns the ids of the runs that encoded rows."""
    from dretriever.index import manifest as mf

    runs: set[str] = set()
    for entry in mf.read_manifest(root)["shards"]:
        spans = sorted((r["from"], r["to"]) for r in entry["encode_runs"])
        assert spans[0][0] == 0 and spans[-1][1] == entry["num_docs"], (entry["dir"], spans)
        assert all(x[1] == y[0] for x, y in zip(spans, spans[1:])), (entry["dir"], spans)  # contiguous, disjoint
        runs |= {r["run"] for r in entry["encode_runs"]}
    left = [p.name for p in Path(root).iterdir() if p.name.endswith(".partial") or ".tmp-" in p.name]
    assert not left, f"partial files left: {left}"
    return runs
