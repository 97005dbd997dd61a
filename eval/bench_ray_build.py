"""Passages/s of a datastore build per encoder worker: ``--engine local`` against ``--engine ray``, one run.

The first ``--docs`` SciFact documents (one passage each) are built into a datastore ``--runs`` times per
configuration, each build a fresh CLI process, in rotation (local, ray x1, ray x2, local, ...), all at the same
precision:

- ``local``: one process, ``torch`` with all the machine's cores;
- ``ray xN``: a local Ray cluster started by this script (``ray.init``, 2 logical CPUs per core), the build
  joining it with ``--address``, N encoder actors of ``cores / N`` CPUs (torch threads) each.

Reported per configuration (medians): the whole build's passages/s (model loads, staging, actor start-up,
finishing shards) and the encode phase's (``dretriever.stages`` "encode": the chunks' wall time as the driver
sees it), per worker and in all; ratio to ``local``; and Ray's steady rate (passages after the first chunk came
back over the time since: actor start-up and model loads excluded; for ``local`` the encode phase's rate).
The figures are the input of README "Scaling out"
(a worker's passages/s -> workers for a corpus). Run it on a quiet machine:

    python eval/bench_ray_build.py --docs 300 --runs 3
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dretriever.cli import parse, run_script  # noqa: E402
from dretriever.atomic import write_json_atomic, write_text_atomic  # noqa: E402
from eval.hardware import describe, machine  # noqa: E402


@dataclass
class RayBenchArgs:
    corpus: str = field(default_factory=lambda: os.path.join(os.environ.get("BEIR_DATA", "../shared/beir"),
                                                             "scifact", "corpus.jsonl"))
    docs: int = 300
    model: str = "sentence-transformers/all-MiniLM-L6-v2"
    precision: str = "fp32"
    shards: int = 4
    chunk_docs: int = 64  # enough chunks per shard for the actors to share and a steady rate to show
    runs: int = 3
    ray_workers: list[int] = field(default_factory=lambda: [1, 2])
    output_dir: str = "eval/reports/ray"


ENCODE = re.compile(r"index build: ([\d.]+) s: .*?encode ([\d.]+) s")
STEADY = re.compile(r"ray: steady encoding ([\d.]+) passages/s")


def build(args: RayBenchArgs, corpus: Path, out: Path, extra: list[str]) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "dretriever.cli", "datastore", "build", "--sources", str(corpus), "--output",
           str(out), "--model", args.model, "--chunking", "none", "--shards", str(args.shards), "--precision",
           args.precision, "--chunk_docs", str(args.chunk_docs), "--progress", "false", *extra]
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    found = ENCODE.search(done.stderr)
    steady = STEADY.search(done.stderr)
    return {"wall_s": wall, "encode_s": float(found.group(2)) if found else None,
            "steady_passages_per_s": float(steady.group(1)) if steady else None}


def main(argv) -> int:
    args = parse(RayBenchArgs, argv)
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    import ray

    info = machine()
    print(describe(info), flush=True)
    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="bench_ray_"))
    corpus = work / "corpus.jsonl"
    with open(args.corpus) as f, open(corpus, "w") as g:
        for n, line in enumerate(f):
            if n == args.docs:
                break
            g.write(line)
    ray.init(num_cpus=2 * cores, include_dashboard=False, logging_level="WARNING")
    address = ray.get_runtime_context().gcs_address
    configs = {"local": []}
    for w in args.ray_workers:
        configs[f"ray x{w}"] = ["--engine", "ray", "--address", address, "--workers", str(w),
                                "--worker_cpus", str(max(1, cores // w))]
    times: dict[str, list[dict]] = {name: [] for name in configs}
    try:
        for r in range(args.runs):
            for name, extra in configs.items():
                times[name].append(build(args, corpus, work / "ds", extra))
                print(f"run {r + 1} {name}: {times[name][-1]}", flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    rows = []
    for name, runs in times.items():
        workers = 1 if name == "local" else int(name.split("x")[1])
        wall = statistics.median(t["wall_s"] for t in runs)
        encode = statistics.median(t["encode_s"] for t in runs)
        rows.append({"config": name, "workers": workers, "build_passages_per_s": args.docs / wall,
                     "encode_passages_per_s": args.docs / encode,
                     "encode_passages_per_s_per_worker": args.docs / encode / workers,
                     "steady_passages_per_s": (statistics.median(t["steady_passages_per_s"] for t in runs)
                                               if name != "local" else args.docs / encode),
                     "runs": runs})
    base = rows[0]["encode_passages_per_s"]
    for row in rows:
        row["encode_ratio_to_local"] = row["encode_passages_per_s"] / base
    report = {"command": "python eval/bench_ray_build.py " + " ".join(argv), "machine": info,
              "args": asdict(args), "rows": rows}
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "build.json", report)
    lines = [f"# Datastore build: local vs Ray ({args.docs} SciFact documents, {args.model}, {args.precision})", "",
             f"`{report['command']}` (medians of {args.runs} runs)", "", describe(info).replace("\n", "  \n"), "",
             "| engine | workers | build passages/s | encode passages/s | per worker | encode vs local "
             "| steady passages/s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['config']} | {r['workers']} | {r['build_passages_per_s']:.1f} | {r['encode_passages_per_s']:.1f} "
              f"| {r['encode_passages_per_s_per_worker']:.1f} | x{r['encode_ratio_to_local']:.2f} "
              f"| {r['steady_passages_per_s']:.1f} |" for r in rows]
    write_text_atomic(out / "build.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    run_script(main)
