"""Batch labelling of a document stream into Parquet: bounded memory, one bad document never stops the batch,
and a run killed at any moment (even SIGKILL) resumes where it stopped with the same call.

The output is a labels directory: one atomically written Parquet part per chunk of documents, every input
document with a row (error rows included), read back by :func:`read_labels`. Its layout, columns and
exactly-once rules are in :mod:`longdoc.label_store`. This module is the local engine: it reads the source chunk
by chunk and labels each chunk in this process. The rows, the checks and the counting are
:mod:`longdoc.label_core`'s, which ``longdoc.distributed`` runs with Ray into the same directory.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
from tqdm.auto import tqdm

from longdoc.data import iter_documents
from longdoc.label_core import (
    LONG_DOCUMENT_CHARS,
    LabelRun,
    LabelSummary,
    check_options,
    label_chunk,
    label_rows,
)
from longdoc.label_store import conform_rows, label_names, read_labels

if TYPE_CHECKING:
    from longdoc.classifier import LongDocClassifier

logger = logging.getLogger(__name__)

__all__ = ["LabelSummary", "label_chunk", "label_documents", "label_names", "label_rows", "read_labels"]

#: Characters of long documents held back (to be labelled after the short ones that follow them) before they are
#: labelled anyway: bounds the memory the hold-back costs.
_HELD_BACK_CHARS = 64 * 1024 * 1024

_CLOSING = ("labelled %(n_labelled)d documents (%(n_skipped)d skipped as done, %(n_retried)d retried, "
            "%(n_errors)d error rows) into %(output)s")


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
    check_options(chunk_size=chunk_size, top_passages=top_passages, retry_failed=retry_failed)
    run = LabelRun(clf, Path(output), retry_failed=retry_failed, log=logger)
    done = run.done
    n_docs = n_skipped = 0
    show = logger.isEnabledFor(logging.INFO) if show_progress_bar is None else bool(show_progress_bar)
    bar = tqdm(desc="label documents", unit="doc", disable=not show)
    held: list[pl.DataFrame] = []  # long documents, labelled one by one after the shorter ones

    def write(docs: pl.DataFrame, *, progress: bool = False) -> None:
        rows = conform_rows(label_chunk(clf, docs, top_passages, show_progress_bar=progress), clf.multi_label)
        run.write_part(rows, lambda p, rows=rows: rows.write_parquet(p))

    def label_held() -> None:
        while held:
            doc = held.pop(0)
            logger.info("labelling the long document %r (%d characters)", doc["doc_id"][0],
                        doc["text"].str.len_chars().fill_null(0)[0])
            write(doc, progress=show)  # the encoder's window bar shows its progress
            bar.update(1)

    try:
        for chunk in _chunks(source, chunk_size, reader_options):
            n_docs += chunk.height
            todo = chunk.filter(pl.Series([i not in done for i in chunk["doc_id"].to_list()], dtype=pl.Boolean)) \
                if done else chunk
            n_skipped += chunk.height - todo.height
            # one long document must not hold the others back: it waits (as its own part) for the end of the
            # source, or until the long documents held back reach _HELD_BACK_CHARS
            long = (todo["text"].str.len_chars().fill_null(0) > LONG_DOCUMENT_CHARS).to_numpy()
            if long.any():
                for i in long.nonzero()[0]:
                    held.append(todo.slice(int(i), 1))
                todo_now = todo.filter(pl.Series(~long))
            else:
                todo_now = todo
            if todo_now.height:
                write(todo_now)
            done.update(todo["doc_id"].to_list())
            bar.update(chunk.height - int(long.sum()))
            if sum(int(d["text"].str.len_chars().fill_null(0)[0]) for d in held) > _HELD_BACK_CHARS:
                label_held()
        label_held()
    finally:
        bar.close()
        run.close()  # the lock, when a chunk raised (finish releases it too)
    return run.finish(n_documents=n_docs, n_skipped=n_skipped, closing=_CLOSING)
