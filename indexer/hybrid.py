"""Lexical retrieval (BM25 through ``bm25s``) and its fusion with the dense ranking.

Two BM25 indexes are derived from the passage table, built on the first hybrid search that needs them and rebuilt
after any change (never saved, so they can never disagree with the saved table): one over the window texts (same
row order; window results, ``per_doc=None``) and one over whole documents (per-document results). Fusion:
``fuse_scores`` (dense score + weight x BM25 / the best BM25 of the candidates: what per-document hybrid search
uses) and ``reciprocal_rank_fusion`` (ranks only: what window-level hybrid search uses).

Texts and queries are tokenised the same way: lower-cased words, English stop words removed, each word reduced to
its Snowball (Porter 2) English stem (PyStemmer), so "merging", "merged" and "merges" match "merge". On the
man-page questions stemming added 2.1 points of BM25 MRR@10 and, with the lexical weight re-chosen, 1.9 points of
hybrid MRR@10 (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import bm25s
import numpy as np
import Stemmer

__all__ = ["RRF_K", "Bm25Index", "fuse_scores", "reciprocal_rank_fusion"]

logger = logging.getLogger(__name__)

#: The constant of reciprocal rank fusion (Cormack et al., 2009): score = sum over rankings of 1 / (60 + rank).
RRF_K = 60
#: The Snowball stemmer's language for BM25 tokens (texts and queries alike).
STEMMER_LANGUAGE = "english"

_stemmers = threading.local()  # a PyStemmer stemmer is not thread-safe: one per thread


def _stemmer() -> Stemmer.Stemmer:
    stemmer = getattr(_stemmers, "stemmer", None)
    if stemmer is None:
        stemmer = _stemmers.stemmer = Stemmer.Stemmer(STEMMER_LANGUAGE)
    return stemmer


def _tokenize(texts: list[str], *, ids: bool = False, stem: bool = True) -> Any:
    """Each text as its BM25 tokens (lower-cased words, stop words removed, stemmed unless ``stem=False``): lists
    of strings, or with ``ids=True`` bm25s's ``Tokenized`` (token ids and the vocabulary) for indexing."""
    return bm25s.tokenize(list(texts), return_ids=ids, show_progress=False, stopwords="en",
                          stemmer=_stemmer() if stem else None)


class Bm25Index:
    """BM25 over a list of texts; ``scores`` returns one score per text (row order kept). Texts without a single
    word (only emoji, punctuation or stop words) score zero for every query.

    ``k1`` and ``b`` are BM25's saturation and length normalisation (bm25s's defaults); ``stem=False`` matches the
    words as they are (what the benchmarks compare stemming with).
    """

    def __init__(self, texts: Sequence[str], *, k1: float = 1.5, b: float = 0.75, stem: bool = True) -> None:
        self.size = len(texts)
        self._stem = stem
        self._retriever: bm25s.BM25 | None = None
        tokens = _tokenize(texts, ids=True, stem=stem) if texts else None
        if tokens is not None and tokens.vocab:  # no word in any text (emoji, punctuation, stop words): all zeros
            retriever = bm25s.BM25(k1=k1, b=b)
            retriever.index(tokens, show_progress=False)
            self._retriever = retriever
        logger.debug("built BM25 over %d texts (%d terms)", self.size, len(tokens.vocab) if tokens else 0)

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every text for ``query`` (zeros when no query term is in the vocabulary)."""
        out = np.zeros(self.size, dtype=np.float32)
        if self._retriever is None:
            return out
        vocab = self._retriever.vocab_dict
        ids = [vocab[t] for t in _tokenize([query], stem=self._stem)[0] if t in vocab]
        if not ids:
            return out
        return np.asarray(self._retriever.get_scores(ids), dtype=np.float32)

    def top(self, query: str, depth: int, allowed: np.ndarray | None = None, *,
            scores: np.ndarray | None = None) -> np.ndarray:
        """Row positions of the best ``depth`` texts with a positive score, best first.

        ``allowed`` is a boolean mask over rows: other rows are never candidates. ``scores``: this query's
        ``scores(query)`` when the caller has them already.
        """
        scores = self.scores(query) if scores is None else scores
        if allowed is not None:
            scores = np.where(allowed, scores, 0.0)
        candidates = np.flatnonzero(scores > 0)
        if len(candidates) > depth:
            part = np.argpartition(-scores[candidates], depth - 1)[:depth]
            candidates = candidates[part]
        # best first; ties broken by row position so results are deterministic
        order = np.lexsort((candidates, -scores[candidates]))
        return candidates[order]


def reciprocal_rank_fusion(rankings: Sequence[Sequence[int]], *, k: int = RRF_K) -> list[tuple[int, float]]:
    """Fuse ranked lists of row positions: score(row) = sum of 1 / (k + rank), rank starting at 1.

    Returns (row, fused score) best first; ties broken by row position.
    """
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, row in enumerate(ranking, start=1):
            fused[int(row)] = fused.get(int(row), 0.0) + 1.0 / (k + rank)
    return sorted(fused.items(), key=lambda item: (-item[1], item[0]))


def fuse_scores(dense: np.ndarray, lexical: np.ndarray, *, weight: float) -> np.ndarray:
    """``dense + weight * lexical / max(lexical)``, element-wise over the same candidates (the lexical half scaled
    to [0, 1] by the best lexical score among them; all-zero lexical scores add nothing). Works on 1-D candidate
    vectors and on (queries, candidates) matrices (the maximum taken per row)."""
    dense = np.asarray(dense, dtype=np.float64)
    lexical = np.asarray(lexical, dtype=np.float64)
    top = lexical.max(axis=-1, keepdims=True) if lexical.size else np.zeros(dense.shape[:-1] + (1,))
    return dense + weight * lexical / np.where(top > 0, top, 1.0)
