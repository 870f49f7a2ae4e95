"""Batch labelling of a document stream into Parquet: bounded memory, one bad document never stops the batch,
and a run killed at any moment (even SIGKILL) resumes where it stopped with the same call.

Output directory layout::

    out/
      _labels.json          what the parts mean: label order of ``probs``, single/multi-label, encoder fingerprint
      part-00000.parquet    one part per chunk of documents, each written atomically
      part-00001.parquet
      ...

Columns of every part (and of :func:`read_labels`):

- ``doc_id`` (str)
- ``label`` (str; single-label models) or ``labels`` (list[str]; multi-label models): null when ``error`` is set
- ``probs`` (list[float]): the probabilities in the order of ``_labels.json``'s ``"labels"`` (``clf.labels``);
  null when ``error`` is set
- ``top_passages`` (list of struct ``window_index``, ``char_start``, ``char_end``, ``weight``): the windows that
  drove the label most, best first (``document[char_start:char_end]`` is a window's text)
- ``warning`` (str or null): a reader warning for a document that was still labelled (e.g. a decoding fallback)
- ``error`` (str or null): why a document got no label (empty or whitespace-only text, an unreadable line, an
  analysis failure); the row is still written, so every input document has a row.
- ``failed`` (bool): ``True`` only for an error row written because the analysis raised (a transient CUDA
  out-of-memory, a bug hit by one document...): such a document is labelled again by the next call. ``False``
  for every other row, error rows of documents without tokens included (those are final). Parts written before
  this column existed lack it; it reads as ``False``.

Exactly once, also across crashes: a part is written to a temporary file, fsynced, then renamed to
``part-NNNNN.parquet`` (and the directory fsynced), so a part file is either complete or absent. On start, the
``doc_id`` and ``failed`` columns of every complete part are read, in part order; documents whose latest row is
not ``failed`` are skipped, those whose latest row is ``failed`` are labelled again (``retry_failed=True``, the
default) into a new part; leftover temporary files are deleted. Re-running with the same source therefore
finishes the job, transient failures included. A retried document has a row in two part files; the later row
wins, and :func:`read_labels` returns each document exactly once (its latest row).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from longdoc.data import iter_documents
from longdoc.errors import ConfigError, DataError

if TYPE_CHECKING:
    from longdoc.classifier import LongDocClassifier

logger = logging.getLogger(__name__)

__all__ = ["LabelSummary", "label_documents", "read_labels"]

FORMAT_VERSION = 1
META_FILE = "_labels.json"
_PART = re.compile(r"^part-(\d{5,})\.parquet$")
_PASSAGE = pl.Struct({"window_index": pl.Int64, "char_start": pl.Int64, "char_end": pl.Int64, "weight": pl.Float64})


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


def _schema(multi_label: bool) -> dict[str, pl.DataType]:
    label = {"labels": pl.List(pl.String)} if multi_label else {"label": pl.String}
    return {"doc_id": pl.String, **label, "probs": pl.List(pl.Float64), "top_passages": pl.List(_PASSAGE),
            "warning": pl.String, "error": pl.String, "failed": pl.Boolean}


def _conform(rows: pl.DataFrame, multi_label: bool) -> pl.DataFrame:
    """``rows`` with exactly the part columns, in order and typed (error rows of ``_label_chunk`` have three);
    a missing or null ``failed`` is ``False``."""
    schema = _schema(multi_label)
    cols = []
    for name, dtype in schema.items():
        if name not in rows.columns:
            cols.append(pl.lit(False if name == "failed" else None, dtype=dtype).alias(name))
        elif name == "failed":
            cols.append(pl.col(name).cast(dtype).fill_null(False))
        else:
            cols.append(pl.col(name).cast(dtype))
    return pl.DataFrame(schema=schema).vstack(rows.select(cols))


def _read_part(path: Path, columns: list[str] | None = None) -> pl.DataFrame:
    """A part's ``columns`` (all when ``None``); parts written before the ``failed`` column get it as ``False``."""
    has_failed = "failed" in pl.read_parquet_schema(path)
    wanted = None if columns is None else [c for c in columns if c != "failed" or has_failed]
    frame = pl.read_parquet(path, columns=wanted)
    if not has_failed and (columns is None or "failed" in columns):
        frame = frame.with_columns(pl.lit(False, dtype=pl.Boolean).alias("failed"))
    return frame


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _parts(output: Path) -> list[tuple[int, Path]]:
    found = []
    for p in output.iterdir():
        m = _PART.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def _metadata(clf: LongDocClassifier) -> dict[str, Any]:
    return {"format_version": FORMAT_VERSION, "labels": list(clf.labels), "multi_label": bool(clf.multi_label),
            "encoder_fingerprint": clf.encoder.fingerprint}


def _prepare_output(
    output: Path, clf: LongDocClassifier, *, retry_failed: bool = True
) -> tuple[set[str], set[str], int]:
    """Create or check the output directory; return ``(done, retry, next_part)``.

    ``done``: the doc_ids to skip, those whose latest row (part order, then row order) is not ``failed`` (every
    doc_id written when ``retry_failed`` is False); ``retry``: those whose latest row is ``failed``, to label
    again (empty when ``retry_failed`` is False); ``next_part``: the number of the next part file.
    """
    output.mkdir(parents=True, exist_ok=True)
    meta = _metadata(clf)
    meta_path = output / META_FILE
    parts = _parts(output)
    if meta_path.is_file():
        try:
            old = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"{meta_path} is unreadable ({exc}); delete the output directory to start again") from exc
        for key in ("labels", "multi_label", "encoder_fingerprint"):
            if old.get(key) != meta[key]:
                raise ConfigError(
                    f"{output} holds labels from another model ({key} differs: {old.get(key)!r} vs {meta[key]!r}); "
                    "use another output directory or delete this one"
                )
    elif parts:
        raise DataError(f"{output} has part files but no {META_FILE}: it is not a longdoc labels directory")
    elif any(not p.name.startswith(".") for p in output.iterdir()):
        raise DataError(f"{output} is not empty and not a longdoc labels directory; choose an empty directory")
    else:
        _write_atomic(meta_path, lambda p: p.write_text(json.dumps(meta, indent=2)))
    for p in output.iterdir():  # half-written parts of a killed run
        if p.name.startswith(".part-") and p.name.endswith(".tmp"):
            logger.info("removing the unfinished part %s", p.name)
            p.unlink(missing_ok=True)
    frames = []
    for _, path in parts:
        try:
            frames.append(_read_part(path, ["doc_id", "failed"]))
        except Exception as exc:  # cannot happen with atomic renames, unless the disk itself was damaged
            logger.warning("part %s is unreadable (%s): removing it, its documents will be labelled again", path, exc)
            path.unlink(missing_ok=True)
    done: set[str] = set()
    retry: set[str] = set()
    if frames:
        latest = pl.concat(frames, how="vertical_relaxed").unique(subset="doc_id", keep="last")
        failed = latest["failed"].fill_null(False)
        if retry_failed:
            done.update(latest.filter(~failed)["doc_id"].to_list())
            retry.update(latest.filter(failed)["doc_id"].to_list())
        else:
            done.update(latest["doc_id"].to_list())
            n_failed = int(failed.sum())
            if n_failed:
                logger.info("%d documents of %s failed earlier and are not retried (retry_failed=False)", n_failed,
                            output)
    if retry:
        logger.info("%d documents of %s failed earlier (their analysis raised): labelling them again", len(retry),
                    output)
    next_part = parts[-1][0] + 1 if parts else 0
    return done, retry, next_part


def _error_of(warning: str | None, n_windows: int) -> str | None:
    """Why a document gets no label: it has no tokens (empty, whitespace only, an unreadable line...)."""
    if n_windows == 0:
        return warning or "document has no tokens: no label"
    return None


def _label_chunk(clf: LongDocClassifier, docs: pl.DataFrame, top_passages: int) -> pl.DataFrame:
    """Rows for one chunk; on an unexpected failure, documents are retried one by one to isolate the bad one.

    A document whose analysis still raises alone gets an error row with ``failed=True`` (the next
    ``label_documents`` call labels it again); every other row has ``failed=False``.
    """
    try:
        return _rows(clf, docs, top_passages)
    except Exception as exc:  # noqa: BLE001 - a bad document must not stop the batch
        if docs.height == 1:
            logger.warning("document %r failed: %s", docs["doc_id"][0], exc)
            return pl.DataFrame(
                {"doc_id": docs["doc_id"], "error": [f"{type(exc).__name__}: {exc}"], "failed": [True]},
            )
        logger.warning("a chunk of %d documents failed (%s): retrying them one by one", docs.height, exc)
        return pl.concat([_label_chunk(clf, docs.slice(i, 1), top_passages) for i in range(docs.height)],
                         how="diagonal_relaxed")


def _rows(clf: LongDocClassifier, docs: pl.DataFrame, top_passages: int) -> pl.DataFrame:
    analysis = clf.analyze(docs, show_progress_bar=False)
    decided = clf._decide(analysis.probs)
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
    schema = _schema(clf.multi_label)
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
    done, retry, part_no = _prepare_output(out, clf, retry_failed=retry_failed)
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
                rows = _conform(_label_chunk(clf, todo, top_passages), clf.multi_label)
                path = out / f"part-{part_no:05d}.parquet"
                _write_atomic(path, lambda p, rows=rows: rows.write_parquet(p))
                part_no += 1
                n_new += rows.height
                n_errors += rows.height - rows["error"].null_count()
                n_failed += int(rows["failed"].sum())
                done.update(todo["doc_id"].to_list())
            bar.update(chunk.height)
    finally:
        bar.close()
    summary = LabelSummary(output=str(out), n_documents=n_docs, n_labelled=n_new, n_skipped=n_skipped,
                           n_retried=n_retried, n_errors=n_errors, n_parts=len(_parts(out)),
                           seconds=time.perf_counter() - started)
    logger.info("labelled %d documents (%d skipped as done, %d retried, %d error rows) into %s", n_new, n_skipped,
                n_retried, n_errors, out)
    if n_failed:
        logger.warning("%d documents failed (their analysis raised): run the same call again to retry them",
                       n_failed)
    return summary


def read_labels(output: str | os.PathLike[str]) -> pl.DataFrame:
    """One row per document of a labels directory: its latest (part order, then row order; a retried document's
    new row supersedes its ``failed`` one), in the order those rows were written (see the module docstring for
    the columns; parts without ``failed`` read it as ``False``)."""
    out = Path(output)
    meta_path = out / META_FILE
    if not meta_path.is_file():
        raise DataError(f"{out} is not a longdoc labels directory: {META_FILE} is missing")
    meta = json.loads(meta_path.read_text())
    parts = [p for _, p in _parts(out)]
    if not parts:
        return pl.DataFrame(schema=_schema(bool(meta.get("multi_label"))))
    rows = pl.concat([_read_part(p) for p in parts], how="vertical_relaxed")
    return rows.unique(subset="doc_id", keep="last", maintain_order=True)


def label_names(output: str | os.PathLike[str]) -> list[str]:
    """The label order of the ``probs`` column of a labels directory."""
    return list(json.loads((Path(output) / META_FILE).read_text())["labels"])
