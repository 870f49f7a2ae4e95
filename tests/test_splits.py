"""longdoc.splits: the one stratified-split implementation behind fit's validation split, corpora.stratified_split
and the cross-validation folds. The pinned values are what each splitter gave before they shared it: a seed must
keep giving the same split (models, benchmark figures and checkpoints depend on it)."""

from __future__ import annotations

import polars as pl

from longdoc.classifier import _validation_rows
from longdoc.corpora import stratified_split
from longdoc.evaluation import stratified_folds
from longdoc.splits import holdout_size, strata, stratified_holdout

LABELS = ["b", "a", "c", "a", "b", "a", "b", "a", "c", "a", "b", "d"]
DOCS = pl.DataFrame({"doc_id": [f"x{i}" for i in range(12)], "text": ["t"] * 12, "labels": [[x] for x in LABELS]})


def test_each_splitter_gives_the_split_it_gave_before():
    assert _validation_rows(DOCS, 0.25, seed=3, stratify=True).tolist() == [8, 9, 10]
    assert _validation_rows(DOCS, 0.25, seed=3, stratify=False).tolist() == [2, 7, 11]
    assert stratified_split(DOCS, test_size=0.25, seed=3)[1]["doc_id"].to_list() == ["x0", "x1", "x8"]
    assert stratified_folds(LABELS, 3, seed=3).tolist() == [1, 1, 1, 2, 0, 1, 2, 0, 0, 0, 2, 2]


def test_strata_and_holdout_sizes():
    assert strata(["b", "a", "b", ("a",)]) == [(("a",), [3]), ("a", [1]), ("b", [0, 2])]  # sorted as strings
    assert [holdout_size(n, 0.25) for n in (1, 2, 3, 4, 10, 40)] == [0, 1, 1, 1, 2, 10]
    assert holdout_size(3, 0.9) == 2  # never the whole stratum
    seen = []

    def pick(key, rows, size):
        seen.append((key, size))
        return rows[:size]

    assert stratified_holdout(LABELS, 0.25, pick).tolist() == [0, 1, 2]
    assert seen == [("a", 1), ("b", 1), ("c", 1)]  # "d" has one row: it gives none, pick is not called
