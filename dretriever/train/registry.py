"""Training methods, resolved lazily by module path (a method's module is imported only when it is used).

Each method module exposes a dataclass ``ARGS`` (its own recipe fields) and a class built as
``Cls(method_args, train_args)`` that implements :class:`dretriever.train.method.Method`.
"""

from __future__ import annotations

import importlib

from ..errors import DretrieverError

METHODS = {
    "contriever": "dretriever.train.contriever:Contriever",
    "star": "dretriever.train.star:Star",
    "adore": "dretriever.train.adore:Adore",
    "tas-balanced": "dretriever.train.tas_balanced:TasBalanced",
    "cross-encoder": "dretriever.train.cross_encoder:CrossEncoder",
}


# one line each, for ``dretriever train --help``
SUMMARIES = {
    "contriever": "unsupervised: two random crops of one text are a positive pair (in-batch or MoCo negatives)",
    "star": "static hard negatives (dretriever mine) plus the other queries' positives as random negatives",
    "adore": "the query tower only, against a fixed document index, with dynamic hard negatives",
    "tas-balanced": "topic-aware, margin-balanced batches distilled from teacher scores (dretriever teacher)",
    "cross-encoder": "a reranker scoring (query, document) pairs jointly, on mined negatives (CrossEncoder folder)",
}


def resolve(name: str):
    """``name`` -> ``(method class, its ARGS dataclass)``."""
    if name not in METHODS:
        raise DretrieverError(f"method: unknown method {name!r}; choose from {sorted(METHODS)}")
    module_name, cls_name = METHODS[name].split(":")
    module = importlib.import_module(module_name)
    return getattr(module, cls_name), module.ARGS
