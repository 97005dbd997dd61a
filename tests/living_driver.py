"""The change sequence of tests/test_living.py as one resumable process, for the kill -9 test.

``python -m tests.living_driver OUT MODEL DATA [STEPS]`` builds OUT from DATA/base.jsonl, adds DATA/added.jsonl, deletes
the ids in DATA/deleted.txt and re-adds DATA/readded.jsonl. ``OUT.steps`` records each finished step; a rerun
skips those and reruns the interrupted one (which finishes a pending change from its journal, or repeats an
add that had published before its step was recorded: the same documents replace themselves, the corpus is
the same).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dretriever.atomic import write_json_atomic
from dretriever.index.changes import add_documents, delete_documents
from dretriever.index.datastore import DatastoreArgs, build_datastore


def main(out: str, model: str, data: str, only: str = "build,add,delete,readd", bm25: str = "true") -> None:
    out_path, data = Path(out), Path(data)
    marker = out_path.with_name(out_path.name + ".steps")
    done = json.loads(marker.read_text()) if marker.is_file() else []
    steps = {
        "build": lambda: build_datastore(DatastoreArgs(
            sources=[str(data / "base.jsonl")], output=out, model=model, shards=3, precision="fp32", progress=False,
            chunking="words", chunk_size=120, chunk_overlap=20, chunk_docs=64, bm25=bm25 == "true")),
        "add": lambda: add_documents(out, [str(data / "added.jsonl")], shards=2, precision="fp32", chunk_docs=64,
                                     progress=False),
        "delete": lambda: delete_documents(out, data / "deleted.txt"),
        "readd": lambda: add_documents(out, [str(data / "readded.jsonl")], precision="fp32", chunk_docs=64,
                                       progress=False),
    }
    for name, step in steps.items():
        if name in done or name not in only.split(","):
            continue
        step()
        done.append(name)
        write_json_atomic(marker, done)


if __name__ == "__main__":
    main(*sys.argv[1:])
