"""The labels directory: the on-disk format that batch labelling writes (``longdoc.labeling`` on one machine,
``longdoc.distributed`` with Ray) and :func:`read_labels` reads.

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
``part-NNNNN.parquet`` and the directory fsynced (``indexer.storage.write_file_atomically``), so a part file is either complete or absent. On start, the
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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from indexer.storage import write_file_atomically
from longdoc.errors import ConfigError, DataError

if TYPE_CHECKING:
    from longdoc.classifier import LongDocClassifier

logger = logging.getLogger(__name__)

__all__ = ["FORMAT_VERSION", "META_FILE", "conform_rows", "label_names", "label_schema", "part_files",
           "prepare_output", "read_labels"]

FORMAT_VERSION = 1
META_FILE = "_labels.json"
_PART = re.compile(r"^part-(\d{5,})\.parquet$")
_PASSAGE = pl.Struct({"window_index": pl.Int64, "char_start": pl.Int64, "char_end": pl.Int64, "weight": pl.Float64})


def label_schema(multi_label: bool) -> dict[str, pl.DataType]:
    """The columns of every part, in order."""
    label = {"labels": pl.List(pl.String)} if multi_label else {"label": pl.String}
    return {"doc_id": pl.String, **label, "probs": pl.List(pl.Float64), "top_passages": pl.List(_PASSAGE),
            "warning": pl.String, "error": pl.String, "failed": pl.Boolean}


def conform_rows(rows: pl.DataFrame, multi_label: bool) -> pl.DataFrame:
    """``rows`` with exactly the part columns, in order and typed (the error rows of
    ``longdoc.label_core.label_chunk`` have three); a missing or null ``failed`` is ``False``."""
    schema = label_schema(multi_label)
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


def part_files(output: Path) -> list[tuple[int, Path]]:
    """The complete part files of ``output``: ``(number, path)`` in part order."""
    found = []
    for p in output.iterdir():
        m = _PART.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def _metadata(clf: LongDocClassifier) -> dict[str, Any]:
    return {"format_version": FORMAT_VERSION, "labels": list(clf.labels), "multi_label": bool(clf.multi_label),
            "encoder_fingerprint": clf.encoder.fingerprint}


def prepare_output(
    output: Path, clf: LongDocClassifier, *, retry_failed: bool = True
) -> tuple[set[str], set[str], int]:
    """Create or check the output directory; return ``(done, retry, next_part)``.

    ``done``: the doc_ids to skip, those whose latest row (part order, then row order) is not ``failed`` (every
    doc_id written when ``retry_failed`` is False); ``retry``: those whose latest row is ``failed``, to label
    again (empty when ``retry_failed`` is False); ``next_part``: the number of the next part file.
    """
    real = Path(os.path.realpath(output))
    if real.exists() and not real.is_dir():
        raise DataError(f"output={str(output)!r} exists and is not a directory; choose a new or empty directory")
    real.mkdir(parents=True, exist_ok=True)  # through a dangling link: at its target
    meta = _metadata(clf)
    meta_path = output / META_FILE
    parts = part_files(output)
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
        write_file_atomically(meta_path, lambda p: p.write_text(json.dumps(meta, indent=2)))
    for p in output.iterdir():  # half-written parts of a killed run (``.part-N.parquet.tmp`` from older versions)
        if p.name.startswith(".part-") and (p.name.endswith(".tmp") or ".tmp-" in p.name):
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


def read_labels(output: str | os.PathLike[str]) -> pl.DataFrame:
    """One row per document of a labels directory: its latest (part order, then row order; a retried document's
    new row supersedes its ``failed`` one), in the order those rows were written (see the module docstring for
    the columns; parts without ``failed`` read it as ``False``)."""
    out = Path(output)
    meta_path = out / META_FILE
    if not meta_path.is_file():
        raise DataError(f"{out} is not a longdoc labels directory: {META_FILE} is missing")
    meta = json.loads(meta_path.read_text())
    parts = [p for _, p in part_files(out)]
    if not parts:
        return pl.DataFrame(schema=label_schema(bool(meta.get("multi_label"))))
    rows = pl.concat([_read_part(p) for p in parts], how="vertical_relaxed")
    return rows.unique(subset="doc_id", keep="last", maintain_order=True)


def label_names(output: str | os.PathLike[str]) -> list[str]:
    """The label order of the ``probs`` column of a labels directory."""
    return list(json.loads((Path(output) / META_FILE).read_text())["labels"])
