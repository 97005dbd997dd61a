"""Score a datastore through the Retriever API on a BEIR split (the ``scifact.datastore-flat`` regression).

Retrieves the top-k passages for every judged query with ``Retriever.batch_search``, keeps each
document's best passage under its document id, drops hits equal to the query id (Pyserini's
``--remove-query``), scores with Pyserini's trec_eval and records the row for ``dretriever regress``
(``$DRETRIEVER_RESULTS``), exactly like ``dretriever eval beir``.

    dretriever datastore build --sources ${BEIR_DATA}/scifact/corpus.jsonl --output indexes/scifact.datastore-flat \
        --chunking none --shards 4 --factory Flat
    python eval/datastore_beir.py --index indexes/scifact.datastore-flat --data ${BEIR_DATA}/scifact
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from dretriever.cli import command_line, parse
from dretriever.data.beir import load_beir
from dretriever.errors import DretrieverError
from dretriever.evaluation.beir import _record
from dretriever.evaluation.metrics import score_run, write_trec_qrels
from dretriever.search.retriever import Retriever
from dretriever.search.types import remove_query_ids, write_trec_run


@dataclass
class DatastoreEvalArgs:
    index: str = field(metadata={"help": "datastore folder built by `dretriever datastore build`"})
    data: str = field(metadata={"help": "BEIR dataset folder"})
    split: str = "test"
    mode: str = "dense"
    k: int = 1000
    output_dir: str = "runs/datastore-eval"
    system: str = "datastore-dense"


def main(argv) -> int:
    args = parse(DatastoreEvalArgs, argv)
    ds = load_beir(args.data, split=args.split)
    retriever = Retriever.load(args.index, mode=args.mode)
    run = remove_query_ids(retriever.run(ds.queries, k=args.k))
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    qrels_path, run_path = out / f"{ds.name}.{args.split}.qrels", out / f"{ds.name}.{args.system}.trec"
    write_trec_qrels(ds.qrels, qrels_path)
    write_trec_run(run, run_path, tag=args.system)
    scores = score_run(qrels_path, run_path)
    row = {"dataset": ds.name, "system": args.system, **scores, "command": "python eval/datastore_beir.py "
           + command_line().removeprefix("dretriever "), "run": str(run_path)}
    _record(row)
    print(" ".join(f"{k}={v:.4f}" for k, v in scores.items()), f"({ds.name}, {len(run)} queries, {args.index})")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except DretrieverError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
