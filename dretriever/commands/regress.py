"""Rerun the entries of eval/regressions.yaml; fail when a score leaves its tolerance or a claimed direction
against a baseline entry (better / not-worse, p < 0.05) no longer holds."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..cli import parse
from ..evaluation.regressions import load_entries, run_all, select


@dataclass
class RegressArgs:
    file: str = field(default="eval/regressions.yaml", metadata={"help": "regression entries (YAML); commands run "
                                                                         "from the folder above its folder"})
    max_cost: str = field(default="minutes", metadata={"help": "run entries up to this cost: seconds|minutes|hour|hours"})
    only: list[str] = field(default_factory=list, metadata={"help": "entry names to run (ignores --max_cost)"})
    beir_data: str = field(default_factory=lambda: os.environ.get("BEIR_DATA", "../shared/beir"),
                           metadata={"help": "folder holding BEIR datasets (env BEIR_DATA)"})


def main(argv) -> int:
    args = parse(RegressArgs, argv)
    entries = select(load_entries(args.file), args.max_cost, args.only)
    if not entries:
        print("no regression entries selected")
        return 1
    repo = Path(args.file).resolve().parent.parent
    results = run_all(entries, str(Path(args.beir_data).resolve()), cwd=repo)
    failed = [r["name"] for r in results if not r["ok"]]
    print(f"regress: {len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0
