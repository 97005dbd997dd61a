"""Hot reload under load: N clients search while an add and a delete land and the server reloads each.

Starts ``dretriever serve DATASTORE`` (``eval/load_test.py``'s helpers, API key, 127.0.0.1), runs ``--clients``
threads of ``/search`` (SciFact test queries) for ``--duration`` seconds; at 1/3 of it runs
``dretriever datastore add --sources ADD`` then ``POST /admin/reload``; at 2/3 ``dretriever datastore delete --ids
IDS`` then a reload. Every answer names its generation (body ``generation`` and header
``X-Dretriever-Generation``); a response *mixes generations* when the two disagree, when a generation-0
answer holds an added document, or when an answer from the delete's generation (or later) holds a deleted
one. Reports errors, mixed responses, and p50/p99 latency before (until the add starts), during (until the
last reload returns) and after; exits 1 on any error or mixed response. The datastore is changed in place:
give it a scratch copy. When the changes take longer than ``--duration``, the load goes on until ``--after``
seconds past the last reload.

    cp -r indexes/scifact.live /tmp/live && python eval/reload_under_load.py --index /tmp/live \\
        --add data/added.jsonl --ids data/deleted.txt --clients 16 --duration 30
"""

from __future__ import annotations

import json
import os
import secrets
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
from dretriever.atomic import write_json_atomic, write_text_atomic
from dretriever.index.changes import read_ids
from dretriever.search.server import API_KEY_ENV, GENERATION_HEADER

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from eval.server_process import free_port, start_server  # noqa: E402


@dataclass
class ReloadArgs:
    index: str = field(metadata={"help": "a scratch copy of a datastore (changed in place)"})
    add: str = field(metadata={"help": "documents to add (JSONL)"})
    ids: str = field(metadata={"help": "document ids to delete, one per line"})
    queries: str = field(default_factory=lambda: os.path.join(os.environ.get("BEIR_DATA", "../shared/beir"),
                                                              "scifact", "queries.jsonl"))
    clients: int = 16
    duration: float = 30.0
    k: int = 10
    after: float = field(default=10.0, metadata={"help": "seconds of load after the last reload (the load runs "
                                                         "past --duration until then)"})
    output_dir: str = "eval/reports/reload"


def percentiles(ms: list[float]) -> dict:
    if not ms:
        return {"requests": 0}
    a = np.array(ms)
    return {"requests": len(ms), "p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)),
            "max": float(a.max())}


def main(argv) -> int:
    args = parse(ReloadArgs, argv)
    queries = list(load_queries(args.queries).values())
    added = {json.loads(line)["_id"] for line in open(args.add) if line.strip()}
    deleted = set(read_ids(args.ids))
    key, port = secrets.token_hex(16), free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(args.index, port, key, ["--log_level", "warning"])
    records: list[tuple] = []  # (start, seconds, status, generation, problem)
    events: dict[str, float] = {}
    lock = threading.Lock()
    t0 = time.perf_counter()
    stop = threading.Event()
    env = {**os.environ, API_KEY_ENV: key}

    def client(c: int):
        with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=120) as http:
            i = c
            while not stop.is_set():
                start = time.perf_counter()
                generation, problem = None, None
                try:
                    r = http.post("/search", json={"query": queries[i % len(queries)], "k": args.k})
                    if r.status_code != 200:
                        problem = f"status {r.status_code}: {r.text[:200]}"
                    else:
                        body = r.json()
                        generation = body["generation"]
                        docs = {h["doc_id"] for h in body["hits"]}
                        if str(generation) != r.headers.get(GENERATION_HEADER):
                            problem = "mixed: header and body generations differ"
                        elif len(body["hits"]) != args.k:
                            problem = f"{len(body['hits'])} hits"
                        elif generation == 0 and docs & added:
                            problem = f"mixed: generation 0 answered with added {sorted(docs & added)[:3]}"
                        elif generation >= 2 and docs & deleted:
                            problem = f"mixed: generation {generation} answered with deleted {sorted(docs & deleted)[:3]}"
                except httpx.HTTPError as e:
                    problem = f"{type(e).__name__}: {e}"
                with lock:
                    records.append((start - t0, time.perf_counter() - start, generation, problem))
                i += args.clients

    def changer():
        def run(*cmd):
            done = subprocess.run([sys.executable, "-m", "dretriever", "datastore", *cmd], env=env,
                                  capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(done.stderr[-2000:])
            return json.loads(done.stdout.strip().splitlines()[-1])

        time.sleep(args.duration / 3)
        events["add_start"] = time.perf_counter() - t0
        events["add"] = run("add", "--datastore", args.index, "--sources", args.add, "--progress", "false")
        with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=600) as http:
            events["reload_1"] = http.post("/admin/reload").json()
            events["reload_1_done"] = time.perf_counter() - t0
            time.sleep(max(0.0, 2 * args.duration / 3 - (time.perf_counter() - t0)))
            events["delete"] = run("delete", "--datastore", args.index, "--ids", args.ids)
            events["reload_2"] = http.post("/admin/reload").json()
            events["reload_2_done"] = time.perf_counter() - t0

    def stopper():
        change.join()
        time.sleep(max(args.after, args.duration - (time.perf_counter() - t0)))
        stop.set()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
    change = threading.Thread(target=changer)
    ender = threading.Thread(target=stopper)
    try:
        for t in threads + [change, ender]:
            t.start()
        for t in threads + [change, ender]:
            t.join()
    finally:
        proc.terminate()
        proc.wait(30)
    wall = time.perf_counter() - t0
    start_during, end_during = events.get("add_start", float("inf")), events.get("reload_2_done", float("inf"))
    phases = {"before": [], "during": [], "after": []}
    for start, secs, _, _ in records:
        phase = "before" if start < start_during else "during" if start < end_during else "after"
        phases[phase].append(secs * 1000)
    errors = [p for *_, p in records if p and not p.startswith("mixed")]
    mixed = [p for *_, p in records if p and p.startswith("mixed")]
    by_gen: dict[str, int] = {}
    for _, _, g, _ in records:
        by_gen[str(g)] = by_gen.get(str(g), 0) + 1
    report = {"command": "python eval/reload_under_load.py " + " ".join(argv), "args": asdict(args),
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "requests": len(records), "wall_s": wall,
              "errors": len(errors), "error_samples": errors[:5], "mixed": len(mixed), "mixed_samples": mixed[:5],
              "by_generation": by_gen, "events": events,
              "latency_ms": {name: percentiles(ms) for name, ms in phases.items()}}
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "reload_under_load.json", report)
    lat = report["latency_ms"]
    write_text_atomic(out / "reload_under_load.md", "\n".join([
        "# Hot reload under load", "", f"`{report['command']}` ({report['date']})", "",
        f"{args.clients} clients, {wall:.0f} s of load, {len(records)} requests, **{len(errors)} errors**, "
        f"**{len(mixed)} responses mixing generations**; answers per generation {json.dumps(by_gen)}", "",
        "| phase | requests | p50 ms | p99 ms |", "|---|---|---|---|",
        *[f"| {n} | {v.get('requests', 0)} | {v.get('p50', 0):.1f} | {v.get('p99', 0):.1f} |" for n, v in lat.items()],
        "", f"add: {json.dumps(events.get('add'))}", "", f"delete: {json.dumps(events.get('delete'))}", "",
        f"reloads: {json.dumps(events.get('reload_1'))} at {events.get('reload_1_done', 0):.1f} s, "
        f"{json.dumps(events.get('reload_2'))} at {events.get('reload_2_done', 0):.1f} s", ""]))
    print(json.dumps({k: v for k, v in report.items() if k != "args"}, indent=1))
    return 0 if not errors and not mixed and "reload_2" in events else 1


if __name__ == "__main__":
    run_script(main)
