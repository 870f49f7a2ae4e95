"""A LlamaIndex retriever over a longdoc index or a running ``longdoc serve`` (``pip install 'longdoc[llamaindex]'``).

    from longdoc.integrations.llamaindex import LongdocRetriever

    retriever = LongdocRetriever("index/", k=5, labels=["1"])                    # a local index directory
    retriever = LongdocRetriever(url="http://127.0.0.1:8000", token="s3cret")  # a running server
    nodes = retriever.retrieve("how do I change file permissions")
    nodes[0].score, nodes[0].node.text, nodes[0].node.metadata["doc_id"], nodes[0].node.ref_doc_id

Each hit is a ``NodeWithScore`` holding a ``TextNode``: the passage text, the id ``"<doc_id>:<start>-<end>"``,
``start_char_idx`` / ``end_char_idx``, a SOURCE relationship to the document (``node.ref_doc_id``) and its
provenance as metadata (``longdoc.integrations.source.hit_metadata``). Only ``doc_id`` of that metadata goes
into the text an LLM or an embedding model sees (``get_content(metadata_mode=...)``).
"""

from __future__ import annotations

import os
from typing import Any

from longdoc.integrations.source import (
    SearchOptions,
    SearchResult,
    SearchSource,
    check_query,
    hit_id,
    hit_metadata,
)

try:
    from llama_index.core.callbacks import CallbackManager
    from llama_index.core.retrievers import BaseRetriever
    from llama_index.core.schema import (
        NodeRelationship,
        NodeWithScore,
        QueryBundle,
        RelatedNodeInfo,
        TextNode,
    )
except ImportError as exc:
    raise ImportError("longdoc.integrations.llamaindex needs llama-index-core: pip install 'longdoc[llamaindex]' "
                      f"(or pip install llama-index-core); {exc}") from exc

__all__ = ["LongdocRetriever", "to_nodes"]


def to_nodes(result: SearchResult) -> list[NodeWithScore]:
    """The hits of ``result`` as LlamaIndex nodes with their scores."""
    out = []
    for hit in result.hits:
        metadata = hit_metadata(hit, result)
        hidden = [key for key in metadata if key != "doc_id"]
        node = TextNode(
            id_=hit_id(hit), text=hit["text"], metadata=metadata,
            start_char_idx=hit["char_start"], end_char_idx=hit["char_end"],
            relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=str(hit["doc_id"]))},
            excluded_llm_metadata_keys=hidden, excluded_embed_metadata_keys=list(metadata),
        )
        out.append(NodeWithScore(node=node, score=float(hit["score"])))
    return out


class LongdocRetriever(BaseRetriever):
    """The passages of a longdoc index that best match a query, as LlamaIndex ``NodeWithScore`` objects.

    Give exactly one of ``index`` (an index directory, loaded now read-only with the query encoder it records,
    or the encoder of ``model``, on ``device``; or a loaded ``PassageIndex`` / ``ShardedPassageIndex`` with an
    encoder) and ``url`` (the base URL of ``longdoc serve``, with its bearer ``token`` and a ``timeout`` in
    seconds). The search: ``k`` hits, only documents with one of ``labels``, ``mode`` ``"dense"`` or
    ``"hybrid"``, ``per_doc`` windows per document (None: rank windows), ``doc_score`` ``"top2_first"`` or
    ``"max"``; ``retriever.options`` holds them (a ``SearchOptions``; assign a new one to change them).

    Bad arguments raise the library's errors (``IndexInputError``, ``ConfigError``, ``ModelLoadError``); a
    server's refusal (e.g. a wrong token) is raised with the server's message.
    """

    def __init__(
        self,
        index: str | os.PathLike[str] | Any = None,
        *,
        url: str | None = None,
        token: str | None = None,
        timeout: float = 30.0,
        k: int = 5,
        labels: str | list[str] | None = None,
        mode: str = "dense",
        per_doc: int | None = 1,
        doc_score: str | None = None,
        model: str | os.PathLike[str] | None = None,
        device: str | None = None,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
    ) -> None:
        self.options = SearchOptions(k=k, labels=labels, mode=mode, per_doc=per_doc, doc_score=doc_score)
        self.source = SearchSource(index, url=url, token=token, timeout=timeout, model=model, device=device)
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    def close(self) -> None:
        """Close the HTTP client, and the index when this retriever loaded it."""
        self.source.close()

    def retrieve(self, str_or_query_bundle: str | QueryBundle) -> list[NodeWithScore]:
        """The nodes of the query's hits; a query that is not a str with words (or a ``QueryBundle``) is an
        ``IndexInputError`` before LlamaIndex's events see it."""
        _check_query_or_bundle(str_or_query_bundle)
        return super().retrieve(str_or_query_bundle)

    async def aretrieve(self, str_or_query_bundle: str | QueryBundle) -> list[NodeWithScore]:
        _check_query_or_bundle(str_or_query_bundle)
        return await super().aretrieve(str_or_query_bundle)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return to_nodes(self.source.search(query_bundle.query_str, self.options))

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return to_nodes(await self.source.asearch(query_bundle.query_str, self.options))


def _check_query_or_bundle(query: Any) -> None:
    check_query(query.query_str if isinstance(query, QueryBundle) else query)
