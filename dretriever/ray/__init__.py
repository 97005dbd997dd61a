"""dretriever on Ray, past one machine: the same shards, manifest, doc stores and HTTP API, run by Ray.

- ``ray/build.py``: ``datastore build`` / ``index build`` with ``--engine ray``: Ray Data encodes the staged
  chunks with a pool of stateful encoder actors; shards are finished by Ray tasks.
- ``ray/serve.py``: ``serve --engine ray``: a Ray Serve application whose deployments are ``ray/encoder.py``
  (query encoder), ``ray/shards.py`` (shard groups), ``ray/lexical.py`` (BM25), ``ray/rerank.py`` (cross-encoder)
  and its ingress, whose ``ray/backend.py`` fans each request out to them.

This package imports the single-machine pieces and never the reverse; Ray is an optional extra
(``pip install 'dretriever[ray]'``) and without it only ``--engine ray`` is refused.
"""

from __future__ import annotations

import logging
import os

from ..errors import DretrieverError

log = logging.getLogger(__name__)

def require_ray():
    """The ``ray`` module, or a clear error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise DretrieverError("engine: 'ray' needs Ray; install it with: pip install 'dretriever[ray]'") from None
    return ray


def connect(address: str | None = None):
    """Join the Ray cluster at ``address`` (``auto``: the one started on this node with ``ray start``; ``None``:
    ``RAY_ADDRESS`` if set, else a local cluster started for this process). Returns the ``ray`` module."""
    ray = require_ray()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        kwargs = {} if address else {"include_dashboard": False}
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True, **kwargs)
        log.info("ray: connected to %s (%s)", address or "a local cluster", ray.cluster_resources())
    return ray
