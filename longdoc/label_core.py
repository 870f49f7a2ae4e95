"""One way to label, whatever the engine: the argument checks, the rows of a labels-directory part, and the
bookkeeping of a labelling run (resume, part numbering, counting, summary, closing log).

The engines only schedule the work: :func:`longdoc.labeling.label_documents` labels chunk after chunk in this
process, :func:`longdoc.distributed.label_with_ray` runs :func:`label_rows` in Ray actors and renames their files
into parts. Both open a :class:`LabelRun` on the output directory, hand it every part they write, and close it
with :meth:`LabelRun.finish`. The directory's format is :mod:`longdoc.label_store`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from indexer.storage import DirectoryLock, write_file_atomically
from longdoc.errors import ConfigError
from longdoc.label_store import label_schema, part_files, prepare_output

if TYPE_CHECKING:
    from longdoc.classifier import Analysis, LongDocClassifier

# The records of a failing document keep the logger name they have always had, whichever engine labels it.
logger = logging.getLogger("longdoc.labeling")

#: A document with more characters than this is labelled on its own, after the shorter documents of its chunk
#: (``longdoc.labeling``): about 25 windows of 512 tokens of English prose, many more than a typical document.
LONG_DOCUMENT_CHARS = 50_000

__all__ = ["LONG_DOCUMENT_CHARS", "LabelRun", "LabelSummary", "check_options", "label_chunk", "label_rows", "positive_int"]


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


# --------------------------------------------------------------------------------------------------- checks


def positive_int(value: Any, name: str) -> int:
    """``value`` when it is an int >= 1 (not a bool); else ``ConfigError`` naming the argument ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an int >= 1, got {value!r}")
    return value


def check_top_passages(top_passages: Any) -> int:
    """``top_passages`` when it is an int >= 0 (not a bool); else ``ConfigError``."""
    if isinstance(top_passages, bool) or not isinstance(top_passages, int) or top_passages < 0:
        raise ConfigError(f"top_passages must be an int >= 0, got {top_passages!r}")
    return top_passages


def check_options(*, top_passages: Any, retry_failed: Any, **positive: Any) -> None:
    """The options every engine's labelling call takes: each of ``positive`` (``chunk_size``,
    ``batch_size``...; checked first, in the order given) an int >= 1, ``top_passages`` an int >= 0,
    ``retry_failed`` a bool. Raises ``ConfigError`` on the first bad one."""
    for name, value in positive.items():
        positive_int(value, name)
    check_top_passages(top_passages)
    if not isinstance(retry_failed, bool):
        raise ConfigError(f"retry_failed must be True or False, got {retry_failed!r}")


# --------------------------------------------------------------------------------------------------- rows


def _error_of(warning: str | None, n_windows: int) -> str | None:
    """Why a document gets no label: it has no tokens (empty, whitespace only, an unreadable line...)."""
    if n_windows == 0:
        return warning or "document has no tokens: no label"
    return None


def label_rows(
    clf: LongDocClassifier, docs: pl.DataFrame, top_passages: int, *, analysis: Analysis | None = None,
    show_progress_bar: bool = False,
) -> pl.DataFrame:
    """The part rows of ``docs`` from one analysis (one encoder pass); raises when the analysis raises
    (:func:`label_chunk` isolates the bad document). Documents without tokens get error rows.

    ``analysis``: ``clf``'s analysis of ``docs`` when the caller already made it (the Ray stages encode the
    windows they were handed); ``None`` runs ``clf.analyze(docs)``.
    """
    if analysis is None:
        analysis = clf.analyze(docs, show_progress_bar=show_progress_bar)
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


def label_chunk(clf: LongDocClassifier, docs: pl.DataFrame, top_passages: int, *,
                show_progress_bar: bool = False) -> pl.DataFrame:
    """Rows for one chunk; on an unexpected failure, documents are retried one by one to isolate the bad one.

    A document whose analysis still raises alone gets an error row with ``failed=True`` (the next
    labelling call labels it again); every other row has ``failed=False``.
    """
    try:
        return label_rows(clf, docs, top_passages, show_progress_bar=show_progress_bar)
    except Exception as exc:  # noqa: BLE001 - a bad document must not stop the batch
        if docs.height == 1:
            logger.warning("document %r failed: %s", docs["doc_id"][0], exc)
            return pl.DataFrame(
                {"doc_id": docs["doc_id"], "error": [f"{type(exc).__name__}: {exc}"], "failed": [True]},
            )
        logger.warning("a chunk of %d documents failed (%s): retrying them one by one", docs.height, exc)
        return pl.concat([label_chunk(clf, docs.slice(i, 1), top_passages) for i in range(docs.height)],
                         how="diagonal_relaxed")


# --------------------------------------------------------------------------------------------------- a run


class LabelRun:
    """The bookkeeping of one labelling call over a labels directory, whatever the engine.

    Opening it takes the directory's writer lock (``<output>.lock`` beside it, as for an index: a second run on the
    same directory gets ``IndexLockedError``; released by :meth:`finish` or :meth:`close`), checks or creates
    ``output`` for ``clf`` (:func:`longdoc.label_store.prepare_output`), calls ``tidy(output)`` (an engine's own clean-up of what a killed run left), and logs what is resumed. The engine
    then hands it every part through :meth:`write_part` and ends with :meth:`finish`.

    Attributes:
        output: the labels directory.
        done: the doc_ids already labelled by earlier calls (to skip).
        retry: the doc_ids whose latest row is ``failed`` (labelled again).
    """

    def __init__(
        self,
        clf: LongDocClassifier,
        output: Path,
        *,
        retry_failed: bool,
        log: logging.Logger = logger,
        started: float | None = None,
        tidy: Callable[[Path], None] | None = None,
    ) -> None:
        self.started = time.perf_counter() if started is None else started
        self.output = output
        self.log = log
        # one writer per labels directory, as per index directory: a second run fails here, before any work
        self._lock: DirectoryLock | None = DirectoryLock(
            output, what="labels directory",
            hint="wait for that run to finish (one writer per labels directory; a killed run's lock is released "
                 "with it), or write to another output directory")
        try:
            self.done, self.retry, self._next_part = prepare_output(output, clf, retry_failed=retry_failed)
        except BaseException:
            self.close()
            raise
        self.n_labelled = self.n_retried = self.n_errors = self.n_failed = 0
        if tidy is not None:
            tidy(output)
        if self.done:
            log.info("resuming: %d documents already labelled in %s", len(self.done), output)

    def close(self) -> None:
        """Release the labels directory's writer lock (``finish`` does; call it when a run stops on an error)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def write_part(self, rows: pl.DataFrame, write: Callable[[Path], Any]) -> None:
        """Write the next part atomically through ``write(path)`` and count its ``rows`` (``doc_id``,
        ``error`` and ``failed`` are enough)."""
        write_file_atomically(self.output / f"part-{self._next_part:05d}.parquet", write)
        self._next_part += 1
        self.n_labelled += rows.height
        self.n_errors += rows.height - rows["error"].null_count()
        self.n_failed += int(rows["failed"].fill_null(False).sum())
        if self.retry:
            self.n_retried += sum(i in self.retry for i in rows["doc_id"].to_list())

    def finish(self, *, n_documents: int, n_skipped: int, closing: str) -> LabelSummary:
        """The call's summary; logs ``closing`` (an engine's wording, ``%(name)s`` fields of the summary) and,
        when documents failed, how to retry them."""
        self.close()
        summary = LabelSummary(output=str(self.output), n_documents=n_documents, n_labelled=self.n_labelled,
                               n_skipped=n_skipped, n_retried=self.n_retried, n_errors=self.n_errors,
                               n_parts=len(part_files(self.output)), seconds=time.perf_counter() - self.started)
        self.log.info(closing, summary.to_dict())
        if self.n_failed:
            self.log.warning("%d documents failed (their analysis raised): run the same call again to retry them",
                             self.n_failed)
        return summary
