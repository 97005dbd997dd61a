"""``dretriever datastore add | delete | compact``: change a built datastore, one new generation per change.

Each prints a JSON report (generation, counts, seconds) and exits 0; bad input exits 2 with the reason. See
``dretriever/index/changes.py`` (what each change does) and ``index/generations.py`` (journal, lock, GC).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..cli import parse
from ..errors import DretrieverError
from ..index import changes
from ..index.generations import KEEP


@dataclass
class ChangeArgs:
    datastore: str = field(default="", metadata={"help": "the datastore folder, holding manifest.json (required)"})
    wait: bool = field(default=False, metadata={"help": "wait for another writer instead of refusing"})
    abort_pending: bool = field(default=False, metadata={"help": "drop an interrupted change instead of refusing"})
    keep_generations: int = field(default=KEEP, metadata={"help": "generations whose files are kept, a count "
                                                                  "(>= 1)"})

    def __post_init__(self):
        if not self.datastore:
            raise DretrieverError("datastore: name the datastore folder")
        if self.keep_generations < 1:
            raise DretrieverError(f"keep_generations: must be at least 1, got {self.keep_generations}")


@dataclass
class AddArgs(ChangeArgs):
    sources: list[str] = field(default_factory=list, metadata={"help": "JSONL (or .jsonl.gz)/Parquet files or text "
                                                                       "folders (required)"})
    format: str = field(default="auto", metadata={"help": "auto | jsonl | parquet | text"})
    shards: int = field(default=1, metadata={"help": "new shards for these documents, a count"})
    model: str | None = field(default=None, metadata={"help": "the encoder (default: the manifest's; another "
                                                                "one is refused)"})
    batch_size: int = field(default=64, metadata={"help": "passages per encoding batch, at most"})
    precision: str = field(default="auto", metadata={"help": "encoding precision: auto (bf16 where the CPU or GPU "
                                                             "runs it natively, else fp32) | fp32 | bf16 | fp16"})
    chunk_docs: int = field(default=512, metadata={"help": "passages encoded and written per step (memory bound)"})
    progress: bool = field(default=True, metadata={"help": "show progress bars (--progress false: none)"})

    def __post_init__(self):
        super().__post_init__()
        if not self.sources:
            raise DretrieverError("sources: name at least one JSONL/Parquet file or text folder")


@dataclass
class DeleteArgs(ChangeArgs):
    ids: str = field(default="", metadata={"help": "file of document ids, one per line (required)"})

    def __post_init__(self):
        super().__post_init__()
        if not self.ids:
            raise DretrieverError("ids: name the file of document ids to delete")


def _print(report) -> int:
    print(json.dumps(report.to_dict()))
    return 0


def add(argv) -> int:
    a = parse(AddArgs, argv)
    return _print(changes.add_documents(a.datastore, a.sources, a.format, a.shards, a.model, a.batch_size,
                                        a.precision, a.chunk_docs, a.progress, a.keep_generations, a.wait,
                                        a.abort_pending))


def delete(argv) -> int:
    a = parse(DeleteArgs, argv)
    return _print(changes.delete_documents(a.datastore, a.ids, a.keep_generations, a.wait, a.abort_pending))


def compact(argv) -> int:
    a = parse(ChangeArgs, argv)
    return _print(changes.compact(a.datastore, a.keep_generations, a.wait, a.abort_pending))
