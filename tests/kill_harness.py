"""The kill harness: run a command, kill -9 it at moments drawn from its progress, rerun it to completion.

A kill moment is a point of the run's *progress* (passages encoded, steps logged, ...), never a time: a delay
measured on a clean run misses the build once the machine is loaded differently or each resumed run has less
left to do. :func:`trajectory` runs ``cmd`` clean and records the progress values it passes through;
:func:`draw_points` draws the kill points among them; :func:`kill_at_progress` starts ``cmd`` once per point and
SIGKILLs it a random fraction of a second after its progress reaches the point; :func:`finish` reruns it without
interruption. The caller compares the result with the clean run: :func:`compare_with_clean` (same ids per shard,
vectors within ``atol``) and :func:`encode_runs_tile` (no committed chunk encoded twice) for index and datastore
builds, whose progress is :func:`encoded_passages`; :func:`compare_training` (every step's loss and the final
weights) for ``dretriever train``, whose progress is :func:`last_step`. Used by ``tests/test_scale.py``,
``tests/test_living.py``, ``tests/test_kill_train.py``, ``eval/bench_pipeline.py`` (its 100k-passage kill run) and
``eval/reliability.py``.
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
    delays: list[float] = field(default_factory=list)
    killed: list[bool] = field(default_factory=list)  # False: the run had finished before its kill

    @property
    def kills_landed(self) -> int:
        return sum(self.killed)


def timed_run(cmd: list[str], env: dict | None = None, timeout: float = 600) -> float:
    start = time.monotonic()
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(f"{cmd} failed: {done.stderr.decode()[-2000:]}")
    return time.monotonic() - start


def trajectory(cmd: list[str], progress, env: dict | None = None, timeout: float = 600) -> tuple[float, list]:
    """Run ``cmd`` to completion, polling ``progress()`` every 10 ms: ``(seconds, the distinct values it went
    through, in order)``, the states from which :func:`draw_points` draws kill points."""
    import tempfile

    t = time.monotonic()
    seen: list = []
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: a chatty run never blocks on a full pipe
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        while proc.poll() is None and time.monotonic() - t < timeout:
            try:
                value = progress()
                if not seen or value != seen[-1]:
                    seen.append(value)
            except (OSError, ValueError):  # a file being replaced while read: poll again
                pass
            time.sleep(0.01)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            raise AssertionError(f"{cmd} ran past {timeout} s")
        if proc.returncode != 0:
            err.seek(0)
            raise AssertionError(f"{cmd} failed: {err.read().decode()[-2000:]}")
    return time.monotonic() - t, seen


def draw_points(values: list, kills: int, seed: int = 0, low: float = 0.05, high: float = 0.9) -> list:
    """``kills`` distinct progress values drawn from ``values`` (a clean run's :func:`trajectory`) between the
    ``low`` and ``high`` fractions of it, in order: no point at the start state (the kill would hit the imports)
    or at the very end (the run would finish first)."""
    inner = [v for v in values[int(low * len(values)):int(high * len(values)) + 1] if values and v != values[0]]
    if len(inner) < kills:
        raise AssertionError(f"the clean run went through {len(values)} progress states, too few for {kills} kills")
    chosen = random.Random(seed).sample(range(len(inner)), kills)
    return [inner[i] for i in sorted(chosen)]


def finish(cmd: list[str], env: dict | None = None, timeout: float = 600) -> None:
    """Run ``cmd`` once without interruption (the rerun after the kills); an error if it fails."""
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(f"the rerun after the kills failed: {done.stderr.decode()[-2000:]}")


def kill_at_progress(cmd: list[str], progress, points: list[float], env: dict | None = None, jitter: float = 0.3,
                     seed: int = 0, timeout: float = 300) -> KillReport:
    """Start ``cmd`` once per point and SIGKILL it a random ``0..jitter`` seconds after ``progress()`` (say, the
    last step logged) first reaches the point: kill moments drawn from the run's progress, so they need no
    clean-run timing and land whatever the start-up costs. The caller then finishes the run itself."""
    rng = random.Random(seed)
    report = KillReport()
    for point in points:
        extra = rng.uniform(0, jitter)
        start = time.monotonic()
        landed = kill_when(cmd, lambda: progress() >= point and (time.sleep(extra) or True), env, timeout)
        report.killed.append(landed)
        report.delays.append(time.monotonic() - start)
    return report


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


def encoded_passages(root: Path) -> int:
    """Passages an index or datastore build at ``root`` has encoded and committed (its manifest's ``encoded``
    counts; 0 before the manifest exists): the progress of a build for :func:`kill_at_progress`."""
    from dretriever.index import manifest as mf

    if not (Path(root) / mf.MANIFEST).is_file():
        return 0
    return sum(e.get("encoded") or 0 for e in mf.read_manifest(root)["shards"])


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
