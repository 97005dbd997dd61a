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
    output: str = field(metadata={"help": "index folder (manifest.json + shard-NNNNN/)"})
    format: str = field(default="auto", metadata={"help": "auto | npy | parquet | jsonl"})
    ids: str | None = field(default=None, metadata={"help": ".npy only: the ids, one per line, in row order"})
    id_column: str = "id"
    vector_column: str = "vector"
    text_column: str | None = field(default=None, metadata={"help": "Parquet: text for the doc store (default 'text' "
                                                                     "when present)"})
    title_column: str | None = None
    model: str | None = field(default=None, metadata={"help": "the encoder that made the vectors: recorded in the "
                                                               "manifest so that text queries can be encoded; "
                                                               "without it the index answers vector queries only"})
    shards: int = 4
    factory: str = field(default="Flat", metadata={"help": "faiss index_factory string"})
    train_sample: int | None = field(default=None, metadata={"help": "vectors to train IVF/PQ on"})
    keep_vectors: str = field(default="none", metadata={"help": "none | float16 | float32 (exact re-ranking)"})
    batch_rows: int = 65536
    seed: int = 0
    overwrite: bool = False
    progress: bool = True


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
