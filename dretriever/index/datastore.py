"""A datastore for retrieval-augmented generation: raw text in, a sharded passage index out.

Sources (JSONL, Parquet, folders of text files; see ``data/readers.py``) are streamed record by record,
split into passages (``index/chunking.py``) and handed to the foundation's sharded, resumable
``build_index`` as a :class:`~dretriever.index.build.ShardedSource`. A document goes to shard
``crc32(doc_id) % shards``: each shard is one pass over the sources, nothing is held in memory beyond a
chunk of passages, and a repeated document id always lands in the shard that reports it (with the
``file:line`` of both copies). Optionally a Lucene BM25 index of the same passages is built in
``OUTPUT/bm25`` for the BM25 and hybrid modes of the Retriever.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

from ..data.beir import Document
from ..data.readers import FORMATS, Fields, describe, read_records
from ..encoder import BiEncoder
from ..errors import DataError, DretrieverError
from ..search.bm25 import build_bm25_index
from .build import ShardedSource, build_index
from .chunking import ChunkConfig, Chunker, passage_id

log = logging.getLogger(__name__)
BM25_DIR = "bm25"


@dataclass
class DatastoreArgs:
    sources: list[str] = field(default_factory=list, metadata={"help": "JSONL/Parquet files or text-file folders"})
    output: str = field(default="", metadata={"help": "datastore folder (manifest.json, shard-NNNNN/, bm25/)"})
    model: str = "sentence-transformers/all-MiniLM-L6-v2"
    shards: int = 4
    factory: str = field(default="Flat", metadata={"help": "faiss factory: Flat, HNSW32, IVF1024,PQ32, ..."})
    format: str = field(default="auto", metadata={"help": "auto | jsonl | parquet | text"})
    id_field: str | None = field(default=None, metadata={"help": "id key/column (default _id, else id)"})
    text_field: str = "text"
    title_field: str = "title"
    chunking: str = field(default="words", metadata={"help": "none | words | tokens"})
    chunk_size: int = field(default=200, metadata={"help": "words or tokens per passage"})
    chunk_overlap: int = field(default=40, metadata={"help": "words or tokens shared by neighbouring passages"})
    batch_size: int = 64
    precision: str = "auto"
    chunk_docs: int = field(default=512, metadata={"help": "passages encoded and written per step (memory bound)"})
    train_sample: int | None = field(default=None, metadata={"help": "passages to train IVF/PQ on"})
    bm25: bool = field(default=False, metadata={"help": "also build a Lucene BM25 index of the passages"})
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self):
        if not self.sources:
            raise DretrieverError("sources: name at least one JSONL/Parquet file or text folder")
        if not self.output:
            raise DretrieverError("output: name the datastore folder")
        if self.format not in FORMATS:
            raise DretrieverError(f"format: expected one of {FORMATS}, got {self.format!r}")
        if self.shards < 1:
            raise DretrieverError(f"shards: must be at least 1, got {self.shards}")
        self.chunk_config  # validates the chunking fields

    @property
    def chunk_config(self) -> ChunkConfig:
        return ChunkConfig(self.chunking, self.chunk_size, self.chunk_overlap)

    @property
    def fields(self) -> Fields:
        return Fields(self.id_field, self.text_field, self.title_field)


def shard_of(doc_id: str, num_shards: int) -> int:
    return zlib.crc32(doc_id.encode("utf-8")) % num_shards


def passage_source(args: DatastoreArgs, chunker: Chunker) -> ShardedSource:
    """The passages of every source, split into ``args.shards`` shards by document id."""
    for src in args.sources:
        if next(iter(read_records(src, args.format, args.fields)), None) is None:
            raise DataError(src, "the source holds no documents")
    description = {
        "sources": [describe(s, args.format) for s in args.sources],
        "fields": {"id": args.id_field, "text": args.text_field, "title": args.title_field},
        "chunking": args.chunk_config.describe(),
        "sharding": "crc32(doc_id) % shards",
    }

    def docs(i: int):
        seen: dict[str, str] = {}
        for src in args.sources:
            for rec in read_records(src, args.format, args.fields):
                if shard_of(rec.id, args.shards) != i:
                    continue
                if rec.id in seen:
                    raise DataError(rec.where, f"duplicate document id {rec.id!r} (first at {seen[rec.id]})")
                seen[rec.id] = rec.where
                for j, text in enumerate(chunker.split(rec.text)):
                    yield passage_id(rec.id, j), Document(rec.title, text, {**rec.metadata, "doc_id": rec.id,
                                                                            "chunk": j})

    return ShardedSource(args.shards, docs, description)


def build_datastore(args: DatastoreArgs, encoder: BiEncoder | None = None) -> dict:
    """Build (or resume) the datastore described by ``args``; returns its manifest."""
    encoder = encoder or BiEncoder.from_pretrained(args.model)
    source = passage_source(args, Chunker(args.chunk_config, encoder.tokenizer))
    manifest = build_index(source, encoder, args.output, model=args.model, factory=args.factory,
                           batch_size=args.batch_size, precision=args.precision, chunk_docs=args.chunk_docs,
                           train_sample=args.train_sample, overwrite=args.overwrite, progress=args.progress)
    if args.bm25:
        total = sum(s["num_docs"] for s in manifest["shards"])
        log.info("indexing %d passages with Lucene (BM25)", total)
        passages = chain.from_iterable(source.docs(i) for i in range(source.num_shards))
        build_bm25_index(passages, Path(args.output) / BM25_DIR,
                         stamp={"num_docs": total, "source": manifest["source"]})
    return manifest
