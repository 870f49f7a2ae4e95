"""The lexical branch of the classifier: TF-IDF of the whole document and a linear model over it.

A frozen sentence encoder blurs the lexical cues that decide many labels (``#include``, an option table, a
party's name, a sport); TF-IDF reads them directly. :class:`LexicalModel` turns a document's full text into
one vector of label scores (log-probabilities for single-label, log-odds for multi-label) that the classifier
adds to its window head's logits (see ``LongDocClassifier``):

    fused logits = head(window embeddings) + lexical_weight * lexical scores

During training the head sees *cross-fitted* lexical scores: each training document is scored by a lexical
model that never saw it (k folds), so the head learns what the words miss instead of learning to trust a model
that memorised its training set. At prediction time the model fitted on all training documents is used.

Everything is stored as JSON and safetensors (vocabulary, idf, weights): a saved model never unpickles
anything. The vocabulary is bounded (``max_features``), so the directory stays small.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold, StratifiedKFold
from threadpoolctl import threadpool_limits

from longdoc.errors import ConfigError, DataError, ModelLoadError

__all__ = ["LexicalConfig", "LexicalModel", "TermExplanation"]

logger = logging.getLogger(__name__)

#: scikit-learn's default word pattern: runs of two or more word characters. Spans for ``explain`` use it too.
TOKEN_PATTERN = r"(?u)\b\w\w+\b"
_TOKEN_RE = re.compile(TOKEN_PATTERN)


@dataclass(frozen=True)
class LexicalConfig:
    """Options of the lexical branch; saved as JSON in the model directory.

    Args:
        ngram_range: word n-gram lengths (1, 2): single words and pairs.
        max_features: the vocabulary bound (most frequent n-grams kept).
        min_df: an n-gram must occur in at least this many training documents (refit with 1 when that prunes
            everything, as on a tiny corpus).
        sublinear_tf: 1 + log(tf) instead of raw counts.
        C: inverse L2 strength of the logistic regression.
        folds: cross-fitting folds for the lexical scores the head trains on.
    """

    ngram_range: tuple[int, int] = (1, 2)
    max_features: int = 100_000
    min_df: int = 2
    sublinear_tf: bool = True
    C: float = 10.0
    folds: int = 5

    def __post_init__(self) -> None:
        lo, hi = self.ngram_range
        if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi):
            raise ConfigError(f"ngram_range={self.ngram_range!r} is not valid; expected (lo, hi) with 1 <= lo <= hi")
        for name in ("max_features", "min_df"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}={value!r} is not valid; expected an integer >= 1")
        if isinstance(self.folds, bool) or not isinstance(self.folds, int) or self.folds < 2:
            raise ConfigError(f"folds={self.folds!r} is not valid; expected an integer >= 2")
        if isinstance(self.C, bool) or not isinstance(self.C, int | float) or not self.C > 0:
            raise ConfigError(f"C={self.C!r} is not valid; expected a number > 0")

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "ngram_range": list(self.ngram_range)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LexicalConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown lexical config fields {unknown}; valid: {sorted(known)}")
        data = dict(data)
        if "ngram_range" in data:
            data["ngram_range"] = tuple(data["ngram_range"])
        return cls(**data)


@dataclass(frozen=True)
class TermExplanation:
    """One n-gram that pushed a document towards a label: its weight (tf-idf x coefficient) and where it
    occurs in the document (``text[start:end]`` for each ``(start, end)`` in ``spans``)."""

    term: str
    weight: float
    spans: tuple[tuple[int, int], ...]


class LexicalModel:
    """TF-IDF over the whole document and a (one-vs-rest, for multi-label) logistic regression.

    ``scores(texts)`` gives (n, L) label scores: log-probabilities (single-label) or log-odds (multi-label).
    A text without any vocabulary term scores the intercepts only; :meth:`has_terms` tells which.
    """

    def __init__(self, labels: Sequence[str], *, multi_label: bool = False, config: LexicalConfig | None = None):
        self.labels = [str(x) for x in labels]
        self.multi_label = bool(multi_label)
        self.config = config or LexicalConfig()
        self.vocabulary: list[str] = []
        self.idf = np.zeros(0, dtype=np.float32)
        self.coef = np.zeros((len(self.labels), 0), dtype=np.float32)  # (L, V)
        self.intercept = np.zeros(len(self.labels), dtype=np.float32)  # (L,)
        self._vectorizer: TfidfVectorizer | None = None

    @property
    def fitted(self) -> bool:
        return self._vectorizer is not None

    # ------------------------------------------------------------------ fitting
    def _new_vectorizer(self, min_df: int, vocabulary: dict[str, int] | None = None) -> TfidfVectorizer:
        return TfidfVectorizer(ngram_range=self.config.ngram_range, sublinear_tf=self.config.sublinear_tf,
                               min_df=min_df, max_features=None if vocabulary else self.config.max_features,
                               token_pattern=TOKEN_PATTERN, vocabulary=vocabulary, dtype=np.float32)

    def _fit_vectorizer(self, texts: list[str]) -> tuple[TfidfVectorizer, Any]:
        vectorizer = self._new_vectorizer(min(self.config.min_df, max(1, len(texts) // 2)))
        try:
            return vectorizer, vectorizer.fit_transform(texts)
        except ValueError:  # "After pruning, no terms remain" / "empty vocabulary"
            vectorizer = self._new_vectorizer(1)
            try:
                return vectorizer, vectorizer.fit_transform(texts)
            except ValueError as exc:
                raise DataError(
                    "the lexical branch found no word in any training document (every text is empty or has only "
                    "punctuation/symbols); train without it (lexical=False) or check the text column"
                ) from exc

    def _fit_linear(self, X: Any, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(coef (L, V), intercept (L,)) of a logistic regression on X."""
        # one thread: beside torch's thread pool, scikit-learn's and SciPy's pools spin against it (a 2-core CPU
        # fitted 4-7x slower with two threads each than with one)
        with threadpool_limits(limits=1):
            return self._fit_linear_threads(X, y)

    def _fit_linear_threads(self, X: Any, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n_labels = len(self.labels)
        coef = np.zeros((n_labels, X.shape[1]), dtype=np.float32)
        intercept = np.zeros(n_labels, dtype=np.float32)
        if self.multi_label:
            for j in range(n_labels):
                col = y[:, j]
                if col.min() == col.max():  # a label always (never) present: a constant log-odds
                    p = np.clip(col.mean(), 1e-3, 1 - 1e-3)
                    intercept[j] = np.log(p / (1 - p))
                    continue
                model = LogisticRegression(C=self.config.C, max_iter=1000).fit(X, col)
                coef[j], intercept[j] = model.coef_[0], model.intercept_[0]
            return coef, intercept
        present = np.unique(y)
        if len(present) == 1:  # one class in this fold: it gets all the mass
            intercept[:] = -10.0
            intercept[present[0]] = 0.0
            return coef, intercept
        model = LogisticRegression(C=self.config.C, max_iter=1000).fit(X, y)
        classes = model.classes_
        if len(classes) == 2:  # one row, the log-odds z of classes[1]: softmax(-z/2, z/2) gives the same odds
            half_coef, half_intercept = model.coef_[0] / 2, model.intercept_[0] / 2
            coef[classes[0]], intercept[classes[0]] = -half_coef, -half_intercept
            coef[classes[1]], intercept[classes[1]] = half_coef, half_intercept
        else:
            coef[classes], intercept[classes] = model.coef_, model.intercept_
        missing = np.setdiff1d(np.arange(n_labels), classes)
        intercept[missing] = -10.0  # a label unseen in this fold: never predicted by the lexical half
        return coef, intercept

    def fit(self, texts: Sequence[str], y: np.ndarray) -> LexicalModel:
        """Fit on all ``texts``; ``y``: (n,) label indices, or (n, L) 0/1 for multi-label."""
        texts = _checked_texts(texts)
        vectorizer, X = self._fit_vectorizer(texts)
        self._adopt(vectorizer, *self._fit_linear(X, np.asarray(y)))
        logger.info("lexical branch: %d documents, %d terms, %d labels", len(texts), len(self.vocabulary),
                    len(self.labels))
        return self

    def _adopt(self, vectorizer: TfidfVectorizer, coef: np.ndarray, intercept: np.ndarray) -> None:
        self._vectorizer, self.coef, self.intercept = vectorizer, coef, intercept
        self.vocabulary = [str(t) for t in vectorizer.get_feature_names_out()]
        self.idf = vectorizer.idf_.astype(np.float32)

    def cross_fit_scores(self, texts: Sequence[str], y: np.ndarray, *, seed: int = 0) -> np.ndarray:
        """Out-of-fold scores (n, L) of the training ``texts`` (each scored by a linear model that never saw
        it), then :meth:`fit` on all of them.

        The vocabulary and idf are fitted once on all ``texts`` (they use no label); only the linear model is
        refitted per fold.
        """
        texts = _checked_texts(texts)
        y = np.asarray(y)
        n = len(texts)
        vectorizer, X = self._fit_vectorizer(texts)
        folds = min(self.config.folds, n)
        out = np.zeros((n, len(self.labels)), dtype=np.float32)
        if folds >= 2:
            if self.multi_label:
                splitter: Any = KFold(folds, shuffle=True, random_state=seed)
            else:
                smallest = np.bincount(y).astype(float)
                smallest = smallest[smallest > 0].min()
                splitter = (StratifiedKFold(folds, shuffle=True, random_state=seed) if smallest >= folds
                            else KFold(folds, shuffle=True, random_state=seed))
            for train_rows, held_out in splitter.split(np.zeros(n), y if not self.multi_label else None):
                coef, intercept = self._fit_linear(X[train_rows], y[train_rows])
                out[held_out] = self._scores(X[held_out], coef, intercept)
        self._adopt(vectorizer, *self._fit_linear(X, y))
        logger.info("lexical branch: %d documents (%d-fold cross-fitted scores), %d terms, %d labels", n, folds,
                    len(self.vocabulary), len(self.labels))
        return out

    # ------------------------------------------------------------------ inference
    def _check_fitted(self) -> TfidfVectorizer:
        if self._vectorizer is None:
            raise RuntimeError("the lexical model is not fitted")
        return self._vectorizer

    def features(self, texts: Sequence[str]) -> Any:
        """Sparse TF-IDF rows (n, V), L2-normalised."""
        vectorizer = self._check_fitted()
        texts = _checked_texts(texts)
        if not texts:  # scikit-learn refuses an empty batch
            return sp.csr_matrix((0, len(self.vocabulary)), dtype=np.float32)
        return vectorizer.transform(texts)

    def has_terms(self, texts: Sequence[str]) -> np.ndarray:
        """(n,) bool: the text holds at least one vocabulary term (else its lexical score says nothing)."""
        return np.diff(self.features(texts).indptr) > 0

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        """(n, L) float32: log-probabilities (single-label) or log-odds per label (multi-label)."""
        return self.scores_and_presence(texts)[0]

    def scores_and_presence(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`scores` and :meth:`has_terms` of ``texts`` from one TF-IDF transform."""
        X = self.features(texts)
        return self._scores(X, self.coef, self.intercept), np.diff(X.indptr) > 0

    def _scores(self, X: Any, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
        decision = np.asarray(X @ coef.T, dtype=np.float32) + intercept  # (n, L)
        if not self.multi_label:
            decision -= decision.max(axis=1, keepdims=True)
            decision -= np.log(np.exp(decision).sum(axis=1, keepdims=True))
        return decision

    def top_terms(self, text: str, label: int, *, top_k: int | None = 10) -> list[TermExplanation]:
        """The n-grams of ``text`` that raised the score of label index ``label`` most, with their spans."""
        row = self.features([text])
        cols, values = row.indices, row.data
        weights = values * self.coef[label, cols]
        order = np.argsort(-weights, kind="stable")
        kept = [int(i) for i in order if weights[i] > 0][: top_k if top_k is not None else None]
        spans = _term_spans(text, self.config.ngram_range)
        return [TermExplanation(term=self.vocabulary[cols[i]], weight=float(weights[i]),
                                spans=tuple(spans.get(self.vocabulary[cols[i]], ()))) for i in kept]

    # ------------------------------------------------------------------ persistence
    def save(self, directory: Path) -> None:
        """Write ``lexical.json`` (config, labels, vocabulary) and ``lexical.safetensors`` (idf, weights)."""
        self._check_fitted()
        meta = {"config": self.config.to_dict(), "labels": self.labels, "multi_label": self.multi_label,
                "vocabulary": self.vocabulary}
        (directory / "lexical.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
        save_file({"idf": self.idf, "coef": np.ascontiguousarray(self.coef), "intercept": self.intercept},
                  str(directory / "lexical.safetensors"))

    @classmethod
    def load(cls, directory: Path, *, labels: Sequence[str], multi_label: bool | None = None) -> LexicalModel:
        """Read what :meth:`save` wrote; parts that disagree with each other, with ``labels`` or with
        ``multi_label`` (when given) are refused."""
        try:
            meta = json.loads((directory / "lexical.json").read_text(encoding="utf-8"))
            tensors = load_file(str(directory / "lexical.safetensors"))
        except (OSError, ValueError, SafetensorError) as exc:
            raise ModelLoadError(f"{directory}: the lexical branch cannot be read: {exc}") from exc
        try:
            model = cls(meta["labels"], multi_label=meta["multi_label"],
                        config=LexicalConfig.from_dict(meta["config"]))
            vocabulary = [str(t) for t in meta["vocabulary"]]
            idf, coef, intercept = tensors["idf"], tensors["coef"], tensors["intercept"]
        except (KeyError, TypeError, ConfigError) as exc:
            raise ModelLoadError(f"{directory}/lexical.json is malformed: {exc}") from exc
        n_terms, n_labels = len(vocabulary), len(model.labels)
        if multi_label is not None and model.multi_label != bool(multi_label):
            raise ModelLoadError(f"{directory}: the lexical branch is multi_label={model.multi_label}, the model "
                                 f"multi_label={bool(multi_label)}")
        if model.labels != [str(x) for x in labels]:
            raise ModelLoadError(f"{directory}: the lexical branch has labels {model.labels}, the model "
                                 f"{list(labels)}")
        if (idf.shape != (n_terms,) or coef.shape != (n_labels, n_terms) or intercept.shape != (n_labels,)
                or len(set(vocabulary)) != n_terms):
            raise ModelLoadError(
                f"{directory}: lexical.safetensors (idf {idf.shape}, coef {coef.shape}, intercept "
                f"{intercept.shape}) does not match lexical.json ({n_terms} distinct terms of {len(vocabulary)}, "
                f"{n_labels} labels)")
        if not (np.isfinite(idf).all() and np.isfinite(coef).all() and np.isfinite(intercept).all()):
            raise ModelLoadError(f"{directory}: lexical.safetensors holds non-finite values")
        model.vocabulary, model.idf = vocabulary, idf.astype(np.float32)
        model.coef, model.intercept = coef.astype(np.float32), intercept.astype(np.float32)
        vectorizer = model._new_vectorizer(1, vocabulary={t: i for i, t in enumerate(vocabulary)})
        vectorizer.idf_ = model.idf
        model._vectorizer = vectorizer
        return model


def _checked_texts(texts: Sequence[str]) -> list[str]:
    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise DataError(f"texts must be strings; row {bad[0]} is {type(texts[bad[0]]).__name__}")
    return texts


def _term_spans(text: str, ngram_range: tuple[int, int]) -> dict[str, list[tuple[int, int]]]:
    """Every n-gram of ``text`` (as the vectorizer spells it) with the character spans where it occurs."""
    tokens = [(m.group().lower(), m.start(), m.end()) for m in _TOKEN_RE.finditer(text)]
    spans: dict[str, list[tuple[int, int]]] = {}
    lo, hi = ngram_range
    for n in range(lo, hi + 1):
        for i in range(len(tokens) - n + 1):
            gram = tokens[i : i + n]
            spans.setdefault(" ".join(t for t, _, _ in gram), []).append((gram[0][1], gram[-1][2]))
    return spans
