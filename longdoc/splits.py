"""Stratified splits, one implementation for every caller: the validation split ``fit`` carves
(``classifier``), ``corpora.stratified_split`` and the folds of a cross-validation (``evaluation``).

A *stratum* is the rows sharing a key (a label, or a label set); strata are visited in the sorted order of their
keys (as strings). A held-out part takes :func:`holdout_size` rows of each stratum, chosen by the caller's
``pick``: each caller keeps its own seeded random source, so a given seed gives the split it always gave.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np

from longdoc.errors import ConfigError, DataError

__all__ = ["holdout_size", "stratified_folds", "stratified_holdout", "strata"]


def strata(keys: Sequence[Hashable]) -> list[tuple[Any, list[int]]]:
    """``(key, rows)`` per distinct key, rows in input order, keys sorted as strings."""
    by_key: dict[Any, list[int]] = {}
    for i, key in enumerate(keys):
        by_key.setdefault(key, []).append(i)
    return [(key, by_key[key]) for key in sorted(by_key, key=str)]


def holdout_size(n: int, fraction: float) -> int:
    """Rows a stratum of ``n`` gives to a held-out part: ``round(n * fraction)``, at least one and at most
    ``n - 1`` (a stratum of one row gives none: it stays in the training part)."""
    return 0 if n < 2 else min(n - 1, max(1, round(n * fraction)))


def stratified_holdout(
    keys: Sequence[Hashable], fraction: float, pick: Callable[[Any, list[int], int], Sequence[int]]
) -> np.ndarray:
    """Sorted row numbers of a held-out part: from each stratum of ``keys`` (see :func:`strata`), the
    ``holdout_size(len(rows), fraction)`` rows that ``pick(key, rows, size)`` chooses (strata that give none are
    not passed to ``pick``, so a random source shared across strata is drawn from only for those that give)."""
    chosen: list[int] = []
    for key, rows in strata(keys):
        size = holdout_size(len(rows), fraction)
        if size:
            chosen.extend(int(r) for r in pick(key, rows, size))
    return np.sort(np.asarray(chosen, dtype=np.int64))


def stratified_folds(labels: Sequence[Any], folds: int, *, seed: int = 0) -> np.ndarray:
    """The fold (``0 .. folds - 1``) of each document, every label spread evenly over the folds.

    Each label's documents (a label set counts as one stratum in multi-label data) are shuffled with ``seed``
    and dealt to the folds in turn, the deal continuing from label to label, so fold sizes differ by at most one
    and each label's count per fold by at most one. Deterministic for a given ``seed``.
    """
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise ConfigError(f"folds={folds!r} is not valid; expected an integer >= 2")
    keys = [y if isinstance(y, str) else tuple(sorted(map(str, y))) for y in labels]
    if len(keys) < folds:
        raise DataError(f"{len(keys)} documents cannot fill {folds} folds; pass fewer folds or more documents")
    rng = np.random.default_rng(seed)
    out = np.zeros(len(keys), dtype=np.int64)
    turn = 0
    for _, members in strata(keys):
        rows = rng.permutation(members)
        out[rows] = (turn + np.arange(len(rows))) % folds
        turn = (turn + len(rows)) % folds
    return out
