"""Load test of the real server on 127.0.0.1: N concurrent clients for a bounded time and request count.

Starts ``dretriever serve INDEX`` on a free local port with a fresh API key, checks that the 401/413/422
cases answer as they should, then runs ``--clients`` threads, each sending ``/search`` requests (SciFact
test queries, round robin) until ``--duration`` seconds or ``--max_requests`` requests in all. Reports
errors, throughput and latency percentiles (JSON + Markdown) and exits 1 if any request failed.
``--compare_batching true`` does it twice in one run, the server's micro-batching off and then on, and
reports the requests/s ratio and both latency profiles.

``--engine ray`` serves with ``dretriever serve --engine ray`` (a fresh local Ray cluster owned by the server,
or the one at ``--address``; ``--shard_groups``); ``--engine both`` runs the local server and then the Ray one
and prints them side by side (p50/p99, requests/s, errors). ``--kill_group_after S`` (Ray; the cluster on this
machine) SIGKILLs a shard-group replica S seconds into the load and reports the errors seen (status and
message) and the recovery time (from the kill to the first success after the last error). ``--rerank MODEL``
starts the server with that cross-encoder (``--rerank_depth``, default 20) and loads it twice: the first stage
alone, then every request with ``"rerank": true``, p50/p99 side by side.

    nice -n 10 python eval/load_test.py --index indexes/scifact.datastore-flat --clients 16 --duration 30 \
        --compare_batching true
    nice -n 10 python eval/load_test.py --index indexes/scifact.datastore-flat --clients 16 --duration 30 \
        --engine both [--kill_group_after 10]
    nice -n 10 python eval/load_test.py --index indexes/scifact.datastore-flat --clients 16 --duration 30 \
        --rerank path/to/cross-encoder --rerank_depth 20 --output_dir eval/reports/rerank/load
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import statistics
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np

from dretriever.cli import parse, run_script
from dretriever.data.beir import load_queries
from dretriever.errors import DretrieverError
from dretriever.atomic import write_json_atomic, write_text_atomic
from dretriever.search.batcher import DEFAULT_MAX_WAIT_MS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from server_process import serving  # noqa: E402  (eval/server_process.py)

ENGINES = ("local", "ray", "both")


@dataclass
class LoadArgs:
    index: str = field(metadata={"help": "index folder to serve"})
    queries: str = field(default_factory=lambda: os.path.join(os.environ.get("BEIR_DATA", "../shared/beir"),
                                                              "scifact", "queries.jsonl"))
    clients: int = 16
    duration: float = field(default=30.0, metadata={"help": "seconds of load (at most 600)"})
    max_requests: int = field(default=50_000, metadata={"help": "stop after this many requests in all"})
    k: int = 10
    mode: str = "dense"
    startup_timeout: float = 300.0
    micro_batch: int = field(default=32, metadata={"help": "the server's --micro_batch (0: off)"})
    micro_batch_wait_ms: float = DEFAULT_MAX_WAIT_MS
    compare_batching: bool = field(default=False, metadata={"help": "run the server with micro-batching off, "
                                                                   "then on, in this one run; print the ratio"})
    output_dir: str = "eval/reports/search"
    engine: str = field(default="local", metadata={"help": "local | ray | both (local, then ray, side by side)"})
    address: str | None = field(default=None, metadata={"help": "engine ray: the cluster to serve in (default: a "
                                                              "fresh local one, started by the server)"})
    shard_groups: int = field(default=0, metadata={"help": "engine ray: the server's --shard_groups (0: default)"})
    kill_group_after: float = field(default=0.0, metadata={"help": "engine ray: SIGKILL a shard-group replica "
                                                                  "this many seconds into the load (0: off)"})
    kill_group: int = field(default=-1, metadata={"help": "the shard group to kill (-1: the last)"})
    warmup: int = field(default=8, metadata={"help": "requests sent (and not counted) before the load: the first "
                                                    "ones pay one-time costs (Ray: the groups' first open)"})
    rerank: str | None = field(default=None, metadata={
        "help": "a cross-encoder for the server's --rerank: the load then runs twice on that one server, the first "
                "stage alone and with \"rerank\": true, reported side by side"})
    rerank_depth: int = field(default=20, metadata={"help": "the server's --rerank_depth: hits a reranked search "
                                                            "rescores"})
    timeout: float = field(default=60.0, metadata={"help": "seconds a request may take before it counts as an "
                                                           "error"})

    def __post_init__(self):
        if not 0 < self.duration <= 600 or self.max_requests < 1 or self.clients < 1:
            raise DretrieverError("duration must lie in (0, 600], max_requests and clients must be positive")
        if self.engine not in ENGINES:
            raise DretrieverError(f"engine: expected one of {ENGINES}, got {self.engine!r}")
        if self.compare_batching and self.engine == "both":
            raise DretrieverError("compare_batching: one engine at a time")
        if self.kill_group_after and not 0 < self.kill_group_after < self.duration:
            raise DretrieverError("kill_group_after must lie inside the run's duration")
        if self.rerank_depth < self.k:
            raise DretrieverError(f"rerank_depth: at least k ({self.k}), got {self.rerank_depth}")


def check_rejections(url: str, key: str) -> dict:
    """The status each bad request gets (expected: 401, 422, 422, 422, 413)."""
    auth = {"X-API-Key": key}
    cases = {
        "no_api_key": httpx.post(f"{url}/search", json={"query": "cells"}),
        "empty_query": httpx.post(f"{url}/search", json={"query": "", "k": 5}, headers=auth),
        "k_zero": httpx.post(f"{url}/search", json={"query": "cells", "k": 0}, headers=auth),
        "index_field": httpx.post(f"{url}/search", json={"query": "cells", "index": "/tmp/other"}, headers=auth),
        "oversize_body": httpx.post(f"{url}/search", json={"query": "x" * (2 << 20)}, headers=auth),
    }
    return {name: r.status_code for name, r in cases.items()}


def kill_group(url: str, key: str, group: int) -> dict:
    """SIGKILL the process of a shard-group replica (its pid from /health's details)."""
    details = httpx.get(f"{url}/health", headers={"X-API-Key": key}, timeout=30).json()["details"]
    target = sorted(details, key=lambda d: d["group"])[group]
    os.kill(target["pid"], signal.SIGKILL)
    return {"group": target["group"], "shards": target["shards"], "pid": target["pid"]}


def run_load(url: str, key: str, queries: list[str], args: LoadArgs, kill_after: float = 0.0,
             rerank: bool = False) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    outcomes: list[tuple[float, int | None, str | None]] = []  # (end time, status, problem) of every request
    lock = threading.Lock()
    sent = 0
    extra = {"rerank": True} if rerank else {}
    deadline = time.perf_counter() + args.duration

    def client(c: int):
        nonlocal sent
        with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=args.timeout) as http:
            i = c
            while time.perf_counter() < deadline:
                with lock:
                    if sent >= args.max_requests:
                        return
                    sent += 1
                start = time.perf_counter()
                status = None
                try:
                    r = http.post("/search", json={"query": queries[i % len(queries)], "k": args.k, **extra})
                    status = r.status_code
                    ok = r.status_code == 200 and len(r.json()["hits"]) == args.k
                    problem = None if ok else f"status {r.status_code}: {r.text[:200]}"
                except httpx.HTTPError as e:
                    problem = f"{type(e).__name__}: {e}"
                end = time.perf_counter()
                with lock:
                    latencies.append(end - start)
                    outcomes.append((end, status, problem))
                    if problem:
                        errors.append(problem)
                i += args.clients

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
    for t in threads:
        t.start()
    kill = None
    if kill_after:
        time.sleep(kill_after)
        killed_at = time.perf_counter()
        kill = kill_group(url, key, args.kill_group)
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    if kill is not None:
        kill.update(recovery(outcomes, killed_at))
    return {"rerank": rerank, "requests": len(latencies), "errors": len(errors), "error_samples": errors[:5], "wall_s": wall, "kill": kill,
            "throughput_rps": len(latencies) / wall, "latency_ms": {
                "p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
                "p99": float(np.percentile(ms, 99)), "max": float(ms.max()), "mean": statistics.mean(ms.tolist())}}


def recovery(outcomes: list[tuple[float, int | None, str | None]], killed_at: float) -> dict:
    """After a kill: the failed requests (status -> count, first messages) and the recovery time (s from the kill
    to the first success after the last failure; 0 when nothing failed)."""
    after = sorted(o for o in outcomes if o[0] >= killed_at)
    failed = [o for o in after if o[2]]
    statuses = Counter(str(status) for _, status, _ in failed)
    messages = list(dict.fromkeys(problem for _, _, problem in failed))[:3]
    recovered = 0.0
    if failed:
        later = [t for t, _, problem in after if problem is None and t > failed[-1][0]]
        recovered = round(later[0] - killed_at, 2) if later else None
    return {"failed": len(failed), "statuses": dict(statuses), "messages": messages, "recovered_s": recovered}


def serve_and_load(args: LoadArgs, queries: list[str], micro_batch: int, engine: str = "local") -> list[dict]:
    """One server, loaded once (the first stage), or with ``--rerank`` twice: the first stage alone, then reranked."""
    key = secrets.token_hex(16)
    options = ["--mode", args.mode, "--log_level", "warning", "--micro_batch", str(micro_batch),
               "--micro_batch_wait_ms", str(args.micro_batch_wait_ms)]
    if engine == "ray":
        options += ["--shard_groups", str(args.shard_groups)]
    if args.rerank:
        options += ["--rerank", args.rerank, "--rerank_depth", str(args.rerank_depth)]
    kill_after = args.kill_group_after if engine == "ray" else 0.0
    with serving(args.index, key, options, engine, args.address, args.startup_timeout) as url:
        rejections = check_rejections(url, key)
        runs = []
        for rerank in (False, True) if args.rerank else (False,):
            for i in range(args.warmup):
                httpx.post(f"{url}/search", json={"query": queries[i % len(queries)], "k": args.k,
                                                  **({"rerank": True} if rerank else {})},
                           headers={"X-API-Key": key}, timeout=max(120.0, args.timeout))
            runs.append({"engine": engine, "micro_batch": micro_batch, "rejections": rejections,
                         **run_load(url, key, queries, args, kill_after, rerank)})
        return runs


def describe(r: dict) -> str:
    lat = r["latency_ms"]
    stage = f", reranked top {r['rerank_depth']}" if r["rerank"] else ""
    return (f"{r['engine']}, micro_batch {r['micro_batch']}{stage}: {r['requests']} requests in {r['wall_s']:.1f} s, **{r['errors']} errors**, "
            f"{r['throughput_rps']:.1f} requests/s; latency ms p50 {lat['p50']:.1f}, p90 {lat['p90']:.1f}, "
            f"p99 {lat['p99']:.1f}, max {lat['max']:.1f}")


def main(argv) -> int:
    args = parse(LoadArgs, argv)
    from hardware import machine

    queries = list(load_queries(args.queries).values())
    settings = [0, args.micro_batch] if args.compare_batching else [args.micro_batch]
    engines = ["local", "ray"] if args.engine == "both" else [args.engine]
    runs = [run for engine in engines for mb in settings for run in serve_and_load(args, queries, mb, engine)]
    for run in runs:
        run["rerank_depth"] = args.rerank_depth if run["rerank"] else None
    result = runs[-1]
    report = {"command": "python eval/load_test.py " + " ".join(argv), "args": asdict(args), "machine": machine(),
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **result}
    lines = ["# Load test", "", f"`{report['command']}` ({report['date']}; {report['machine']['cpu']}, "
             f"{report['machine']['cores']} cores)", "", f"{args.clients} clients, k={args.k}, mode {args.mode}", ""]
    lines += [describe(r) + "\n" for r in runs]
    if args.rerank:
        report["stages"] = {"first_stage": [r for r in runs if not r["rerank"]],
                            "reranked": [r for r in runs if r["rerank"]]}
        lines += ["| search (micro_batch) | requests/s | p50 ms | p99 ms | errors |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {'reranked top ' + str(args.rerank_depth) if r['rerank'] else 'first stage'} "
                  f"({r['micro_batch']}) | {r['throughput_rps']:.2f} | {r['latency_ms']['p50']:.1f} | "
                  f"{r['latency_ms']['p99']:.1f} | {r['errors']} |" for r in runs]
        lines.append("")
    if args.compare_batching:
        off, on = [r for r in runs if r["rerank"] == bool(args.rerank)]
        report["unbatched"] = off
        report["batching_speedup"] = on["throughput_rps"] / max(off["throughput_rps"], 1e-9)
        lines.append(f"micro-batching: **x{report['batching_speedup']:.2f}** requests/s, p99 "
                     f"{on['latency_ms']['p99']:.1f} vs {off['latency_ms']['p99']:.1f} ms\n")
    if args.engine == "both":
        report["engines"] = {r["engine"]: r for r in runs}
        lines += ["| engine | requests/s | p50 ms | p99 ms | errors |", "|---|---|---|---|---|"]
        lines += [f"| {r['engine']} | {r['throughput_rps']:.1f} | {r['latency_ms']['p50']:.1f} | "
                  f"{r['latency_ms']['p99']:.1f} | {r['errors']} |" for r in runs]
        lines.append("")
    for r in runs:
        if r["kill"]:
            k = r["kill"]
            lines.append(f"killed shard group {k['group']} (shards {k['shards']}, pid {k['pid']}) at "
                         f"{args.kill_group_after:g} s: {k['failed']} failed requests {json.dumps(k['statuses'])}, "
                         f"recovered after {k['recovered_s']} s; messages: {json.dumps(k['messages'])}\n")
    lines.append(f"rejections (status): {json.dumps(result['rejections'])}\n")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "load_test.json", report)
    write_text_atomic(out / "load_test.md", "\n".join(lines))
    print("\n".join(lines))
    expected = {"no_api_key": 401, "empty_query": 422, "k_zero": 422, "index_field": 422, "oversize_body": 413}
    ok = all((r["errors"] == 0 or r["kill"] and r["kill"]["recovered_s"] is not None and
              r["errors"] == r["kill"]["failed"] and set(r["kill"]["statuses"]) <= {"503"})
             and r["rejections"] == expected for r in runs)
    return 0 if ok else 1


if __name__ == "__main__":
    run_script(main)
