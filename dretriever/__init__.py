"""dretriever: train dense retrievers, build sharded Pyserini-format FAISS indexes, evaluate, serve.

``from dretriever import Retriever`` is the retrieval API (``dretriever.search.retriever``), imported on first
use so that ``import dretriever`` stays light (no torch, faiss or FastAPI until needed).
"""

__version__ = "0.1.0"
__all__ = ["Retriever", "Hit", "DretrieverError"]


def __getattr__(name: str):
    if name in ("Retriever", "Hit"):
        from .search import retriever

        return getattr(retriever, name)
    if name == "DretrieverError":
        from .errors import DretrieverError

        return DretrieverError
    raise AttributeError(f"module 'dretriever' has no attribute {name!r}")
