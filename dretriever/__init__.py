"""dretriever: train dense retrievers, build sharded Pyserini-format FAISS indexes, evaluate, serve."""

__version__ = "0.1.0"
