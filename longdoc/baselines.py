"""Baselines: a TF-IDF + logistic-regression classifier, and the token-selection rules of truncation baselines.

:class:`TfidfLogReg` is the non-neural reference every hierarchical model should beat. The selection helpers
:func:`first_tokens` and :func:`head_tail_tokens` pick which token ids a single 512-token BERT pass would see
(they work on id arrays *without* special tokens; the caller adds [CLS]/[SEP]).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import train_test_split
from sklearn.multiclass import OneVsRestClassifier
from sklearn.preprocessing import MultiLabelBinarizer

from longdoc.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


def _is_multi_label(labels: Sequence[Any]) -> bool:
    return any(isinstance(y, (list, tuple, set, frozenset)) for y in labels)


class TfidfLogReg:
    """TF-IDF (word 1-2 grams, sublinear tf) + logistic regression; single- or multi-label (one-vs-rest).

    Example::

        clf = TfidfLogReg().fit(train_texts, train_labels)      # labels: ["sport", ...] or [["a", "b"], ...]
        clf.predict(test_texts)         # ["sport", ...] or [["a"], ...]
        clf.predict_proba(test_texts)   # (n, len(clf.labels_)), columns in clf.labels_ order

    Args:
        C: inverse regularisation strength, or ``"auto"`` to pick it from ``C_grid`` by macro F1 on a held-out
            ``val_fraction`` of the training data (then refit on all of it).
        C_grid: candidates for ``C="auto"``.
        class_weight: passed to ``LogisticRegression`` (e.g. ``"balanced"``).
        multi_label: None: decided by the labels (lists of names mean multi-label).
        threshold: probability from which a label is predicted (multi-label).
        ngram_range, min_df, max_features, sublinear_tf: ``TfidfVectorizer`` options. When ``min_df`` prunes
            every term (a tiny corpus) the vectorizer is refit with ``min_df=1``.
        val_fraction, random_state, max_iter: for the C search and the solver.

    Attributes:
        labels_: the label names, sorted; the column order of :meth:`predict_proba`.
        multi_label_: whether the fitted problem is multi-label.
        C_: the C used for the final fit.
    """

    def __init__(
        self,
        *,
        C: float | str = 10.0,
        C_grid: Sequence[float] = (0.1, 1.0, 10.0, 100.0),
        class_weight: str | dict | None = None,
        multi_label: bool | None = None,
        threshold: float = 0.5,
        ngram_range: tuple[int, int] = (1, 2),
        min_df: int | float = 2,
        max_features: int | None = 200_000,
        sublinear_tf: bool = True,
        val_fraction: float = 0.2,
        random_state: int = 0,
        max_iter: int = 1000,
    ):
        if C != "auto" and (isinstance(C, str) or not C > 0):
            raise ConfigError(f"C={C!r} is not valid; expected a float > 0 or 'auto'")
        if C == "auto" and (not C_grid or any(c <= 0 for c in C_grid)):
            raise ConfigError(f"C_grid={C_grid!r} is not valid; expected non-empty positive floats")
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"val_fraction={val_fraction!r} is not valid; expected a float in (0, 1)")
        if not 0.0 < threshold < 1.0:
            raise ConfigError(f"threshold={threshold!r} is not valid; expected a float in (0, 1)")
        self.C = C
        self.C_grid = tuple(C_grid)
        self.class_weight = class_weight
        self.multi_label = multi_label
        self.threshold = threshold
        self.ngram_range = ngram_range
        self.min_df = min_df
        self.max_features = max_features
        self.sublinear_tf = sublinear_tf
        self.val_fraction = val_fraction
        self.random_state = random_state
        self.max_iter = max_iter
        self.labels_: list[Any] = []
        self.multi_label_: bool = False
        self.C_: float | None = None
        self._vectorizer: TfidfVectorizer | None = None
        self._model: Any = None
        self._binarizer: MultiLabelBinarizer | None = None

    # -- fitting -------------------------------------------------------------------------------------------

    def _vectorize_fit(self, texts: Sequence[str]) -> tuple[TfidfVectorizer, Any]:
        def make(min_df: int | float) -> TfidfVectorizer:
            return TfidfVectorizer(
                ngram_range=self.ngram_range,
                sublinear_tf=self.sublinear_tf,
                min_df=min_df,
                max_features=self.max_features,
                dtype=np.float32,
            )

        vectorizer = make(self.min_df)
        try:
            return vectorizer, vectorizer.fit_transform(texts)
        except ValueError as exc:  # "After pruning, no terms remain" / "empty vocabulary"
            if self.min_df == 1:
                raise DataError(f"TF-IDF found no terms in the training texts: {exc}") from exc
            logger.warning("min_df=%s pruned every term (%s); refitting with min_df=1", self.min_df, exc)
            vectorizer = make(1)
            try:
                return vectorizer, vectorizer.fit_transform(texts)
            except ValueError as exc2:
                raise DataError(f"TF-IDF found no terms in the training texts: {exc2}") from exc2

    def _make_model(self, C: float) -> Any:
        logreg = LogisticRegression(C=C, class_weight=self.class_weight, max_iter=self.max_iter)
        return OneVsRestClassifier(logreg) if self.multi_label_ else logreg

    def _score(self, model: Any, X: Any, y: np.ndarray) -> float:
        if self.multi_label_:
            pred = (model.predict_proba(X) >= self.threshold).astype(int)
        else:
            pred = model.predict(X)
        return float(f1_score(y, pred, average="macro", zero_division=0))

    def _select_C(self, texts: Sequence[str], y: np.ndarray) -> float:
        idx = np.arange(len(texts))
        stratify = None if self.multi_label_ else y
        try:
            tr, va = train_test_split(
                idx, test_size=self.val_fraction, random_state=self.random_state, stratify=stratify
            )
        except ValueError:  # a class too small to stratify
            tr, va = train_test_split(idx, test_size=self.val_fraction, random_state=self.random_state)
        if len(np.unique(y[tr], axis=0)) < 2:
            logger.warning("C='auto': the training split has one class; using C=10")
            return 10.0
        vectorizer, X_tr = self._vectorize_fit([texts[i] for i in tr])
        X_va = vectorizer.transform([texts[i] for i in va])
        scores = {}
        for C in self.C_grid:
            model = self._make_model(C).fit(X_tr, y[tr])
            scores[C] = self._score(model, X_va, y[va])
        best = max(scores, key=lambda c: (scores[c], -abs(np.log10(c) - 1)))  # ties: closest to C=10
        logger.info("C search (macro F1 on %d held-out docs): %s -> C=%g", len(va), scores, best)
        return float(best)

    def fit(self, texts: Sequence[str], labels: Sequence[Any]) -> TfidfLogReg:
        """Fit on texts and their labels (names, or lists of names for multi-label); returns self."""
        texts = list(texts)
        labels = list(labels)
        if len(texts) != len(labels):
            raise DataError(f"got {len(texts)} texts but {len(labels)} labels")
        if not texts:
            raise DataError("no training texts")
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise DataError(f"texts must be strings; row {bad[0]} is {type(texts[bad[0]]).__name__}")
        self.multi_label_ = _is_multi_label(labels) if self.multi_label is None else bool(self.multi_label)

        if self.multi_label_:
            rows = [[y] if isinstance(y, str) else list(y) for y in labels]
            self._binarizer = MultiLabelBinarizer()
            y = self._binarizer.fit_transform(rows)  # (n, L)
            self.labels_ = list(self._binarizer.classes_)
            if not self.labels_:
                raise DataError("multi-label training data carries no label at all")
        else:
            if _is_multi_label(labels):
                raise DataError(
                    "multi_label=False but labels are lists; pass multi_label=True or one name per text"
                )
            self.labels_ = sorted(set(labels), key=str)
            if len(self.labels_) < 2:
                raise DataError(
                    f"single-label training needs at least 2 distinct labels, found {self.labels_}"
                )
            index = {name: i for i, name in enumerate(self.labels_)}
            y = np.array([index[v] for v in labels], dtype=np.int64)  # (n,)

        self.C_ = self._select_C(texts, y) if self.C == "auto" else float(self.C)
        self._vectorizer, X = self._vectorize_fit(texts)
        self._model = self._make_model(self.C_).fit(X, y)
        logger.info(
            "TfidfLogReg fit: %d docs, %d features, %d labels, multi_label=%s, C=%g",
            len(texts),
            X.shape[1],
            len(self.labels_),
            self.multi_label_,
            self.C_,
        )
        return self

    # -- inference -----------------------------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if self._model is None or self._vectorizer is None:
            raise RuntimeError("TfidfLogReg is not fitted; call fit(texts, labels) first")

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """(n, len(labels_)) probabilities: softmax rows (single-label) or per-label sigmoids (multi-label)."""
        self._check_fitted()
        X = self._vectorizer.transform(list(texts))
        return np.asarray(self._model.predict_proba(X), dtype=np.float64)

    def predict(self, texts: Sequence[str]) -> list[Any]:
        """Label names (single-label) or lists of label names at ``threshold`` (multi-label)."""
        probs = self.predict_proba(texts)
        if self.multi_label_:
            return [[self.labels_[j] for j in np.flatnonzero(row >= self.threshold)] for row in probs]
        return [self.labels_[j] for j in probs.argmax(axis=1)]


# -- truncation baselines ------------------------------------------------------------------------------------


def _check_ids(ids: np.ndarray) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"ids must be a 1-D array of token ids, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"ids must be integers, got dtype {arr.dtype}")
    return arr


def first_tokens(ids: np.ndarray, n: int = 510) -> np.ndarray:
    """The first ``n`` token ids (the classic truncation baseline); a copy, same dtype."""
    arr = _check_ids(ids)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ConfigError(f"n={n!r} is not valid; expected an integer >= 0")
    return arr[:n].copy()


def head_tail_tokens(ids: np.ndarray, head: int = 128, tail: int = 382) -> np.ndarray:
    """The first ``head`` and last ``tail`` token ids (Sun et al. 2019, head+tail); a copy, same dtype.

    A sequence of at most ``head + tail`` ids is returned whole, so nothing is ever repeated.
    """
    arr = _check_ids(ids)
    for name, value in (("head", head), ("tail", tail)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ConfigError(f"{name}={value!r} is not valid; expected an integer >= 0")
    if arr.size <= head + tail:
        return arr.copy()
    # arr[-0:] would be the whole array, so the empty tail is spelled out.
    tail_part = arr[arr.size - tail :]
    return np.concatenate([arr[:head], tail_part])
