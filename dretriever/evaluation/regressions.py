"""Regressions kept as data: ``eval/regressions.yaml`` entries of command + expected score + tolerance.

Each entry's command is run in a shell with ``${BEIR_DATA}`` set; every scored row it produces is appended
to the JSONL file named by ``DRETRIEVER_RESULTS`` (see evaluation/beir.py), and the entry's metric is read
from the row of its dataset (and, where several systems ran, its ``system``). An entry may name entries that
must run first (``requires``: a model that its command evaluates or trains on, say); they come earlier in the
file, cost no more than it does, and are run (and checked) whenever it is selected.

An entry may name a ``baseline`` entry (earlier in the file, no costlier, run whenever it is selected): the two
rows' per-query scores (``perquery`` in each row, written by evaluation/beir.py) give the paired difference,
its 95 % bootstrap interval and the randomization test's p (evaluation/significance.py), printed beside the
score. With a ``direction`` the entry claims its system is ``better`` than the baseline (difference > 0 at
p < 0.05) or ``not-worse`` (not: difference < 0 at p < 0.05), and fails when the claim no longer holds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import DataError
from .beir import RESULTS_ENV
from .perquery import read_per_query
from .significance import ALPHA, Comparison, compare

# What an entry's command costs on CI's 2 cores, from its measured time there: under a minute, under 10 minutes,
# under an hour, more. CI (scripts/regress.sh) reruns seconds and minutes; it has 90 minutes for all of its work.
COSTS = ("seconds", "minutes", "hour", "hours")
REQUIRED = ("name", "dataset", "metric", "expected", "tolerance", "command", "cost")
DIRECTIONS = ("better", "not-worse")


@dataclass
class Entry:
    name: str
    dataset: str
    metric: str
    expected: float
    tolerance: float
    command: str
    cost: str
    system: str | None = None
    requires: list[str] = field(default_factory=list)
    baseline: str | None = None
    direction: str | None = None

    def before(self) -> list[str]:
        """The entries that must run first: its requirements and its baseline."""
        return self.requires + ([self.baseline] if self.baseline and self.baseline not in self.requires else [])


def load_entries(path: str | Path) -> list[Entry]:
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "regressions file not found")
    raw = yaml.safe_load(path.read_text()) or []
    if not isinstance(raw, list):
        raise DataError(path, "expected a list of entries")
    entries: dict[str, Entry] = {}  # by name, in file order
    for i, item in enumerate(raw, start=1):
        where = f"entry {i}" + (f" ({item.get('name')})" if isinstance(item, dict) and item.get("name") else "")
        if not isinstance(item, dict):
            raise DataError(path, f"{where}: expected a mapping")
        missing = [k for k in REQUIRED if k not in item]
        if missing:
            raise DataError(path, f"{where}: missing field(s) {missing}")
        unknown = set(item) - set(Entry.__dataclass_fields__)
        if unknown:
            raise DataError(path, f"{where}: unknown field(s) {sorted(unknown)}")
        if item["cost"] not in COSTS:
            raise DataError(path, f"{where}: cost must be one of {COSTS}, got {item['cost']!r}")
        if item["name"] in entries:
            raise DataError(path, f"{where}: duplicate name")
        entry = Entry(**item)
        if not isinstance(entry.requires, list):
            raise DataError(path, f"{where}: requires must be a list of entry names")
        if entry.direction is not None and entry.direction not in DIRECTIONS:
            raise DataError(path, f"{where}: direction must be one of {DIRECTIONS}, got {entry.direction!r}")
        if entry.direction is not None and entry.baseline is None:
            raise DataError(path, f"{where}: direction {entry.direction!r} needs a baseline entry")
        for name in entry.before():
            field_name = "baseline" if name == entry.baseline else "requires"
            earlier = entries.get(name)
            if earlier is None:
                raise DataError(path, f"{where}: {field_name} {name!r}, which is not an entry above it")
            if COSTS.index(earlier.cost) > COSTS.index(entry.cost):
                raise DataError(path, f"{where}: {field_name} {name!r}, whose cost {earlier.cost!r} exceeds its own")
        entries[entry.name] = entry
    return list(entries.values())


def select(entries: list[Entry], max_cost: str, only: list[str] | None) -> list[Entry]:
    """The chosen entries and, transitively, the entries they require, in file order (requirements first)."""
    if only:
        unknown = set(only) - {e.name for e in entries}
        if unknown:
            raise DataError("regressions", f"no entries named {sorted(unknown)}")
        chosen = set(only)
    elif max_cost not in COSTS:
        raise DataError("--max_cost", f"must be one of {COSTS}, got {max_cost!r}")
    else:
        chosen = {e.name for e in entries if COSTS.index(e.cost) <= COSTS.index(max_cost)}
    by_name = {e.name: e for e in entries}
    stack = list(chosen)
    while stack:
        for name in by_name[stack.pop()].before():
            if name not in chosen:
                chosen.add(name)
                stack.append(name)
    return [e for e in entries if e.name in chosen]


def run_command(command: str, beir_data: str, cwd: str | Path) -> tuple[list[dict] | None, str]:
    """Run one command; returns (the rows it recorded, or None if it failed; its output tail)."""
    with tempfile.TemporaryDirectory() as tmp:
        sink = Path(tmp) / "results.jsonl"
        # `dretriever` in a command means this environment's: its scripts sit beside the interpreter.
        path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
        env = {**os.environ, "PATH": path, "BEIR_DATA": beir_data, RESULTS_ENV: str(sink)}
        done = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True)
        tail = (done.stdout + done.stderr)[-3000:]
        if done.returncode != 0 or not sink.is_file():
            return None, tail
        return [json.loads(line) for line in sink.read_text().splitlines()], tail


def row_of(entry: Entry, rows: list[dict] | None) -> dict | None:
    rows = [r for r in rows or [] if r["dataset"] == entry.dataset and entry.system in (None, r["system"])]
    return rows[0] if len(rows) == 1 and entry.metric in rows[0] else None


def score_of(entry: Entry, rows: list[dict]) -> float | None:
    row = row_of(entry, rows)
    return None if row is None else float(row[entry.metric])


def against_baseline(entry: Entry, row: dict | None, base_row: dict | None, cwd: str | Path) -> Comparison | str:
    """The paired comparison of the entry's row with its baseline's, on the entry's metric, or why there is none."""
    if row is None or base_row is None:
        return f"no row for {'the entry' if row is None else f'its baseline {entry.baseline}'}"
    scores = []
    for r in (base_row, row):
        if not r.get("perquery"):
            return f"the row of {r['system']} has no per-query scores (perquery)"
        path = Path(cwd) / r["perquery"]
        if not path.is_file():
            return f"per-query scores not found: {path}"
        by_metric = read_per_query(path)
        if entry.metric not in by_metric:
            return f"{path} holds no per-query {entry.metric}"
        scores.append(by_metric[entry.metric])
    return compare(scores[0], scores[1], entry.metric, entry.baseline, entry.name)


def direction_holds(direction: str | None, c: Comparison) -> bool:
    """better: a positive difference at p < 0.05; not-worse: no negative difference at p < 0.05."""
    if direction == "better":
        return c.difference > 0 and c.p_value < ALPHA
    if direction == "not-worse":
        return not (c.difference < 0 and c.p_value < ALPHA)
    return True


def run_all(entries: list[Entry], beir_data: str, cwd: str | Path) -> list[dict]:
    """Run each distinct command once and check every entry that reads from it."""
    results, done, failed = [], {}, set()
    by_name = {e.name: e for e in entries}
    for e in entries:
        start = time.perf_counter()
        broken = [name for name in e.requires if name in failed]
        if broken:
            rows, tail = None, f"not run: required entries failed: {broken}"
        else:
            if e.command not in done:
                done[e.command] = run_command(e.command, beir_data, cwd)
            rows, tail = done[e.command]
        score = score_of(e, rows) if rows is not None else None
        ok = in_tolerance = score is not None and abs(score - e.expected) <= e.tolerance
        result = {"name": e.name, "metric": e.metric, "expected": e.expected, "tolerance": e.tolerance,
                  "score": score}
        shown = "error" if score is None else f"{score:.4f}"
        versus, why = "", ""
        if e.baseline:
            base = by_name[e.baseline]
            c = against_baseline(e, row_of(e, rows), row_of(base, done.get(base.command, (None,))[0]), cwd)
            holds = not isinstance(c, str) and direction_holds(e.direction, c)
            ok = ok and (holds or e.direction is None)
            if isinstance(c, str):
                versus, why = f" vs {e.baseline}: no comparison", c
            else:
                versus = (f" vs {e.baseline}: {c.difference:+.4f} [{c.interval[0]:+.4f}, {c.interval[1]:+.4f}] "
                          f"p {c.p_value:.4f}" + (f" ({e.direction}: {'holds' if holds else 'FAILS'})"
                                                  if e.direction else ""))
                if not holds:
                    why = f"claimed {e.direction} than {e.baseline}, which no longer holds at p < {ALPHA}"
                result.update({"difference": c.difference, "interval": list(c.interval), "p_value": c.p_value})
            result.update({"baseline": e.baseline, "direction": e.direction, "direction_holds": holds})
        if not ok:
            failed.add(e.name)
        result.update({"ok": ok, "seconds": round(time.perf_counter() - start, 1)})
        results.append(result)
        print(f"{'OK  ' if ok else 'FAIL'} {e.name:32s} {e.metric} {shown} (expected {e.expected:.4f} "
              f"± {e.tolerance}){versus} [{result['seconds']}s]", flush=True)
        if not in_tolerance:
            print(tail if rows is None else f"rows recorded: {rows}", flush=True)
        if why and not ok:
            print(why, flush=True)
    return results
