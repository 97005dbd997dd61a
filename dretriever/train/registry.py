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
}


def resolve(name: str):
    """``name`` -> ``(method class, its ARGS dataclass)``."""
    if name not in METHODS:
        raise DretrieverError(f"method: unknown method {name!r}; choose from {sorted(METHODS)}")
    module_name, cls_name = METHODS[name].split(":")
    module = importlib.import_module(module_name)
    return getattr(module, cls_name), module.ARGS
