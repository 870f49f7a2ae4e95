"""Retrieval metrics over documents: recall@k, MRR, nDCG@k (binary relevance).

Rankings are per query, best first: a list of doc ids, or a list of ``Hit`` (their ``doc_id`` is used; a
document's later windows are ignored, so a document counts once at its best rank). Queries with no relevant
document are left out of the averages (their metric is undefined).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Sequence
from typing import Any

from indexer.errors import IndexInputError

__all__ = ["evaluate_retrieval", "mrr", "ndcg_at_k", "recall_at_k"]

logger = logging.getLogger(__name__)


def _doc_ranking(ranking: Sequence[Any]) -> list[str]:
    seen: dict[str, None] = {}
    for item in ranking:
        doc = item if isinstance(item, str) else getattr(item, "doc_id", None)
        if doc is None:
            raise IndexInputError(f"rankings must hold doc id strings or hits, found {type(item).__name__}")
        seen.setdefault(doc, None)
    return list(seen)


def _pairs(rankings: Sequence[Sequence[Any]], relevant: Sequence[Collection[str]]) -> list[tuple[list[str], set[str]]]:
    if len(rankings) != len(relevant):
        raise IndexInputError(f"rankings has {len(rankings)} queries but relevant has {len(relevant)}; they must align")
    if any(isinstance(r, str) for r in relevant):
        raise IndexInputError("relevant must hold one collection of doc ids per query, e.g. [{'d1'}, {'d7', 'd9'}]")
    pairs = [(_doc_ranking(r), set(rel)) for r, rel in zip(rankings, relevant, strict=True) if len(rel)]
    if not pairs:
        raise IndexInputError("no query has a relevant document: the metrics are undefined")
    if len(pairs) < len(rankings):
        logger.info("%d of %d queries have no relevant document and are left out", len(rankings) - len(pairs),
                    len(rankings))
    return pairs


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise IndexInputError(f"k must be a positive int, got {k!r}")
    return k


def recall_at_k(rankings: Sequence[Sequence[Any]], relevant: Sequence[Collection[str]], k: int) -> float:
    """Mean over queries of |relevant documents in the top k| / |relevant documents|."""
    k = _check_k(k)
    pairs = _pairs(rankings, relevant)
    return sum(len(set(r[:k]) & rel) / len(rel) for r, rel in pairs) / len(pairs)


def mrr(rankings: Sequence[Sequence[Any]], relevant: Sequence[Collection[str]], k: int | None = None) -> float:
    """Mean reciprocal rank of the first relevant document (0 when none is in the top ``k``; all when None)."""
    if k is not None:
        k = _check_k(k)
    pairs = _pairs(rankings, relevant)
    total = 0.0
    for ranking, rel in pairs:
        for rank, doc in enumerate(ranking[:k] if k else ranking, start=1):
            if doc in rel:
                total += 1.0 / rank
                break
    return total / len(pairs)


def ndcg_at_k(rankings: Sequence[Sequence[Any]], relevant: Sequence[Collection[str]], k: int) -> float:
    """Mean nDCG@k with binary relevance: DCG = sum of 1/log2(rank+1) over relevant hits, over the ideal DCG."""
    k = _check_k(k)
    pairs = _pairs(rankings, relevant)
    total = 0.0
    for ranking, rel in pairs:
        dcg = sum(1.0 / math.log2(rank + 1) for rank, doc in enumerate(ranking[:k], start=1) if doc in rel)
        ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(k, len(rel)) + 1))
        total += dcg / ideal
    return total / len(pairs)


def evaluate_retrieval(
    index: Any,
    queries: Sequence[str] | Any,
    relevant: Sequence[Collection[str]],
    *,
    k: int = 10,
    **search_kwargs: Any,
) -> dict[str, float]:
    """Search ``index`` (a ``PassageIndex``) with ``queries`` and score the document rankings.

    ``queries``: a list of str (needs the index's encoder) or a 2-D array of query vectors. Extra keyword
    arguments go to ``index.search`` (``labels=``, ``mode="hybrid"``...); ``per_doc`` is 1 so that ``k`` counts
    documents. Returns {"recall@k", "mrr@k", "ndcg@k", "queries"}.
    (Retrieval metrics of an index; a classifier's labels are scored by ``LongDocClassifier.evaluate``.)
    """
    k = _check_k(k)
    search_kwargs.setdefault("per_doc", 1)
    results = index.search(queries, k=k, **search_kwargs)
    return {
        f"recall@{k}": recall_at_k(results, relevant, k),
        f"mrr@{k}": mrr(results, relevant, k),
        f"ndcg@{k}": ndcg_at_k(results, relevant, k),
        "queries": float(len(results)),
    }
