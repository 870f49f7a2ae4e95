"""The passage table: one row per indexed window, validated before anything is added.

Required columns: ``doc_id`` (str), ``window_index`` (int), ``char_start`` / ``char_end`` (int, the window's
exact character span in its document) and ``text`` (str, the window's text). Optional columns, filled with
nulls when absent: ``labels`` and ``pred_labels`` (list[str]; a plain str column is read as one label per row),
``pred_probs`` (list[float]) and ``weight`` (float, the window's attribution weight from the classifier). Every
other column is user metadata: kept, saved, and returned in ``Hit.metadata``. ``row_id`` is assigned by the
index and may not be supplied.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from indexer.errors import IndexInputError

__all__ = [
    "CORE_COLUMNS",
    "OPTIONAL_COLUMNS",
    "REQUIRED_COLUMNS",
    "empty_table",
    "metadata_columns",
    "validate_passages",
    "validate_stored_table",
]

REQUIRED_COLUMNS: dict[str, pl.DataType] = {
    "doc_id": pl.String(),
    "window_index": pl.Int64(),
    "char_start": pl.Int64(),
    "char_end": pl.Int64(),
    "text": pl.String(),
}
OPTIONAL_COLUMNS: dict[str, pl.DataType] = {
    "labels": pl.List(pl.String()),
    "pred_labels": pl.List(pl.String()),
    "pred_probs": pl.List(pl.Float64()),
    "weight": pl.Float64(),
}
#: Columns the index owns, in table order; everything after them is user metadata.
CORE_COLUMNS: dict[str, pl.DataType] = {"row_id": pl.Int64(), **REQUIRED_COLUMNS, **OPTIONAL_COLUMNS}


def empty_table() -> pl.DataFrame:
    return pl.DataFrame(schema=CORE_COLUMNS)


def metadata_columns(table: pl.DataFrame) -> list[str]:
    return [c for c in table.columns if c not in CORE_COLUMNS]


def _to_frame(passages: Any) -> pl.DataFrame:
    if isinstance(passages, pl.DataFrame):
        return passages
    if isinstance(passages, pl.LazyFrame):
        return passages.collect()
    type_name = f"{type(passages).__module__}.{type(passages).__name__}"
    if type_name.startswith("pandas."):
        return pl.from_pandas(passages)
    if isinstance(passages, dict | list):
        try:
            return pl.DataFrame(passages)
        except Exception as exc:
            raise IndexInputError(f"passages: cannot build a table from the given {type(passages).__name__}: {exc}") from None
    raise IndexInputError(
        f"passages must be a polars DataFrame (or pandas DataFrame, dict of columns, list of row dicts), "
        f"got {type_name}"
    )


def _cast_int(df: pl.DataFrame, name: str) -> pl.DataFrame:
    dtype = df.schema[name]
    if not dtype.is_integer():
        raise IndexInputError(f"passages column {name!r} must hold integers, found dtype {dtype}")
    return df.with_columns(pl.col(name).cast(pl.Int64))


def _cast_label_list(df: pl.DataFrame, name: str) -> pl.DataFrame:
    dtype = df.schema[name]
    if dtype == pl.Null:
        return df.with_columns(pl.col(name).cast(pl.List(pl.String)))
    if dtype in (pl.String, pl.Categorical) or isinstance(dtype, pl.Enum):
        expr = pl.when(pl.col(name).is_null()).then(None).otherwise(pl.concat_list(pl.col(name).cast(pl.String)))
        return df.with_columns(expr.alias(name))
    if isinstance(dtype, pl.List) and (
        dtype.inner in (pl.String, pl.Categorical, pl.Null) or isinstance(dtype.inner, pl.Enum)
    ):
        return df.with_columns(pl.col(name).cast(pl.List(pl.String)))
    raise IndexInputError(
        f"passages column {name!r} must be list[str] (or one str per row), found dtype {dtype}"
    )


def validate_passages(passages: Any, *, n_rows: int | None = None) -> pl.DataFrame:
    """Check a passage table and return it in canonical form (typed core columns first, then metadata).

    Raises ``IndexInputError`` naming the column, what it held, and what is valid. ``n_rows`` is the number
    of embedding rows the table must align with.
    """
    df = _to_frame(passages)
    if "row_id" in df.columns:
        raise IndexInputError("passages must not have a 'row_id' column: the index assigns row ids itself")
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise IndexInputError(
            f"passages is missing required column(s) {missing}; expected {list(REQUIRED_COLUMNS)} "
            f"(optional: {list(OPTIONAL_COLUMNS)}), found {df.columns}"
        )
    if n_rows is not None and df.height != n_rows:
        raise IndexInputError(
            f"embeddings has {n_rows} rows but passages has {df.height}: they must align row for row"
        )
    for name in ("doc_id", "text"):
        dtype = df.schema[name]
        if dtype == pl.Categorical or isinstance(dtype, pl.Enum):
            df = df.with_columns(pl.col(name).cast(pl.String))
        elif dtype != pl.String and not (dtype == pl.Null and df.height == 0):
            hint = " (cast with pl.col('doc_id').cast(pl.String))" if name == "doc_id" else ""
            raise IndexInputError(f"passages column {name!r} must hold str, found dtype {dtype}{hint}")
    for name in ("window_index", "char_start", "char_end"):
        if df.height == 0 and df.schema[name] == pl.Null:
            continue
        df = _cast_int(df, name)
    for name in REQUIRED_COLUMNS:
        nulls = df[name].null_count()
        if nulls:
            raise IndexInputError(f"passages column {name!r} has {nulls} null value(s); every window needs one")
    if df.height:
        bad = df.filter((pl.col("window_index") < 0) | (pl.col("char_start") < 0) | (pl.col("char_end") < pl.col("char_start")))
        if bad.height:
            row = bad.row(0, named=True)
            raise IndexInputError(
                "passages needs window_index >= 0 and 0 <= char_start <= char_end; "
                f"found {bad.height} bad row(s), e.g. doc_id={row['doc_id']!r} window_index={row['window_index']} "
                f"char_start={row['char_start']} char_end={row['char_end']}"
            )
        dup = df.group_by(["doc_id", "window_index"]).len().filter(pl.col("len") > 1)
        if dup.height:
            pairs = [(r[0], r[1]) for r in dup.head(5).iter_rows()]
            raise IndexInputError(
                f"passages has {dup.height} duplicate (doc_id, window_index) pair(s), e.g. {pairs}; each window "
                "may appear once"
            )
    for name in ("labels", "pred_labels"):
        if name in df.columns:
            df = _cast_label_list(df, name)
    if "pred_probs" in df.columns:
        dtype = df.schema["pred_probs"]
        if not (dtype == pl.Null or (isinstance(dtype, pl.List) and (dtype.inner.is_numeric() or dtype.inner == pl.Null))):
            raise IndexInputError(f"passages column 'pred_probs' must be list[float], found dtype {dtype}")
    if "weight" in df.columns:
        dtype = df.schema["weight"]
        if not (dtype == pl.Null or dtype.is_numeric()):
            raise IndexInputError(f"passages column 'weight' must be a float, found dtype {dtype}")
    fill = [pl.lit(None, dtype=dt).alias(c) for c, dt in OPTIONAL_COLUMNS.items() if c not in df.columns]
    if fill:
        df = df.with_columns(fill)
    df = df.with_columns([pl.col(c).cast(dt) for c, dt in {**REQUIRED_COLUMNS, **OPTIONAL_COLUMNS}.items()])
    meta = [c for c in df.columns if c not in CORE_COLUMNS]
    return df.select([*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS, *meta])


def validate_stored_table(table: pl.DataFrame) -> str | None:
    """Why a table read from passages.parquet is unusable, or None when it is fine."""
    for name, dtype in CORE_COLUMNS.items():
        if name not in table.columns:
            return f"column {name!r} is missing"
        if table.schema[name] != dtype:
            return f"column {name!r} has dtype {table.schema[name]}, expected {dtype}"
    for name in ("row_id", *REQUIRED_COLUMNS):
        if table[name].null_count():
            return f"column {name!r} has nulls"
    if table.height and not table["row_id"].is_sorted():
        return "row_id is not increasing"
    if table["row_id"].n_unique() != table.height:
        return "row_id has duplicates"
    if table.select(["doc_id", "window_index"]).is_duplicated().any():
        return "(doc_id, window_index) has duplicates"
    # what validate_passages refuses at add time is refused at load too. (A span is not checked against its
    # document's length, which no part of an index stores, nor against its text's length: a table whose texts
    # do not fit their spans is accepted, and search and rag fall back for it.)
    bad = table.filter((pl.col("window_index") < 0) | (pl.col("char_start") < 0)
                       | (pl.col("char_end") < pl.col("char_start")))
    if bad.height:
        row = bad.row(0, named=True)
        return (f"passage doc_id={row['doc_id']!r} window_index={row['window_index']} has char_start="
                f"{row['char_start']}, char_end={row['char_end']} ({bad.height} such row(s)); every passage needs "
                "window_index >= 0 and 0 <= char_start <= char_end")
    return None
