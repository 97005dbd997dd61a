"""Reliability runs, larger than the test suite's: the fault and bad-input harness of issue 12 at size.

1. Readers: ``tests/test_fuzz_readers.py`` with ``--examples`` hypothesis examples per reader (the suite runs
   40): arbitrary bytes and arbitrary JSON values per field; every example must return records or raise a
   DataError naming file and line.
2. Server: ``tests/test_server_fuzz.py`` with ``--examples`` per operation and generation mode (schemathesis
   from /openapi.json against real uvicorn, open and with an API key, plus hostile raw requests and 64
   concurrent clients); 0 5xx allowed.
3. Kills: ``dretriever index build``, ``datastore build`` and ``train``, each killed with SIGKILL at
   ``--kills`` random moments and rerun to completion (tests/kill_harness.py); the result is compared with a
   clean run: ids lost, ids duplicated, vectors (builds), every step's loss and the final weights (train).
4. Disk full: ``tests/test_disk_full.py`` (needs root: mounts a tmpfs).

    python eval/reliability.py --examples 2000 --kills 10          # the full run (about 30 min on 2 cores)
    python eval/reliability.py --examples 200 --kills 3            # modest

Writes ``OUTPUT_DIR/README.md`` and ``reliability.json``.
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dretriever.cli import parse, run_script  # noqa: E402


@dataclass
class ReliabilityArgs:
    examples: int = field(default=200, metadata={"help": "hypothesis examples per reader / server operation"})
    kills: int = field(default=3, metadata={"help": "random kills per command"})
    docs: int = field(default=1500, metadata={"help": "documents in the kill runs' corpus"})
    output_dir: str = "eval/reports/reliability"


def pytest_run(test_file: str, env: dict) -> tuple[int, float, str]:
    t = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), **env}, capture_output=True, text=True)
    return done.returncode, time.monotonic() - t, done.stdout[-3000:] + done.stderr[-2000:]


def corpus(path: Path, n: int) -> Path:
    import numpy as np

    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(500)]
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"_id": f"doc{i}", "title": f"t{i % 7}",
                                "text": " ".join(rng.choice(words, size=int(rng.integers(8, 40))))}) + "\n")
    return path


def lost_and_duplicated(clean: Path, resumed: Path) -> tuple[int, int, int]:
    from tests.kill_harness import shard_ids_and_vectors

    a = [d for ids, _ in shard_ids_and_vectors(clean) for d in ids]
    b = [d for ids, _ in shard_ids_and_vectors(resumed) for d in ids]
    return len(a), len(set(a) - set(b)), len(b) - len(set(b))


def build_kills(name: str, base: list[str], work: Path, kills: int, env: dict) -> dict:
    from tests.kill_harness import (compare_with_clean, draw_points, encode_runs_tile, encoded_passages, finish,
                                    kill_at_progress, trajectory)

    clean, killed = work / f"{name}-clean", work / f"{name}-killed"
    clean_seconds, states = trajectory(base + ["--output", str(clean)], lambda: encoded_passages(clean), env)
    report = kill_at_progress(base + ["--output", str(killed)], lambda: encoded_passages(killed),
                              draw_points(states, kills, seed=7), env=env, seed=7)
    finish(base + ["--output", str(killed)], env)
    rows, lost, dup = lost_and_duplicated(clean, killed)
    compare_with_clean(clean, killed)
    encode_runs_tile(killed)
    return {"command": name, "kills": kills, "landed": report.kills_landed, "rows": rows, "lost": lost,
            "duplicated": dup, "check": "ids per shard, vectors within 1e-6, encode_runs tile each shard once",
            "clean_seconds": round(clean_seconds, 1)}


def train_kills(work: Path, kills: int) -> dict:
    from tests.conftest import make_tiny_bert
    from tests.test_kill_train import train_kill_run

    model = make_tiny_bert(work / "train-model")
    steps = 16 if kills < 8 else 2 * kills + 4
    report, compared = train_kill_run(work / "train", model, kills=kills, seed=7, max_steps=steps)
    return {"command": "train", "kills": kills, "landed": report.kills_landed, "rows": compared, "lost": 0,
            "duplicated": 0, "check": f"{compared} steps: the same steps and losses (rel 1e-5), final weights "
                                      "(1e-4)"}


def main(argv) -> int:
    args = parse(ReliabilityArgs, argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    command = "python eval/reliability.py " + " ".join(argv)
    result: dict = {"command": command, "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = {"DRETRIEVER_FUZZ_EXAMPLES": str(args.examples)}
        rc, secs, tail = pytest_run("tests/test_fuzz_readers.py", {**env, "DRETRIEVER_FUZZ_REPORT": str(tmp / "r.json")})
        result["readers"] = {"passed": rc == 0, "seconds": round(secs), "counts": json.loads((tmp / "r.json").read_text())
                             if (tmp / "r.json").is_file() else {}, "tail": "" if rc == 0 else tail}
        rc, secs, tail = pytest_run("tests/test_server_fuzz.py",
                                    {**env, "DRETRIEVER_SERVER_FUZZ_REPORT": str(tmp / "s.json")})
        result["server"] = {"passed": rc == 0, "seconds": round(secs), **(json.loads((tmp / "s.json").read_text())
                            if (tmp / "s.json").is_file() else {}), "tail": "" if rc == 0 else tail}

        from tests.conftest import make_tiny_bert

        model = make_tiny_bert(tmp / "model")
        src = corpus(tmp / "corpus.jsonl", args.docs)
        penv = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        cli = [sys.executable, "-m", "dretriever"]
        result["kills"] = [
            build_kills("index build", cli + ["index", "build", "--corpus", str(src), "--model", str(model),
                                              "--shards", "2", "--chunk_docs", "64", "--batch_size", "32",
                                              "--precision", "fp32"],
                        tmp, args.kills, penv),
            build_kills("datastore build", cli + ["datastore", "build", "--sources", str(src), "--model", str(model),
                                                  "--shards", "2", "--chunking", "words", "--chunk_size", "12",
                                                  "--chunk_overlap", "2", "--chunk_docs", "64", "--batch_size", "32",
                                                  "--precision", "fp32", "--progress", "false"],
                        tmp, args.kills, penv),
            train_kills(tmp, args.kills)]
        rc, secs, tail = pytest_run("tests/test_disk_full.py", {})
        result["disk_full"] = {"passed": rc == 0, "seconds": round(secs), "tail": tail[-600:]}
    (out / "reliability.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "README.md").write_text(report_md(result))
    print((out / "README.md").read_text())
    ok = result["readers"]["passed"] and result["server"]["passed"] and result["disk_full"]["passed"]
    return 0 if ok else 1


def report_md(r: dict) -> str:
    lines = ["# Reliability: bad input, hostile requests, kills, a full disk", "",
             f"Command: `{r['command']}` (started {r['started']}; 2 shared CPU cores, other jobs running).", "",
             "## Readers (hypothesis: arbitrary bytes, arbitrary JSON values per field)", "",
             f"{'passed' if r['readers']['passed'] else 'FAILED'} in {r['readers']['seconds']} s. An unexpected "
             "exception fails the run, so a passed run has 0.", "",
             "| reader | examples | refused with DataError (file:line) | returned records | unexpected exceptions |",
             "|---|---:|---:|---:|---:|"]
    for name, c in r["readers"]["counts"].items():
        lines.append(f"| {name} | {c['examples']} | {c['data_errors']} | {c['examples'] - c['data_errors']} | 0 |")
    total = sum(c["examples"] for c in r["readers"]["counts"].values())
    lines += [f"| **{len(r['readers']['counts'])} readers** | **{total}** | | | **0** |", "",
              "## Server (schemathesis from /openapi.json, raw hostile requests, 64 concurrent clients)", "",
              f"{'passed' if r['server']['passed'] else 'FAILED'} in {r['server']['seconds']} s: "
              f"**{r['server'].get('requests', 0)} requests, {r['server'].get('5xx', '?')} 5xx**.", "",
              "| server, status | requests |", "|---|---:|"]
    lines += [f"| {k} | {n} |" for k, n in r["server"].get("by_status", {}).items()]
    lines += ["", "## Kill -9 at random moments, rerun to completion, compared with a clean run", "",
              "| command | kills | landed inside the run | rows / steps compared | lost | duplicated | compared |",
              "|---|---:|---:|---:|---:|---:|---|"]
    lines += [f"| {k['command']} | {k['kills']} | {k['landed']} | {k['rows']} | {k['lost']} | {k['duplicated']} | "
              f"{k['check']} |" for k in r["kills"]]
    lines += ["", "## Disk full (tests/test_disk_full.py, a tmpfs the size of the finished index)", "",
              f"{'passed' if r['disk_full']['passed'] else 'FAILED'} ({r['disk_full']['seconds']} s): the build "
              "stops with `PATH: no space left on device ...`, exit 2, no traceback; shards marked done verify, "
              "the unfinished one is not marked done and the index refuses to open; after a remount with room "
              "the same command completes equal to a clean build.", ""]
    if not r["disk_full"]["passed"]:
        lines += ["```", r["disk_full"]["tail"], "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    run_script(main)
