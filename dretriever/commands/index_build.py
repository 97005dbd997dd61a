"""Encode a corpus into a sharded, resumable Pyserini-format FAISS index."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..cli import parse
from ..data.beir import load_corpus
from ..encoder import BiEncoder
from ..engine import EngineArgs
from ..errors import DretrieverError
from ..index.build import build_index, corpus_source
from ..quantize import DEFAULT_PASSAGES, Calibration
from ..runtime import check_backend
from ..token_batches import parse_max_tokens


@dataclass
class IndexBuildArgs(EngineArgs):
    corpus: str = field(default="", metadata={"help": "BEIR corpus.jsonl (or .jsonl.gz), or a BEIR dataset folder "
                                                       "(required)"})
    output: str = field(default="", metadata={"help": "index folder to write: manifest.json + shard-NNNNN/ "
                                                       "(required)"})
    model: str = field(default="sentence-transformers/all-MiniLM-L6-v2",
                       metadata={"help": "encoder: a saved dretriever/sentence-transformers folder or a hub name"})
    shards: int = field(default=4, metadata={"help": "shards the index is split into, a count (contiguous, nearly "
                                                     "equal ranges of the corpus)"})
    factory: str = field(default="Flat", metadata={"help": "faiss index_factory string: Flat, HNSW32, "
                                                           "IVF1024,PQ32, ..."})
    batch_size: int = field(default=64, metadata={"help": "texts per encoding batch, at most"})
    precision: str = field(default="auto", metadata={"help": "encoding precision: auto (bf16 where the CPU or GPU "
                                                             "runs it natively, else fp32) | fp32 | bf16 | fp16"})
    max_tokens: str = field(default="auto", metadata={"help": "padded tokens per encoding batch: auto (1,024 on "
                                                                  "a CPU), none (batch_size texts) or N"})
    chunk_docs: int = field(default=512, metadata={"help": "passages encoded and committed per step (a kill loses "
                                                           "at most one such chunk; memory bound)"})
    backend: str = field(default="torch", metadata={"help": "inference backend: torch | onnx (fp32 ONNX Runtime) | "
                                                             "onnx-int8 (static int8, calibrated on the corpus) | "
                                                             "openvino (OpenVINO: fp32, or bf16 at precision auto "
                                                             "where the CPU has it); recorded in the manifest, the "
                                                             "query side uses it too"})
    calibration: int = field(default=DEFAULT_PASSAGES, metadata={"help": "onnx-int8: passages drawn (seeded) from "
                                                                         "the corpus to calibrate on, a count"})
    train_sample: int | None = field(default=None, metadata={"help": "vectors to train IVF/PQ on, a count (default: "
                                                                    "max(50 x nlist, 10,000), at most all)"})
    overwrite: bool = field(default=False, metadata={"help": "delete whatever is at --output first (without it, a "
                                                             "build with the same settings resumes or is kept, "
                                                             "another is refused)"})

    def __post_init__(self):
        super().__post_init__()
        if not self.corpus or not self.output:
            raise DretrieverError("corpus and output: both are required (--corpus PATH --output FOLDER)")
        check_backend(self.backend)


def main(argv) -> int:
    args = parse(IndexBuildArgs, argv)
    path = Path(args.corpus)
    if path.is_dir():
        path = path / "corpus.jsonl"
    corpus = load_corpus(path)
    calibration = None
    if args.backend == "onnx-int8":
        calibration = Calibration.sample([doc.contents for doc in corpus.values()], args.calibration)
    encoder = BiEncoder.from_pretrained(args.model, backend=args.backend, calibration=calibration)
    builder = None
    if args.engine == "ray":
        from ..ray.build import ray_builder

        builder = ray_builder(args, backend=args.backend)
    source = corpus_source(corpus, args.shards, {"path": str(Path(corpus.path).resolve())})
    manifest = build_index(source, encoder, args.output, model=args.model, factory=args.factory,
                           batch_size=args.batch_size, precision=args.precision, chunk_docs=args.chunk_docs,
                           train_sample=args.train_sample, overwrite=args.overwrite,
                           max_tokens=parse_max_tokens(args.max_tokens), builder=builder)
    total = sum(s["num_docs"] for s in manifest["shards"])
    print(f"{args.output}: {total} documents in {manifest['num_shards']} shards ({args.factory})")
    return 0
