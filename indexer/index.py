"""``PassageIndex``: window embeddings plus their passage table, searchable by vector or text.

Vectors live in one faiss index (inner product; L2-normalised by default, so scores are cosine similarities),
keyed by a ``row_id`` the index assigns (increasing, never reused). The passage table is a polars DataFrame
holding each window's document id, window index, exact character span, text, labels and user metadata.
The two never diverge: every change is validated in full before either is touched.

Search returns documents by default (``per_doc=1``), each as its best window and ranked by a document score
(``doc_score``: by default a blend of its two best windows and its first one, see ``PassageIndex.search``),
or windows (``per_doc=None``); ``mode="hybrid"`` adds BM25 (over whole documents, or over windows). Every
branch draws a fixed pool of candidates (``CANDIDATE_POOL``), so results never depend on ``k`` beyond the cut.
"""

from __future__ import annotations

import importlib.metadata
import io
import logging
import os
import platform
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
import polars as pl

from indexer import storage
from indexer.backend import AUTO_IVF_THRESHOLD, FaissBackend, check_device, faiss_version
from indexer.errors import IndexInputError, IndexLoadError, IndexUnsupportedError
from indexer.hybrid import RRF_K, Bm25Index, fuse_scores, reciprocal_rank_fusion
from indexer.inputs import (
    DOC_SCORES,
    Query,
    QueryEncoder,
    as_matrix,
    check_doc_score,
    check_encoder,
    check_fingerprint,
    check_known_labels,
    check_min_score,
    check_mode,
    check_no_clash,
    check_positive_int,
    encode_queries,
    fingerprint_of,
    normalized,
    parse_query,
    require_encoder,
    str_list,
)
from indexer.passages import empty_table, metadata_columns, validate_passages, validate_stored_table

__all__ = [
    "CANDIDATE_POOL",
    "DOC_SCORES",
    "DOC_SCORE_FIRST_WEIGHT",
    "DOC_SCORE_TOP2_WEIGHT",
    "FORMAT_VERSION",
    "HYBRID_LEXICAL_WEIGHT",
    "Hit",
    "PassageIndex",
    "QueryEncoder",
    "describe_score",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
METRIC = "inner_product"
#: The candidate pool of every search branch, whatever ``k`` is: max(k, CANDIDATE_POOL) documents (per-document
#: results: the documents of the best dense windows, and in hybrid mode also the best BM25 documents) or windows
#: (``per_doc=None`` in hybrid mode, each ranking). Fixed, so the top k is a prefix of the top k + m.
CANDIDATE_POOL = 100
#: ``doc_score="top2_first"``: document score = TOP2 x mean(two best window scores) + FIRST x (first window's
#: score); a one-window document scores its one window. Measured on the 248 hand-written man-page questions
#: (benchmarks/retrieval.py, benchmarks/RESULTS.md "Man-page retrieval"): MRR@10 0.632 for the best window alone,
#: the best of the sweep's few simple blends with 0.7 / 0.3.
DOC_SCORE_TOP2_WEIGHT = 0.7
DOC_SCORE_FIRST_WEIGHT = 0.3
#: Per-document hybrid score = dense document score + HYBRID_LEXICAL_WEIGHT x (the document's BM25 / the best
#: BM25 among the candidates; stemmed BM25, ``indexer.hybrid``): chosen on the same questions from 0.05-0.3
#: (benchmarks/retrieval.py sweeps it; 5-fold cross-validation over the questions picks 0.2 or its neighbours).
HYBRID_LEXICAL_WEIGHT = 0.2
#: Resolved filters (labels=, doc_ids=) kept per version of the table; beyond this many the cache starts over.
FILTER_CACHE_SIZE = 64


def _distribution_version(name: str) -> str:
    """The installed version of a distribution (for the manifest), or "unknown"."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def describe_score(*, mode: str = "dense", per_doc: int | None = 1, doc_score: str | None = None,
                   normalize: bool = True) -> str:
    """In words, what ``Hit.score`` is for a search with these arguments (for a header above printed hits)."""
    per_doc = check_positive_int(per_doc, name="per_doc", allow_none=True)
    check_mode(mode)
    doc_score = check_doc_score(doc_score, per_doc)
    sim = "cosine" if normalize else "inner product"
    if mode == "hybrid" and per_doc is None:
        return f"hybrid window score: reciprocal rank fusion of the dense and BM25 window ranks (sum of 1/({RRF_K} + rank))"
    if doc_score == "max":
        dense = f"document score: the {sim} of its best window"
    elif doc_score == "top2_first":
        dense = (f"document score: {DOC_SCORE_TOP2_WEIGHT:g} x mean {sim} of its 2 best windows + "
                 f"{DOC_SCORE_FIRST_WEIGHT:g} x {sim} of its first window")
    else:
        return f"window score: {sim} of query and window"
    if mode == "hybrid":
        return f"hybrid document score: ({dense}) + {HYBRID_LEXICAL_WEIGHT:g} x page BM25 / best page BM25"
    return dense


#: One picked hit inside a search: (table position, score, the window's own score).
_Picked = tuple[int, float, float]


@dataclass(frozen=True)
class Hit:
    """One search result: a window of a document.

    ``score`` is what the results are ranked by, depending on the search:

    * window results (``per_doc=None``), dense: the inner product of query and window vectors (the cosine
      similarity with ``normalize=True``);
    * per-document results (``per_doc`` set), dense: the document's score (``doc_score=``: ``"max"`` its best
      window's cosine, ``"top2_first"`` the blend of its two best windows and its first one);
    * hybrid, per document: the dense document score + ``HYBRID_LEXICAL_WEIGHT`` x the document's BM25 over the
      best BM25 among the candidates (``fuse_scores``);
    * hybrid, windows: the reciprocal-rank-fusion score (about 0.01 to 0.033).

    ``window_score`` is always the inner product of the query with this hit's own window (equal to ``score``
    for dense window results and dense ``doc_score="max"``). A per-document hit's window is the document's best
    window. With ``per_doc`` > 1 a document gives up to ``per_doc`` hits, one per window, and ``k`` counts hits
    (windows), not documents: with ``doc_score="top2_first"`` (and in hybrid mode, either ``doc_score``) the
    documents are ranked and each one's hits come together, its best window first, every one carrying the
    document's score (``window_score`` tells them apart); with dense ``doc_score="max"`` the hits are the best
    windows under the per-document cap, each ranked by its own window's score (``score == window_score``), so
    one document's hits need not be next to each other. ``rank`` starts at 1. ``labels`` are the document's gold
    labels when the passage table has them for this window, else its predicted labels (the labels the
    ``labels=`` filter matches); ``pred_labels`` are always the predicted ones. ``metadata`` holds the passage
    table's extra columns.
    """

    score: float
    rank: int
    doc_id: str
    window_index: int
    text: str
    char_start: int
    char_end: int
    labels: tuple[str, ...]
    metadata: dict[str, Any] = field(default_factory=dict)
    pred_labels: tuple[str, ...] = ()
    weight: float | None = None
    window_score: float | None = None


class _Caches:
    """Lookups derived from one version of the passage table."""

    def __init__(self, table: pl.DataFrame) -> None:
        self.doc_ids = table["doc_id"].to_numpy()
        effective = pl.coalesce("labels", "pred_labels")
        exploded = (
            table.select(pl.col("row_id"), effective.alias("label"))
            .explode("label")
            .drop_nulls("label")
            .group_by("label")
            .agg(pl.col("row_id"))
        )
        self.label_rows = {lab: np.asarray(ids, dtype=np.int64) for lab, ids in exploded.iter_rows()}
        grouped = table.group_by("doc_id").agg(pl.col("row_id"))
        self.doc_rows = {doc: np.asarray(ids, dtype=np.int64) for doc, ids in grouped.iter_rows()}
        self.bm25: Bm25Index | None = None
        # documents as integer codes: doc_codes[position], and each document's positions in window order
        # (doc_order[doc_starts[c]:doc_starts[c + 1]])
        names, codes = np.unique(self.doc_ids.astype(str), return_inverse=True) if table.height else (
            np.empty(0, dtype=str), np.empty(0, dtype=np.int64))
        self.doc_names = names
        self.doc_codes = codes.astype(np.int64).reshape(-1)
        self.doc_order = np.lexsort((table["window_index"].to_numpy(), self.doc_codes))
        self.doc_starts = np.concatenate([[0], np.cumsum(np.bincount(self.doc_codes, minlength=len(names)))])
        self.doc_bm25: Bm25Index | None = None
        self.filters: dict[tuple[tuple[str, ...] | None, tuple[str, ...] | None], np.ndarray] = {}

    def document_texts(self, table: pl.DataFrame) -> list[str]:
        """Each document's text (in code order) for document-level BM25: its windows in order, rebuilt from their
        character spans without the overlaps; where the spans do not fit the texts (a text whose length is not
        its span, or spans going backwards), the window texts joined by newlines."""
        texts = table["text"].to_list()
        starts = table["char_start"].to_numpy()
        ends = table["char_end"].to_numpy()
        out = []
        for c in range(len(self.doc_names)):
            rows = self.doc_order[self.doc_starts[c]:self.doc_starts[c + 1]]
            fits = all(len(texts[r]) == ends[r] - starts[r] for r in rows) and bool(
                np.all(np.diff(starts[rows]) >= 0) and np.all(np.diff(ends[rows]) >= 0))
            if not fits:
                out.append("\n".join(texts[r] for r in rows))
                continue
            parts, covered = [], None
            for r in rows:
                skip = 0 if covered is None else max(0, int(covered) - int(starts[r]))
                gap = covered is not None and starts[r] > covered
                parts.append((" " if gap else "") + texts[r][skip:])
                covered = ends[r] if covered is None else max(covered, ends[r])
            out.append("".join(parts))
        return out


class PassageIndex:
    """A searchable collection of document windows (vectors + passage table), saved as an open-format directory.

    Build one with ``PassageIndex.build(embeddings, passages)`` or ``PassageIndex(dim).add(...)``; search with a
    vector, a text (needs ``encoder``), or a batch of either. ``factory=None`` picks exact flat search below
    ``ivf_threshold`` vectors (default 50,000) and IVF above it; any faiss ``index_factory`` string may be given
    instead (HNSW layouts cannot remove or upsert). ``fp16=True`` stores vectors as float16 (automatic layout).

    ``attributes`` is a JSON-ready dict saved in the manifest and loaded back, for the application's own
    facts about the index (longdoc records the classifier's label map there).

    ``device`` says where searches run (not saved; settable): ``None`` picks a GPU when there is one (faiss's
    GPU build, or, for exact layouts, torch on CUDA when faiss is CPU-only), ``"cpu"`` keeps them on the CPU,
    ``"cuda"`` / ``"cuda:N"`` asks for that GPU. On the CPU exact layouts are scanned by torch when it is
    installed, approximate ones by faiss. The saved index is the same either way.

    Thread-safe: one internal lock serialises changes, searches and saves of the same object. The directory
    lock (``save`` / ``load(lock=True)``) keeps other writers, in this process or others, off the directory
    until ``close()``.
    """

    def __init__(
        self,
        dim: int,
        *,
        encoder: QueryEncoder | None = None,
        factory: str | None = None,
        normalize: bool = True,
        fp16: bool = False,
        nprobe: int | None = None,
        ivf_threshold: int = AUTO_IVF_THRESHOLD,
        device: str | None = None,
    ) -> None:
        dim = check_positive_int(dim, name="dim")
        ivf_threshold = check_positive_int(ivf_threshold, name="ivf_threshold")
        backend = FaissBackend(dim, factory=factory, fp16=bool(fp16), ivf_threshold=ivf_threshold, nprobe=nprobe,
                               device=device)
        self._setup(backend, empty_table(), 0, normalize=bool(normalize), encoder=encoder,
                    fingerprint=fingerprint_of(encoder) if encoder is not None else None)

    def _setup(
        self,
        backend: FaissBackend,
        table: pl.DataFrame,
        next_row_id: int,
        *,
        normalize: bool,
        encoder: QueryEncoder | None,
        fingerprint: str | None,
    ) -> None:
        check_encoder(encoder, backend.dim)
        self._backend = backend
        self._table = table
        self._row_ids = table["row_id"].to_numpy().astype(np.int64, copy=True)
        self._next_row_id = int(next_row_id)
        self._normalize = normalize
        self._encoder = encoder
        self._fingerprint = fingerprint
        self._mutex = threading.RLock()
        self.attributes: dict[str, Any] = {}
        self._dir_locks: dict[Path, storage.DirectoryLock] = {}
        self._revision = 0
        self._caches: tuple[int, _Caches] | None = None

    @classmethod
    def build(
        cls,
        embeddings: Any,
        passages: Any,
        *,
        encoder: QueryEncoder | None = None,
        factory: str | None = None,
        normalize: bool = True,
        fp16: bool = False,
        nprobe: int | None = None,
        ivf_threshold: int = AUTO_IVF_THRESHOLD,
        device: str | None = None,
    ) -> PassageIndex:
        """A new index over ``embeddings`` (float (n, dim)) and ``passages`` (n rows, see ``indexer.passages``)."""
        arr, _ = as_matrix(embeddings, name="embeddings", dim=None)
        index = cls(arr.shape[1], encoder=encoder, factory=factory, normalize=normalize, fp16=fp16, nprobe=nprobe,
                    ivf_threshold=ivf_threshold, device=device)
        index.add(arr, passages)
        return index

    # -- properties --------------------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self._backend.dim

    @property
    def normalize(self) -> bool:
        return self._normalize

    @property
    def factory(self) -> str | None:
        """The ``factory=`` string given, or None for the automatic layout."""
        return self._backend.factory

    @property
    def layout(self) -> str:
        """The layout in use, e.g. 'Flat', 'SQfp16', 'IVF894,Flat', or the factory string."""
        return self._backend.layout

    @property
    def nprobe(self) -> int | None:
        """IVF cells visited per query (None for layouts without cells). Settable."""
        return self._backend.nprobe

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        with self._mutex:
            self._backend.nprobe = value

    @property
    def device(self) -> str | None:
        """Where searches run: None (automatic), 'cpu', 'cuda' or 'cuda:N'. Settable."""
        return self._backend.device

    @device.setter
    def device(self, value: str | None) -> None:
        with self._mutex:
            self._backend.device = check_device(value)

    @property
    def encoder(self) -> QueryEncoder | None:
        return self._encoder

    @encoder.setter
    def encoder(self, encoder: QueryEncoder | None) -> None:
        check_encoder(encoder, self.dim)
        with self._mutex:
            if encoder is not None:
                self._fingerprint = check_fingerprint(self._fingerprint, encoder, dim=self.dim)
            self._encoder = encoder

    @property
    def encoder_fingerprint(self) -> str | None:
        return self._fingerprint

    @property
    def passages(self) -> pl.DataFrame:
        """The passage table (with the index's ``row_id`` column), in insertion order."""
        return self._table

    @property
    def doc_ids(self) -> list[str]:
        """Sorted ids of the documents in the index."""
        return sorted(self._caches_now().doc_rows)

    @property
    def labels(self) -> list[str]:
        """Sorted labels the ``labels=`` filter knows (gold labels, or predicted where gold are absent)."""
        return sorted(self._caches_now().label_rows)

    @property
    def ntotal(self) -> int:
        """Vectors in the faiss index; always equal to ``len(self)``."""
        return self._backend.ntotal

    @property
    def revision(self) -> int:
        """A counter that grows with every change of the passage table (``add``, ``upsert``, ``remove``), so
        whatever a caller derives from ``passages`` can be cached until it moves. Not saved."""
        return self._revision

    def vectors(self) -> np.ndarray:
        """The stored vectors, float32 ``(len(self), dim)``, row ``i`` belonging to row ``i`` of ``passages``
        (normalised when the index normalises; fp16 storage decoded to float32).

        Flat layouts only (the automatic layout below ``ivf_threshold``, 'Flat', 'SQfp16'): the others cannot
        hand their vectors back and raise ``IndexUnsupportedError``.
        """
        with self._mutex:
            row_ids = self._row_ids
            try:
                ids, vecs = self._backend.ids_and_vectors()
            except IndexUnsupportedError:
                raise IndexUnsupportedError(
                    f"cannot export the vectors of the {self.layout!r} layout: only flat layouts (the automatic "
                    "layout below ivf_threshold, 'Flat', 'SQfp16') can hand their vectors back; export the vectors "
                    "where they are made instead (longdoc.distributed.index_with_ray(..., vectors_output=...))"
                ) from None
        pos = np.searchsorted(row_ids, ids)
        if len(ids) != len(row_ids) or not np.array_equal(row_ids[np.minimum(pos, len(row_ids) - 1)], ids):
            raise RuntimeError("the faiss ids differ from the passage table's row ids")
        out = np.empty((len(row_ids), self.dim), dtype=np.float32)
        out[pos] = vecs
        return out

    def __len__(self) -> int:
        return self._table.height

    def __repr__(self) -> str:
        return (f"PassageIndex(dim={self.dim}, windows={len(self)}, documents={len(self.doc_ids)}, "
                f"layout={self.layout!r}, normalize={self._normalize})")

    def _caches_now(self) -> _Caches:
        with self._mutex:
            if self._caches is None or self._caches[0] != self._revision:
                self._caches = (self._revision, _Caches(self._table))
            return self._caches[1]

    # -- changes ---------------------------------------------------------------------------------------------
    def _prepare(self, embeddings: Any, passages: Any) -> tuple[np.ndarray, pl.DataFrame]:
        arr, _ = as_matrix(embeddings, name="embeddings", dim=self.dim)
        table = validate_passages(passages, n_rows=arr.shape[0])
        if self._normalize and len(arr):
            arr = normalized(arr, name="embeddings")
        return arr, table

    def _concat(self, kept: pl.DataFrame, new: pl.DataFrame) -> pl.DataFrame:
        try:
            return pl.concat([kept, new], how="diagonal_relaxed")
        except Exception as exc:  # metadata columns with irreconcilable dtypes
            raise IndexInputError(
                f"passages metadata columns do not match the index's: {exc}; index metadata columns are "
                f"{metadata_columns(kept)}"
            ) from None

    def add(self, embeddings: Any, passages: Any) -> None:
        """Add windows: ``embeddings`` float (n, dim), ``passages`` a table of n rows.

        Rejects NaN/Inf, a wrong dimension, misaligned rows and (doc_id, window_index) pairs already present,
        before anything changes. To replace documents, use ``upsert``.
        """
        with self._mutex:
            arr, new = self._prepare(embeddings, passages)
            if new.height == 0:
                return
            check_no_clash(self._table, new)
            self._commit_add(arr, new, kept=self._table)

    def _commit_add(self, arr: np.ndarray, new: pl.DataFrame, *, kept: pl.DataFrame,
                    remove_ids: np.ndarray | None = None) -> None:
        ids = np.arange(self._next_row_id, self._next_row_id + new.height, dtype=np.int64)
        table = self._concat(kept, new.with_columns(pl.Series("row_id", ids)).select(["row_id", *new.columns]))
        self._backend.check_can_add(len(ids))
        if remove_ids is not None and len(remove_ids):
            self._backend.check_can_remove()
            removed = self._backend.remove(remove_ids)
            if removed != len(remove_ids):  # cannot happen unless faiss and the table had already diverged
                raise RuntimeError(f"faiss removed {removed} vectors, expected {len(remove_ids)}")
        self._backend.add(arr, ids)
        self._set_table(table)
        self._next_row_id += len(ids)

    def _set_table(self, table: pl.DataFrame) -> None:
        self._table = table
        self._row_ids = table["row_id"].to_numpy().astype(np.int64, copy=True)
        self._revision += 1
        if self._backend.ntotal != table.height:  # the invariant every operation keeps
            raise RuntimeError(f"faiss holds {self._backend.ntotal} vectors but the table {table.height} rows")

    def check_can_remove(self) -> None:
        """Raise ``IndexUnsupportedError`` when the layout cannot remove vectors (HNSW), so ``remove()`` and an
        ``upsert()`` that replaces present documents would fail; call it to refuse before other work starts."""
        self._backend.check_can_remove()

    def upsert(self, embeddings: Any, passages: Any) -> None:
        """Add windows, first removing ALL existing windows of every doc_id present in ``passages``."""
        with self._mutex:
            arr, new = self._prepare(embeddings, passages)
            if new.height == 0:
                return
            docs = new["doc_id"].unique()
            replaced = self._table["doc_id"].is_in(docs.implode())
            old_ids = self._table.filter(replaced)["row_id"].to_numpy()
            if len(old_ids):
                self.check_can_remove()
            self._commit_add(arr, new, kept=self._table.filter(~replaced), remove_ids=old_ids)

    def remove(self, *, doc_ids: str | Iterable[str]) -> int:
        """Remove every window of the given documents; returns how many windows were removed.

        Unknown document ids are ignored.
        """
        docs = str_list(doc_ids, name="doc_ids")
        with self._mutex:
            gone = self._table["doc_id"].is_in(pl.Series(docs, dtype=pl.String).implode())
            ids = self._table.filter(gone)["row_id"].to_numpy()
            if len(ids) == 0:
                return 0
            removed = self._backend.remove(ids)
            if removed != len(ids):
                raise RuntimeError(f"faiss removed {removed} vectors, expected {len(ids)}")
            self._set_table(self._table.filter(~gone))
            return int(len(ids))

    # -- search ------------------------------------------------------------------------------------------------
    @overload
    def search(self, query: str, *, k: int = ..., labels: str | Iterable[str] | None = ...,
               doc_ids: str | Iterable[str] | None = ..., min_score: float | None = ...,
               per_doc: int | None = ..., mode: Literal["dense", "hybrid"] = ...,
               doc_score: Literal["top2_first", "max"] | None = ...) -> list[Hit]: ...

    @overload
    def search(self, query: Sequence[str] | np.ndarray, *, k: int = ...,
               labels: str | Iterable[str] | None = ..., doc_ids: str | Iterable[str] | None = ...,
               min_score: float | None = ..., per_doc: int | None = ...,
               mode: Literal["dense", "hybrid"] = ...,
               doc_score: Literal["top2_first", "max"] | None = ...) -> list[Hit] | list[list[Hit]]: ...

    def search(
        self,
        query: Query,
        *,
        k: int = 5,
        labels: str | Iterable[str] | None = None,
        doc_ids: str | Iterable[str] | None = None,
        min_score: float | None = None,
        per_doc: int | None = 1,
        mode: Literal["dense", "hybrid"] = "dense",
        doc_score: Literal["top2_first", "max"] | None = None,
    ) -> list[Hit] | list[list[Hit]]:
        """Find the documents (default) or windows closest to ``query``.

        ``query``: a str or a 1-D vector gives ``list[Hit]``; a list of str or a 2-D array (one row per query)
        gives ``list[list[Hit]]``. Text needs ``encoder``.

        ``k``: hits per query. k come back whenever at least k windows (``per_doc=None``) or documents pass the
        filters; fewer only when fewer match, ``min_score`` cuts, or an IVF probe finds fewer. An empty index
        gives []. ``labels``: keep windows whose document has one of these labels (gold ``labels`` where
        present, else ``pred_labels``); an unknown label is an error listing the known ones. ``doc_ids``: keep
        windows of these documents (unknown ids match nothing). Both filters apply inside the search (an exact
        scan of the allowed rows, or an ``IDSelector`` in faiss), so the candidates are the best among the allowed
        windows.

        ``per_doc``: per-document results with at most this many windows per document (default 1: each
        document once, as its best window); None for window results (no grouping). Each window is one hit and
        ``k`` counts hits: with ``per_doc`` > 1, ``k`` hits may come from fewer than ``k`` documents (``Hit`` says
        how a document's hits are scored and ordered for each ``doc_score``).
        ``doc_score`` (per-document results only): how a document's windows make its score, which ranks the
        documents and is ``Hit.score``.

        * ``"top2_first"`` (the default): ``DOC_SCORE_TOP2_WEIGHT`` (0.7) x the mean of its two best window
          scores + ``DOC_SCORE_FIRST_WEIGHT`` (0.3) x its first window's score (a one-window document: that
          window's score). Long documents no longer win by having many windows to match with; it measured
          best on our man-page questions (benchmarks/RESULTS.md). Candidates: the ``max(k, CANDIDATE_POOL)``
          documents of the best windows (exact dense search); each candidate's first and best windows are then
          scored exactly from the stored vectors. Each document's hits are its best windows (best first), next
          to each other, each with the document's score.
        * ``"max"``: the best window's score (the classic ranking). With ``per_doc`` > 1 (dense) the hits are the
          top k windows under the per-document cap, each with its own window's score, in that order: one
          document's windows may be interleaved with other documents' (in hybrid mode the documents are ranked
          by the fused score and each one's hits come together, as for ``"top2_first"``).

        ``min_score``: drop hits whose ``score`` is below it.
        ``mode="hybrid"`` (text queries and an encoder): per-document results fuse the dense document score
        (``doc_score``) with BM25 over whole documents (each document's text rebuilt from its windows without
        the overlaps): score = dense + ``HYBRID_LEXICAL_WEIGHT`` (0.1) x BM25 / the best BM25 among the
        candidates (the ``max(k, CANDIDATE_POOL)`` best documents of each ranking). Window results
        (``per_doc=None``) fuse BM25 over the window texts with the dense window ranking by reciprocal rank
        fusion (k=60, the ``max(k, CANDIDATE_POOL)`` best windows of each ranking). ``Hit`` documents which
        score each case gives.
        """
        k = check_positive_int(k, name="k")
        per_doc = check_positive_int(per_doc, name="per_doc", allow_none=True)
        check_mode(mode)
        doc_score = check_doc_score(doc_score, per_doc)
        min_score = check_min_score(min_score)
        single, texts, vectors = self._parse_query(query, mode)
        n_queries = 1 if single else (len(texts) if texts is not None else len(vectors))
        with self._mutex:
            allowed = self._allowed(labels, doc_ids)
            if n_queries == 0:
                return []
            if len(self) == 0 or (allowed is not None and len(allowed) == 0):
                results: list[list[_Picked]] = [[] for _ in range(n_queries)]
            else:
                if texts is not None:
                    vectors = self._encode(texts)
                if self._normalize:
                    vectors = normalized(vectors, name="query")
                if mode == "hybrid" and per_doc is not None:
                    results = self._hybrid_docs(texts, vectors, k, allowed, per_doc, min_score, doc_score)
                elif mode == "hybrid":
                    results = self._hybrid_windows(texts, vectors, k, allowed, min_score)
                elif doc_score == "top2_first":
                    results = self._dense_docs(vectors, k, allowed, per_doc, min_score, doc_score)
                else:
                    results = self._dense(vectors, k, allowed, per_doc, min_score)
            hits = self._hits(results)
        return hits[0] if single else hits

    def _parse_query(self, query: Any, mode: str) -> tuple[bool, list[str] | None, np.ndarray | None]:
        single, texts, vectors = parse_query(query, dim=self.dim)
        if mode == "hybrid" and texts is None:
            raise IndexInputError("mode='hybrid' needs text queries (BM25 reads the words), got a vector")
        if texts:  # an empty list is an empty batch: [] back, encoder or not (as ShardedPassageIndex)
            require_encoder(self._encoder, "PassageIndex")
        return single, texts, vectors

    def _encode(self, texts: list[str]) -> np.ndarray:
        return encode_queries(self._encoder, texts, dim=self.dim, owner="PassageIndex")

    def _allowed(self, labels: Any, doc_ids: Any) -> np.ndarray | None:
        """Sorted row ids passing the filters, or None when there is no filter.

        The answer is kept per filter until the table changes (the same array object for the same filter), so a
        run of searches under one filter resolves it once (the torch scan keeps its mask for that object too).
        """
        if labels is None and doc_ids is None:
            return None
        caches = self._caches_now()
        wanted = None if labels is None else str_list(labels, name="labels")
        docs = None if doc_ids is None else str_list(doc_ids, name="doc_ids")
        if wanted is not None and len(self):
            check_known_labels(wanted, caches.label_rows)
        key = (None if wanted is None else tuple(wanted), None if docs is None else tuple(docs))
        found = caches.filters.get(key)
        if found is not None:
            return found
        allowed: np.ndarray | None = None
        if wanted is not None:
            parts = [caches.label_rows[lab] for lab in wanted if lab in caches.label_rows]
            allowed = np.unique(np.concatenate(parts)) if parts else np.empty(0, dtype=np.int64)
        if docs is not None:
            parts = [caches.doc_rows[d] for d in docs if d in caches.doc_rows]
            rows = np.unique(np.concatenate(parts)) if parts else np.empty(0, dtype=np.int64)
            allowed = rows if allowed is None else np.intersect1d(allowed, rows, assume_unique=True)
        if len(caches.filters) >= FILTER_CACHE_SIZE:
            caches.filters.clear()
        caches.filters[key] = allowed
        return allowed

    def _positions(self, ids: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self._row_ids, ids)
        ok = (pos < len(self._row_ids)) & (self._row_ids[np.minimum(pos, len(self._row_ids) - 1)] == ids)
        if not ok.all():
            raise RuntimeError(f"faiss returned row ids not in the passage table: {ids[~ok][:5].tolist()}")
        return pos

    @staticmethod
    def _select(
        candidates: Iterable[tuple[int, float]],
        doc_ids: np.ndarray,
        k: int,
        per_doc: int | None,
        min_score: float | None,
    ) -> tuple[list[_Picked], bool]:
        """Walk (position, score) best first; keep at most per_doc per document. Returns (picked, complete)."""
        picked: list[_Picked] = []
        seen: dict[str, int] = {}
        for pos, score in candidates:
            if min_score is not None and score < min_score:
                return picked, True
            if per_doc is not None:
                doc = doc_ids[pos]
                count = seen.get(doc, 0)
                if count >= per_doc:
                    continue
                seen[doc] = count + 1
            picked.append((int(pos), float(score), float(score)))
            if len(picked) == k:
                return picked, True
        return picked, False

    def _dense(
        self,
        queries: np.ndarray,
        k: int,
        allowed: np.ndarray | None,
        per_doc: int | None,
        min_score: float | None,
    ) -> list[list[_Picked]]:
        """Exact top-k windows per query under the per-document cap (window scores).

        The filter is applied inside the scan. The per-document cap needs more than k candidates when a document
        has many good windows: the fetch doubles until k windows pass the cap or the candidates run out.
        """
        available = len(allowed) if allowed is not None else len(self)
        doc_ids = self._caches_now().doc_ids
        fetch = min(available, k if per_doc is None else 4 * k)
        results: list[list[_Picked]] = [[] for _ in range(len(queries))]
        pending = np.arange(len(queries))
        while len(pending):
            scores, ids = self._backend.search(queries[pending], fetch, allowed=allowed, id_bound=self._next_row_id)
            valid = ids >= 0  # faiss pads with -1: never mapped to a row
            positions = np.full(ids.shape, -1, dtype=np.int64)
            positions[valid] = self._positions(ids[valid])
            still = []
            for row, q in enumerate(pending):
                mask = valid[row]
                found = positions[row][mask].tolist()
                found_scores = scores[row][mask].tolist()
                if per_doc is None and min_score is None:
                    picked = [(p, sc, sc) for p, sc in zip(found[:k], found_scores[:k], strict=True)]
                    complete = len(picked) == k
                else:
                    picked, complete = self._select(zip(found, found_scores, strict=True), doc_ids, k, per_doc,
                                                    min_score)
                exhausted = len(found) < fetch or fetch >= available
                results[q] = picked
                if not (complete or exhausted):
                    still.append(q)
            pending = np.asarray(still, dtype=np.int64)
            fetch = min(available, fetch * 2)
        return results

    # -- per-document scoring ----------------------------------------------------------------------------------
    def _allowed_mask(self, allowed: np.ndarray | None) -> np.ndarray | None:
        """The filter as a boolean mask over table positions (None: no filter)."""
        if allowed is None:
            return None
        mask = np.zeros(len(self), dtype=bool)
        mask[self._positions(allowed)] = True
        return mask

    def _doc_candidates(self, queries: np.ndarray, want: int, allowed: np.ndarray | None) -> list[np.ndarray]:
        """Per query, the codes of the ``want`` documents with the best windows (exact dense search under the
        filter), best first: the first ``want`` distinct documents of the window ranking (all of them when fewer
        pass the filter). The window fetch grows until it holds ``want`` documents, so the set depends on
        ``want`` only, never on how deep the search had to go."""
        caches = self._caches_now()
        available = len(allowed) if allowed is not None else len(self)
        n_docs = len(caches.doc_names)
        fetch = min(available, max(4 * want, 256))
        out: list[np.ndarray] = [np.empty(0, dtype=np.int64) for _ in range(len(queries))]
        pending = np.arange(len(queries))
        while len(pending):
            _, ids = self._backend.search(queries[pending], fetch, allowed=allowed, id_bound=self._next_row_id)
            still = []
            for row, q in enumerate(pending):
                found = ids[row][ids[row] >= 0]
                codes = caches.doc_codes[self._positions(found)]
                _, first = np.unique(codes, return_index=True)
                ordered = codes[np.sort(first)]
                if len(ordered) >= want or len(found) < fetch or fetch >= available or len(ordered) >= n_docs:
                    out[q] = ordered[:want]
                else:
                    still.append(q)
            pending = np.asarray(still, dtype=np.int64)
            fetch = min(available, fetch * 2)
        return out

    def _score_docs(
        self,
        query: np.ndarray,
        codes: np.ndarray,
        mask: np.ndarray | None,
        doc_score: str,
        per_doc: int,
    ) -> tuple[np.ndarray, list[list[tuple[int, float]]]]:
        """Exact document scores of ``codes`` for one query, from every allowed window's stored vector; and each
        document's best ``per_doc`` windows as (position, window score), best first."""
        caches = self._caches_now()
        if len(codes) == 0:
            return np.empty(0, dtype=np.float64), []
        lengths = caches.doc_starts[codes + 1] - caches.doc_starts[codes]
        positions = np.concatenate([caches.doc_order[caches.doc_starts[c]:caches.doc_starts[c + 1]] for c in codes])
        group = np.repeat(np.arange(len(codes)), lengths)
        if mask is not None:  # only allowed windows count; every candidate has at least one
            keep = mask[positions]
            positions, group = positions[keep], group[keep]
        scores = self._window_vectors(positions) @ query.astype(np.float32)
        counts = np.bincount(group, minlength=len(codes))
        if not counts.all():
            raise RuntimeError("a candidate document has no allowed window")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        order = np.lexsort((np.arange(len(scores)), -scores, group))  # by document, best window first
        ranked = scores[order].astype(np.float64)
        best = ranked[starts]
        second = np.where(counts >= 2, ranked[np.minimum(starts + 1, len(ranked) - 1)], best)
        first = scores[starts].astype(np.float64)  # each document's positions are in window order
        if doc_score == "max":
            value = best
        else:
            value = DOC_SCORE_TOP2_WEIGHT * (best + second) / 2 + DOC_SCORE_FIRST_WEIGHT * first
        windows = [[(int(positions[order[j]]), float(ranked[j])) for j in range(st, st + min(per_doc, n))]
                   for st, n in zip(starts.tolist(), counts.tolist(), strict=True)]
        return value, windows

    def _window_vectors(self, positions: np.ndarray) -> np.ndarray:
        return self._backend.vectors_of(self._row_ids[positions])

    @staticmethod
    def _rank_docs(
        codes: np.ndarray,
        scores: np.ndarray,
        windows: list[list[tuple[int, float]]],
        k: int,
        min_score: float | None,
    ) -> list[_Picked]:
        """Documents best first (ties: by document id), each as its windows, until k hits; ``scores`` are the
        documents' (the hits' ``score``), the windows' own scores go to ``window_score``."""
        order = np.lexsort((codes, -scores))
        picked: list[_Picked] = []
        for i in order.tolist():
            score = float(scores[i])
            if min_score is not None and score < min_score:
                break
            for pos, window_score in windows[i]:
                picked.append((pos, score, window_score))
                if len(picked) == k:
                    return picked
        return picked

    def _dense_docs(
        self,
        queries: np.ndarray,
        k: int,
        allowed: np.ndarray | None,
        per_doc: int,
        min_score: float | None,
        doc_score: str,
    ) -> list[list[_Picked]]:
        """Per-document dense results: candidates from the window ranking, scored exactly (``doc_score``)."""
        want = max(k, CANDIDATE_POOL)
        mask = self._allowed_mask(allowed)
        results = []
        for q, codes in zip(queries, self._doc_candidates(queries, want, allowed), strict=True):
            scores, windows = self._score_docs(q, codes, mask, doc_score, per_doc)
            results.append(self._rank_docs(codes, scores, windows, k, min_score))
        return results

    def _doc_bm25(self) -> Bm25Index:
        caches = self._caches_now()
        if caches.doc_bm25 is None:
            caches.doc_bm25 = Bm25Index(caches.document_texts(self._table))
        return caches.doc_bm25

    def _hybrid_docs(
        self,
        texts: list[str],
        queries: np.ndarray,
        k: int,
        allowed: np.ndarray | None,
        per_doc: int,
        min_score: float | None,
        doc_score: str,
    ) -> list[list[_Picked]]:
        """Per-document hybrid results: the union of the dense and BM25 candidate documents (max(k,
        CANDIDATE_POOL) each), scored by ``fuse_scores`` (exact dense document score + weighted page BM25)."""
        want = max(k, CANDIDATE_POOL)
        caches = self._caches_now()
        mask = self._allowed_mask(allowed)
        doc_allowed = None
        if mask is not None:
            doc_allowed = np.zeros(len(caches.doc_names), dtype=bool)
            doc_allowed[caches.doc_codes[mask]] = True
        bm25 = self._doc_bm25()
        results = []
        for text, q, dense_codes in zip(texts, queries, self._doc_candidates(queries, want, allowed), strict=True):
            lex_all = bm25.scores(text)
            lexical = bm25.top(text, want, doc_allowed, scores=lex_all)
            pool = np.union1d(dense_codes, lexical).astype(np.int64)
            dense, windows = self._score_docs(q, pool, mask, doc_score, per_doc)
            lex_scores = lex_all[pool]
            fused = fuse_scores(dense, lex_scores, weight=HYBRID_LEXICAL_WEIGHT)
            results.append(self._rank_docs(pool, fused, windows, k, min_score))
        return results

    def _bm25(self) -> Bm25Index:
        caches = self._caches_now()
        if caches.bm25 is None:
            caches.bm25 = Bm25Index(self._table["text"].to_list())
        return caches.bm25

    def _hybrid_windows(
        self,
        texts: list[str],
        queries: np.ndarray,
        k: int,
        allowed: np.ndarray | None,
        min_score: float | None,
    ) -> list[list[_Picked]]:
        """Window-level hybrid results: the best max(k, CANDIDATE_POOL) windows of the dense ranking and of BM25
        over the window texts, fused by reciprocal rank fusion."""
        depth = max(k, CANDIDATE_POOL)
        dense = self._dense(queries, depth, allowed, None, None)
        bm25 = self._bm25()
        mask = self._allowed_mask(allowed)
        results = []
        for text, q, dense_hits in zip(texts, queries, dense, strict=True):
            lexical = bm25.top(text, depth, mask)
            fused = reciprocal_rank_fusion([[pos for pos, _, _ in dense_hits], lexical.tolist()], k=RRF_K)
            picked = []
            for pos, score in fused:
                if min_score is not None and score < min_score:
                    break
                picked.append((pos, score))
                if len(picked) == k:
                    break
            own = self._window_vectors(np.asarray([p for p, _ in picked], dtype=np.int64)) @ q.astype(np.float32)
            results.append([(int(p), float(sc), float(w)) for (p, sc), w in zip(picked, own, strict=True)])
        return results

    def _hits(self, results: list[list[_Picked]]) -> list[list[Hit]]:
        """Hit objects for every query's (position, score, window score) list, from one gather over the table."""
        positions = [pos for picked in results for pos, _, _ in picked]
        if not positions:
            return [[] for _ in results]
        rows = self._table.select(pl.all().gather(positions))
        meta = metadata_columns(self._table)
        col = {name: rows[name].to_list() for name in ("doc_id", "window_index", "text", "char_start", "char_end",
                                                        "labels", "pred_labels", "weight", *meta)}
        pred = [tuple(p) if p is not None else () for p in col["pred_labels"]]
        labels = [tuple(g) if g is not None else p for g, p in zip(col["labels"], pred, strict=True)]
        metadata = ([dict(zip(meta, values, strict=True)) for values in zip(*(col[m] for m in meta), strict=True)]
                    if meta else [{} for _ in positions])
        scores = [score for picked in results for _, score, _ in picked]
        window_scores = [own for picked in results for _, _, own in picked]
        ranks = [rank for picked in results for rank in range(1, len(picked) + 1)]
        flat = [Hit(score=score, rank=rank, doc_id=doc_id, window_index=window_index, text=text, char_start=start,
                    char_end=end, labels=gold, metadata=meta_row, pred_labels=predicted, weight=weight,
                    window_score=own)
                for score, rank, doc_id, window_index, text, start, end, gold, meta_row, predicted, weight, own in zip(
                    scores, ranks, col["doc_id"], col["window_index"], col["text"], col["char_start"],
                    col["char_end"], labels, metadata, pred, col["weight"], window_scores, strict=True)]
        out: list[list[Hit]] = []
        i = 0
        for picked in results:
            out.append(flat[i : i + len(picked)])
            i += len(picked)
        return out

    # -- persistence -----------------------------------------------------------------------------------------
    def lock(self, directory: str | os.PathLike[str]) -> None:
        """Take the writer lock of ``directory`` now, before long work that ends in ``save(directory)``, so a
        second writer fails at once with ``IndexLockedError``. Held until ``close()``."""
        self._lock_directory(Path(os.path.abspath(directory)))

    def _lock_directory(self, target: Path) -> None:
        lock = self._dir_locks.get(target)
        if lock is None or not lock.held:
            self._dir_locks[target] = storage.DirectoryLock(target)

    def unlock(self, directory: str | os.PathLike[str]) -> None:
        """Release the writer lock of ``directory`` if this object holds it (``close()`` releases them all);
        for a save into a path whose lock is not wanted, such as a temporary directory."""
        with self._mutex:
            lock = self._dir_locks.pop(Path(os.path.abspath(directory)), None)
            if lock is not None:
                lock.release()

    def _manifest(self) -> dict[str, Any]:
        import bm25s

        return {
            "format_version": FORMAT_VERSION,
            "dim": self.dim,
            "metric": METRIC,
            "factory": self._backend.factory,
            "layout": self._backend.layout,
            "index_description": self._backend.description,
            "normalize": self._normalize,
            "fp16": self._backend.fp16,
            "ivf_threshold": self._backend.ivf_threshold,
            "count": len(self),
            "next_row_id": self._next_row_id,
            "encoder_fingerprint": self._fingerprint,
            "attributes": self.attributes,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),  # noqa: UP017 (py3.10)
            "library_versions": {
                "python": platform.python_version(),
                "faiss": faiss_version(),
                "numpy": np.__version__,
                "polars": pl.__version__,
                "bm25s": getattr(bm25s, "__version__", "unknown"),
                "pystemmer": _distribution_version("PyStemmer"),
            },
        }

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Save to ``directory`` atomically (write a temporary sibling, fsync, swap it in).

        A crash at any moment leaves the previous save loadable. The first save to a directory takes its writer
        lock and keeps it until ``close()``; another writer then gets ``IndexLockedError``. A directory that
        exists, is not empty and is not an index is never replaced.
        """
        target = Path(os.path.abspath(directory))
        with self._mutex:
            self._lock_directory(target)
            table = self._table
            storage.atomic_save(
                target,
                {"faiss.index": self._backend.write, "passages.parquet": lambda p: table.write_parquet(p)},
                self._manifest(),
            )
            logger.info("saved %d windows to %s", len(self), target)

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str],
        *,
        mmap: bool = False,
        encoder: QueryEncoder | None = None,
        lock: bool = False,
        device: str | None = None,
    ) -> PassageIndex:
        """Load an index saved by ``save``; every part is checked against the manifest first.

        ``mmap=True`` maps the vectors from the file instead of reading them (flat and IVF layouts; others are
        read into memory, with a log line); the first change copies them into memory. ``encoder`` must have the
        index's dim and, when both record one, the same fingerprint. ``lock=True`` takes the directory's writer
        lock (``IndexLockedError`` if another writer holds it); readers need no lock. ``device``: where searches
        run (see the class docs).
        Raises ``IndexLoadError`` naming what is missing, corrupt or mismatched.
        """
        target = Path(os.path.abspath(directory))
        dir_lock = storage.DirectoryLock(target) if lock else None
        try:
            index = cls._load(target, mmap=mmap, encoder=encoder)
            index.device = device
        except BaseException:
            if dir_lock is not None:
                dir_lock.release()
            raise
        if dir_lock is not None:
            index._dir_locks[target] = dir_lock
        return index

    @classmethod
    def _load(cls, target: Path, *, mmap: bool, encoder: QueryEncoder | None) -> PassageIndex:
        def fail(what: str) -> IndexLoadError:
            return IndexLoadError(f"index at {target}: {what}")

        def validate(m: dict[str, Any]) -> None:
            version = m.get("format_version")
            if version != FORMAT_VERSION:
                raise fail(f"format_version {version!r} is not readable by this version (reads {FORMAT_VERSION})")
            expected: dict[str, tuple[type, ...]] = {
                "dim": (int,), "metric": (str,), "factory": (str, type(None)), "layout": (str,),
                "index_description": (str,), "normalize": (bool,), "fp16": (bool,), "ivf_threshold": (int,),
                "count": (int,), "next_row_id": (int,), "encoder_fingerprint": (str, type(None)),
            }
            for key, types in expected.items():
                if key not in m:
                    raise fail(f"manifest.json lacks {key!r}")
                value = m[key]
                if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                    raise fail(f"manifest.json {key}={value!r} has the wrong type")
            if m["metric"] != METRIC:
                raise fail(f"metric {m['metric']!r} is not {METRIC!r}")
            if m["dim"] <= 0 or m["count"] < 0 or m["next_row_id"] < m["count"] or m["ivf_threshold"] <= 0:
                raise fail(f"manifest.json has impossible sizes (dim={m['dim']}, count={m['count']}, "
                           f"next_row_id={m['next_row_id']})")

        with storage.open_snapshot(target, validate) as snap:
            m = snap.manifest
            raw = snap.read_bytes("passages.parquet")
            snap.verify_bytes("passages.parquet", raw)
            snap.verify("faiss.index")
            try:
                table = pl.read_parquet(io.BytesIO(raw))
            except Exception as exc:
                raise fail(f"passages.parquet cannot be read ({type(exc).__name__}: {exc})") from None
            problem = validate_stored_table(table)
            if problem:
                raise fail(f"passages.parquet: {problem}")
            try:
                backend = FaissBackend.read(snap.fd_path("faiss.index"), mmap=mmap, factory=m["factory"],
                                            fp16=m["fp16"], ivf_threshold=m["ivf_threshold"])
            except (IndexLoadError, IndexInputError) as exc:
                raise fail(str(exc)) from None
        checks = [
            ("dim", m["dim"], backend.dim),
            ("metric", METRIC, METRIC if backend.metric_is_inner_product else "not inner product"),
            ("index_description", m["index_description"], backend.description),
            ("count (faiss.index)", m["count"], backend.ntotal),
            ("count (passages.parquet)", m["count"], table.height),
        ]
        for what, expected, found in checks:
            if expected != found:
                raise fail(f"{what} mismatch: manifest.json says {expected!r}, found {found!r}")
        if table.height and int(table["row_id"].max()) >= m["next_row_id"]:
            raise fail("passages.parquet has row ids at or above the manifest's next_row_id")
        if not np.array_equal(np.sort(backend.ids()), table["row_id"].to_numpy()):
            raise fail("the ids in faiss.index differ from the row ids in passages.parquet")
        if encoder is not None:
            if int(getattr(encoder, "dim", -1)) != m["dim"]:
                raise fail(f"encoder dim {getattr(encoder, 'dim', None)!r} does not match the index dim {m['dim']}")
            given = fingerprint_of(encoder)
            if m["encoder_fingerprint"] is not None and given is not None and given != m["encoder_fingerprint"]:
                raise fail(
                    f"encoder fingerprint {given!r} differs from the one the index was built with "
                    f"({m['encoder_fingerprint']!r}): its query vectors would not match the stored ones"
                )
            if m["encoder_fingerprint"] is not None and given is None:
                logger.warning("the index was built with encoder %r; the given encoder has no fingerprint to check",
                               m["encoder_fingerprint"])
        index = cls.__new__(cls)
        index._setup(backend, table, m["next_row_id"], normalize=m["normalize"], encoder=encoder,
                     fingerprint=m["encoder_fingerprint"] if encoder is None or fingerprint_of(encoder) is None
                     else fingerprint_of(encoder))
        logger.info("loaded %d windows from %s (%s%s)", len(index), target, backend.layout, ", mmap" if backend.mmapped else "")
        attributes = m.get("attributes", {})
        if not isinstance(attributes, dict):
            raise fail(f"manifest.json attributes must be a JSON object, got {type(attributes).__name__}")
        index.attributes = attributes
        return index

    def close(self) -> None:
        """Release the directory writer lock(s) this object holds. The index stays searchable in memory."""
        with self._mutex:
            for lock in self._dir_locks.values():
                lock.release()
            self._dir_locks.clear()

    def __enter__(self) -> PassageIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
