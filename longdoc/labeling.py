"""Batch labelling of a document stream into Parquet: bounded memory, one bad document never stops the batch,
and a run killed at any moment (even SIGKILL) resumes where it stopped with the same call.

The output is a labels directory: one atomically written Parquet part per chunk of documents, every input
document with a row (error rows included), read back by :func:`read_labels`. Its layout, columns and
exactly-once rules are in :mod:`longdoc.label_store`; ``longdoc.distributed`` writes the same directory with Ray
from the same rows (:func:`label_rows`, :func:`label_chunk`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from longdoc.data import iter_documents
from longdoc.errors import ConfigError
from longdoc.label_store import (
    conform_rows,
    label_names,
    label_schema,
    part_files,
    prepare_output,
    read_labels,
    write_atomic,
)

if TYPE_CHECKING:
    from longdoc.classifier import LongDocClassifier

logger = logging.getLogger(__name__)

__all__ = ["LabelSummary", "label_chunk", "label_documents", "label_names", "label_rows", "read_labels"]


@dataclass(frozen=True)
class LabelSummary:
    """What a :func:`label_documents` call did.

    ``n_documents``: documents in the source; ``n_labelled``: labelled by this call; ``n_skipped``: already done
    by an earlier (interrupted) call; ``n_retried``: labelled by this call again because an earlier call's row
    for them is ``failed`` (counted in ``n_labelled`` too); ``n_errors``: error rows written by this call
    (``failed`` ones included); ``n_parts``: part files in the output now.
    """

    output: str
    n_documents: int
    n_labelled: int
    n_skipped: int
    n_retried: int
    n_errors: int
    n_parts: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _error_of(warning: str | None, n_windows: int) -> str | None:
    """Why a document gets no label: it has no tokens (empty, whitespace only, an unreadable line...)."""
    if n_windows == 0:
        return warning or "document has no tokens: no label"
    return None


def label_chunk(clf: LongDocClassifier, docs: pl.DataFrame, top_passages: int) -> pl.DataFrame:
    """Rows for one chunk; on an unexpected failure, documents are retried one by one to isolate the bad one.

    A document whose analysis still raises alone gets an error row with ``failed=True`` (the next
    ``label_documents`` call labels it again); every other row has ``failed=False``.
    """
    try:
        return label_rows(clf, docs, top_passages)
    except Exception as exc:  # noqa: BLE001 - a bad document must not stop the batch
        if docs.height == 1:
            logger.warning("document %r failed: %s", docs["doc_id"][0], exc)
            return pl.DataFrame(
                {"doc_id": docs["doc_id"], "error": [f"{type(exc).__name__}: {exc}"], "failed": [True]},
            )
        logger.warning("a chunk of %d documents failed (%s): retrying them one by one", docs.height, exc)
        return pl.concat([label_chunk(clf, docs.slice(i, 1), top_passages) for i in range(docs.height)],
                         how="diagonal_relaxed")


def label_rows(clf: LongDocClassifier, docs: pl.DataFrame, top_passages: int) -> pl.DataFrame:
    """The part rows of ``docs`` from one analysis (one encoder pass); raises when the analysis raises
    (:func:`label_chunk` isolates the bad document). Documents without tokens get error rows."""
    analysis = clf.analyze(docs, show_progress_bar=False)
    decided = clf.decide(analysis.probs)
    counts = analysis.windows.documents["n_windows"].to_numpy().astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    table = analysis.windows.table
    w_index = table["window_index"].to_numpy()
    starts, ends = table["char_start"].to_numpy(), table["char_end"].to_numpy()
    weights = np.asarray(analysis.window_weights, dtype=np.float64)
    warnings = docs["warning"].to_list() if "warning" in docs.columns else [None] * docs.height
    out_labels, probs, passages, errors, kept_warnings = [], [], [], [], []
    for i in range(docs.height):
        error = _error_of(warnings[i], int(counts[i]))
        lo, hi = offsets[i], offsets[i + 1]
        if error is not None or np.isnan(analysis.probs[i]).any():
            out_labels.append(None)
            probs.append(None)
            passages.append(None)
            errors.append(error or "no prediction")
            kept_warnings.append(None)
            continue
        order = lo + np.argsort(-weights[lo:hi], kind="stable")[:top_passages]
        passages.append([{"window_index": int(w_index[j]), "char_start": int(starts[j]), "char_end": int(ends[j]),
                          "weight": float(weights[j])} for j in order])
        out_labels.append(decided[i])
        probs.append([float(p) for p in analysis.probs[i]])
        errors.append(None)
        kept_warnings.append(warnings[i])
    schema = label_schema(clf.multi_label)
    label_col = "labels" if clf.multi_label else "label"
    return pl.DataFrame(
        {"doc_id": docs["doc_id"].to_list(), label_col: out_labels, "probs": probs, "top_passages": passages,
         "warning": kept_warnings, "error": errors, "failed": [False] * docs.height},
        schema=schema,
    )


def _chunks(source: Any, chunk_size: int, reader_options: dict[str, Any]) -> Iterator[pl.DataFrame]:
    options = {"on_bad_line": "warn", **reader_options}
    yield from iter_documents(source, chunk_size=chunk_size, **options)


def label_documents(
    clf: LongDocClassifier,
    source: Any,
    output: str | os.PathLike[str],
    *,
    chunk_size: int = 256,
    top_passages: int = 3,
    show_progress_bar: bool | None = None,
    retry_failed: bool = True,
    **reader_options: Any,
) -> LabelSummary:
    """Label every document of ``source`` into Parquet parts under ``output`` (see the module docstring).

    Args:
        clf: the classifier.
        source: anything :func:`longdoc.iter_documents` streams (a file, a folder, a table, a list...).
        output: the output directory; created if needed. A directory from an interrupted call with the same
            model is resumed: documents already written are skipped (except ``failed`` ones, see
            ``retry_failed``).
        chunk_size: documents per chunk (and per part file); memory stays bounded by one chunk.
        top_passages: how many of the most influential windows to record per document.
        show_progress_bar: a tqdm bar over documents; ``None`` shows it when the logger is at INFO.
        retry_failed: on resume, label again the documents whose latest row is ``failed`` (their analysis
            raised, e.g. a CUDA out-of-memory); their new rows go into new parts and supersede the failed ones
            in :func:`read_labels`. ``False``: failed rows count as done, like every other row.
        reader_options: ``iter_documents`` options (``text_column``, ``id_column``, ``label_column``...);
            ``on_bad_line`` defaults to ``"warn"`` here, so an unreadable line becomes an error row.

    Raises:
        ConfigError: bad ``chunk_size``/``top_passages``/``retry_failed``, or ``output`` holds labels of another
            model.
        DataError: the source cannot be read at all, or ``output`` is a non-empty foreign directory. Parts
            written before a mid-stream reader error are kept; fix the input and call again to finish.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ConfigError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    if isinstance(top_passages, bool) or not isinstance(top_passages, int) or top_passages < 0:
        raise ConfigError(f"top_passages must be an int >= 0, got {top_passages!r}")
    if not isinstance(retry_failed, bool):
        raise ConfigError(f"retry_failed must be True or False, got {retry_failed!r}")
    started = time.perf_counter()
    out = Path(output)
    done, retry, part_no = prepare_output(out, clf, retry_failed=retry_failed)
    if done:
        logger.info("resuming: %d documents already labelled in %s", len(done), out)
    n_docs = n_new = n_skipped = n_retried = n_errors = n_failed = 0
    show = logger.isEnabledFor(logging.INFO) if show_progress_bar is None else bool(show_progress_bar)
    bar = tqdm(desc="label documents", unit="doc", disable=not show)
    try:
        for chunk in _chunks(source, chunk_size, reader_options):
            n_docs += chunk.height
            todo = chunk.filter(pl.Series([i not in done for i in chunk["doc_id"].to_list()], dtype=pl.Boolean)) \
                if done else chunk
            n_skipped += chunk.height - todo.height
            if todo.height:
                if retry:
                    n_retried += sum(i in retry for i in todo["doc_id"].to_list())
                rows = conform_rows(label_chunk(clf, todo, top_passages), clf.multi_label)
                path = out / f"part-{part_no:05d}.parquet"
                write_atomic(path, lambda p, rows=rows: rows.write_parquet(p))
                part_no += 1
                n_new += rows.height
                n_errors += rows.height - rows["error"].null_count()
                n_failed += int(rows["failed"].sum())
                done.update(todo["doc_id"].to_list())
            bar.update(chunk.height)
    finally:
        bar.close()
    summary = LabelSummary(output=str(out), n_documents=n_docs, n_labelled=n_new, n_skipped=n_skipped,
                           n_retried=n_retried, n_errors=n_errors, n_parts=len(part_files(out)),
                           seconds=time.perf_counter() - started)
    logger.info("labelled %d documents (%d skipped as done, %d retried, %d error rows) into %s", n_new, n_skipped,
                n_retried, n_errors, out)
    if n_failed:
        logger.warning("%d documents failed (their analysis raised): run the same call again to retry them",
                       n_failed)
    return summary
