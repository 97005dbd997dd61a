"""LangChain adapter (optional extra ``dretriever[langchain]``): a ``BaseRetriever`` over a :class:`Retriever`.

    from dretriever.search.langchain import DretrieverRetriever
    docs = DretrieverRetriever.load("indexes/NAME", k=5).invoke("what causes anemia?")
"""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document as LCDocument
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict

from .retriever import Retriever


class DretrieverRetriever(BaseRetriever):
    """Each hit becomes a LangChain ``Document``: ``page_content`` is the passage text, the rest is metadata."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    retriever: Any
    k: int = 4
    mode: str | None = None

    @classmethod
    def load(cls, index_dir: str, k: int = 4, mode: str | None = None, **load_kw) -> "DretrieverRetriever":
        return cls(retriever=Retriever.load(index_dir, **load_kw), k=k, mode=mode)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[LCDocument]:
        return [LCDocument(page_content=h.text, id=h.id,
                           metadata={**h.metadata, "id": h.id, "doc_id": h.doc_id, "title": h.title,
                                     "score": h.score, "shard": h.shard})
                for h in self.retriever.search(query, self.k, self.mode)]
