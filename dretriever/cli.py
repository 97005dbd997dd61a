"""``dretriever <command>``: each subcommand is a thin ``main(argv)`` in its own module.

Arguments are dataclasses parsed by ``transformers.HfArgumentParser``; a single ``.yaml`` argument
is read as a config file (``dretriever train recipes/star.yaml``).
"""

from __future__ import annotations

import importlib
import logging
import shlex
import sys
from typing import Sequence

from .errors import DretrieverError

# name -> (module with main(argv), one-line help). The module is imported only when its command runs.
COMMANDS = {
    "index build": ("dretriever.commands.index_build", "encode a corpus into a sharded, resumable FAISS index"),
    "index import": ("dretriever.commands.index_import", "build an index from precomputed embeddings (npy, parquet, jsonl)"),
    "index merge": ("dretriever.commands.index_merge", "merge an index's shards into one (Pyserini-loadable)"),
    "index verify": ("dretriever.commands.index_verify", "check every shard file against its sha256"),
    "eval beir": ("dretriever.commands.eval_beir", "evaluate BM25, dense and hybrid on BEIR through Pyserini"),
    "regress": ("dretriever.commands.regress", "rerun eval/regressions.yaml entries and fail on a miss"),
    "train": ("dretriever.commands.train", "train a retriever from a recipe (contriever, star, adore, tas-balanced)"),
    "mine": ("dretriever.commands.mine", "mine static hard negatives from an index"),
    "adore index": ("dretriever.commands.adore_index", "index an ADORE model by reusing its starting index"),
    "teacher": ("dretriever.commands.teacher", "write teacher scores (bi-encoder, BM25, fusion, cross-encoder)"),
    "datastore build": ("dretriever.commands.datastore_build", "raw text -> passages -> sharded index"),
    "datastore add": ("dretriever.commands.datastore_add", "add or replace documents (new shards, new generation)"),
    "datastore delete": ("dretriever.commands.datastore_delete", "delete documents by id (tombstones)"),
    "datastore compact": ("dretriever.commands.datastore_compact", "rewrite shards without their deleted rows"),
    "serve": ("dretriever.commands.serve", "serve an index over HTTP (FastAPI + uvicorn)"),
}


def parse(dataclass_type, argv: Sequence[str]):
    """Parse ``argv`` (or one YAML file) into ``dataclass_type`` with HfArgumentParser."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(dataclass_type)
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        (args,) = parser.parse_yaml_file(argv[0])
    else:
        try:
            (args,) = parser.parse_args_into_dataclasses(args=list(argv))
        except ValueError as e:  # "Some specified arguments are not used": an unknown option, a usage error
            raise DretrieverError(str(e)) from None
    return args


def command_line() -> str:
    return "dretriever " + shlex.join(sys.argv[1:])


def run_script(main) -> None:
    """``run_script(main)`` ends an ``eval/`` script: a DretrieverError prints ``error: ...`` and exits 2."""
    try:
        code = main(sys.argv[1:])
    except DretrieverError as e:
        print(f"error: {e}", file=sys.stderr)
        code = 2
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss").setLevel(logging.WARNING)
    for words in (2, 1):
        name = " ".join(argv[:words])
        if name in COMMANDS:
            module = importlib.import_module(COMMANDS[name][0])
            try:
                return int(module.main(argv[words:]) or 0)
            except DretrieverError as e:
                print(f"dretriever {name}: error: {e}", file=sys.stderr)
                return 2
            except Exception as e:  # noqa: BLE001 - a full disk (three exception types) is the user's to fix
                from .disk_full import disk_full_message, is_disk_full

                if not is_disk_full(e):
                    raise
                print(f"dretriever {name}: error: {disk_full_message(e, argv[words:])}", file=sys.stderr)
                return 2
    print("usage: dretriever <command> [options]   (--help after a command for its options)\n\ncommands:",
          file=sys.stderr)
    for name, (_, help_text) in COMMANDS.items():
        print(f"  {name:16s} {help_text}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
