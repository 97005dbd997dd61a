"""Score a datastore through the Retriever API on a BEIR split (the ``scifact.datastore-flat`` regression).

Retrieves the top-k passages for every judged query with ``Retriever.batch_search``, keeps each
document's best passage under its document id, drops hits equal to the query id (Pyserini's
``--remove-query``), scores with Pyserini's trec_eval and records the row for ``dretriever regress``
(``$DRETRIEVER_RESULTS``), exactly like ``dretriever eval beir``.

``--engine ray`` scores the same datastore through the Ray Serve application instead: it starts
``dretriever serve INDEX --engine ray`` on a free port of 127.0.0.1 (a fresh local Ray cluster, or the one at
``--address``) and sends the queries to ``/batch_search`` (``--batch`` per request), so a regression entry checks
the served answers. ``--engine local`` (default) uses the Retriever in this process.

    dretriever datastore build --sources ${BEIR_DATA}/scifact/corpus.jsonl --output indexes/scifact.datastore-flat \
        --chunking none --shards 4 --factory Flat
    python eval/datastore_beir.py --index indexes/scifact.datastore-flat --data ${BEIR_DATA}/scifact
    python eval/datastore_beir.py --index indexes/scifact.datastore-flat --data ${BEIR_DATA}/scifact \
        --precision fp32 --engine ray [--shard_groups 2]
"""

from __future__ import annotations

import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path

from dretriever.cli import command_line, parse, run_script
from dretriever.data.beir import load_beir
from dretriever.evaluation.beir import score_and_record
from dretriever.errors import DretrieverError
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
    engine: str = field(default="local", metadata={"help": "local (the Retriever here) | ray (through the Ray "
                                                           "Serve app's /batch_search over HTTP)"})
    address: str | None = field(default=None, metadata={"help": "engine ray: the cluster (default: a fresh "
                                                              "local one)"})
    shard_groups: int = field(default=0, metadata={"help": "engine ray: the server's --shard_groups (0: default)"})
    batch: int = field(default=16, metadata={"help": "engine ray: queries per /batch_search request"})
    max_queries: int = field(default=0, metadata={"help": "score only the first N queries (0: all; a quick "
                                                          "check, not a regression figure)"})


def main(argv) -> int:
    args = parse(DatastoreEvalArgs, argv)
    ds = load_beir(args.data, split=args.split)
    if args.max_queries:
        ds.queries = dict(list(ds.queries.items())[:args.max_queries])
        ds.qrels = {q: ds.qrels[q] for q in ds.queries if q in ds.qrels}
    if args.engine == "ray":
        run = remove_query_ids(served_run(args, ds.queries))
    else:
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


def served_run(args: DatastoreEvalArgs, queries: dict[str, str]) -> dict:
    """The run of ``Retriever.run`` (each document's best passage under its id), from the Ray Serve app."""
    import httpx

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from server_process import serving

    key = secrets.token_hex(16)
    options = ["--mode", args.mode, "--precision", args.precision, "--max_k", str(max(args.k, 1000)),
               "--max_batch", str(args.batch), "--max_body_bytes", str(64 << 20), "--log_level", "warning",
               "--shard_groups", str(args.shard_groups), "--rescore", str(args.rerank)]
    if args.nprobe:
        options += ["--nprobe", str(args.nprobe)]
    qids = list(queries)
    run = {}
    with serving(args.index, key, options, "ray", args.address) as url, \
            httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=600) as http:
        for start in range(0, len(qids), args.batch):
            chunk = qids[start:start + args.batch]
            r = http.post("/batch_search", json={"queries": [queries[q] for q in chunk], "k": args.k,
                                                 "mode": args.mode})
            if r.status_code != 200:
                raise DretrieverError(f"/batch_search answered {r.status_code}: {r.text[:500]}")
            for qid, hits in zip(chunk, r.json()["results"]):
                seen, row = set(), []
                for h in hits:
                    if h["doc_id"] not in seen:
                        seen.add(h["doc_id"])
                        row.append((h["doc_id"], h["score"]))
                run[qid] = row
    return run


if __name__ == "__main__":
    run_script(main)
