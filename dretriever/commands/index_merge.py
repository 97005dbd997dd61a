"""Merge the shards of an index into one shard (IVF shards share their trained quantizer; Flat; not HNSW)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..cli import parse
from ..index.merge import merge_index


@dataclass
class IndexMergeArgs:
    index: str = field(metadata={"help": "index folder to merge"})
    output: str = field(metadata={"help": "new index folder with one shard (loads in Pyserini's FaissSearcher)"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing folder at --output (without it, "
                                                             "one is refused)"})


def main(argv) -> int:
    args = parse(IndexMergeArgs, argv)
    manifest = merge_index(args.index, args.output, overwrite=args.overwrite)
    print(f"{args.output}: {manifest['shards'][0]['num_docs']} vectors in one shard "
          f"({manifest['faiss']['factory']}); Pyserini loads {args.output}/shard-00000")
    return 0
