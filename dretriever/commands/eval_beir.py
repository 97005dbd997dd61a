"""Evaluate BM25, a dense model and their fusion on BEIR datasets through Pyserini."""

from __future__ import annotations

from ..cli import command_line, parse
from ..evaluation.beir import EvalArgs, evaluate


def main(argv) -> int:
    evaluate(parse(EvalArgs, argv), command_line())
    return 0
