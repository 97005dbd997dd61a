"""``TrainArgs``: the loop's own fields of a recipe, and parsing of ``method + loop + method-args`` recipes.

A recipe is one YAML mapping: ``method: <name>``, the loop's fields below and the method's own fields
(its ``ARGS`` dataclass). Both dataclasses are parsed together by ``transformers.HfArgumentParser``, so a
misspelt or unknown key, a value of the wrong type or an invalid value fails at start, naming the field.
Command-line ``--field value`` pairs after the recipe override it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

from ..errors import DretrieverError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SCHEDULERS = ("linear", "constant", "cosine")


def _looks_like_path(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~")) or os.sep + os.sep in value


@dataclass
class TrainArgs:
    method: str = field(default="", metadata={"help": "contriever | star | adore | tas-balanced | cross-encoder "
                                                      "(required, here or in the recipe)"})
    model: str = field(default="sentence-transformers/all-MiniLM-L6-v2",
                       metadata={"help": "starting encoder: a saved dretriever/sentence-transformers folder or a hub "
                                         "name"})
    output_dir: str = field(default="", metadata={"help": "folder for checkpoints/, final/, best/, log.jsonl "
                                                          "(required)"})
    data: str = field(default="", metadata={"help": "BEIR dataset folder (corpus.jsonl, queries.jsonl, qrels/)"})
    train_split: str = field(default="train", metadata={"help": "qrels split the labelled methods train on"})
    # optimisation
    lr: float = field(default=2e-5, metadata={"help": "peak learning rate of AdamW, after warm-up"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay coefficient, unitless (biases "
                                                                "and norms: none)"})
    epochs: int = field(default=1, metadata={"help": "passes over the training queries (or the corpus), a count"})
    max_steps: int = field(default=-1, metadata={"help": "optimizer steps in all; > 0 overrides epochs"})
    stop_after_steps: int = field(default=0, metadata={"help": "end (evaluate, checkpoint, save) after this many "
                                                                "optimizer steps without changing the schedule "
                                                                "(0: off)"})
    batch_size: int = field(default=32, metadata={"help": "queries (or pairs) per process per micro-batch"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    warmup: float = field(default=0.1, metadata={"help": "warm-up: a fraction of all steps if < 1, else optimizer "
                                                         "steps"})
    scheduler: str = field(default="linear", metadata={"help": "linear | constant | cosine (after warm-up)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping, the largest L2 norm of all "
                                                                "gradients; 0 disables"})
    precision: str = field(default="auto", metadata={"help": "autocast: auto (bf16 where the CPU or GPU runs it "
                                                             "natively, else fp32) | fp32 | bf16 | fp16"})
    grad_cache_chunk: int = field(default=0, metadata={"help": "gradient cache: encode in chunks of this many "
                                                                 "texts (0: off)"})
    untie: bool = field(default=False, metadata={"help": "separate query and document towers"})
    dropout: float | None = field(default=None, metadata={"help": "dropout probability while training (default: "
                                                                   "the model's; 0: none, ~2x faster on CPU bf16)"})
    query_max_length: int | None = field(default=None, metadata={"help": "query truncation, in tokens (default: the "
                                                                         "model's; saved with it)"})
    doc_max_length: int | None = field(default=None, metadata={"help": "document truncation, in tokens (default: "
                                                                       "the model's; saved with it)"})
    train_query_max_length: int | None = field(default=None, metadata={"help": "query truncation while training "
                                                                              "only, in tokens; dev evaluation and "
                                                                              "the saved model keep the model's "
                                                                              "(default: the model's)"})
    train_doc_max_length: int | None = field(default=None, metadata={"help": "likewise for documents, in tokens "
                                                                            "(default: the model's)"})
    seed: int = field(default=42, metadata={"help": "seed of every random choice (torch, numpy, samplers)"})
    # checkpoints, logging, evaluation
    save_steps: int = field(default=0, metadata={"help": "checkpoint every N optimizer steps (0: each epoch end)"})
    save_total_limit: int = field(default=2, metadata={"help": "checkpoints kept, a count (oldest removed)"})
    resume: bool = field(default=True, metadata={"help": "continue from the last checkpoint in output_dir"})
    log_steps: int = field(default=1, metadata={"help": "write a log line every N optimizer steps"})
    log_file: str = field(default="", metadata={"help": "JSONL log (default: output_dir/log.jsonl)"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar (--progress false: none)"})
    eval_steps: int = field(default=0, metadata={"help": "dev evaluation every N optimizer steps (0: each epoch "
                                                         "end)"})
    eval_at_start: bool = field(default=True, metadata={"help": "evaluate the starting model on dev first"})
    dev_queries: int = field(default=0, metadata={"help": "train queries carved off as the dev split (0: none); "
                                                          "with dev_split: that many of its queries (0: all)"})
    dev_split: str = field(default="", metadata={"help": "qrels split judging checkpoints (e.g. dev: the dataset's "
                                                         "qrels/dev.tsv); '' carves dev_queries off train_split"})
    dev_corpus: int = field(default=2000, metadata={"help": "documents in the dev corpus (0: the whole corpus)"})
    dev_negatives: str = field(default="", metadata={"help": "mined negatives whose top dev_candidates per dev "
                                                              "query join the dev corpus (default: none)"})
    dev_candidates: int = field(default=10, metadata={"help": "mined negatives per dev query joining the dev corpus, "
                                                              "in documents"})
    eval_batch_size: int = field(default=64, metadata={"help": "texts per encoding batch in dev evaluation, at most"})

    def __post_init__(self):
        def bad(name, why):
            raise DretrieverError(f"{name}: {why}")

        if not self.method:
            bad("method", "missing; choose from contriever, star, adore, tas-balanced, cross-encoder")
        if not self.output_dir:
            bad("output_dir", "missing")
        if not self.lr > 0:
            bad("lr", f"must be positive, got {self.lr}")
        if self.weight_decay < 0:
            bad("weight_decay", f"must be >= 0, got {self.weight_decay}")
        if self.epochs <= 0 and self.max_steps <= 0:
            bad("epochs", "must be positive (or set max_steps)")
        for name in ("batch_size", "grad_accum", "log_steps", "eval_batch_size"):
            if getattr(self, name) <= 0:
                bad(name, f"must be positive, got {getattr(self, name)}")
        for name in ("stop_after_steps", "save_steps", "eval_steps", "dev_queries", "dev_corpus", "dev_candidates", "grad_cache_chunk",
                     "save_total_limit"):
            if getattr(self, name) < 0:
                bad(name, f"must be >= 0, got {getattr(self, name)}")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            bad("dropout", f"must be in [0, 1), got {self.dropout}")
        if self.warmup < 0:
            bad("warmup", f"must be >= 0, got {self.warmup}")
        if self.max_grad_norm < 0:
            bad("max_grad_norm", f"must be >= 0, got {self.max_grad_norm}")
        if self.precision not in PRECISIONS:
            bad("precision", f"expected one of {PRECISIONS}, got {self.precision!r}")
        if self.scheduler not in SCHEDULERS:
            bad("scheduler", f"expected one of {SCHEDULERS}, got {self.scheduler!r}")
        for name in ("query_max_length", "doc_max_length", "train_query_max_length", "train_doc_max_length"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                bad(name, f"must be positive, got {v}")
        if self.data and not Path(self.data).is_dir():
            bad("data", f"dataset folder {self.data!r} not found")
        if _looks_like_path(self.model) and not Path(self.model).expanduser().exists():
            bad("model", f"{self.model!r} not found")
        if self.dev_negatives and not Path(self.dev_negatives).is_file():
            bad("dev_negatives", f"file {self.dev_negatives!r} not found")
        if self.dev_split:
            if self.dev_split == self.train_split:
                bad("dev_split", f"{self.dev_split!r} is train_split; choose another split (e.g. dev)")
            if not self.data:
                bad("dev_split", "needs data (a BEIR dataset folder)")
            if not (Path(self.data) / "qrels" / f"{self.dev_split}.tsv").is_file():
                bad("dev_split", f"{Path(self.data) / 'qrels' / (self.dev_split + '.tsv')} not found")

    @property
    def has_dev(self) -> bool:
        """Whether checkpoints are judged on a dev split (carved from train_split, or dev_split)."""
        return bool(self.dev_queries or self.dev_split)

    @property
    def log_path(self) -> Path:
        return Path(self.log_file) if self.log_file else Path(self.output_dir) / "log.jsonl"


def check_file(name: str, value: str, required: bool = True) -> None:
    """For methods' ``__post_init__``: fail naming ``name`` when the file ``value`` is missing."""
    if not value:
        if required:
            raise DretrieverError(f"{name}: missing")
        return
    if not Path(value).is_file():
        raise DretrieverError(f"{name}: file {value!r} not found")


def _to_argv(mapping: dict[str, Any]) -> list[str]:
    argv: list[str] = []
    for key, value in mapping.items():
        if value is None:
            continue
        argv.append(f"--{key}")
        if isinstance(value, bool):
            argv.append(str(value).lower())
        elif isinstance(value, (list, tuple)):
            argv.extend(str(v) for v in value)
        else:
            argv.append(str(value))
    return argv


USAGE = "%(prog)s [RECIPE.yaml] [--method METHOD] [--field value ...]"


def methods_help() -> str:
    """The methods, one line each, and where their own options are listed."""
    from .registry import SUMMARIES

    lines = [f"  {name:13s} {text}" for name, text in SUMMARIES.items()]
    return ("A recipe (YAML) names the method and sets fields; --field value pairs after it override them.\n\n"
            "methods:\n" + "\n".join(lines) + "\n\nThe options below are shared by every method; "
            "`dretriever train --method NAME --help` adds that method's own.")


def parse_recipe(argv: Sequence[str]):
    """``[recipe.yaml] [--field value ...]`` -> ``(TrainArgs, method_args, method_class)``."""
    import yaml
    from transformers import HfArgumentParser

    from ..cli import argument_parser
    from .registry import SUMMARIES, resolve

    argv = list(argv)
    mapping: dict[str, Any] = {}
    if argv and argv[0].endswith((".yaml", ".yml")):
        path = Path(argv.pop(0))
        if not path.is_file():
            raise DretrieverError(f"recipe: file {str(path)!r} not found")
        mapping = yaml.safe_load(path.read_text()) or {}
        if not isinstance(mapping, dict):
            raise DretrieverError(f"{path}: a recipe must be a YAML mapping of field: value")
    method = mapping.get("method")
    if "--method" in argv:
        i = argv.index("--method")
        method = argv[i + 1] if i + 1 < len(argv) else None
    if not method and ("-h" in argv or "--help" in argv):
        argument_parser(TrainArgs, usage=USAGE, description=methods_help()).print_help()
        raise SystemExit(0)
    if not method:
        raise DretrieverError("method: missing; choose from contriever, star, adore, tas-balanced, cross-encoder")
    method_cls, args_cls = resolve(str(method))

    class Parser(HfArgumentParser):
        def error(self, message):  # argparse would exit; name the field in an exception instead
            raise DretrieverError(message.replace("argument --", "field "))

    parser = argument_parser([TrainArgs, args_cls], parser_class=Parser, usage=USAGE,
                             description=f"method {method}: {SUMMARIES[str(method)]}")
    known = {f.name for f in fields(TrainArgs)} | {f.name for f in fields(args_cls)}
    unknown = [k for k in mapping if k not in known]
    if unknown:
        raise DretrieverError(f"unknown field(s) {unknown} for method {method!r}")
    try:
        train_args, method_args, rest = parser.parse_args_into_dataclasses(
            args=_to_argv(mapping) + argv, return_remaining_strings=True)
    except (TypeError, ValueError) as e:
        raise DretrieverError(str(e)) from None
    if rest:
        raise DretrieverError(f"unknown argument(s) {rest}")
    return train_args, method_args, method_cls
