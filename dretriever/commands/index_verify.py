"""Check every file of every shard against the sha256 recorded in the manifest (opening checks sizes only)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..cli import parse
from ..index import manifest as mf


@dataclass
class IndexVerifyArgs:
    index: str = field(metadata={"help": "index folder (manifest.json + shard-NNNNN/)"})


def main(argv) -> int:
    args = parse(IndexVerifyArgs, argv)
    root = Path(args.index)
    manifest = mf.read_manifest(root)
    bad = 0
    for entry in manifest["shards"]:
        problem = mf.shard_problem(root, entry, full=True)
        bad += problem is not None
        print(f"{entry['dir']}: {problem or 'ok'}")
    if not manifest.get("complete"):
        print(f"{root}: the build is not complete")
        bad += 1
    print(f"{root}: {'all shards verified' if not bad else f'{bad} problem(s)'}")
    return 1 if bad else 0
