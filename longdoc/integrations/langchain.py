"""A LangChain retriever over a longdoc index or a running ``longdoc serve`` (``pip install 'longdoc[langchain]'``).

    from longdoc.integrations.langchain import LongdocRetriever

    retriever = LongdocRetriever("index/", k=5, labels=["1"])                    # a local index directory
    retriever = LongdocRetriever(url="http://127.0.0.1:8000", token="s3cret")  # a running server
    docs = retriever.invoke("how do I change file permissions")
    docs[0].page_content, docs[0].metadata["doc_id"], docs[0].metadata["char_start"], docs[0].metadata["score"]

Each hit is a ``Document`` whose ``page_content`` is the passage text, whose ``id`` is ``"<doc_id>:<start>-<end>"``
and whose ``metadata`` is its provenance (``longdoc.integrations.source.hit_metadata``).
"""

from __future__ import annotations

import os
from typing import Any

from longdoc.integrations.source import SearchOptions, SearchResult, SearchSource, hit_id, hit_metadata

try:
    from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever
    from pydantic import Field, PrivateAttr
except ImportError as exc:
    raise ImportError("longdoc.integrations.langchain needs langchain-core: pip install 'longdoc[langchain]' "
                      f"(or pip install langchain-core); {exc}") from exc

__all__ = ["LongdocRetriever", "to_documents"]


def to_documents(result: SearchResult) -> list[Document]:
    """The hits of ``result`` as LangChain documents (passage text, stable id, provenance metadata)."""
    return [Document(page_content=hit["text"], id=hit_id(hit), metadata=hit_metadata(hit, result))
            for hit in result.hits]


class LongdocRetriever(BaseRetriever):
    """The passages of a longdoc index that best match a query, as LangChain ``Document`` objects.

    Give exactly one of ``index`` (an index directory, loaded now read-only with the query encoder it records,
    or the encoder of ``model``, on ``device``; or a loaded ``PassageIndex`` / ``ShardedPassageIndex`` with an
    encoder) and ``url`` (the base URL of ``longdoc serve``, with its bearer ``token`` and a ``timeout`` in
    seconds). The search: ``k`` hits, only documents with one of ``labels``, ``mode`` ``"dense"`` or
    ``"hybrid"``, ``per_doc`` windows per document (None: rank windows), ``doc_score`` ``"top2_first"`` or
    ``"max"``; these may be changed on the object between calls and are checked at each search.

    Bad arguments raise the library's errors (``IndexInputError``, ``ConfigError``, ``ModelLoadError``), not
    pydantic's; a server's refusal (e.g. a wrong token) is raised with the server's message.
    """

    index: Any = Field(default=None, frozen=True, description="an index directory or a loaded index")
    url: str | None = Field(default=None, frozen=True, description="the base URL of a running `longdoc serve`")
    token: str | None = Field(default=None, frozen=True, repr=False, description="the server's bearer token")
    timeout: float = Field(default=30.0, frozen=True, strict=True, description="seconds per HTTP request")
    model: str | None = Field(default=None, frozen=True, description="the query encoder's model directory")
    device: str | None = Field(default=None, frozen=True, description="where a local index encodes queries")
    k: int = Field(default=5, strict=True, description="hits per query")  # strict: True or 2.0 is not 1 or 2
    labels: list[str] | str | None = Field(default=None, description="only documents with one of these labels")
    mode: str = Field(default="dense", description="'dense' or 'hybrid'")
    per_doc: int | None = Field(default=1, strict=True, description="windows per document; None ranks windows")
    doc_score: str | None = Field(default=None, description="'top2_first' (default) or 'max'")

    _source: SearchSource = PrivateAttr()

    def __init__(self, index: str | os.PathLike[str] | Any = None, **data: Any) -> None:
        if isinstance(index, os.PathLike):
            index = os.fspath(index)
        super().__init__(index=index, **data)
        self.options()  # the library's error for a bad k, mode, ... now, not at the first search
        self._source = SearchSource(self.index, url=self.url, token=self.token, timeout=self.timeout,
                                    model=self.model, device=self.device)

    def options(self) -> SearchOptions:
        """The search options this retriever's fields make now."""
        return SearchOptions(k=self.k, labels=self.labels, mode=self.mode, per_doc=self.per_doc,
                             doc_score=self.doc_score)

    @property
    def source(self) -> SearchSource:
        """Where the hits come from (``source.index`` is the local index, None for a server)."""
        return self._source

    def close(self) -> None:
        """Close the HTTP client, and the index when this retriever loaded it."""
        self._source.close()

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        return to_documents(self._source.search(query, self.options()))

    async def _aget_relevant_documents(self, query: str, *,
                                       run_manager: AsyncCallbackManagerForRetrieverRun) -> list[Document]:
        return to_documents(await self._source.asearch(query, self.options()))
