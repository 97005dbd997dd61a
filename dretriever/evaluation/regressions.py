"""Regressions kept as data: ``eval/regressions.yaml`` entries of command + expected score + tolerance.

Each entry's command is run in a shell with ``${BEIR_DATA}`` set; every scored row it produces is appended
to the JSONL file named by ``DRETRIEVER_RESULTS`` (see evaluation/beir.py), and the entry's metric is read
from the row of its dataset (and, where several systems ran, its ``system``). An entry may name entries that
must run first (``requires``: a model that its command evaluates or trains on, say); they come earlier in the
file, cost no more than it does, and are run (and checked) whenever it is selected.
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

COSTS = ("seconds", "minutes", "hours")
REQUIRED = ("name", "dataset", "metric", "expected", "tolerance", "command", "cost")


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
        for name in entry.requires:
            earlier = entries.get(name)
            if earlier is None:
                raise DataError(path, f"{where}: requires {name!r}, which is not an entry above it")
            if COSTS.index(earlier.cost) > COSTS.index(entry.cost):
                raise DataError(path, f"{where}: requires {name!r}, whose cost {earlier.cost!r} exceeds its own")
        entries[entry.name] = entry
    return list(entries.values())


def select(entries: list[Entry], max_cost: str, only: list[str] | None) -> list[Entry]:
    """The chosen entries and, transitively, the entries they require, in file order (requirements first)."""
    if only:
        unknown = set(only) - {e.name for e in entries}
        if unknown:
            raise DataError("regressions", f"no entries named {sorted(unknown)}")
        chosen = set(only)
    else:
        chosen = {e.name for e in entries if COSTS.index(e.cost) <= COSTS.index(max_cost)}
    by_name = {e.name: e for e in entries}
    stack = list(chosen)
    while stack:
        for name in by_name[stack.pop()].requires:
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


def score_of(entry: Entry, rows: list[dict]) -> float | None:
    rows = [r for r in rows if r["dataset"] == entry.dataset and (entry.system is None or r["system"] == entry.system)]
    if len(rows) != 1 or entry.metric not in rows[0]:
        return None
    return float(rows[0][entry.metric])


def run_all(entries: list[Entry], beir_data: str, cwd: str | Path) -> list[dict]:
    """Run each distinct command once and check every entry that reads from it."""
    results, done, failed = [], {}, set()
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
        ok = score is not None and abs(score - e.expected) <= e.tolerance
        if not ok:
            failed.add(e.name)
        results.append({"name": e.name, "metric": e.metric, "expected": e.expected, "tolerance": e.tolerance,
                        "score": score, "ok": ok, "seconds": round(time.perf_counter() - start, 1)})
        shown = "error" if score is None else f"{score:.4f}"
        print(f"{'OK  ' if ok else 'FAIL'} {e.name:32s} {e.metric} {shown} (expected {e.expected:.4f} "
              f"± {e.tolerance}) [{results[-1]['seconds']}s]", flush=True)
        if not ok:
            print(tail if rows is None else f"rows recorded: {rows}", flush=True)
    return results
