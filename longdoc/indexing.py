"""Encode once, use twice: one encoder pass labels documents and fills a passage index with their windows.

    from longdoc.indexing import index_documents
    index, analysis = index_documents(clf, docs)              # a new index; analysis.probs are the labels
    index.save("index/")
    result = index_documents(clf, edited_docs, index=PassageIndex.load("index/", encoder=clf.retrieval_encoder),
                             prune=True)                       # re-encodes only new or changed documents
    result.counts                                             # IndexCounts(added=1, updated=1, unchanged=..., removed=1)

**Which vectors the index holds.** The window embeddings of the classifier's ``retrieval_encoder``, mean-pooled
and L2-normalised; that encoder also encodes the queries (the index records its fingerprint and refuses another
one at load). With the frozen encoder it is the classifier's own encoder (the pretrained MiniLM by default), so
one encoder pass gives the labels and the vectors. After fine-tuning it is, by default, the encoder as it was
before fine-tuning (``TrainConfig(retrieval_encoder="pretrained")``): fine-tuning for classification lowered the
man-page retrieval MRR (benchmarks/RESULTS.md), so the index keeps the pretrained embeddings and the windows are
encoded a second time for it. ``retrieval_encoder="finetuned"`` indexes with the fine-tuned encoder (one pass).

**Updates.** Every passage row carries ``content_hash``, the sha256 of its document's text (UTF-8). Given an
existing index, a document whose id is absent is *added*, one whose hash differs is *updated* (its old windows
are replaced), one whose hash matches is *unchanged* and is not encoded again; with ``prune=True`` documents in
the index but not in the collection are *removed*.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from longdoc.errors import ConfigError

if TYPE_CHECKING:
    from indexer import PassageIndex
    from longdoc.classifier import Analysis, LongDocClassifier

logger = logging.getLogger(__name__)

__all__ = ["IndexCounts", "Indexed", "content_hash", "index_documents", "index_vectors", "passages_from_analysis"]

# Columns of the passage table this module writes; document metadata with one of these names is renamed.
_PASSAGE_COLUMNS = (
    "row_id", "doc_id", "window_index", "char_start", "char_end", "text", "labels", "pred_labels", "pred_probs",
    "weight", "content_hash",
)


def content_hash(text: str) -> str:
    """sha256 hex digest of a document's text (UTF-8): what tells an edited document from an unchanged one."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def passages_from_analysis(analysis: Analysis, clf: LongDocClassifier | None = None) -> pl.DataFrame:
    """The passage table of an analysis, one row per window, aligned with ``analysis.embeddings``.

    Columns: ``doc_id``, ``window_index``, ``char_start``, ``char_end``, ``text`` (exactly
    ``document[char_start:char_end]``), ``labels`` (the document's gold labels; null when it has none, so the
    index's label filter falls back to the prediction), ``pred_labels`` (the classifier's decision; needs
    ``clf``, else null), ``pred_probs`` (the document's probabilities in ``clf.labels`` order), ``weight`` (the
    window's attribution within its document), ``content_hash`` (see :func:`content_hash`), then the
    document's metadata columns (a metadata column whose name clashes with these is renamed ``meta_<name>``).
    """
    docs = analysis.documents
    table = analysis.windows.table
    n_docs = docs.height
    probs = np.asarray(analysis.probs, dtype=np.float64)
    decided: list[Any] = clf.decide(analysis.probs) if clf is not None else [None] * n_docs
    pred_labels = [None if d is None else ([d] if isinstance(d, str) else list(d)) for d in decided]
    doc_rows = pl.DataFrame(
        {
            "doc_id": docs["doc_id"],
            "__doc_row": np.arange(n_docs, dtype=np.int64),
            "labels": docs["labels"].map_elements(lambda x: x if len(x) else None, return_dtype=pl.List(pl.String))
            if "labels" in docs.columns else pl.Series([None] * n_docs, dtype=pl.List(pl.String)),
            "pred_labels": pl.Series(pred_labels, dtype=pl.List(pl.String)),
            "pred_probs": pl.Series(
                [None if np.isnan(row).any() else row.tolist() for row in probs], dtype=pl.List(pl.Float64)
            ),
            "content_hash": [content_hash(t) for t in docs["text"].to_list()],
        }
    )
    meta = [c for c in docs.columns if c not in ("doc_id", "text", "labels", "warning")]
    renamed = {c: (f"meta_{c}" if c in _PASSAGE_COLUMNS else c) for c in meta}
    doc_rows = pl.concat([doc_rows, docs.select(meta).rename(renamed)], how="horizontal")

    windows = table.select("doc_id", "window_index", "char_start", "char_end").with_columns(
        pl.Series("weight", np.asarray(analysis.window_weights, dtype=np.float64))
    )
    joined = windows.join(doc_rows, on="doc_id", how="left", maintain_order="left")
    texts = docs["text"].to_list()
    slices = [
        texts[r][s:e]
        for r, s, e in zip(joined["__doc_row"].to_list(), joined["char_start"].to_list(), joined["char_end"].to_list(),
                           strict=True)
    ]
    joined = joined.with_columns(pl.Series("text", slices, dtype=pl.String)).drop("__doc_row")
    front = ["doc_id", "window_index", "char_start", "char_end", "text", "labels", "pred_labels", "pred_probs",
             "weight", "content_hash"]
    return joined.select([*front, *renamed.values()]).with_columns(
        pl.col("window_index", "char_start", "char_end").cast(pl.Int64)
    )


@dataclass(frozen=True)
class IndexCounts:
    """What an :func:`index_documents` call did, in documents (``windows_added`` counts windows)."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    encoded: int = 0
    windows_added: int = 0
    empty: int = 0  # new documents without windows (empty or whitespace-only text): not indexed

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class Indexed(tuple):
    """``(index, analysis)``, unpackable as a pair, with ``.counts`` (:class:`IndexCounts`) attached.

    ``analysis`` covers the documents that were encoded in this call (all of them for a new index; only the new
    and changed ones for an update).
    """

    counts: IndexCounts

    def __new__(cls, index: PassageIndex, analysis: Analysis, counts: IndexCounts) -> Indexed:
        obj = super().__new__(cls, (index, analysis))
        obj.counts = counts
        return obj

    @property
    def index(self) -> PassageIndex:
        return self[0]

    @property
    def analysis(self) -> Analysis:
        return self[1]


def index_vectors(clf: LongDocClassifier, analysis: Analysis, rows: np.ndarray | None = None,
                  show_progress_bar: bool | None = None) -> np.ndarray:
    """float32 vectors of ``analysis``'s windows (or its window ``rows``) for a passage index.

    The analysis' own embeddings when the classifier indexes with its classification encoder, else the windows
    encoded again by ``clf.retrieval_encoder``.
    """
    if clf.retrieval_encoder is clf.encoder:
        emb = np.asarray(analysis.embeddings, dtype=np.float32)
        return emb if rows is None else emb[rows]
    windows = analysis.windows if rows is None else analysis.windows.take(rows)
    if len(windows) == 0:
        return np.zeros((0, clf.retrieval_encoder.dim), dtype=np.float32)
    return clf.retrieval_encoder.encode_windows(windows, show_progress_bar=show_progress_bar)


def _is_analysis(obj: Any) -> bool:
    return all(hasattr(obj, a) for a in ("documents", "windows", "embeddings", "probs", "window_weights"))


def _is_encoded(obj: Any) -> bool:
    return not _is_analysis(obj) and all(hasattr(obj, a) for a in ("documents", "windows", "embeddings"))


def _stored_hashes(index: PassageIndex) -> dict[str, str | None]:
    table = index.passages
    if table.height == 0:
        return {}
    if "content_hash" not in table.columns:
        return dict.fromkeys(table["doc_id"].unique().to_list())
    first = table.group_by("doc_id", maintain_order=True).agg(pl.col("content_hash").first())
    return dict(zip(first["doc_id"].to_list(), first["content_hash"].to_list(), strict=True))


def index_documents(
    clf: LongDocClassifier,
    documents: Any,
    *,
    index: PassageIndex | None = None,
    prune: bool = False,
    show_progress_bar: bool | None = None,
    **columns: Any,
) -> Indexed:
    """Label documents and index their windows with one encoder pass; returns ``(index, analysis)``.

    Args:
        clf: the classifier; its ``retrieval_encoder`` makes the vectors and becomes the index's query encoder
            (see the module docstring).
        documents: any input ``clf.analyze`` takes (document table, file path, list of texts...), or an
            ``Analysis`` / ``Encoded`` from an earlier pass over the same documents (nothing is encoded again).
        index: an existing index to update (documents are matched by ``doc_id`` and ``content_hash``); ``None``
            builds a new one (``encoder=clf.retrieval_encoder``).
        prune: remove the documents of ``index`` that are not in ``documents``.
        columns: ``text_column`` / ``label_column`` / ``id_column`` for tabular inputs.

    Returns:
        :class:`Indexed`: unpacks as ``(index, analysis)``; ``.counts`` says how many documents were added,
        updated, unchanged, removed and encoded. Documents without tokens are labelled (NaN probabilities) but
        have no windows to index.

    Raises:
        ConfigError: ``index`` was built with a different encoder (its fingerprint differs from
            ``clf.retrieval_encoder``'s) or has a different dimension.
    """
    from indexer import PassageIndex

    encoder = clf.retrieval_encoder
    if index is not None:
        if index.dim != encoder.dim:
            raise ConfigError(f"index dim {index.dim} differs from the classifier's encoder dim {encoder.dim}")
        stored = index.encoder_fingerprint
        if stored is not None and stored != encoder.fingerprint:
            raise ConfigError(
                "the index was built with another encoder (fingerprint "
                f"{stored[:12]}..., this classifier's is {encoder.fingerprint[:12]}...); build a new index"
            )
        if index.encoder is not encoder:
            index.encoder = encoder
        recorded = index.attributes.get("label_map")
        if recorded is not None and list(recorded) != list(clf.labels):
            raise ConfigError(
                f"the index holds predictions of a classifier with labels {recorded}; this classifier's labels are "
                f"{list(clf.labels)} (pred_probs are stored in label order): use that classifier or a new index"
            )

    precomputed = None
    if _is_analysis(documents):
        precomputed, docs = documents, documents.documents
    elif _is_encoded(documents):
        precomputed, docs = clf.analyze(documents, show_progress_bar=show_progress_bar), documents.documents
    else:
        docs = clf.document_table(documents, **columns)

    hashes = [content_hash(t) for t in docs["text"].to_list()]
    old = _stored_hashes(index) if index is not None else {}
    status = ["added" if d not in old else "unchanged" if old[d] == h else "updated"
              for d, h in zip(docs["doc_id"].to_list(), hashes, strict=True)]
    todo = np.asarray([s != "unchanged" for s in status], dtype=bool)
    todo_ids = docs.filter(pl.Series(todo))["doc_id"]

    if precomputed is not None:
        analysis = precomputed
        n_encoded = 0
    else:
        analysis = clf.analyze(docs.filter(pl.Series(todo)), show_progress_bar=show_progress_bar)
        n_encoded = int(todo.sum())

    passages = passages_from_analysis(analysis, clf)
    rows = None
    if precomputed is not None and not todo.all():  # skip the unchanged documents of a precomputed pass
        keep = passages["doc_id"].is_in(todo_ids.implode()).to_numpy()
        passages, rows = passages.filter(pl.Series(keep)), np.flatnonzero(keep)
    emb = index_vectors(clf, analysis, rows, show_progress_bar=show_progress_bar)

    if index is None:
        index = PassageIndex(dim=encoder.dim, encoder=encoder)
    index.attributes = {**index.attributes, "label_map": list(clf.labels)}
    # changed documents that now have no windows would keep their old windows through upsert: remove them
    emptied = sorted(set(todo_ids.to_list()) & set(old) - set(passages["doc_id"].unique().to_list()))
    if emptied:
        index.remove(doc_ids=emptied)
    if passages.height:
        index.upsert(emb, passages)
    removed = 0
    if prune:
        gone = sorted(set(old) - set(docs["doc_id"].to_list()))
        if gone:
            index.remove(doc_ids=gone)
        removed = len(gone)
    # a new document without windows (empty text) is not in the index: "empty", not "added" (on every run)
    windowed = set(passages["doc_id"].unique().to_list())
    status = ["empty" if s == "added" and d not in windowed else s
              for d, s in zip(docs["doc_id"].to_list(), status, strict=True)]
    counts = IndexCounts(
        added=status.count("added"), empty=status.count("empty"), updated=status.count("updated"), unchanged=status.count("unchanged"),
        removed=removed, encoded=n_encoded, windows_added=passages.height,
    )
    logger.info("indexed: %d added, %d updated, %d unchanged, %d removed, %d empty (%d documents encoded, %d "
                "windows)", counts.added, counts.updated, counts.unchanged, counts.removed, counts.empty,
                counts.encoded, counts.windows_added)
    return Indexed(index, analysis, counts)
