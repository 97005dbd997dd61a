"""Load test of the real server on 127.0.0.1: N concurrent clients for a bounded time and request count.

Starts ``dretriever serve INDEX`` on a free local port with a fresh API key, checks that the 401/413/422
cases answer as they should, then runs ``--clients`` threads, each sending ``/search`` requests (SciFact
test queries, round robin) until ``--duration`` seconds or ``--max_requests`` requests in all. Reports
errors, throughput and latency percentiles (JSON + Markdown) and exits 1 if any request failed.
``--compare_batching true`` does it twice in one run, the server's micro-batching off and then on, and
reports the requests/s ratio and both latency profiles.

    nice -n 10 python eval/load_test.py --index indexes/scifact.datastore-flat --clients 16 --duration 30 \
        --compare_batching true
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np

from dretriever.cli import parse, run_script
from dretriever.data.beir import load_queries
from dretriever.errors import DretrieverError
from dretriever.index.atomic import write_json_atomic, write_text_atomic
from dretriever.search.server import API_KEY_ENV


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
    micro_batch_wait_ms: float = 2.0
    compare_batching: bool = field(default=False, metadata={"help": "run the server with micro-batching off, "
                                                                   "then on, in this one run; print the ratio"})
    output_dir: str = "eval/reports/search"

    def __post_init__(self):
        if not 0 < self.duration <= 600 or self.max_requests < 1 or self.clients < 1:
            raise DretrieverError("duration must lie in (0, 600], max_requests and clients must be positive")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: LoadArgs, port: int, key: str, micro_batch: int) -> subprocess.Popen:
    env = {**os.environ, API_KEY_ENV: key}
    proc = subprocess.Popen([sys.executable, "-m", "dretriever", "serve", args.index, "--host", "127.0.0.1",
                             "--port", str(port), "--mode", args.mode, "--log_level", "warning",
                             "--micro_batch", str(micro_batch), "--micro_batch_wait_ms", str(args.micro_batch_wait_ms)],
                            env=env)
    deadline = time.time() + args.startup_timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise DretrieverError(f"the server exited with status {proc.returncode} before answering")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", headers={"X-API-Key": key}, timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.5)
    proc.terminate()
    raise DretrieverError(f"the server did not answer /health within {args.startup_timeout} s")


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


def run_load(url: str, key: str, queries: list[str], args: LoadArgs) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    sent = 0
    deadline = time.perf_counter() + args.duration

    def client(c: int):
        nonlocal sent
        with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=60) as http:
            i = c
            while time.perf_counter() < deadline:
                with lock:
                    if sent >= args.max_requests:
                        return
                    sent += 1
                start = time.perf_counter()
                try:
                    r = http.post("/search", json={"query": queries[i % len(queries)], "k": args.k})
                    ok = r.status_code == 200 and len(r.json()["hits"]) == args.k
                    problem = None if ok else f"status {r.status_code}: {r.text[:200]}"
                except httpx.HTTPError as e:
                    problem = f"{type(e).__name__}: {e}"
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
                    if problem:
                        errors.append(problem)
                i += args.clients

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {"requests": len(latencies), "errors": len(errors), "error_samples": errors[:5], "wall_s": wall,
            "throughput_rps": len(latencies) / wall, "latency_ms": {
                "p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
                "p99": float(np.percentile(ms, 99)), "max": float(ms.max()), "mean": statistics.mean(ms.tolist())}}


def serve_and_load(args: LoadArgs, queries: list[str], micro_batch: int) -> dict:
    key, port = secrets.token_hex(16), free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(args, port, key, micro_batch)
    try:
        rejections = check_rejections(url, key)
        return {"micro_batch": micro_batch, "rejections": rejections, **run_load(url, key, queries, args)}
    finally:
        proc.terminate()
        proc.wait(30)


def describe(r: dict) -> str:
    lat = r["latency_ms"]
    return (f"micro_batch {r['micro_batch']}: {r['requests']} requests in {r['wall_s']:.1f} s, **{r['errors']} errors**, "
            f"{r['throughput_rps']:.1f} requests/s; latency ms p50 {lat['p50']:.1f}, p90 {lat['p90']:.1f}, "
            f"p99 {lat['p99']:.1f}, max {lat['max']:.1f}")


def main(argv) -> int:
    args = parse(LoadArgs, argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from hardware import machine

    queries = list(load_queries(args.queries).values())
    settings = [0, args.micro_batch] if args.compare_batching else [args.micro_batch]
    runs = [serve_and_load(args, queries, mb) for mb in settings]
    result = runs[-1]
    report = {"command": "python eval/load_test.py " + " ".join(argv), "args": asdict(args), "machine": machine(),
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **result}
    lines = ["# Load test", "", f"`{report['command']}` ({report['date']}; {report['machine']['cpu']}, "
             f"{report['machine']['cores']} cores)", "", f"{args.clients} clients, k={args.k}, mode {args.mode}", ""]
    lines += [describe(r) + "\n" for r in runs]
    if args.compare_batching:
        off, on = runs
        report["unbatched"] = off
        report["batching_speedup"] = on["throughput_rps"] / max(off["throughput_rps"], 1e-9)
        lines.append(f"micro-batching: **x{report['batching_speedup']:.2f}** requests/s, p99 "
                     f"{on['latency_ms']['p99']:.1f} vs {off['latency_ms']['p99']:.1f} ms\n")
    lines.append(f"rejections (status): {json.dumps(result['rejections'])}\n")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "load_test.json", report)
    write_text_atomic(out / "load_test.md", "\n".join(lines))
    print("\n".join(lines))
    expected = {"no_api_key": 401, "empty_query": 422, "k_zero": 422, "index_field": 422, "oversize_body": 413}
    ok = all(r["errors"] == 0 and r["rejections"] == expected for r in runs)
    return 0 if ok else 1


if __name__ == "__main__":
    run_script(main)
