"""Build an index from precomputed embeddings: NumPy + ids, Parquet, or Pyserini's encoded-corpus JSONL."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..cli import parse
from ..data.embeddings import EmbeddingReader
from ..index.build import build_index
from ..index.importing import embedding_source


@dataclass
class IndexImportArgs:
    input: str = field(metadata={"help": "vectors: .npy (with --ids), .parquet, or Pyserini encoded-corpus .jsonl"})
    output: str = field(metadata={"help": "index folder to write: manifest.json + shard-NNNNN/"})
    format: str = field(default="auto", metadata={"help": "auto (from the name) | npy | parquet | jsonl"})
    ids: str | None = field(default=None, metadata={"help": ".npy only: the ids, one per line, in row order "
                                                            "(required with .npy)"})
    id_column: str = field(default="id", metadata={"help": "Parquet/JSONL: the key or column holding the ids"})
    vector_column: str = field(default="vector", metadata={"help": "Parquet/JSONL: the key or column holding the "
                                                                   "vectors (lists of floats)"})
    text_column: str | None = field(default=None, metadata={"help": "Parquet: text for the doc store (default: "
                                                                     "'text' when present, else none)"})
    title_column: str | None = field(default=None, metadata={"help": "Parquet: title for the doc store (default: "
                                                                      "'title' when present, else none)"})
    model: str | None = field(default=None, metadata={"help": "the encoder that made the vectors: recorded in the "
                                                               "manifest so that text queries can be encoded; "
                                                               "without it the index answers vector queries only "
                                                               "(default: none)"})
    shards: int = field(default=4, metadata={"help": "shards the index is split into, a count (row to shard "
                                                     "crc32(id) % shards)"})
    factory: str = field(default="Flat", metadata={"help": "faiss index_factory string: Flat, HNSW32, "
                                                           "IVF1024,PQ32, ..."})
    train_sample: int | None = field(default=None, metadata={"help": "vectors to train IVF/PQ on, a count (default: "
                                                                    "max(50 x nlist, 10,000), at most all)"})
    keep_vectors: str = field(default="none", metadata={"help": "none | float16 | float32: keep full vectors beside "
                                                                 "each shard for exact re-ranking"})
    batch_rows: int = field(default=65536, metadata={"help": "rows read per batch, a count (memory bound)"})
    seed: int = field(default=0, metadata={"help": "seed of the IVF/PQ training sample"})
    overwrite: bool = field(default=False, metadata={"help": "delete whatever is at --output first (without it, a "
                                                             "build with the same settings resumes or is kept, "
                                                             "another is refused)"})
    progress: bool = field(default=True, metadata={"help": "show progress bars (--progress false: none)"})

def main(argv) -> int:
    args = parse(IndexImportArgs, argv)
    reader = EmbeddingReader(args.input, args.format, args.ids, args.id_column, args.vector_column,
                             args.text_column, args.title_column, args.batch_rows)
    encoder = None
    if args.model:
        from ..encoder import BiEncoder

        encoder = BiEncoder.from_pretrained(args.model)
    source = embedding_source(reader, args.shards)
    manifest = build_index(source, encoder, args.output, model=args.model, factory=args.factory,
                           train_sample=args.train_sample, overwrite=args.overwrite, progress=args.progress,
                           seed=args.seed, keep_vectors=args.keep_vectors)
    total = sum(s["num_docs"] for s in manifest["shards"])
    print(f"{args.output}: {total} vectors (dim {reader.dim}) in {manifest['num_shards']} shards ({args.factory})")
    return 0
