"""A datastore for retrieval-augmented generation: raw text in, a sharded passage index out.

Sources (JSONL, Parquet, folders of text files; see ``data/readers.py``) are streamed record by record,
split into passages (``index/chunking.py``) and handed to the foundation's sharded, resumable
``build_index`` as a :class:`~dretriever.index.build.ShardedSource`. A document goes to shard
``crc32(doc_id) % shards``; the sources are read once in all, however many shards (the build stages each
passage in its shard's doc store), nothing is held in memory beyond a batch of passages, and a repeated
document id always lands in the shard that reports it (with the ``file:line`` of both copies).
Optionally a Lucene BM25 index of the same passages, read back from the doc stores, is built in
``OUTPUT/bm25`` for the BM25 and hybrid modes of the Retriever. Metadata keys named by ``--filter_keys``
become typed, indexed doc-store columns that searches can filter on (``index/filters.py``); a value of the
wrong type is refused at its ``file:line``. A built datastore changes through ``index/changes.py``
(``dretriever datastore add / delete / compact``).
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from ..data.beir import Document
from ..data.readers import FORMATS, Fields, describe, read_records
from ..encoder import BiEncoder
from ..engine import EngineArgs
from ..errors import DataError, DretrieverError
from ..runtime import check_backend
from ..stages import stage
from ..token_batches import parse_max_tokens
from .bm25 import build_bm25_index
from .build import ShardedSource, build_index, iter_batches
from .chunking import ChunkConfig, Chunker, parent_id, passage_id
from .docstore import FILENAME as DOCSTORE
from .docstore import DocStore
from .filters import check_value, parse_filter_keys

log = logging.getLogger(__name__)
BM25_DIR = "bm25"


@dataclass
class DatastoreArgs(EngineArgs):
    sources: list[str] = field(default_factory=list, metadata={"help": "JSONL (or .jsonl.gz)/Parquet files or "
                                                                       "text-file folders (required)"})
    output: str = field(default="", metadata={"help": "datastore folder to write: manifest.json, shard-NNNNN/, bm25/ "
                                                      "(required)"})
    model: str = field(default="sentence-transformers/all-MiniLM-L6-v2",
                       metadata={"help": "encoder: a saved dretriever/sentence-transformers folder or a hub name"})
    shards: int = field(default=4, metadata={"help": "shards the datastore is split into, a count (a document's "
                                                     "passages go to shard crc32(id) % shards)"})
    factory: str = field(default="Flat", metadata={"help": "faiss factory: Flat, HNSW32, IVF1024,PQ32, ..."})
    format: str = field(default="auto", metadata={"help": "auto | jsonl | parquet | text"})
    id_field: str | None = field(default=None, metadata={"help": "id key/column (default _id, else id)"})
    text_field: str = field(default="text", metadata={"help": "JSONL key or Parquet column holding the text"})
    title_field: str = field(default="title", metadata={"help": "JSONL key or Parquet column holding the title "
                                                                "(optional in the data)"})
    chunking: str = field(default="words", metadata={"help": "none | words | tokens"})
    chunk_size: int = field(default=200, metadata={"help": "words or tokens per passage"})
    chunk_overlap: int = field(default=40, metadata={"help": "words or tokens shared by neighbouring passages"})
    batch_size: int = field(default=64, metadata={"help": "passages per encoding batch, at most"})
    precision: str = field(default="auto", metadata={"help": "encoding precision: auto (bf16 where the CPU or GPU "
                                                             "runs it natively, else fp32) | fp32 | bf16 | fp16"})
    max_tokens: str = field(default="auto", metadata={"help": "padded tokens per encoding batch: auto (1,024 on "
                                                                  "a CPU), none (batch_size texts) or N"})
    backend: str = field(default="torch", metadata={"help": "inference backend: torch | onnx (fp32 ONNX Runtime) | "
                                                             "openvino (OpenVINO: fp32, or bf16 at precision auto "
                                                             "where the CPU has it); recorded in the manifest, "
                                                             "adds and the query side use it too"})
    chunk_docs: int = field(default=512, metadata={"help": "passages encoded and written per step (memory bound)"})
    train_sample: int | None = field(default=None, metadata={"help": "passages to train IVF/PQ on, a count (default: "
                                                                    "max(50 x nlist, 10,000), at most all)"})
    keep_vectors: str = field(default="none", metadata={"help": "none | float16 | float32: keep full vectors "
                                                                 "beside each shard for exact re-ranking"})
    bm25: bool = field(default=False, metadata={"help": "also build a Lucene BM25 index of the passages "
                                                     "(each cut at 1,000,000 characters: index/bm25.py)"})
    filter_keys: str = field(default="", metadata={"help": "metadata keys to filter on, with types: "
                                                           "year:int,score:float,source (str when untyped)"})
    overwrite: bool = field(default=False, metadata={"help": "delete whatever is at --output first (without it, a "
                                                             "build with the same settings resumes or is kept, "
                                                             "another is refused)"})
    progress: bool = field(default=True, metadata={"help": "show progress bars (--progress false: none)"})

    def __post_init__(self):
        super().__post_init__()
        if not self.sources:
            raise DretrieverError("sources: name at least one JSONL/Parquet file or text folder")
        if not self.output:
            raise DretrieverError("output: name the datastore folder")
        if self.format not in FORMATS:
            raise DretrieverError(f"format: expected one of {FORMATS}, got {self.format!r}")
        if self.shards < 1:
            raise DretrieverError(f"shards: must be at least 1, got {self.shards}")
        if check_backend(self.backend) == "onnx-int8":
            raise DretrieverError("backend: onnx-int8 calibrates on a corpus sample, which `dretriever index build` "
                                  "draws; a datastore takes torch, onnx or openvino")
        self.chunk_config  # validates the chunking fields
        self.filter_key_types  # validates the filter keys

    @property
    def filter_key_types(self) -> dict[str, str]:
        return parse_filter_keys(self.filter_keys)

    @property
    def chunk_config(self) -> ChunkConfig:
        return ChunkConfig(self.chunking, self.chunk_size, self.chunk_overlap)

    @property
    def fields(self) -> Fields:
        return Fields(self.id_field, self.text_field, self.title_field)


def shard_of(doc_id: str, num_shards: int) -> int:
    return zlib.crc32(doc_id.encode("utf-8")) % num_shards


def check_metadata(rec, keys: dict[str, str]) -> None:
    """A declared filter key's value must have its type (a missing key is allowed: it matches no filter)."""
    for key, kind in keys.items():
        if rec.metadata.get(key) is not None:
            path, _, line = rec.where.rpartition(":")
            try:
                check_value(key, kind, rec.metadata[key], f"metadata {key!r}")
            except DretrieverError as e:
                raise DataError(path, str(e), int(line) if line.isdigit() else None) from None


def passage_source(args: DatastoreArgs, chunker: Chunker) -> ShardedSource:
    """The passages of every source, split into ``args.shards`` shards by document id, read in one pass."""
    keys = args.filter_key_types
    description = {
        "sources": [describe(s, args.format) for s in args.sources],
        "fields": {"id": args.id_field, "text": args.text_field, "title": args.title_field},
        "chunking": args.chunk_config.describe(),
        "sharding": "crc32(doc_id) % shards",
    }

    def rows():
        for src in args.sources:
            empty = True
            for rec in read_records(src, args.format, args.fields):
                empty = False
                check_metadata(rec, keys)
                shard = shard_of(rec.id, args.shards)
                with stage("chunk"):
                    pieces = chunker.split(rec.text)
                for j, text in enumerate(pieces):
                    yield shard, passage_id(rec.id, j), Document(rec.title, text, {**rec.metadata, "doc_id": rec.id,
                                                                                  "chunk": j}), rec.where
            if empty:
                raise DataError(src, "the source holds no documents")

    def locate(pid: str) -> tuple[str, str | None]:  # the error path of a duplicate id: find its first record
        doc_id = parent_id(pid)
        for src in args.sources:
            for rec in read_records(src, args.format, args.fields):
                if rec.id == doc_id:
                    return doc_id, rec.where
        return doc_id, None

    return ShardedSource(args.shards, lambda: iter_batches(rows()), description, locate=locate)


def build_datastore(args: DatastoreArgs, encoder: BiEncoder | None = None, trained_from: Path | None = None,
                    builder=None) -> dict:
    """Build (or resume) the datastore described by ``args``; returns its manifest. ``trained_from``: an IVF
    quantizer to reuse instead of training one (the new shards of an add); ``builder``: see ``build_index``
    (the command passes Ray's for ``--engine ray``)."""
    if encoder is None:
        with stage("load"):
            encoder = BiEncoder.from_pretrained(args.model, backend=args.backend)
    source = passage_source(args, Chunker(args.chunk_config, encoder.tokenizer))
    manifest = build_index(source, encoder, args.output, model=args.model, factory=args.factory,
                           batch_size=args.batch_size, precision=args.precision, chunk_docs=args.chunk_docs,
                           train_sample=args.train_sample, overwrite=args.overwrite, progress=args.progress,
                           keep_vectors=args.keep_vectors, filter_keys=args.filter_key_types,
                           trained_from=trained_from, max_tokens=parse_max_tokens(args.max_tokens),
                           builder=builder)
    if args.bm25:
        root = Path(args.output)
        build_bm25_from_shards(root, manifest, BM25_DIR)
        from . import manifest as mf

        manifest = mf.update_manifest(root, lambda m: m.update(bm25=BM25_DIR))
    return manifest


def live_rows(root: Path, manifest: dict):
    """``(passage id, Document)`` of every live row, shard by shard in position order (deleted rows skipped)."""
    from .tombstones import read_tombstones

    for entry in manifest["shards"]:
        deleted = set(read_tombstones(root / entry["dir"], entry.get("deleted")).tolist())
        store = DocStore(root / entry["dir"] / DOCSTORE)
        try:
            for pos, row in enumerate(store.rows()):
                if pos not in deleted:
                    yield row
        finally:
            store.close()


def build_bm25_from_shards(root: Path, manifest: dict, name: str) -> Path:
    """The Lucene index of the live passages in ``root/name`` (statistics of the whole live corpus)."""
    total = sum(e["num_docs"] - (e.get("deleted") or {}).get("count", 0) for e in manifest["shards"])
    log.info("indexing %d passages with Lucene (BM25), read from the doc stores", total)
    return build_bm25_index(live_rows(root, manifest), root / name,
                            stamp={"num_docs": total, "source": manifest["source"],
                                   "generation": manifest.get("generation", 0)})
