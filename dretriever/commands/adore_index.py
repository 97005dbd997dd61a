"""Index an ADORE-trained model by reusing its starting index (its document tower did not change).

    dretriever adore index --index indexes/scifact.all-MiniLM-L6-v2.Flat.s4 \\
        --model outputs/adore-scifact/best --output indexes/adore/scifact.best.Flat.s4

Name ``--output`` as ``dretriever eval beir`` would (``<index_root>/<dataset>.<model folder name>.<factory>.s<shards>``)
and ``eval beir --model <model> --index_root <index_root>`` uses it without encoding the corpus.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..cli import parse
from ..train.adore import reuse_index


@dataclass
class AdoreIndexArgs:
    index: str = field(metadata={"help": "the index ADORE trained against (built with the starting model)"})
    model: str = field(metadata={"help": "the ADORE-trained model (query tower + unchanged document tower)"})
    output: str = field(metadata={"help": "new index folder (shard files linked from --index)"})


def main(argv) -> int:
    args = parse(AdoreIndexArgs, argv)
    manifest = reuse_index(args.index, args.model, args.output)
    total = sum(s["num_docs"] for s in manifest["shards"])
    print(f"{args.output}: {total} documents in {manifest['num_shards']} shards, reused from {args.index}")
    return 0
