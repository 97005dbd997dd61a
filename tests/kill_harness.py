"""The kill harness: run a command, kill -9 it at random moments, rerun it to completion.

``kill_and_resume(cmd, kills=5, seed=0)`` first times one run of ``cmd`` from scratch (in a scratch copy
of its output, which ``reset`` clears), then, on the real output, starts ``cmd`` ``kills`` times and sends
SIGKILL after a delay drawn uniformly from 5-95 % of that clean duration, and finally reruns it once
without interruption. The caller compares the result with a clean build.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from dataclasses import dataclass, field


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
                    env: dict | None = None, timeout: float = 600) -> KillReport:
    """Kill ``cmd`` ``kills`` times at random moments, then run it to completion."""
    rng = random.Random(seed)
    report = KillReport(clean_seconds)
    for _ in range(kills):
        delay = rng.uniform(0.05, 0.95) * clean_seconds
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
