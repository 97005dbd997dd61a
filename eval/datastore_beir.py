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

from dataclasses import dataclass, field
from pathlib import Path

from dretriever.cli import command_line, parse, run_script
from dretriever.data.beir import load_beir
from dretriever.evaluation.beir import score_and_record
from dretriever.evaluation.metrics import METRICS, write_trec_qrels
from dretriever.search.retriever import Retriever
from dretriever.search.types import remove_query_ids


@dataclass
class DatastoreEvalArgs:
    index: str = field(metadata={"help": "datastore folder built by `dretriever datastore build`"})
    data: str = field(metadata={"help": "BEIR dataset folder"})
    split: str = "test"
    mode: str = "dense"
    k: int = 1000
    output_dir: str = "runs/datastore-eval"
    system: str = "datastore-dense"
    nprobe: int | None = field(default=None, metadata={"help": "IVF lists probed per query"})
    rerank: int = field(default=0, metadata={"help": "re-score the top-R approximate candidates exactly from the "
                                                     "vectors kept on disk (datastore built with --keep_vectors)"})
    precision: str = field(default="auto", metadata={"help": "query encoding: auto | fp32 | bf16 | fp16"})


def main(argv) -> int:
    args = parse(DatastoreEvalArgs, argv)
    ds = load_beir(args.data, split=args.split)
    retriever = Retriever.load(args.index, mode=args.mode, precision=args.precision)
    retriever.index.set_search_params(rerank=args.rerank, **({"nprobe": args.nprobe} if args.nprobe else {}))
    run = remove_query_ids(retriever.run(ds.queries, k=args.k))
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    qrels_path = out / f"{ds.name}.{args.split}.qrels"
    write_trec_qrels(ds.qrels, qrels_path)
    command = "python eval/datastore_beir.py " + command_line().removeprefix("dretriever ")
    scores = score_and_record(ds.name, args.system, run, qrels_path, out, command)
    scores = {k: v for k, v in scores.items() if k in METRICS.values()}
    print(" ".join(f"{k}={v:.4f}" for k, v in scores.items()), f"({ds.name}, {len(run)} queries, {args.index})")
    return 0


if __name__ == "__main__":
    run_script(main)
