"""Raw text (JSONL, Parquet, text folders) -> passages -> a sharded, resumable datastore index."""

from __future__ import annotations

from ..cli import parse
from ..index.datastore import DatastoreArgs, build_datastore


def main(argv) -> int:
    args = parse(DatastoreArgs, argv)
    builder = None
    if args.engine == "ray":
        from ..ray.build import ray_builder

        builder = ray_builder(args, backend=args.backend)
    manifest = build_datastore(args, builder=builder)
    total = sum(s["num_docs"] for s in manifest["shards"])
    extra = " + BM25" if args.bm25 else ""
    print(f"{args.output}: {total} passages in {manifest['num_shards']} shards ({args.factory}{extra})")
    return 0
