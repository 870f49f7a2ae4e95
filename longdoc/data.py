"""Documents in: every supported source becomes one polars *document table*.

The document table has these columns, in this order:

- ``doc_id`` (str, unique),
- ``text`` (str, never null),
- ``labels`` (list of str; a single label becomes a one-element list, a missing label an empty list),
- ``warning`` (str, null when the row is fine; otherwise the reason, e.g. ``"empty document"``: the row is kept),
- then the metadata columns (every other input column by default).

Reading policy, in one place:

- Text files (JSON lines, CSV, a folder of ``.txt``/``.md``) are decoded as strict UTF-8 first (a leading BOM is
  dropped); bytes that are not valid UTF-8 are decoded with ``encoding_fallback`` (cp1252 by default) and
  ``errors="replace"``, the row is kept and ``warning`` says so. A file that starts with a UTF-16 or UTF-32
  byte-order mark (as Windows tools write "Unicode" text) is decoded with that codec; a sequence invalid in it is
  replaced, and the row's ``warning`` says so.
- Text that is missing (null) becomes ``""``; text that is not a string (a number) becomes ``str(x)``; a bytes
  (``Binary``) text column is decoded as UTF-8 with ``errors="replace"``; empty and whitespace-only documents are
  kept. Each of these sets ``warning``.
- A JSON line that is not a JSON object raises :class:`~longdoc.errors.DataError` naming the file and line
  (``on_bad_line="error"``, the default). With ``on_bad_line="warn"`` the line becomes a row with empty text, the
  reason in ``warning`` and, when ids come from the data, the id ``"<file name>:<line number>"``; the other rows
  are never lost. The same holds for a CSV row with the wrong number of fields.
- When streaming JSON lines or dicts, a named metadata key that is absent from a whole chunk gives a null column
  in that chunk (``load_documents`` raises :class:`DataError` for a name absent from the whole source).
- Ids: ``id_column`` (default ``"id"``, else ``"doc_id"`` if present). When the default is absent from the data,
  ids are the row numbers as strings (``"0"``, ``"1"``, ... counted over the whole source, also when streaming).
  An id column the caller named explicitly must exist. Ids must be unique and non-null.
- Labels: ``label_column`` (default ``"label"``, else ``"labels"`` if present; ``None`` for no labels). A cell may
  hold a string, a number or a boolean (made a string, spelt the same from JSON, Python values, Parquet and
  DataFrames: ``True``/``False``, and a whole float as its integer, ``1.0`` -> ``"1"``, since pandas makes an int
  column holding a NaN float; a CSV cell is text and is kept as written) or a list of them (multi-label); ``None`` and ``""`` mean no label. A
  mapping (or a list holding one, or a nested list; in a DataFrame or ``Dataset``, a struct column or a list of
  lists or structs) is no label either: the row is kept without a label and its ``warning`` says why.
  In CSV a cell written as a JSON array (``["a", "b"]``) is read as several labels. ``datasets`` ``ClassLabel``
  integers become their names.
- A folder gives the columns ``id`` (the relative POSIX path), ``text`` and ``parent_dir`` (the name of the
  file's folder, null at the top level): pass ``label_column="parent_dir"`` to label documents by folder.
"""

from __future__ import annotations

import codecs
import csv
import itertools
import json
import logging
import numbers
import os
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import polars as pl

from longdoc.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

__all__ = ["DOC_COLUMNS", "document_table", "documents_from_texts", "hub_dataset", "iter_documents", "label_list",
           "load_documents", "resolve_documents"]

DOC_COLUMNS = ("doc_id", "text", "labels", "warning")
TEXT_FILE_SUFFIXES = (".txt", ".md")
_TABLE_SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet", ".pq", ".csv", ".tsv")  # files of many documents
_LABELS_DTYPE = pl.List(pl.String)
_PATH_SUFFIXES = _TABLE_SUFFIXES + TEXT_FILE_SUFFIXES
_MAX_PATH_CHARS = 4096
_SUPPORTED = ".jsonl, .ndjson, .json, .parquet, .csv, .tsv, .txt, .md or a folder of .txt/.md files"


class _DefaultName(str):
    """A column name the caller did not choose: its absence from the data is not an error."""


_DEFAULT_ID = _DefaultName("id")
_DEFAULT_LABEL = _DefaultName("label")
_ALTERNATIVES = {"id": "doc_id", "label": "labels"}


@dataclass(frozen=True)
class _Options:
    text_column: str
    label_column: str | None
    id_column: str | None
    metadata_columns: tuple[str, ...] | None
    glob: str
    encoding_fallback: str
    on_bad_line: str


@dataclass
class _Chunk:
    """A piece of input as read, before normalisation."""

    frame: pl.DataFrame
    warnings: list[str | None] | None = None  # per-row reasons found while reading (decoding, bad lines)
    fallback_ids: list[str | None] | None = None  # ids for rows that could not be read (on_bad_line="warn")


# --------------------------------------------------------------------------------------------------- public API


def load_documents(
    source: Any,
    *,
    text_column: str = "text",
    label_column: str | None = _DEFAULT_LABEL,
    id_column: str | None = _DEFAULT_ID,
    metadata_columns: Sequence[str] | None = None,
    glob: str = "**/*",
    encoding_fallback: str = "cp1252",
    on_bad_line: Literal["error", "warn"] = "error",
) -> pl.DataFrame:
    """Read documents from any supported source into one document table.

    Args:
        source: a path to a ``.jsonl``/``.ndjson``/``.json`` (JSON lines or a JSON array), ``.parquet``,
            ``.csv``/``.tsv``, ``.txt``/``.md`` file, or to a folder of ``.txt``/``.md`` files (recursive, one
            document per file); a ``datasets.Dataset``; a polars or pandas DataFrame; a list of strings (the
            texts); a list of dicts (the rows).
        text_column: the column holding the document text.
        label_column: the column holding the label(s); ``None`` for an unlabelled table.
        id_column: the column holding unique document ids; ``None`` to number the rows.
        metadata_columns: the input columns to keep after the four document columns; ``None`` keeps all of
            them, ``[]`` none.
        glob: for a folder source, the pattern of files to read (only ``.txt``/``.md`` files are read).
        encoding_fallback: the codec used, with ``errors="replace"``, for files that are not valid UTF-8.
        on_bad_line: ``"error"`` raises :class:`DataError` on an unreadable JSON line or CSV row; ``"warn"``
            keeps it as an empty document with the reason in ``warning``.

    Returns:
        The document table (see the module docstring for its columns).

    Raises:
        DataError: the source cannot be read, a named column is missing, ids are duplicated or missing.
    """
    opts = _options(text_column, label_column, id_column, metadata_columns, glob, encoding_fallback, on_bad_line)
    tables = []
    row_offset = 0
    for chunk in _read(source, opts, chunk_size=None):
        table = _finish(chunk, opts, row_offset)
        row_offset += table.height
        tables.append(table)
    if not tables:
        table = _empty_table()
    elif len(tables) == 1:
        table = tables[0]
    else:
        table = pl.concat(tables, how="diagonal_relaxed")
    _check_unique(table["doc_id"], opts.id_column)
    n_warned = table.height - table["warning"].null_count()
    if n_warned:
        logger.info("%d of %d documents have a warning (see the 'warning' column)", n_warned, table.height)
    return table


def iter_documents(
    source: Any,
    *,
    chunk_size: int = 1000,
    text_column: str = "text",
    label_column: str | None = _DEFAULT_LABEL,
    id_column: str | None = _DEFAULT_ID,
    metadata_columns: Sequence[str] | None = None,
    glob: str = "**/*",
    encoding_fallback: str = "cp1252",
    on_bad_line: Literal["error", "warn"] = "error",
) -> Iterator[pl.DataFrame]:
    """Stream a source as document tables of at most ``chunk_size`` rows, in bounded memory.

    JSON lines and CSV files are read line by line, Parquet files by record batches, folders file by file; the
    options mean the same as in :func:`load_documents`. Every input row appears in exactly one chunk, in input
    order. Generated ids count rows over the whole source. Ids are checked for uniqueness across chunks (a set of
    the ids seen so far is kept); a duplicate raises :class:`DataError` when its chunk is reached. A JSON array
    file (``.json`` starting with ``[``) is parsed whole. Any other iterable of dicts or strings is also accepted.
    """
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise DataError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    opts = _options(text_column, label_column, id_column, metadata_columns, glob, encoding_fallback, on_bad_line)
    seen: set[str] = set()
    row_offset = 0
    for chunk in _read(source, opts, chunk_size=chunk_size):
        for start in range(0, max(chunk.frame.height, 1), chunk_size):
            part = _slice_chunk(chunk, start, chunk_size)
            if part.frame.height == 0:
                continue
            table = _finish(part, opts, row_offset)
            row_offset += table.height
            ids = table["doc_id"]
            _check_unique(ids, opts.id_column)
            repeated = [i for i in ids.to_list() if i in seen]
            if repeated:
                raise DataError(
                    f"duplicate ids across chunks in id_column={opts.id_column!r}: "
                    f"{', '.join(repr(i) for i in repeated[:5])}; ids must be unique"
                )
            seen.update(ids.to_list())
            yield table


def documents_from_texts(
    texts: Sequence[str],
    labels: Sequence[str | Sequence[str] | None] | None = None,
    ids: Sequence[str] | None = None,
) -> pl.DataFrame:
    """Build a document table from parallel lists of texts, optional labels and optional ids.

    Each entry of ``labels`` may be a string, a list of strings (multi-label) or ``None``. Without ``ids`` the
    documents are numbered ``"0"``, ``"1"``, ...
    """
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise DataError(f"texts must be a list of strings, got {type(texts).__name__}")
    for name, values in (("labels", labels), ("ids", ids)):
        if values is None:
            continue
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise DataError(f"{name} must be a list, got {type(values).__name__}")
        if len(values) != len(texts):
            raise DataError(f"{name} has {len(values)} entries but texts has {len(texts)}; they must match")
    records: list[dict[str, Any]] = [{"text": t} for t in texts]
    if labels is not None:
        for record, label in zip(records, labels, strict=True):
            record["label"] = label
    if ids is not None:
        for record, doc_id in zip(records, ids, strict=True):
            record["id"] = doc_id
    return load_documents(
        records,
        label_column="label" if labels is not None else None,
        id_column="id" if ids is not None else None,
        metadata_columns=[],
    )


_COLUMN_OPTIONS = ("text_column", "label_column", "id_column")


def document_table(data: Any, labels: Sequence[Any] | None = None, **columns: Any) -> pl.DataFrame:
    """The document table of an input already resolved (see :func:`resolve_documents`): a document table (its
    ids checked, returned as it is), a ``str`` (one document's text) or a list of texts (with ``labels``), or
    anything :func:`load_documents` reads, with ``columns`` (``text_column`` / ``label_column`` / ``id_column``).
    ``LongDocClassifier.document_table`` and ``longdoc.indexing`` both read their inputs through it.

    Raises:
        ConfigError: a keyword other than the column options.
    """
    unknown = sorted(set(columns) - set(_COLUMN_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown keyword arguments {unknown}; the column options are text_column, label_column "
                          "and id_column")
    if isinstance(data, str):
        data = [data]
    if isinstance(data, pl.DataFrame) and {"doc_id", "text", "labels"} <= set(data.columns):
        check_unique_ids(data)
        return data
    if isinstance(data, (list, tuple)) and (not data or isinstance(data[0], str)):
        return documents_from_texts(list(data), labels=labels)
    return load_documents(data, **columns)


def hub_dataset(
    name: str,
    *,
    split: str = "train",
    text_column: str = "text",
    label_column: str | None = _DEFAULT_LABEL,
    id_column: str | None = _DEFAULT_ID,
    metadata_columns: Sequence[str] | None = None,
    **load_kwargs: Any,
) -> pl.DataFrame:
    """Load a data set with ``datasets.load_dataset(name, split=split, **load_kwargs)`` into a document table.

    ``name`` is a hub name (``"SetFit/bbc-news"``) where a hub is reachable, or a local builder such as
    ``"json"`` with ``data_files=...``. Labels stored as ``ClassLabel`` integers become their names.
    """
    import datasets

    dataset = datasets.load_dataset(name, split=split, **load_kwargs)
    return load_documents(
        dataset,
        text_column=text_column,
        label_column=label_column,
        id_column=id_column,
        metadata_columns=metadata_columns,
    )


# --------------------------------------------------------------------------------------------------- options


def _options(text_column, label_column, id_column, metadata_columns, glob, encoding_fallback, on_bad_line):
    if not isinstance(text_column, str) or not text_column:
        raise DataError(f"text_column must be a column name, got {text_column!r}")
    for name, value in (("label_column", label_column), ("id_column", id_column)):
        if value is not None and (not isinstance(value, str) or not value):
            raise DataError(f"{name} must be a column name or None, got {value!r}")
    if metadata_columns is not None:
        if isinstance(metadata_columns, str) or not all(isinstance(c, str) for c in metadata_columns):
            raise DataError(f"metadata_columns must be a list of column names or None, got {metadata_columns!r}")
        metadata_columns = tuple(metadata_columns)
    if on_bad_line not in ("error", "warn"):
        raise DataError(f"on_bad_line must be 'error' or 'warn', got {on_bad_line!r}")
    try:
        "".encode(encoding_fallback)
    except LookupError:
        raise DataError(f"encoding_fallback={encoding_fallback!r} is not a known codec") from None
    return _Options(text_column, label_column, id_column, metadata_columns, glob, encoding_fallback, on_bad_line)


# --------------------------------------------------------------------------------------------------- readers


def _read(source: Any, opts: _Options, chunk_size: int | None) -> Iterator[_Chunk]:
    """Yield raw chunks of the source (of about ``chunk_size`` rows, or everything when None)."""
    if isinstance(source, (str, os.PathLike)):
        yield from _read_path(Path(source), opts, chunk_size)
    elif isinstance(source, pl.DataFrame):
        yield _Chunk(source)
    elif isinstance(source, pl.LazyFrame):
        yield _Chunk(source.collect())
    elif type(source).__module__.split(".")[0] == "pandas" and type(source).__name__ == "DataFrame":
        yield _from_pandas(source, opts)
    elif _is_dataset(source):
        yield from _read_dataset(source, opts, chunk_size)
    elif isinstance(source, (str, bytes, Mapping)):
        raise DataError(_unsupported(source))
    elif isinstance(source, Iterable):
        yield from _read_items(iter(source), opts, chunk_size)
    else:
        raise DataError(_unsupported(source))


def _unsupported(source: Any) -> str:
    hint = " (for a datasets.DatasetDict pick a split, e.g. ds['train'])" if _is_dataset_dict(source) else ""
    return (
        f"source of type {type(source).__name__} is not supported{hint}; expected a path ({_SUPPORTED}), "
        "a datasets.Dataset, a polars or pandas DataFrame, a list of strings or a list of dicts"
    )


def _is_dataset(source: Any) -> bool:
    datasets = sys.modules.get("datasets")
    return datasets is not None and isinstance(source, datasets.Dataset)


def _is_dataset_dict(source: Any) -> bool:
    datasets = sys.modules.get("datasets")
    return datasets is not None and isinstance(source, (datasets.DatasetDict, datasets.IterableDatasetDict))


def _read_path(path: Path, opts: _Options, chunk_size: int | None) -> Iterator[_Chunk]:
    if not path.exists():
        raise DataError(f"source path {str(path)!r} does not exist")
    if path.is_dir():
        yield from _read_folder(path, opts, chunk_size)
        return
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        yield from _read_json_lines(path, opts, chunk_size)
    elif suffix == ".json":
        if _starts_with(path, "["):
            yield from _read_json_array(path, opts)
        else:
            yield from _read_json_lines(path, opts, chunk_size)
    elif suffix in (".parquet", ".pq"):
        yield from _read_parquet(path, chunk_size)
    elif suffix in (".csv", ".tsv"):
        yield from _read_csv(path, opts, chunk_size, delimiter="\t" if suffix == ".tsv" else ",")
    elif suffix in TEXT_FILE_SUFFIXES:
        yield _text_files_chunk([path], path.parent, opts)
    else:
        raise DataError(f"cannot read {str(path)!r}: unsupported file type {suffix!r}; expected {_SUPPORTED}")


def _starts_with(path: Path, prefix: str) -> bool:
    with path.open("rb") as f:
        head = f.read(4096)
    codec = _bom_codec(head)
    text = head.decode(codec, errors="ignore") if codec else head.decode("utf-8", errors="ignore")
    return text.lstrip("\ufeff").lstrip().startswith(prefix)


# UTF-32 first: its little-endian mark begins with UTF-16's
_UNICODE_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
                 (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def _bom_codec(head: bytes) -> str | None:
    """``"utf-16"`` or ``"utf-32"`` when ``head`` starts with that byte-order mark (the codec reads the mark and
    drops it), else None."""
    return next((codec for bom, codec in _UNICODE_BOMS if head.startswith(bom)), None)


def _decode(data: bytes, fallback: str) -> tuple[str, str | None]:
    """A whole file's bytes: by its codec when they start with a UTF-16/32 byte-order mark, else ``_decode_utf8``."""
    codec = _bom_codec(data)
    if codec is not None:
        text = data.decode(codec, errors="replace")
        return text, (f"not valid {codec.upper()}: decoded with replacement" if "\ufffd" in text else None)
    return _decode_utf8(data, fallback)


def _decode_utf8(data: bytes, fallback: str) -> tuple[str, str | None]:
    """Strict UTF-8 (BOM dropped), else ``fallback`` with replacement and a warning."""
    if data.startswith(codecs.BOM_UTF8):
        data = data[3:]
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError:
        return data.decode(fallback, errors="replace"), f"not valid UTF-8: decoded as {fallback} with replacement"


def _text_lines(path: Path, fallback: str) -> Iterator[tuple[int, str, str | None]]:
    """A text file's lines (ends kept), numbered from 1, each with its decoding warning (see ``_decode``). A file
    with a UTF-16/32 byte-order mark is decoded as a stream, since its line breaks are not single bytes."""
    with path.open("rb") as f:
        codec = _bom_codec(f.read(4))
        f.seek(0)
        if codec is None:
            for lineno, raw in enumerate(f, 1):
                yield lineno, *_decode_utf8(raw, fallback)
            return

        def decoded() -> Iterator[str]:
            decoder = codecs.getincrementaldecoder(codec)(errors="replace")
            for block in iter(lambda: f.read(1 << 16), b""):
                yield decoder.decode(block)
            yield decoder.decode(b"", final=True)  # bytes left over at the end: replaced, not dropped

        texts = decoded()
        warning = f"not valid {codec.upper()}: decoded with replacement"
        parts: list[str] = []  # the line being read, in pieces (a long line spans blocks)
        lineno = 0
        for text in texts:
            *ends, rest = text.split("\n")
            for end in ends:
                line = "".join(parts) + end + "\n"
                parts, lineno = [], lineno + 1
                yield lineno, line, (warning if "\ufffd" in line else None)
            parts.append(rest)
        if line := "".join(parts):
            yield lineno + 1, line, (warning if "\ufffd" in line else None)


def _bad_line(path: Path, lineno: int, reason: str, opts: _Options) -> tuple[dict[str, Any], str, str]:
    """An unreadable line: ``DataError`` (``on_bad_line="error"``), or an empty record that keeps the reason
    (``"warn"``): returns (record, warning, fallback id)."""
    if opts.on_bad_line == "error":
        raise DataError(f"{path}: {reason}; fix it or pass on_bad_line='warn' to keep going") from None
    logger.warning("%s: %s; kept as an empty document", path, reason)
    return {}, reason, f"{path.name}:{lineno}"


_Row = tuple[Any, str | None, str | None]  # a record read from a file, its warning, its fallback id


def _chunks_of_rows(rows: Iterable[_Row], opts: _Options, chunk_size: int | None,
                    **chunk_options: Any) -> Iterator[_Chunk]:
    """The rows in ``_records_chunk``s of ``chunk_size`` rows (all in one when None)."""
    records: list[Any] = []
    warnings: list[str | None] = []
    fallback_ids: list[str | None] = []
    for record, warning, fallback_id in rows:
        records.append(record)
        warnings.append(warning)
        fallback_ids.append(fallback_id)
        if chunk_size is not None and len(records) >= chunk_size:
            yield _records_chunk(records, opts, warnings, fallback_ids, **chunk_options)
            records, warnings, fallback_ids = [], [], []
    if records:
        yield _records_chunk(records, opts, warnings, fallback_ids, **chunk_options)


def _read_json_lines(path: Path, opts: _Options, chunk_size: int | None) -> Iterator[_Chunk]:
    yield from _chunks_of_rows(_json_line_rows(path, opts), opts, chunk_size, sparse=chunk_size is not None)


def _json_line_rows(path: Path, opts: _Options) -> Iterator[_Row]:
    for lineno, line, warning in _text_lines(path, opts.encoding_fallback):
        if not line.strip():
            continue
        fallback_id = None
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError(f"expected a JSON object, got {type(record).__name__}")
        except ValueError as exc:
            record, warning, fallback_id = _bad_line(
                path, lineno, f"line {lineno} of {path.name} is not a JSON object: {exc}", opts)
        yield record, warning, fallback_id


def _read_json_array(path: Path, opts: _Options) -> Iterator[_Chunk]:
    text, warning = _decode(path.read_bytes(), opts.encoding_fallback)
    try:
        items = json.loads(text)
    except ValueError as exc:
        raise DataError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(items, list) or not all(isinstance(x, dict) for x in items):
        raise DataError(f"{path}: a .json file must hold JSON lines or a JSON array of objects")
    if items:
        yield _records_chunk(items, opts, [warning] * len(items), None)


def _read_parquet(path: Path, chunk_size: int | None) -> Iterator[_Chunk]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if chunk_size is None:
            yield _Chunk(pl.read_parquet(path))
            return
        parquet = pq.ParquetFile(path)
        for batch in parquet.iter_batches(batch_size=chunk_size):
            yield _Chunk(pl.from_arrow(pa.Table.from_batches([batch])))
    except (OSError, pa.ArrowException, pl.exceptions.PolarsError) as exc:
        raise DataError(f"cannot read Parquet file {str(path)!r}: {exc}") from exc


def _read_csv(path: Path, opts: _Options, chunk_size: int | None, delimiter: str) -> Iterator[_Chunk]:
    yield from _chunks_of_rows(_csv_rows(path, opts, delimiter), opts, chunk_size, csv_labels=True)


def _csv_rows(path: Path, opts: _Options, delimiter: str) -> Iterator[_Row]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # documents are long; the default limit is 128 KiB
    bad_lines: dict[int, str] = {}  # line number -> its decoding warning

    def lines() -> Iterator[str]:
        for lineno, text, warning in _text_lines(path, opts.encoding_fallback):
            if warning:
                bad_lines[lineno] = warning
            yield text

    reader = csv.reader(lines(), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise DataError(f"{path}: cannot read the CSV header: {exc}") from None
    previous_line = reader.line_num
    while True:
        try:
            row = next(reader)
            problem = None if len(row) == len(header) else f"{len(row)} fields, expected {len(header)}"
        except StopIteration:
            break
        except csv.Error as exc:
            row, problem = [], str(exc)
        first, last = previous_line + 1, reader.line_num
        previous_line = last
        if not row and problem is None:
            continue  # a blank line
        warning = next((bad_lines[n] for n in range(first, last + 1) if n in bad_lines), None)
        fallback_id = None
        if problem is None:
            record: dict[str, Any] = dict(zip(header, row, strict=True))
        else:
            record, warning, fallback_id = _bad_line(
                path, first, f"line {first} of {path.name} is not a valid CSV row: {problem}", opts)
        yield record, warning, fallback_id


def _read_folder(root: Path, opts: _Options, chunk_size: int | None) -> Iterator[_Chunk]:
    files = sorted(
        p
        for p in root.glob(opts.glob)
        if p.suffix.lower() in TEXT_FILE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and p.is_file()
    )
    if not files:
        tables = sorted(p.relative_to(root).as_posix() for p in root.glob(opts.glob)
                        if p.suffix.lower() in _TABLE_SUFFIXES and p.is_file()
                        and not any(part.startswith(".") for part in p.relative_to(root).parts))
        if tables:  # documents the caller surely meant, never read: an error, not an empty result
            shown = ", ".join(tables[:3]) + (f" and {len(tables) - 3} more" if len(tables) > 3 else "")
            raise DataError(f"source folder {str(root)!r} holds no .txt or .md files matching glob={opts.glob!r}, "
                            f"but holds {shown}: a folder is read as text files, one document each; pass a data "
                            "file itself (e.g. " + repr(str(root / tables[0])) + ")")
        logger.warning("no .txt or .md files under %s matching glob=%r", root, opts.glob)
        return
    step = chunk_size or len(files)
    for start in range(0, len(files), step):
        yield _text_files_chunk(files[start : start + step], root, opts)


def _text_files_chunk(files: list[Path], root: Path, opts: _Options) -> _Chunk:
    ids, texts, parents, warnings = [], [], [], []
    for path in files:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DataError(f"cannot read {str(path)!r}: {exc}") from exc
        text, warning = _decode(data, opts.encoding_fallback)
        rel = path.relative_to(root)
        ids.append(rel.as_posix())
        texts.append(text)
        parents.append(rel.parent.name or None)
        warnings.append(warning)
    frame = pl.DataFrame(
        {"id": ids, "text": texts, "parent_dir": parents},
        schema={"id": pl.String, "text": pl.String, "parent_dir": pl.String},
    )
    return _Chunk(frame, warnings)


def _read_dataset(dataset: Any, opts: _Options, chunk_size: int | None) -> Iterator[_Chunk]:
    import datasets

    label_names: dict[str, list[str]] = {}
    for column, feature in dataset.features.items():
        inner = getattr(feature, "feature", None)  # Sequence(ClassLabel) / List(ClassLabel)
        if isinstance(feature, datasets.ClassLabel):
            label_names[column] = feature.names
        elif isinstance(inner, datasets.ClassLabel):
            label_names[column] = inner.names
    json_type = getattr(datasets, "Json", None)  # datasets >= 5 stores mixed-type columns as JSON
    if json_type is not None and any(isinstance(f, json_type) for f in dataset.features.values()):
        yield from _read_dataset_rows(dataset, label_names, opts, chunk_size)
        return
    arrow = dataset.with_format("arrow")
    step = chunk_size or max(len(dataset), 1)
    for start in range(0, len(dataset), step):
        frame = pl.from_arrow(arrow[start : start + step])
        assert isinstance(frame, pl.DataFrame)
        for column, names in label_names.items():
            mapping = dict(enumerate(names))
            col = pl.col(column)
            if frame.schema[column] == pl.List:
                expr = col.list.eval(pl.element().replace_strict(mapping, default=None, return_dtype=pl.String))
            else:
                expr = col.replace_strict(mapping, default=None, return_dtype=pl.String)
            frame = frame.with_columns(expr.alias(column))
        yield _Chunk(frame)


def _read_dataset_rows(
    dataset: Any, label_names: dict[str, list[str]], opts: _Options, chunk_size: int | None
) -> Iterator[_Chunk]:
    """The row-wise path for data sets with JSON columns (values decoded by ``datasets``)."""
    step = chunk_size or max(len(dataset), 1)
    for start in range(0, len(dataset), step):
        columns = dataset.with_format(None)[start : start + step]
        for column, names in label_names.items():
            columns[column] = [
                [names[v] for v in value if v is not None and v >= 0] if isinstance(value, list)
                else names[value] if value is not None and value >= 0 else None
                for value in columns[column]
            ]
        records = [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]
        yield _records_chunk(records, opts, None, None)


def _from_pandas(df: Any, opts: _Options) -> _Chunk:
    try:
        return _Chunk(pl.from_pandas(df))
    except Exception:  # mixed object columns: the row-wise path accepts anything, and its row warnings travel
        return _records_chunk(df.to_dict("records"), opts, None, None)


def _read_items(items: Iterator[Any], opts: _Options, chunk_size: int | None) -> Iterator[_Chunk]:
    """A list (or any iterable) of strings or of dicts."""
    kind: str | None = None
    index = 0
    while True:
        batch = list(itertools.islice(items, chunk_size)) if chunk_size else list(items)
        if not batch:
            return
        for item in batch:
            this = "str" if isinstance(item, str) else "dict" if isinstance(item, Mapping) else None
            if this is None or (kind is not None and this != kind):
                raise DataError(
                    f"a list source must hold only strings (texts) or only dicts (rows); item {index} is "
                    f"{type(item).__name__}"
                )
            kind = this
            index += 1
        if kind == "str":
            batch = [{opts.text_column: t} for t in batch]
        yield _records_chunk(batch, opts, None, None, sparse=chunk_size is not None)
        if not chunk_size:
            return


def _records_chunk(
    records: list[Any],
    opts: _Options,
    warnings: list[str | None] | None,
    fallback_ids: list[str | None] | None,
    *,
    csv_labels: bool = False,
    sparse: bool = False,
) -> _Chunk:
    """Build a frame from rows whose values may be of mixed types (JSON, CSV, Python lists)."""
    key_warnings: dict[int, str] = {}
    for j, record in enumerate(records):  # a key with a lone surrogate: polars cannot name a column with it
        if any(isinstance(k, str) and _SURROGATES.search(k) for k in record):
            records[j] = {_SURROGATES.sub("\ufffd", k) if isinstance(k, str) else k: v for k, v in record.items()}
            key_warnings[j] = "a key held lone UTF-16 surrogates (not valid Unicode): replaced with U+FFFD"
    columns: dict[str, None] = {}
    for record in records:
        for key in record:
            columns.setdefault(key, None)
    if sparse:  # streaming: a named metadata key absent from one chunk is a null column there, not an error
        for name in opts.metadata_columns or ():
            columns.setdefault(name, None)
    text_warnings: list[str | None] = [key_warnings.get(j) for j in range(len(records))]
    series = []
    label_column = _resolve(opts.label_column, columns)
    id_column = _resolve(opts.id_column, columns)
    for name in columns:
        values = [record.get(name) for record in records]
        for i in _replace_surrogates(values):
            text_warnings[i] = _join(text_warnings[i], f"{name!r} held lone UTF-16 surrogates (\\ud800-\\udfff, "
                                     "not valid Unicode): replaced with U+FFFD")
        if name == opts.text_column:
            for i, value in enumerate(values):
                if value is not None and not isinstance(value, str):
                    text_warnings[i] = f"text was {type(value).__name__}, converted to str"
                    values[i] = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
            series.append(pl.Series(name, values, dtype=pl.String))
        elif name == label_column:
            labels = []
            for i, value in enumerate(values):
                problem = _label_problem(value)
                if problem:  # never a label made of a mapping's repr; the row itself is kept
                    text_warnings[i] = _join(text_warnings[i], _label_warning(name, problem))
                    value = None
                labels.append(_labels_from_value(value, csv=csv_labels))
            series.append(pl.Series(name, labels, dtype=_LABELS_DTYPE))
        elif name == id_column:  # each id by its own value: never a type polars picks for the whole chunk
            ids = []
            for i, value in enumerate(values):
                text, problem = _id_of(value)
                ids.append(text)
                if problem:
                    text_warnings[i] = _join(text_warnings[i], problem)
            series.append(pl.Series(name, ids, dtype=pl.String))
        else:
            series.append(_series(name, values))
    frame = pl.DataFrame(series) if series else pl.DataFrame(schema={})
    if frame.height != len(records):  # no columns at all (every row was bad): keep the row count
        frame = pl.DataFrame({opts.text_column: [None] * len(records)}, schema={opts.text_column: pl.String})
    merged = [_join(a, b) for a, b in zip(warnings or [None] * len(records), text_warnings, strict=True)]
    return _Chunk(frame, merged, fallback_ids)


_SURROGATES = re.compile("[\ud800-\udfff]")


def _scrub(value: Any) -> tuple[Any, bool]:
    """``value`` with every lone surrogate (a JSON ``"\\ud800"`` escape, which no UTF-8 text can hold) of its
    strings replaced by U+FFFD, lists and dicts included; and whether anything was replaced."""
    if isinstance(value, str):
        fixed = _SURROGATES.sub("\ufffd", value)
        return fixed, fixed != value
    if isinstance(value, list):
        pairs = [_scrub(v) for v in value]
        return ([v for v, _ in pairs], True) if any(c for _, c in pairs) else (value, False)
    if isinstance(value, dict):
        pairs = {k: _scrub(v) for k, v in value.items()}
        if any(c for _, c in pairs.values()):
            return {k: v for k, (v, _) in pairs.items()}, True
    return value, False


def _replace_surrogates(values: list[Any]) -> list[int]:
    """Replace, in place, the lone surrogates of ``values`` (polars, Arrow and the tokenizer refuse them, and one
    bad document must not fail its whole chunk); returns the positions changed."""
    changed = []
    for i, value in enumerate(values):
        fixed, hit = _scrub(value)
        if hit:
            values[i] = fixed
            changed.append(i)
    return changed


def _series(name: str, values: list[Any]) -> pl.Series:
    try:
        return pl.Series(name, values)
    except Exception:  # mixed types: keep every value, as text
        return pl.Series(
            name,
            [None if v is None else json.dumps(v) if isinstance(v, (list, dict)) else str(v) for v in values],
            dtype=pl.String,
        )


def _id_of(value: Any) -> tuple[str | None, str | None]:
    """One id as text by its own value (``3`` -> ``"3"``, ``2.5`` -> ``"2.5"``, a 19-digit integer exactly), so
    that a document's id does not depend on the other rows read with it; and the row's warning, if any. NaN is a
    missing id; a list or mapping is kept as its JSON text, with a warning."""
    if value is None or isinstance(value, str):
        return value, None
    if isinstance(value, bool):  # as a Boolean column casts
        return ("true" if value else "false"), None
    if isinstance(value, float) and value != value:
        return None, None
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace"), None
    if isinstance(value, (list, tuple, dict)):
        return (json.dumps(value, default=str),
                f"the id was a {type(value).__name__}: an id should be a string or a number; kept as its JSON text")
    return str(value), None


def _label_problem(value: Any) -> str | None:
    """Why ``value`` cannot be a label cell (a mapping, or a list holding a mapping or a list), or None."""
    if isinstance(value, dict):
        return "was a mapping"
    if isinstance(value, (list, tuple)) and any(isinstance(v, (dict, list, tuple)) for v in value):
        return "held a mapping or a nested list"
    return None


def _label_dtype_problem(dtype: pl.DataType) -> str | None:
    """Why no cell of a label column of ``dtype`` can be a label (a struct: mappings; a list of lists or
    structs), or None. The column-level form of ``_label_problem``."""
    if isinstance(dtype, pl.Struct):
        return "was a mapping"
    if isinstance(dtype, (pl.List, pl.Array)) and dtype.inner.is_nested():
        return "held a mapping or a nested list"
    return None


def _label_warning(column: str, problem: str) -> str:
    return f"{column!r} {problem}, so the document's given label is empty (a label is a string, a number or a list of them)"


def label_list(value: Any) -> list[str]:
    """One label cell as its list of labels, spelt as every reader spells them: ``None``, ``""`` and NaN give
    none, a str, number or boolean one, a list its items (see the module docstring)."""
    return _labels_from_value(value)


def _labels_from_value(value: Any, *, csv: bool = False) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        stripped = value.strip()
        if csv and stripped.startswith("[") and stripped.endswith("]"):
            try:
                parsed = json.loads(stripped)
            except ValueError:
                parsed = None
            if isinstance(parsed, list):
                return _labels_from_value(parsed)
        return [value] if value != "" else []
    if _is_nan(value):  # NaN from pandas
        return []
    if isinstance(value, (list, tuple)):
        return [_label_text(v) for v in value if v is not None and v != "" and not _is_nan(v)]
    return [_label_text(value)]


def _is_nan(value: Any) -> bool:
    return isinstance(value, numbers.Real) and value != value


_EXACT_FLOAT_INTS = 2.0**53  # every integer below this is exactly a float


def _label_text(value: Any) -> str:
    """One label value as text, spelt the same by every reader: ``True``/``False`` for booleans, a whole float as
    the integer (``1.0`` -> ``"1"``, as pandas writes an int column holding a NaN), anything else ``str``."""
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):  # float, numpy floats
        number = float(value)
        if number.is_integer() and abs(number) < _EXACT_FLOAT_INTS:
            return str(int(number))
        return str(number)
    return str(value)


def _label_string_expr(element: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """``_label_text`` for a column (or list element) of ``dtype``: booleans, whole floats and NaN (no label)."""
    if dtype == pl.Boolean:
        return pl.when(element).then(pl.lit("True")).when(element.not_()).then(pl.lit("False"))
    if dtype.is_float():
        whole = element.is_finite() & (element == element.floor()) & (element.abs() < _EXACT_FLOAT_INTS)
        return (pl.when(element.is_nan()).then(None)
                .when(whole).then(element.cast(pl.Int64, strict=False).cast(pl.String))
                .otherwise(element.cast(pl.String)))
    return element.cast(pl.String)


def _slice_chunk(chunk: _Chunk, start: int, length: int) -> _Chunk:
    if start == 0 and chunk.frame.height <= length:
        return chunk
    end = start + length
    return _Chunk(
        chunk.frame.slice(start, length),
        chunk.warnings[start:end] if chunk.warnings is not None else None,
        chunk.fallback_ids[start:end] if chunk.fallback_ids is not None else None,
    )


# --------------------------------------------------------------------------------------------------- normalise


def _resolve(name: str | None, columns: Iterable[str]) -> str | None:
    """The column to use for ``name``: itself, or for a default name its documented alternative."""
    columns = list(columns)
    if name is None or name in columns:
        return name
    if isinstance(name, _DefaultName) and _ALTERNATIVES.get(str(name)) in columns:
        return _ALTERNATIVES[str(name)]
    return None


def _join(*parts: str | None) -> str | None:
    kept = [p for p in parts if p]
    return "; ".join(kept) if kept else None


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    """A warning logged once per process (a streamed source repeats it for every chunk otherwise)."""
    if message not in _WARNED:
        _WARNED.add(message)
        logger.warning("%s", message)


def _text_of(column: str, dtype: pl.DataType) -> tuple[pl.Expr, str]:
    """The text of a ``column`` that is not a string column, and how it was made: a list (or array) of strings
    becomes its items joined with newlines (never polars' printed form of the list), a struct its JSON, anything
    else its value as a string. A list of lists is refused (``DataError``)."""
    col = pl.col(column)
    if isinstance(dtype, (pl.List, pl.Array)):
        inner = dtype.inner
        if inner.is_nested():
            raise DataError(f"the text column {column!r} is {dtype}: expected strings, or lists of strings (joined "
                            "with newlines); flatten it first or pass --text-column with another column")
        if isinstance(dtype, pl.Array):
            col = col.cast(pl.List(inner))
        how = "its items joined with newlines"
        _warn_once(f"the text column {column!r} is {dtype}: each document's items are joined with newlines")
        return col.list.eval(pl.element().cast(pl.String)).list.join("\n", ignore_nulls=True), how
    if isinstance(dtype, pl.Struct):
        _warn_once(f"the text column {column!r} is {dtype}: each document's text is its JSON")
        return col.struct.json_encode(), "converted to JSON"
    if dtype == pl.Object:
        return col.map_elements(str, return_dtype=pl.String), "converted to str"
    if dtype == pl.Binary:  # polars' cast fails the whole column on one byte that is not UTF-8
        return (col.map_elements(lambda b: b.decode("utf-8", errors="replace"), return_dtype=pl.String),
                "decoded as UTF-8 (bytes that are not UTF-8 replaced with U+FFFD)")
    return col.cast(pl.String), "converted to str"


def _finish(chunk: _Chunk, opts: _Options, row_offset: int) -> pl.DataFrame:
    """Turn a raw chunk into a document table."""
    frame = chunk.frame
    n = frame.height
    found = frame.columns

    if opts.text_column not in found:
        raise DataError(f"expected a text column {opts.text_column!r}, found {found}; pass text_column=...")
    label_column = _resolve(opts.label_column, found)
    if opts.label_column is not None and label_column is None and not isinstance(opts.label_column, _DefaultName):
        raise DataError(
            f"expected a label column {opts.label_column!r}, found {found}; pass label_column=... "
            "(or label_column=None for unlabelled documents)"
        )
    id_column = _resolve(opts.id_column, found)
    if opts.id_column is not None and id_column is None and not isinstance(opts.id_column, _DefaultName):
        raise DataError(
            f"expected an id column {opts.id_column!r}, found {found}; pass id_column=... "
            "(or id_column=None to number the rows)"
        )
    # one column cannot be two of text, labels and ids: a default name gives way (no labels; ids numbered)
    if label_column is not None and label_column == opts.text_column:
        if not isinstance(opts.label_column, _DefaultName):
            raise DataError(f"text_column and label_column are both {label_column!r}: one column cannot be both; "
                            "name another column for one of them")
        label_column = None
    if id_column is not None and id_column in (opts.text_column, label_column):
        if not isinstance(opts.id_column, _DefaultName):
            role = "text_column" if id_column == opts.text_column else "label_column"
            raise DataError(f"{role} and id_column are both {id_column!r}: one column cannot be both; name another "
                            "column for one of them, or pass id_column=None to number the rows")
        id_column = None
    if id_column is not None and isinstance(frame.schema[id_column], (pl.List, pl.Array, pl.Struct)):
        raise DataError(f"id_column={id_column!r} is a {frame.schema[id_column]} column: an id must be a string or "
                        "a number; pass id_column=None to number the rows")
    prior_warning = "warning" if "warning" in found and "warning" not in (opts.text_column, label_column) else None

    used = {opts.text_column, label_column, id_column, prior_warning} - {None}
    if opts.metadata_columns is None:
        metadata = [c for c in found if c not in used]
    else:
        missing = [c for c in opts.metadata_columns if c not in found]
        if missing:
            raise DataError(f"metadata_columns {missing} not found; found {found}")
        metadata = list(dict.fromkeys(opts.metadata_columns))
    clashes = [c for c in metadata if c in DOC_COLUMNS]
    if clashes:
        raise DataError(
            f"input columns {clashes} would clash with the document table's own columns {list(DOC_COLUMNS)}; "
            "pass metadata_columns=[...] without them, or rename them"
        )

    # text
    text = pl.col(opts.text_column)
    text_dtype = frame.schema[opts.text_column]
    warnings: list[pl.Expr] = []
    if text_dtype == pl.Null:
        text = text.cast(pl.String)
    elif text_dtype != pl.String:
        text, how = _text_of(opts.text_column, text_dtype)
        warnings.append(pl.when(pl.col(opts.text_column).is_not_null()).then(pl.lit(f"text was {text_dtype}, {how}")))
    raw_text = text
    warnings.append(
        pl.when(raw_text.is_null())
        .then(pl.lit("missing text (null)"))
        .when(raw_text == "")
        .then(pl.lit("empty document"))
        .when(raw_text.str.strip_chars() == "")
        .then(pl.lit("whitespace-only document"))
    )
    if prior_warning:
        warnings.insert(0, pl.col(prior_warning).cast(pl.String))
    if chunk.warnings is not None and any(chunk.warnings):
        frame = frame.with_columns(pl.Series("__read_warning", chunk.warnings, dtype=pl.String))
        warnings.insert(0, pl.col("__read_warning"))

    # labels
    if label_column is None:
        labels = pl.lit([], dtype=_LABELS_DTYPE)
    else:
        labels, label_warning = _labels_expr(frame, label_column)
        warnings.append(label_warning)

    # ids
    if id_column is None:
        ids = pl.int_range(row_offset, row_offset + n, dtype=pl.Int64).cast(pl.String)
    else:
        ids = pl.col(id_column).cast(pl.String)
        if chunk.fallback_ids is not None and any(chunk.fallback_ids):
            frame = frame.with_columns(pl.Series("__fallback_id", chunk.fallback_ids, dtype=pl.String))
            ids = pl.coalesce(ids, pl.col("__fallback_id"))

    empty_list = pl.lit([], dtype=_LABELS_DTYPE)
    table = frame.select(
        ids.alias("doc_id"),
        raw_text.fill_null("").alias("text"),
        labels.fill_null(empty_list).alias("labels"),
        pl.concat_str(warnings, separator="; ", ignore_nulls=True).alias("warning"),
        *[pl.col(c) for c in metadata],
    ).with_columns(pl.when(pl.col("warning") != "").then(pl.col("warning")).alias("warning"))

    n_missing = table["doc_id"].null_count() + (table["doc_id"] == "").sum()
    if n_missing:
        rows = table.with_row_index("row").filter(pl.col("doc_id").is_null() | (pl.col("doc_id") == ""))
        first = [row_offset + r for r in rows["row"].head(5).to_list()]
        raise DataError(
            f"id_column={id_column!r} has {n_missing} missing ids (rows {first}...); fill them, or pass "
            "id_column=None to number the rows"
        )
    return table


def _labels_expr(frame: pl.DataFrame, column: str) -> tuple[pl.Expr, pl.Expr]:
    """The labels of a label ``column`` and each row's warning when its cell cannot be a label (else null)."""
    dtype = frame.schema[column]
    col = pl.col(column)
    empty = pl.lit([], dtype=_LABELS_DTYPE)
    no_warning = pl.lit(None, dtype=pl.String)
    if dtype == pl.Null:
        return empty, no_warning
    problem = _label_dtype_problem(dtype)
    if problem:  # never a label made of a struct's printed form
        return empty, pl.when(col.is_not_null()).then(pl.lit(_label_warning(column, problem)))
    if dtype == pl.Object:
        return (col.map_elements(lambda v: [] if _label_problem(v) else _labels_from_value(v),
                                 return_dtype=_LABELS_DTYPE),
                col.map_elements(lambda v: _label_warning(column, p) if (p := _label_problem(v)) else None,
                                 return_dtype=pl.String))
    return _plain_labels_expr(col, dtype), no_warning


def _plain_labels_expr(col: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """The labels of a label column whose every cell can be one (strings, numbers, lists of them)."""
    empty = pl.lit([], dtype=_LABELS_DTYPE)
    if dtype == pl.String or dtype.is_numeric() or dtype == pl.Boolean:
        col = _label_string_expr(col, dtype)
        return pl.when(col.is_null() | (col == "")).then(empty).otherwise(pl.concat_list(col))
    if isinstance(dtype, pl.Array):  # a fixed-width list reads as a list (map_elements would see a PySeries)
        col, dtype = col.cast(pl.List(dtype.inner)), pl.List(dtype.inner)
    if dtype == pl.List:
        inner = _label_string_expr(pl.element(), dtype.inner)  # NaN is no label, as in a float column
        return col.list.eval(inner.filter(inner.is_not_null() & (inner != ""))).cast(_LABELS_DTYPE)
    return col.map_elements(_labels_from_value, return_dtype=_LABELS_DTYPE)


def check_unique_ids(documents: pl.DataFrame) -> None:
    """Raise ``DataError`` listing a few duplicated ``doc_id`` values of a document table."""
    _check_unique(documents["doc_id"], "doc_id")


def _check_unique(ids: pl.Series, id_column: str | None) -> None:
    if ids.is_unique().all():
        return
    counts = Counter(ids.to_list())
    duplicates = [(i, c) for i, c in counts.most_common() if c > 1]
    shown = ", ".join(f"{i!r} ({c} times)" for i, c in duplicates[:5])
    more = f" and {len(duplicates) - 5} more" if len(duplicates) > 5 else ""
    raise DataError(f"duplicate ids in id_column={id_column!r}: {shown}{more}; ids must be unique")


def _empty_table() -> pl.DataFrame:
    return pl.DataFrame(
        schema={"doc_id": pl.String, "text": pl.String, "labels": _LABELS_DTYPE, "warning": pl.String}
    )


def _names_existing(text: str) -> bool:
    if not text or "\n" in text or len(text) > _MAX_PATH_CHARS:
        return False
    try:
        return Path(text).exists()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte: not a path
        return False


def _looks_like_path(text: str) -> bool:
    if not text.strip() or "\n" in text or len(text) > _MAX_PATH_CHARS:
        return False
    if text.strip().lower().endswith(_PATH_SUFFIXES):
        return True
    separators = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    return any(sep in text for sep in separators) and not any(c.isspace() for c in text)


def resolve_documents(documents: Any) -> Any:
    """``documents`` as the readers should see it: a ``str`` naming an existing file or folder becomes a ``Path``.

    Raises:
        DataError: ``documents`` is a ``str`` that looks like a path (one line ending in ``.jsonl``, ``.json``,
            ``.parquet``, ``.csv``, ``.txt``..., or holding a path separator and no whitespace) but names nothing:
            it is never indexed as the text of a document without a word.
    """
    if not isinstance(documents, str):
        return documents
    if _names_existing(documents):
        return Path(documents)
    if _looks_like_path(documents):
        raise DataError(
            f"documents={documents!r} looks like a path but no such file or folder exists (cwd: {os.getcwd()}); "
            "pass an existing path (.jsonl, .json, .parquet, .csv, .txt, a folder of .txt/.md files), or "
            f"[{documents!r}] to index this string as the text of one document"
        )
    return documents
