"""Check every file of every shard against the sha256 recorded in the manifest (opening checks sizes only), and
an ``onnx-int8`` index's calibration passages against theirs (the query side needs them to quantise alike)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..cli import parse
from ..errors import DretrieverError
from ..index import manifest as mf
from ..quantize import Calibration


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
    recorded = (manifest.get("encoder") or {}).get("calibration")
    if recorded:
        try:
            Calibration.read(root / recorded["file"]).check(recorded, root)
            print(f"{recorded['file']}: ok")
        except DretrieverError as e:
            print(f"{recorded['file']}: {e}")
            bad += 1
    if not manifest.get("complete"):
        print(f"{root}: the build is not complete")
        bad += 1
    print(f"{root}: {'all shards verified' if not bad else f'{bad} problem(s)'}")
    return 1 if bad else 0
