"""RSS of each Ray Serve shard-group replica: does a replica hold only its shards?

Imports ``--vectors`` seeded random unit vectors (384 dimensions, ``--shards`` Flat shards, MiniLM recorded as the
encoder) with ``dretriever index import``, then for each ``--groups`` serves the index with
``dretriever serve --engine ray --shard_groups G``, sends three searches (each touches every vector of every
shard: Flat) and reads every replica's RSS from ``/health``. A replica holding only its shards grows by its
shards' bytes (``vectors x 1,536 B / G``) over the base process (Ray worker, torch, faiss).

    python eval/ray_replica_rss.py --vectors 1000000 --shards 4 --groups 1 2 4
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from server_process import serving  # noqa: E402

from dretriever.cli import parse, run_script  # noqa: E402
from dretriever.atomic import write_text_atomic  # noqa: E402


@dataclass
class RssArgs:
    vectors: int = 1_000_000
    shards: int = 4
    groups: list[int] = field(default_factory=lambda: [1, 2, 4])
    output_dir: str = "eval/reports/ray"


def main(argv) -> int:
    args = parse(RssArgs, argv)
    work = Path(tempfile.mkdtemp(prefix="ray_rss_"))
    rng = np.random.default_rng(0)
    v = rng.standard_normal((args.vectors, 384), dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    np.save(work / "v.npy", v)
    (work / "ids.txt").write_text("".join(f"p{i}\n" for i in range(args.vectors)))
    del v
    subprocess.run([sys.executable, "-m", "dretriever.cli", "index", "import", "--input", str(work / "v.npy"), "--ids",
                    str(work / "ids.txt"), "--output", str(work / "idx"), "--shards", str(args.shards), "--model",
                    "sentence-transformers/all-MiniLM-L6-v2", "--progress", "false"], check=True)
    key = secrets.token_hex(16)
    headers = {"X-API-Key": key}
    rows = []
    for groups in args.groups:
        with serving(str(work / "idx"), key, ["--shard_groups", str(groups), "--precision", "fp32",
                                              "--log_level", "warning"], "ray", None, 600) as url:
            for q in ("protein folding", "vitamin d and bone density", "gene expression in cancer"):
                r = httpx.post(f"{url}/search", json={"query": q, "k": 10}, headers=headers, timeout=300)
                r.raise_for_status()
            for d in httpx.get(f"{url}/health", headers=headers, timeout=60).json()["details"]:
                rows.append({"groups": groups, **{k: d[k] for k in ("group", "shards", "passages", "rss_bytes")}})
                print(json.dumps(rows[-1]), flush=True)
    shard_mib = args.vectors * 384 * 4 / 2**20
    lines = [f"# RSS per shard-group replica ({args.vectors:,} x 384 Flat vectors, {args.shards} shards, "
             f"{shard_mib:.0f} MiB of vectors)", "", f"`python eval/ray_replica_rss.py {' '.join(argv)}`", "",
             "| groups | group | shards | passages | RSS after 3 searches (MiB) | its shards' vectors (MiB) |",
             "|---:|---:|---|---:|---:|---:|"]
    lines += [f"| {r['groups']} | {r['group']} | {r['shards']} | {r['passages']:,} | {r['rss_bytes'] / 2**20:.0f} | "
              f"{r['passages'] * 384 * 4 / 2**20:.0f} |" for r in rows]
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "replica_rss.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    run_script(main)
