"""The kill harness: run a command, kill -9 it at random moments, rerun it to completion.

``kill_and_resume(cmd, clean_seconds, kills=5, seed=0)`` draws ``kills`` moments of the build, sorted, uniformly
from 5-95 % of its clean duration, and starts ``cmd`` ``kills`` times on the same output: run ``k`` gets SIGKILL
once it has had its start-up (``startup_seconds``: imports and model load, paid again by every run) plus the
build time between moments ``k-1`` and ``k``, so the kills fall at those moments of the build's progress (a
delay measured from the clean duration alone would outlast the shorter resumed runs and never land). Then it
reruns ``cmd`` once without interruption. The caller compares the result with a clean build: :func:`compare_with_clean` (same ids
per shard, vectors within ``atol``) and :func:`encode_runs_tile` (no committed chunk encoded twice) for index and
datastore builds; :func:`compare_training` (every step's loss and the final weights) for ``dretriever train``.
:func:`timed_run_until` times a clean run and its start-up in one go. Used by ``tests/test_scale.py``,
``tests/test_kill_train.py``, ``eval/bench_pipeline.py`` (its 100k-passage kill run) and ``eval/reliability.py``.
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


def timed_run_until(cmd: list[str], started, env: dict | None = None, timeout: float = 600) -> tuple[float, float]:
    """Run ``cmd`` to completion; ``(seconds in all, seconds until started() first held)``: the clean duration
    and the start-up (imports, model load) of :func:`kill_and_resume` from one run."""
    t = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    startup = None
    while proc.poll() is None and time.monotonic() - t < timeout:
        if startup is None:
            try:
                if started():
                    startup = time.monotonic() - t
            except (OSError, ValueError):
                pass
        time.sleep(0.01)
    _, err = proc.communicate(timeout=max(timeout - (time.monotonic() - t), 1))
    if proc.returncode != 0:
        raise AssertionError(f"{cmd} failed: {err.decode()[-2000:]}")
    total = time.monotonic() - t
    return total, total if startup is None else startup


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


def kill_at_progress(cmd: list[str], progress, points: list[float], env: dict | None = None, jitter: float = 0.3,
                     seed: int = 0, timeout: float = 300) -> KillReport:
    """Start ``cmd`` once per point and SIGKILL it a random ``0..jitter`` seconds after ``progress()`` (say, the
    last step logged) first reaches the point: kill moments drawn from the run's progress, so they need no
    clean-run timing and land whatever the start-up costs. The caller then finishes the run itself."""
    rng = random.Random(seed)
    report = KillReport(0.0)
    for point in points:
        extra = rng.uniform(0, jitter)
        start = time.monotonic()
        landed = kill_when(cmd, lambda: progress() >= point and (time.sleep(extra) or True), env, timeout)
        report.killed.append(landed)
        report.delays.append(time.monotonic() - start)
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


def last_step(out: Path) -> int:
    """The last step a training run logged (0 before the first); a progress measure for :func:`kill_at_progress`."""
    steps = step_losses(out) if (Path(out) / "log.jsonl").is_file() else {}
    return max(steps, default=0)


def step_losses(out: Path) -> dict[int, float]:
    """``{step: loss}`` from a training run's ``log.jsonl``; a step logged twice (run again after a kill, from the
    last checkpoint) keeps its last value."""
    import json

    rows = [json.loads(line) for line in (Path(out) / "log.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def compare_training(clean: Path, resumed: Path, rtol: float = 1e-5, atol: float = 1e-6) -> int:
    """Assert a resumed training run took the clean run's steps (none lost, none extra) with the same losses, and
    ended with the same weights (the last checkpoint's ``model.pt``); returns the number of steps compared."""
    import torch

    a, b = step_losses(clean), step_losses(resumed)
    assert sorted(a) == sorted(b), f"steps differ: {sorted(set(a) ^ set(b))}"
    for step in a:
        assert abs(a[step] - b[step]) <= atol + rtol * abs(a[step]), (step, a[step], b[step])
    last = max(a)
    name = f"checkpoints/step-{last:07d}/model.pt"
    wa, wb = torch.load(Path(clean) / name), torch.load(Path(resumed) / name)
    assert sorted(wa) == sorted(wb)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6)
    assert (Path(resumed) / "final").is_dir() and not [p.name for p in Path(resumed).rglob("*.tmp*")]
    return len(a)
