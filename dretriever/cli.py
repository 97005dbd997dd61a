"""``dretriever <command>``: each subcommand is a thin ``main(argv)`` in its own module.

Arguments are dataclasses parsed by ``transformers.HfArgumentParser``; a single ``.yaml`` argument
is read as a config file (``dretriever train recipes/star.yaml``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import shlex
import sys
from typing import Sequence

from . import __version__
from .errors import DretrieverError

_command = ""  # the command running (``index build``), named in its usage line

# name -> (module with main(argv), one-line help). The module is imported only when its command runs.
COMMANDS = {
    "index build": ("dretriever.commands.index_build", "encode a corpus into a sharded, resumable FAISS index"),
    "index import": ("dretriever.commands.index_import", "build an index from precomputed embeddings (npy, parquet, jsonl)"),
    "index merge": ("dretriever.commands.index_merge", "merge an index's shards into one (Pyserini-loadable)"),
    "index verify": ("dretriever.commands.index_verify", "check every shard file against its sha256"),
    "eval beir": ("dretriever.commands.eval_beir", "evaluate BM25, dense and hybrid on BEIR through Pyserini"),
    "regress": ("dretriever.commands.regress", "rerun eval/regressions.yaml entries and fail on a miss"),
    "compare": ("dretriever.commands.compare", "paired tests of runs or per-query scores against a baseline"),
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


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, stated once: ``(default: X)`` is added unless the text already
    gives it (``default: ...``) or calls the option required; a required option says ``(required)``. A
    description is printed as written."""

    def _get_help_string(self, action):
        text = (action.help or "").replace("%", "%%")  # a literal % ("crc32(id) % shards"), not a format
        if isinstance(action, argparse._StoreFalseAction):  # HfArgumentParser's --no_X of a field X defaulting true
            return f"the same as --{action.dest} false"
        if not text or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        if "default:" in text or "(default " in text or "required" in text:
            return text
        if action.required:
            return f"{text} (required)"
        return f"{text} (default: {shown(action.default).replace('%', '%%')})"


def shown(value) -> str:
    """A default as a user types it: none, true/false, '' and space-separated lists."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value)) if value else "none"
    return str(value) if value != "" else "''"


def argument_parser(dataclass_types, parser_class=None, **kw):
    """The HfArgumentParser of the running command: usage reads ``dretriever <command> ...``, defaults shown once."""
    from transformers import HfArgumentParser

    kw.setdefault("prog", f"dretriever {_command}" if _command else None)
    return (parser_class or HfArgumentParser)(dataclass_types, formatter_class=HelpFormatter, **kw)


def parse(dataclass_type, argv: Sequence[str]):
    """Parse ``argv`` (or one YAML file) into ``dataclass_type`` with HfArgumentParser."""
    parser = argument_parser(dataclass_type)
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
    global _command
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss").setLevel(logging.WARNING)
    for words in (2, 1):
        name = " ".join(argv[:words])
        if name in COMMANDS:
            _command = name
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
    if argv in (["--version"], ["-V"]):
        print(f"dretriever {__version__}")
        return 0
    wanted = argv[:1] in (["-h"], ["--help"])
    out = sys.stdout if wanted else sys.stderr
    print(f"usage: dretriever <command> [options]   (dretriever <command> --help: its options)\n"
          f"       dretriever --version\n\ncommands:", file=out)
    for name, (_, help_text) in COMMANDS.items():
        print(f"  {name:17s} {help_text}", file=out)
    return 0 if wanted else 2


if __name__ == "__main__":
    sys.exit(main())
