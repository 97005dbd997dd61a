"""Regressions kept as data: ``eval/regressions.yaml`` entries of command + expected score + tolerance.

Each entry's command is run in a shell with ``${BEIR_DATA}`` set; every scored row it produces is appended
to the JSONL file named by ``DRETRIEVER_RESULTS`` (see evaluation/beir.py), and the entry's metric is read
from the row of its dataset (and, where several systems ran, its ``system``).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
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


def load_entries(path: str | Path) -> list[Entry]:
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "regressions file not found")
    raw = yaml.safe_load(path.read_text()) or []
    if not isinstance(raw, list):
        raise DataError(path, "expected a list of entries")
    entries, seen = [], set()
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
        if item["name"] in seen:
            raise DataError(path, f"{where}: duplicate name")
        seen.add(item["name"])
        entries.append(Entry(**item))
    return entries


def select(entries: list[Entry], max_cost: str, only: list[str] | None) -> list[Entry]:
    if only:
        unknown = set(only) - {e.name for e in entries}
        if unknown:
            raise DataError("regressions", f"no entries named {sorted(unknown)}")
        return [e for e in entries if e.name in only]
    limit = COSTS.index(max_cost)
    return [e for e in entries if COSTS.index(e.cost) <= limit]


def run_entry(entry: Entry, beir_data: str, cwd: str | Path) -> tuple[float | None, str]:
    """Run the entry's command; returns (score or None, the command's output tail)."""
    with tempfile.TemporaryDirectory() as tmp:
        sink = Path(tmp) / "results.jsonl"
        env = {**os.environ, "BEIR_DATA": beir_data, RESULTS_ENV: str(sink)}
        done = subprocess.run(["bash", "-c", entry.command], cwd=cwd, env=env, capture_output=True, text=True)
        tail = (done.stdout + done.stderr)[-3000:]
        if done.returncode != 0 or not sink.is_file():
            return None, tail
        rows = [json.loads(line) for line in sink.read_text().splitlines()]
    rows = [r for r in rows if r["dataset"] == entry.dataset and (entry.system is None or r["system"] == entry.system)]
    if len(rows) != 1 or entry.metric not in rows[0]:
        return None, tail + f"\n(expected one row for dataset={entry.dataset} system={entry.system}, got {len(rows)})"
    return float(rows[0][entry.metric]), tail


def run_all(entries: list[Entry], beir_data: str, cwd: str | Path) -> list[dict]:
    results = []
    for e in entries:
        start = time.perf_counter()
        score, tail = run_entry(e, beir_data, cwd)
        ok = score is not None and abs(score - e.expected) <= e.tolerance
        results.append({"name": e.name, "metric": e.metric, "expected": e.expected, "tolerance": e.tolerance,
                        "score": score, "ok": ok, "seconds": round(time.perf_counter() - start, 1),
                        "output": None if ok else tail})
        status = "OK  " if ok else "FAIL"
        shown = "error" if score is None else f"{score:.4f}"
        print(f"{status} {e.name:32s} {e.metric} {shown} (expected {e.expected:.4f} ± {e.tolerance}) "
              f"[{results[-1]['seconds']}s]", flush=True)
        if not ok:
            print(tail, flush=True)
    return results
