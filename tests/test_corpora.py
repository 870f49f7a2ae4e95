"""Recipes over the shared data sets (read in place; skipped where the folder is absent)."""

from __future__ import annotations

import json

import polars as pl
import pytest

from longdoc.corpora import load_20news, load_bbc, shared_data_dir, split_bbc_fold, stratified_split
from longdoc.data import DOC_COLUMNS, documents_from_texts
from longdoc.errors import ConfigError, DataError


def test_bbc_counts_and_folds(shared_data):
    bbc = load_bbc(shared_data)
    assert bbc.columns == [*DOC_COLUMNS, "fold"]
    assert bbc.height == 2225 - 101 == 2124
    assert sorted(bbc["labels"].list.first().unique().to_list()) == [
        "business", "entertainment", "politics", "sport", "tech",
    ]
    assert load_bbc(shared_data, drop_duplicates=False).height == 2225
    train, test = split_bbc_fold(bbc, 0)
    assert train.height + test.height == bbc.height
    assert set(test["fold"].unique().to_list()) == {0}
    with pytest.raises(ConfigError, match="fold must be one of"):
        split_bbc_fold(bbc, 7)


def test_20news_counts_and_body_only(shared_data):
    news = load_20news(shared_data / "20news_bydate.jsonl")
    assert news.columns == [*DOC_COLUMNS, "split"]
    assert news.height == 18846
    assert dict(news["split"].value_counts().rows()) == {"train": 11314, "test": 7532}
    assert news["labels"].list.first().n_unique() == 20

    raw = load_20news(shared_data, body_only=False)
    assert raw["text"].str.contains("(?m)^Subject:").sum() == 18846
    assert news["text"].str.contains("(?m)^Subject:").sum() < 200  # only quoted headers remain in bodies
    with open(shared_data / "20news_bydate.jsonl", encoding="utf-8") as f:
        first = json.loads(f.readline())
    assert news["text"][0] == first["text"][first["header_end"] :]
    assert raw["text"][0] == first["text"]


def test_default_path_from_environment(shared_data, monkeypatch):
    monkeypatch.setenv("LONGDOC_SHARED_DATA", str(shared_data))
    assert shared_data_dir() == shared_data.resolve()
    assert load_bbc().height == 2124


def test_missing_data_says_where_it_looked(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="bbc_news.jsonl not found"):
        load_bbc(tmp_path)
    monkeypatch.setenv("LONGDOC_SHARED_DATA", str(tmp_path / "nowhere"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("longdoc.corpora._candidates", lambda: [tmp_path / "nowhere", tmp_path / "nor-here"])
    with pytest.raises(DataError, match="looked in: .*nowhere.*nor-here.*LONGDOC_SHARED_DATA"):
        shared_data_dir()


def test_stratified_split():
    labels = ["a"] * 10 + ["b"] * 5 + ["c"]
    table = documents_from_texts([f"t{i}" for i in range(len(labels))], labels=labels)
    train, test = stratified_split(table, test_size=0.2, seed=3)
    assert train.height + test.height == table.height
    assert not set(train["doc_id"]) & set(test["doc_id"])
    counts = dict(test["labels"].list.first().value_counts().rows())
    assert counts == {"a": 2, "b": 1}
    assert train["doc_id"].to_list() == sorted(train["doc_id"].to_list(), key=int)  # input order kept
    again = stratified_split(table, test_size=0.2, seed=3)
    assert again[1].equals(test)
    with pytest.raises(ConfigError, match="test_size"):
        stratified_split(table, test_size=1.5)
    multi = documents_from_texts(["x", "y"], labels=[["a", "b"], "a"])
    with pytest.raises(DataError, match="exactly one label"):
        stratified_split(multi)
    assert isinstance(train, pl.DataFrame)
