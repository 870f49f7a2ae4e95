"""Recipes for the labelled data sets in the shared data folder, read in place (never copied).

The folder is ``$LONGDOC_SHARED_DATA`` when set, else ``../shared/data`` relative to the working directory, else
``shared/data`` next to the repository checkout. The texts belong to their authors: research and evaluation use
only (see ``data/README.md``).
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import polars as pl

from longdoc.data import load_documents
from longdoc.errors import ConfigError, DataError
from longdoc.splits import stratified_holdout

logger = logging.getLogger(__name__)

__all__ = ["load_20news", "load_bbc", "shared_data_dir", "split_bbc_fold", "stratified_split"]

BBC_FILE = "bbc_news.jsonl"
NEWS20_FILE = "20news_bydate.jsonl"


def _candidates() -> list[Path]:
    env = os.environ.get("LONGDOC_SHARED_DATA")
    places = [Path(env).expanduser()] if env else []
    places.append(Path.cwd() / ".." / "shared" / "data")
    places.append(Path(__file__).resolve().parents[2] / "shared" / "data")
    return places


def shared_data_dir() -> Path:
    """The shared data folder (see the module docstring for where it is looked for).

    Raises:
        DataError: none of the places exists; the message lists them.
    """
    places = _candidates()
    for place in places:
        if place.is_dir():
            return place.resolve()
    looked = ", ".join(str(p) for p in places)
    raise DataError(f"shared data folder not found; looked in: {looked}; set LONGDOC_SHARED_DATA or pass path=...")


def _file(path: str | Path | None, name: str) -> Path:
    file = Path(path) if path is not None else shared_data_dir() / name
    if file.is_dir():
        file = file / name
    if not file.is_file():
        raise DataError(f"{name} not found at {str(file)!r}; pass path=... or set LONGDOC_SHARED_DATA")
    return file


def load_bbc(path: str | Path | None = None, *, drop_duplicates: bool = True) -> pl.DataFrame:
    """BBC news (2,225 articles, 5 topics) as a document table with metadata ``fold`` (0-4).

    Args:
        path: the ``bbc_news.jsonl`` file or its folder; default: the shared data folder.
        drop_duplicates: drop the 101 exact duplicates (rows whose ``duplicate_of`` is set), leaving 2,124.
            With ``False`` the ``duplicate_of`` column is kept as metadata too.
    """
    metadata = ["fold"] if drop_duplicates else ["fold", "duplicate_of"]
    table = load_documents(_file(path, BBC_FILE), metadata_columns=["fold", "duplicate_of"])
    if drop_duplicates:
        table = table.filter(pl.col("duplicate_of").is_null())
    return table.select([*table.columns[:4], *metadata])


def load_20news(path: str | Path | None = None, *, body_only: bool = True) -> pl.DataFrame:
    """20 Newsgroups, by-date split (18,846 posts, 20 groups) as a document table with metadata ``split``.

    Args:
        path: the ``20news_bydate.jsonl`` file or its folder; default: the shared data folder.
        body_only: keep only the body (``text[header_end:]``): the headers name the newsgroup, so any fair
            figure classifies the body. With ``False`` the raw post is kept, with ``header_end`` as metadata.
    """
    table = load_documents(_file(path, NEWS20_FILE), metadata_columns=["split", "header_end"])
    if not body_only:
        return table
    bodies = [text[end:] for text, end in zip(table["text"].to_list(), table["header_end"].to_list(), strict=True)]
    return table.with_columns(pl.Series("text", bodies, dtype=pl.String)).drop("header_end")


def split_bbc_fold(df: pl.DataFrame, fold: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(train, test) for one of the five suggested BBC folds: the test part is the rows with ``fold == fold``."""
    if "fold" not in df.columns:
        raise DataError(f"expected a 'fold' column (from load_bbc), found {df.columns}")
    folds = sorted(df["fold"].unique().drop_nulls().to_list())
    if fold not in folds:
        raise ConfigError(f"fold must be one of {folds}, got {fold!r}")
    is_test = pl.col("fold") == fold
    return df.filter(~is_test), df.filter(is_test)


def stratified_split(
    df: pl.DataFrame, *, test_size: float = 0.2, seed: int = 0
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(train, test) of a single-label document table, keeping each label's share in both parts.

    Each label gives ``round(n * test_size)`` rows to the test part, at least one and at most ``n - 1`` when it
    has two rows or more (a label with one row stays in train; ``longdoc.splits``). Rows keep their input order. Deterministic for
    a given ``seed``.

    Raises:
        ConfigError: ``test_size`` is not in (0, 1).
        DataError: a row has no label or several labels.
    """
    if not isinstance(test_size, (int, float)) or not 0 < test_size < 1:
        raise ConfigError(f"test_size must be a fraction in (0, 1), got {test_size!r}")
    if "labels" not in df.columns:
        raise DataError(f"expected a document table with a 'labels' column, found {df.columns}")
    counts = df["labels"].list.len()
    bad = (counts != 1).sum()
    if bad:
        raise DataError(f"stratified_split needs exactly one label per row; {bad} rows have none or several")

    def pick(label: str, rows: list[int], size: int) -> list[int]:
        return random.Random(f"{seed}:{label}").sample(rows, size)  # a source of its own per label

    test_rows = stratified_holdout(df["labels"].list.first().to_list(), test_size, pick)
    mask = pl.Series("test", [False] * df.height)
    mask[test_rows.tolist()] = True
    return df.filter(~mask), df.filter(mask)
