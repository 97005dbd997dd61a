"""The datastore pipeline at scale: generated text -> passages -> a tiny random BERT -> a sharded datastore.

The model is made cheap on purpose (a random BERT 32 wide and 2 layers deep, passages of 32 words), so that
what is measured is the pipeline around it: reading the source, chunking, tokenizing, encoding, writing.

1. For each ``--sizes`` (passages), a seeded corpus (``eval/synthetic.py``: documents of 64 words, split
   into two 32-word passages) is built into a datastore in a fresh process, which reports passages/s, the
   wall time per stage (``dretriever.stages``: read, chunk, tokenize, encode, write, plus spool = the staged
   rows read back for encoding, index = faiss, checksum = sha256, load = the model), peak anonymous RSS
   (sampled every 2 ms, with the stage it peaked in) and peak RSS (``ru_maxrss``, the kernel's exact
   high-water mark), and how often each source was opened
   (``read_records`` calls, counted in the build process) next to the manifest's ``source_passes``. Asserted: one read per source; peak RSS at the
   largest size within 10 % of the smallest.
2. ``--kills N``: a clean build of ``--kill_size`` passages, then the same build killed with SIGKILL at N
   moments drawn from its progress (passage counts the clean build committed, between 5 and 90 % of them) and
   rerun each time, then run to completion. Asserted: the
   same ids per shard as the clean build, vectors equal within 1e-6, and every shard's ``encode_runs`` tile
   its rows exactly once (no rerun re-encoded a committed chunk), and that every kill landed.

    python eval/bench_pipeline.py --sizes 100000 1000000 --kills 5 --kill_size 100000

Writes ``OUTPUT_DIR/pipeline.{json,md}``. Run it on a quiet machine.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: make ``eval`` and ``tests`` importable
    sys.path.insert(0, str(REPO))

from dretriever.cli import parse, run_script  # noqa: E402
from dretriever.index import manifest as mf  # noqa: E402
from dretriever.atomic import write_json_atomic, write_text_atomic  # noqa: E402
from eval.bench_scale import PeakRss, machine  # noqa: E402

STAGES = ["read", "chunk", "tokenize", "encode", "write", "spool", "index", "checksum", "load", "other"]


@dataclass
class PipelineArgs:
    sizes: list[int] = field(default_factory=lambda: [100_000, 1_000_000])
    kills: int = 5
    kill_size: int = 100_000
    kill_seed: int = 0
    shards: int = 8
    words: int = field(default=64, metadata={"help": "words per generated document"})
    chunk_size: int = field(default=32, metadata={"help": "words per passage (no overlap)"})
    batch_size: int = 256
    max_tokens: int = field(default=16384, metadata={"help": "padded tokens per encoding batch (bounds a batch's "
                                                             "memory whatever the passage lengths)"})
    chunk_docs: int = 4096
    threads: int = 2
    workdir: str = "indexes/pipeline"
    output_dir: str = "eval/reports/pipeline"
    seed: int = 0
    phase: str = field(default="all", metadata={"help": "all | build (internal: one build in a fresh process)"})
    source: str = ""
    output: str = ""
    model: str = ""


# ---------------------------------------------------------------- one build, in its own process
def build_args(args: PipelineArgs, source: str, output: str) -> list[str]:
    return ["--sources", source, "--output", output, "--model", args.model, "--shards", str(args.shards),
            "--factory", "Flat", "--chunking", "words", "--chunk_size", str(args.chunk_size), "--chunk_overlap", "0",
            "--batch_size", str(args.batch_size), "--max_tokens", str(args.max_tokens), "--chunk_docs",
            str(args.chunk_docs), "--precision", "fp32",
            "--progress", "false"]


def build_phase(args: PipelineArgs) -> dict:
    import torch

    from dretriever.index import datastore
    from dretriever.index.datastore import DatastoreArgs, build_datastore
    from dretriever.stages import StageClock

    torch.set_num_threads(args.threads)
    opened: dict[str, int] = {}
    read_records = datastore.read_records

    def counting(src, *a, **kw):  # every pass over a source starts here
        opened[str(src)] = opened.get(str(src), 0) + 1
        return read_records(src, *a, **kw)

    datastore.read_records = counting
    ds_args = parse(DatastoreArgs, build_args(args, args.source, args.output))
    clock = StageClock()
    with PeakRss(label=lambda: clock.stage, interval=0.002) as peak, clock:
        manifest = build_datastore(ds_args)
    passages = sum(e["num_docs"] for e in manifest["shards"])
    return {"passages": passages, "wall_s": clock.wall, "passages_per_s": passages / clock.wall,
            "stages_s": clock.seconds, "peak_rss_anon": peak.peak, "peak_stage": peak.peak_label,
            "rss_deciles": deciles(peak.trace),
            "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "source_opens": opened, "source_passes": manifest["source_passes"]}


def deciles(trace: list[tuple[float, int, str | None]]) -> list[dict]:
    """Max and min sampled RssAnon in each tenth of the build's wall time (flat = bounded; rising = creeping)."""
    end = trace[-1][0] or 1.0
    out = []
    for d in range(10):
        seg = [rss for t, rss, _ in trace if d * end / 10 <= t < (d + 1) * end / 10]
        if seg:
            out.append({"decile": d, "max": max(seg), "min": min(seg)})
    return out


def run_build(args: PipelineArgs, source: Path, output: Path) -> dict:
    cmd = [sys.executable, __file__, "--phase", "build", "--source", str(source), "--output", str(output),
           "--model", args.model, "--shards", str(args.shards), "--chunk_size", str(args.chunk_size),
           "--batch_size", str(args.batch_size), "--max_tokens", str(args.max_tokens), "--chunk_docs", str(args.chunk_docs),
           "--threads", str(args.threads)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"build of {source} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- data and model
def corpus(args: PipelineArgs, passages: int) -> Path:
    from eval.synthetic import write_jsonl

    docs = passages * args.chunk_size // args.words
    path = Path(args.workdir) / f"corpus-{passages}.jsonl"
    stamp = path.with_suffix(".json")
    want = {"docs": docs, "seed": args.seed, "words": args.words}
    if not (path.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == want):
        t = time.perf_counter()
        write_jsonl(path, docs, seed=args.seed, min_words=args.words, max_words=args.words)
        write_json_atomic(stamp, want)
        print(f"generated {docs:,} documents in {time.perf_counter() - t:.0f} s -> {path}", flush=True)
    return path


def tiny_model(args: PipelineArgs) -> Path:
    from tests.conftest import make_tiny_bert

    path = Path(args.workdir) / "tiny-bert-32x2"
    if not (path / "config.json").is_file():
        make_tiny_bert(path)
    return path


# ---------------------------------------------------------------- kill -9 and resume
def kill_run(args: PipelineArgs) -> dict:
    from tests.kill_harness import (compare_with_clean, draw_points, encode_runs_tile, encoded_passages, finish,
                                    kill_at_progress, trajectory)

    work = Path(args.workdir)
    source = corpus(args, args.kill_size)
    clean, killed = work / f"kill-clean-{args.kill_size}", work / f"kill-resumed-{args.kill_size}"
    for d in (clean, killed):
        shutil.rmtree(d, ignore_errors=True)
    cli = [sys.executable, "-m", "dretriever", "datastore", "build"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    clean_s, states = trajectory(cli + build_args(args, str(source), str(clean)), lambda: encoded_passages(clean), env,
                                 timeout=3600)
    # the kills fall at passage counts the clean build went through (its progress, not its duration)
    points = draw_points(states, args.kills, seed=args.kill_seed)
    report = kill_at_progress(cli + build_args(args, str(source), str(killed)), lambda: encoded_passages(killed),
                              points, env=env, seed=args.kill_seed, timeout=3600)
    finish(cli + build_args(args, str(source), str(killed)), env, timeout=3600)
    assert report.kills_landed == args.kills, f"only {report.kills_landed} of {args.kills} kills landed"
    rows = compare_with_clean(clean, killed, atol=1e-6)
    runs = encode_runs_tile(killed)
    manifest = mf.read_manifest(killed)
    out = {"passages": rows, "clean_s": clean_s, "kill_points": points, "delays_s": report.delays, "killed": report.killed,
           "kills_landed": report.kills_landed, "encode_runs": len(runs),
           "source_passes": manifest["source_passes"],
           "chunks_per_shard": [len(e["encode_runs"]) for e in manifest["shards"]]}
    shutil.rmtree(clean, ignore_errors=True)
    shutil.rmtree(killed, ignore_errors=True)
    return out


# ---------------------------------------------------------------- report
def markdown(result: dict) -> str:
    gib = 1024 ** 3
    m = result["machine"]
    lines = ["# Datastore pipeline", "", f"`{result['command']}`", "",
             f"Machine: {m['cpu']}, {m['cores']} cores ({' '.join(m['simd'])}); torch threads "
             f"{result['args']['threads']}. Tiny random BERT (32 wide, 2 layers), {result['args']['words']}-word "
             f"documents chunked into {result['args']['chunk_size']}-word passages, {result['args']['shards']} Flat "
             f"shards, chunk_docs {result['args']['chunk_docs']}, batches of at most {result['args']['batch_size']} "
             f"passages and {result['args'].get('max_tokens')} padded tokens.", "",
             "| passages | wall s | passages/s | peak RssAnon GiB (sampled, stage) | peak RSS GiB (ru_maxrss) "
             "| source opens | source passes |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["builds"]:
        lines.append(f"| {r['passages']:,} | {r['wall_s']:.0f} | {r['passages_per_s']:,.0f} | "
                     f"{r['peak_rss_anon'] / gib:.3f} ({r.get('peak_stage')}) | {r['ru_maxrss'] / gib:.3f} | "
                     f"{sum(r['source_opens'].values())} | {r['source_passes']} |")
    lines += ["", "Share of wall time per stage:", "", "| passages | " + " | ".join(STAGES) + " |",
              "|---:|" + "---:|" * len(STAGES)]
    for r in result["builds"]:
        total = sum(r["stages_s"].values())
        lines.append(f"| {r['passages']:,} | " + " | ".join(f"{100 * r['stages_s'].get(s, 0) / total:.1f} %"
                                                          for s in STAGES) + " |")
    lines += ["", f"Peak RSS, largest vs smallest size: RssAnon x{result['rss_ratio_anon']:.3f}, "
                  f"ru_maxrss x{result['rss_ratio']:.3f} (goal: within 10 %)."]
    for r in result["builds"]:
        if r.get("rss_deciles"):
            lines += ["", f"Sampled RssAnon per tenth of the {r['passages']:,}-passage build, max / min MiB: "
                          + ", ".join(f"{d['max'] / 2**20:.0f}/{d['min'] / 2**20:.0f}" for d in r["rss_deciles"])]
    k = result.get("kill")
    if k:
        at = k.get("kill_points")  # reports before kills were drawn from progress timed them instead
        moments = (f"once {', '.join(f'{p:,}' for p in at)} passages were committed" if at else
                   f"at moments timed after a {k['startup_s']:.1f} s start-up")
        lines += ["", f"Kill -9: a {k['passages']:,}-passage build (clean: {k['clean_s']:.0f} s) killed "
                      f"{len(k['killed'])} times, {moments}, each run after "
                      f"{', '.join(f'{d:.1f}' for d in k['delays_s'])} s ({k['kills_landed']} of {len(k['killed'])} "
                      f"landed), rerun after each, then run to completion: the same ids per "
                      f"shard as the clean build, vectors equal within 1e-6, encode_runs tile every shard "
                      f"(rows encoded by {k['encode_runs']} runs, none twice; committed chunk ranges per shard: "
                      f"{k['chunks_per_shard']}), source passes {k['source_passes']}."]
    return "\n".join(lines) + "\n"


def main(argv) -> int:
    args = parse(PipelineArgs, argv)
    if args.phase == "build":
        print(json.dumps(build_phase(args)))
        return 0
    work, out = Path(args.workdir), Path(args.output_dir)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    args.model = str(tiny_model(args))
    result = {"command": "python eval/bench_pipeline.py " + " ".join(argv), "machine": machine(),
              "args": asdict(args), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "builds": []}
    for n in args.sizes:
        source = corpus(args, n)
        target = work / f"datastore-{n}"
        shutil.rmtree(target, ignore_errors=True)
        r = run_build(args, source, target)
        shutil.rmtree(target, ignore_errors=True)
        print(json.dumps(r), flush=True)
        assert list(r["source_opens"].values()) == [1] and r["source_passes"] == 1, "a source was read twice"
        result["builds"].append(r)
        write_json_atomic(out / "pipeline.json", result)
    small, large = result["builds"][0], result["builds"][-1]
    result["rss_ratio_anon"] = large["peak_rss_anon"] / small["peak_rss_anon"]
    result["rss_ratio"] = large["ru_maxrss"] / small["ru_maxrss"]
    if args.kills:
        result["kill"] = kill_run(args)
        print(json.dumps(result["kill"]), flush=True)
    write_json_atomic(out / "pipeline.json", result)
    write_text_atomic(out / "pipeline.md", markdown(result))
    print(markdown(result))
    ok = result["rss_ratio"] <= 1.10 and result["rss_ratio_anon"] <= 1.10
    print(f"peak RSS within 10 %: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    run_script(main)
