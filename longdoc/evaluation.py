"""Side-by-side evaluation: the classifier against what users do today, over one or several runs.

Every method is trained and scored on the same split:

* the model (``model_name``, default ``hierarchical``): the classifier as configured (all windows, its pooling
  head, whatever else it carries), or with ``fit_model=False`` an already trained model scored as it is.
* ``first512``: each document truncated to its first 512 tokens (the model's limit), a mean head over that one
  window: with the frozen encoder a linear model on its embedding; with ``mode="finetune"`` the usual first-512
  fine-tuning recipe.
* ``head_tail``: one 512-token window of the first 128 and the last 382 document tokens, which often beats plain
  truncation (frozen encoder only).
* ``tfidf``: TF-IDF word 1-2 grams + logistic regression on the full text; always its own row.

The truncation baselines always see the model's full 512 tokens, whatever window length the classifier uses
(with shorter windows they are cut and encoded separately). With the frozen encoder every document is encoded
once and the embeddings are shared by every method that can share them.

**Several runs.** ``compare_with_baselines(..., seeds=[0, 1, 2])`` trains every method once per seed on the same
split; :func:`cross_validate_with_baselines` does so on each fold of a stratified k-fold split. A run is one
(fold, seed) pair; ``Comparison.runs`` holds one row per method and run, ``Comparison.table`` the mean of each
method with the half-width of its 95 % Student t-interval over the runs (:func:`longdoc.metrics.mean_ci`), and
``Comparison.difference`` the paired difference (run by run, same split and seed) of the model to the best
baseline (highest mean macro-F1) with its t-interval (:func:`longdoc.metrics.paired_difference`). With one run
the table has the single scores and no interval columns. TF-IDF + logistic regression has no random state in
its fit (fixed C, lbfgs), so it is trained once per split and its scores stand for every seed of that split; a
saved model scored as it is (``fit_model=False``) likewise. Such a method is a *fixed* score
(``Comparison.fixed``): its repeats over seeds are one score, not independent runs, so its row counts one run per
split and has an interval only over several splits (folds); when the model and the best baseline are both fixed,
their paired difference is likewise taken once per split (one split: no interval). ``Comparison.notes`` says so.

**Encoding cache.** The truncation baselines' windows (first 512 tokens, head + tail) are encoded at most once
per document in a process: their embeddings are kept in a small in-memory cache keyed by the encoder
(fingerprint and dtype), the window kind and geometry, and each document's id and text hash, at most
``CACHE_MAX_VECTORS`` vectors (least recently used geometry dropped first). Repeated calls, several seeds, the
folds of a cross-validation and pre-encoded inputs (``Encoded``) therefore never encode them twice.
:func:`clear_encoding_cache` empties it; ``cache_encodings=False`` bypasses it.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from longdoc.baselines import TfidfLogReg
from longdoc.classifier import Encoded, LongDocClassifier
from longdoc.errors import ConfigError, DataError
from longdoc.heads import DocumentHead, HeadConfig
from longdoc.metrics import Interval, classification_report, mean_ci, paired_difference
from longdoc.splits import stratified_folds
from longdoc.terminal import safe_text
from longdoc.training import TrainConfig, seed_everything
from longdoc.windows import WindowConfig, Windows, make_windows

logger = logging.getLogger(__name__)

BASELINES = ("first512", "head_tail", "tfidf")
#: Scores kept per method and run (``Comparison.runs``); the mean of each goes to ``Comparison.table``.
SCORES = ("accuracy", "macro_f1", "micro_f1", "ece", "seconds")
#: Scores whose confidence interval the table shows when there are several runs.
CI_SCORES = ("accuracy", "macro_f1")
#: Most vectors the truncation-encoding cache keeps (384 floats each for MiniLM: about 300 MB at most).
CACHE_MAX_VECTORS = 200_000


@dataclass
class Comparison:
    """Results of :func:`compare_with_baselines` and :func:`cross_validate_with_baselines`.

    Attributes:
        table: one row per method, the model first, then the baselines in ``BASELINES`` order. One run:
            method, accuracy, macro_f1, micro_f1, ece, seconds (training + scoring). Several runs: method, runs,
            accuracy, accuracy_ci, macro_f1, macro_f1_ci, micro_f1, ece, seconds: means over the runs, and
            ``*_ci`` the half-width of the ``confidence`` Student t-interval over runs (mean +- half-width).
        reports: the full ``classification_report`` of each method on the first run (first fold, first seed).
        encoded: the shared encodings (``"train"``, ``"test"`` and ``"val"`` when given; ``"all"`` after a
            cross-validation), reusable for indexing; frozen mode only (empty after fine-tuning: the encoder
            that made them has changed).
        runs: one row per method and run: method, fold, seed and the ``SCORES``.
        difference: the paired difference of the model to the best baseline (highest mean macro-F1), run by
            run: ``{"model", "baseline", "runs", "confidence", "interval", "macro_f1": {...}, "accuracy": {...}}``
            where each metric is ``Interval.to_dict()`` (mean, low, high; no bounds with one run), plus
            ``"note"`` when both sides are fixed scores (``runs`` then counts splits). ``None`` without baselines.
        model: the model's method name in the tables.
        fixed: the methods whose score no seed changes (``tfidf``; the model with ``fit_model=False``): their
            rows count one run per split, with an interval only over several splits.
    """

    table: pl.DataFrame
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    encoded: dict[str, Encoded] = field(default_factory=dict)
    runs: pl.DataFrame = field(default_factory=pl.DataFrame)
    difference: dict[str, Any] | None = None
    model: str = "hierarchical"
    fixed: tuple[str, ...] = ()

    @property
    def n_runs(self) -> int:
        """Runs per method (folds x seeds)."""
        if self.runs.is_empty():
            return 0
        return int(self.runs.group_by("method").len()["len"].max())

    @property
    def notes(self) -> list[str]:
        """Why some rows (or the difference) have fewer runs, or no interval, than the others."""
        return fixed_notes(self.fixed, self.runs, self.difference)


def head_tokens(window: WindowConfig) -> int:
    """Head length of the head+tail baseline: 128 of the 510 document tokens of a 512 window, scaled."""
    return window.content_length * 128 // 510


def truncation_length(clf: LongDocClassifier) -> int:
    """Tokens a single-pass truncation baseline sees: 512, or fewer for a model with fewer positions."""
    return min(512, int(getattr(clf.encoder.model.config, "max_position_embeddings", 512)))


def truncation_config(clf: LongDocClassifier, *, max_windows: int) -> WindowConfig:
    """Windows of the truncation length, at most ``max_windows`` per document (head + tail)."""
    length = truncation_length(clf)
    return WindowConfig(max_length=length, stride=min(128, length - 3), max_windows=max_windows)


def truncation_windows(clf: LongDocClassifier, documents: pl.DataFrame, windows: Windows) -> Windows:
    """The first and last window of each document at the truncation length (input of both truncation baselines).

    ``windows`` (the classifier's windows of ``documents``) are reused when they already have that length;
    otherwise the documents are cut again (head + tail windows only).
    """
    if clf.window.max_length == truncation_length(clf):
        return windows
    return make_windows(documents, clf.encoder.tokenizer, truncation_config(clf, max_windows=2))


def first_windows(windows: Windows) -> Windows:
    """Each document's first window only (plain truncation)."""
    rows = np.flatnonzero(windows.table["window_index"].to_numpy() == 0)
    return windows.take(rows)


def head_tail_windows(windows: Windows, *, head: int, cls_id: int, sep_id: int) -> Windows:
    """One window per document: its first ``head`` tokens and as many last tokens as fit the window.

    Built from the first and the (right-aligned) last window, so nothing is re-tokenized. Documents that fit
    one window keep it unchanged. The char span runs from the head's start to the tail's end.
    """
    table = windows.table
    index = table["window_index"].to_numpy()
    doc = table["doc_id"].to_numpy()
    last_rows = np.flatnonzero(np.append(doc[1:] != doc[:-1], True)) if len(doc) else np.zeros(0, np.int64)
    first_rows = np.flatnonzero(index == 0)
    ids, lengths = [], []
    for f, la in zip(first_rows, last_rows, strict=True):
        if f == la:
            seq = windows.ids(int(f))
        else:
            first, last = windows.ids(int(f))[1:-1], windows.ids(int(la))[1:-1]
            tail = len(first) - head
            seq = np.concatenate([[cls_id], first[:head], last[len(last) - tail :], [sep_id]]).astype(np.int32)
        ids.append(seq)
        lengths.append(len(seq))
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    new_table = table[first_rows.tolist()].with_columns(
        pl.Series("char_end", table["char_end"].to_numpy()[last_rows]),
        pl.Series("n_tokens", np.asarray(lengths, dtype=np.int32)),
    )
    documents = windows.documents.with_columns(pl.min_horizontal(pl.col("n_windows"), 1).cast(pl.Int32))
    flat = np.concatenate(ids).astype(np.int32) if ids else np.zeros(0, np.int32)
    return Windows(table=new_table, input_ids=flat, offsets=offsets, documents=documents)


def sibling_classifier(clf: LongDocClassifier, pooling: str) -> LongDocClassifier:
    """A classifier with a fresh ``pooling`` head over the same (frozen) encoder, labels and dropout."""
    cfg = HeadConfig(pooling=pooling, hidden_size=clf.encoder.dim, num_labels=len(clf.labels),
                     multi_label=clf.multi_label, dropout=clf.head.config.dropout)
    return LongDocClassifier(clf.encoder, DocumentHead(cfg), clf.labels)


# -- the truncation baselines' encodings, cached per document ---------------------------------------------------

_CACHE: OrderedDict[tuple[Any, ...], dict[tuple[str, int, int], np.ndarray]] = OrderedDict()


def clear_encoding_cache() -> None:
    """Forget every cached truncation-baseline embedding (see the module docstring)."""
    _CACHE.clear()


def _cache_size() -> int:
    return sum(len(group) for group in _CACHE.values())


def truncation_embeddings(
    clf: LongDocClassifier, documents: pl.DataFrame, windows: Windows, *, kind: str, cache: bool = True
) -> np.ndarray:
    """Embeddings of ``windows`` (windows of ``documents``, cut for a truncation baseline) with ``clf``'s encoder.

    A window already encoded in this process by the same encoder (fingerprint and dtype), for the same ``kind``
    (``"first512"`` or ``"head_tail"``) and geometry, of a document with the same id and text, is taken from the
    cache; only the others are encoded. ``cache=False`` encodes every window and leaves the cache alone.
    """
    if kind not in ("first512", "head_tail"):
        raise ConfigError(f"kind={kind!r} is not valid; expected 'first512' or 'head_tail'")
    encoder = clf.encoder
    if not cache:
        return encoder.encode_windows(windows, show_progress_bar=False)
    length = truncation_length(clf)
    geometry = (length, head_tokens(truncation_config(clf, max_windows=2)) if kind == "head_tail" else None)
    group_key = (encoder.fingerprint, str(getattr(encoder, "dtype", "")), kind, geometry)
    group = _CACHE.setdefault(group_key, {})
    _CACHE.move_to_end(group_key)
    hashes = dict(zip(documents["doc_id"].to_list(), documents["text"].hash(seed=0).to_list(), strict=True))
    table = windows.table
    missing_text = sorted(set(table["doc_id"].to_list()) - set(hashes))
    if missing_text:
        raise DataError(f"windows of documents {missing_text[:5]} are not in `documents`")
    keys = [(d, int(hashes[d]), int(w)) for d, w in zip(table["doc_id"].to_list(), table["window_index"].to_list(),
                                                         strict=True)]
    missing = [i for i, k in enumerate(keys) if k not in group]
    if missing:
        vectors = encoder.encode_windows(windows.take(np.asarray(missing, dtype=np.int64)), show_progress_bar=False)
        for i, vector in zip(missing, vectors, strict=True):
            group[keys[i]] = vector
    logger.debug("%s embeddings: %d cached, %d encoded", kind, len(keys) - len(missing), len(missing))
    out = (np.stack([group[k] for k in keys]) if keys else np.zeros((0, encoder.dim), dtype=np.float32))
    while _cache_size() > CACHE_MAX_VECTORS and len(_CACHE) > 1:
        _CACHE.popitem(last=False)
    return out


def _with_windows(enc: Encoded, clf: LongDocClassifier, windows: Windows, *, kind: str, reencode: bool,
                  cache: bool) -> Encoded:
    """``enc`` restricted to other windows: embeddings are looked up when the windows are a subset, else encoded
    (through the cache)."""
    if not reencode:
        keys = enc.windows.table.select("doc_id", "window_index").with_row_index("row")
        rows = windows.table.select("doc_id", "window_index").join(keys, on=["doc_id", "window_index"],
                                                                   how="left", maintain_order="left")["row"]
        return Encoded(enc.documents, windows, enc.embeddings[rows.to_numpy()], enc.fingerprint)
    return Encoded(enc.documents, windows, truncation_embeddings(clf, enc.documents, windows, kind=kind, cache=cache),
                   enc.fingerprint)


# -- running the methods ---------------------------------------------------------------------------------------


def _check_baselines(baselines: Sequence[str]) -> tuple[str, ...]:
    if isinstance(baselines, str):
        raise ConfigError(f"baselines must be a sequence of names, got the string {baselines!r}; "
                          f"valid: {list(BASELINES)}")
    unknown = sorted(set(baselines) - set(BASELINES))
    if unknown:
        raise ConfigError(f"baselines {unknown} are unknown; valid: {list(BASELINES)}")
    return tuple(b for b in BASELINES if b in set(baselines))


def _check_seeds(seeds: Sequence[int] | None, args: TrainConfig) -> list[int]:
    if seeds is None:
        return [int(args.seed)]
    values = list(seeds)
    bad = [s for s in values if isinstance(s, bool) or not isinstance(s, (int, np.integer))]
    if not values or bad or len(set(values)) != len(values):
        raise ConfigError(f"seeds={seeds!r} is not valid; expected distinct integers, at least one (e.g. [0, 1, 2])")
    return [int(s) for s in values]


def _check_model_name(model_name: str, baselines: Sequence[str]) -> str:
    if not isinstance(model_name, str) or not model_name.strip() or model_name in BASELINES:
        raise ConfigError(f"model_name={model_name!r} is not valid; expected a non-empty name other than the "
                          f"baselines {list(BASELINES)}")
    return model_name


def _untrained_copy(clf: LongDocClassifier, *, share_encoder: bool) -> LongDocClassifier:
    """A deep copy of ``clf``: its own head (and everything else), the encoder shared when ``share_encoder``."""
    memo: dict[int, Any] = {id(clf.encoder.tokenizer): clf.encoder.tokenizer}
    if share_encoder:
        memo[id(clf.encoder)] = clf.encoder
        memo[id(clf.retrieval_encoder)] = clf.retrieval_encoder
    return copy.deepcopy(clf, memo)


def _scores(report: dict[str, Any], seconds: float) -> dict[str, Any]:
    return {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"], "micro_f1": report["micro_f1"],
            "ece": report.get("ece"), "seconds": round(seconds, 2)}


class _Runner:
    """Trains and scores every method on one split after another; collects one row per method and run."""

    def __init__(self, clf: LongDocClassifier, *, args: TrainConfig, baselines: tuple[str, ...], seeds: list[int],
                 model_name: str, fit_model: bool, in_place: bool, cache: bool,
                 show_progress_bar: bool | None) -> None:
        self.clf, self.args, self.baselines, self.seeds = clf, args, baselines, seeds
        self.model_name, self.fit_model, self.cache, self.show = model_name, fit_model, cache, show_progress_bar
        self.frozen = args.mode == "frozen"
        self.pretrained = clf.encoder.model_name_or_path  # before any fine-tuning of clf
        self.rows: list[dict[str, Any]] = []
        self.reports: dict[str, dict[str, Any]] = {}
        # Every run but the one that trains ``clf`` itself starts from an untrained copy of it.
        self.in_place = in_place
        self.template = (_untrained_copy(clf, share_encoder=self.frozen)
                         if fit_model and not (in_place and len(seeds) == 1) else None)

    def record(self, method: str, fold: int, seed: int, report: dict[str, Any], seconds: float) -> None:
        self.rows.append({"method": method, "fold": fold, "seed": seed, **_scores(report, seconds)})
        self.reports.setdefault(method, report)
        logger.info("%s (fold %d, seed %d): accuracy %.4f, macro-F1 %.4f", method, fold, seed, report["accuracy"],
                    report["macro_f1"])

    def split(self, fold: int, data: dict[str, Any]) -> None:
        """Every method, every seed, on one split (``data``: train, test and maybe val; ``Encoded`` when frozen)."""
        clf, frozen = self.clf, self.frozen

        def documents(name: str) -> pl.DataFrame:
            return data[name].documents if frozen else data[name]

        saved_report = None
        if not self.fit_model:  # a trained model: scored once, the same score stands for every seed
            t0 = time.perf_counter()
            saved_report = clf.evaluate(data["test"])
            saved_seconds = time.perf_counter() - t0
        tfidf = self._tfidf(documents("train"), documents("test")) if "tfidf" in self.baselines else None
        inputs = self._truncation_inputs(data) if frozen else {}

        for i, seed in enumerate(self.seeds):
            args = dataclasses.replace(self.args, seed=seed)
            if saved_report is not None:
                self.record(self.model_name, fold, seed, saved_report, saved_seconds)
            else:
                first = self.in_place and fold == 0 and i == 0
                model = clf if first else _untrained_copy(self.template, share_encoder=frozen)
                self._fit_and_score(self.model_name, model, data, args, fold)
            for method in self.baselines:
                if method == "tfidf":
                    self.record(method, fold, seed, *tfidf)
                elif frozen:
                    seed_everything(seed)  # the fresh head's initial weights
                    self._fit_and_score(method, sibling_classifier(clf, "mean"), inputs[method], args, fold)
                elif method == "first512":
                    # the usual first-512 recipe: fine-tune the pretrained encoder on each document's first 512 tokens
                    seed_everything(seed)
                    model = LongDocClassifier.from_encoder(
                        self.pretrained, labels=clf.labels, window=truncation_config(clf, max_windows=1),
                        pooling="mean", multi_label=clf.multi_label, device=str(clf.encoder.device),
                        dtype=clf.encoder.dtype, lexical=False)  # a truncation baseline: the window alone
                    self._fit_and_score(method, model, data, args, fold)

    def _fit_and_score(self, method: str, model: LongDocClassifier, split: dict[str, Any], args: TrainConfig,
                       fold: int) -> None:
        t0 = time.perf_counter()
        model.fit(split["train"], eval_dataset=split.get("val"), args=args, show_progress_bar=self.show)
        self.record(method, fold, args.seed, model.evaluate(split["test"]), time.perf_counter() - t0)

    def _tfidf(self, train: pl.DataFrame, test: pl.DataFrame) -> tuple[dict[str, Any], float]:
        t0 = time.perf_counter()
        multi, labels = self.clf.multi_label, self.clf.labels
        y_train = train["labels"].to_list() if multi else [r[0] for r in train["labels"].to_list()]
        y_test = test["labels"].to_list() if multi else [r[0] for r in test["labels"].to_list()]
        model = TfidfLogReg(multi_label=multi).fit(train["text"].to_list(), y_train)
        texts = test["text"].to_list()
        report = classification_report(y_test, model.predict(texts), labels,
                                       y_prob=_align_probs(model, labels, texts), multi_label=multi)
        return report, time.perf_counter() - t0

    def _truncation_inputs(self, data: dict[str, Encoded]) -> dict[str, dict[str, Encoded]]:
        """The truncation baselines' inputs of every split part, built (and encoded, through the cache) once."""
        clf, tok = self.clf, self.clf.encoder.tokenizer
        head = head_tokens(truncation_config(clf, max_windows=2))  # head length of head+tail
        out: dict[str, dict[str, Encoded]] = {m: {} for m in self.baselines if m != "tfidf"}
        for name, enc in data.items():
            windows = truncation_windows(clf, enc.documents, enc.windows)
            if "first512" in out:
                out["first512"][name] = _with_windows(enc, clf, first_windows(windows), kind="first512",
                                                      reencode=windows is not enc.windows, cache=self.cache)
            if "head_tail" in out:
                win = head_tail_windows(windows, head=head, cls_id=tok.cls_token_id, sep_id=tok.sep_token_id)
                out["head_tail"][name] = _with_windows(enc, clf, win, kind="head_tail", reencode=True,
                                                       cache=self.cache)
        return out

    def comparison(self, encoded: dict[str, Encoded], confidence: float) -> Comparison:
        runs = pl.DataFrame(self.rows, schema={"method": pl.Utf8, "fold": pl.Int64, "seed": pl.Int64,
                                               "accuracy": pl.Float64, "macro_f1": pl.Float64,
                                               "micro_f1": pl.Float64, "ece": pl.Float64, "seconds": pl.Float64})
        # scored once per split, whatever the seed: TF-IDF (no random state) and a saved model scored as it is
        fixed = tuple(m for m in (self.model_name, *self.baselines)
                      if m == "tfidf" or (m == self.model_name and not self.fit_model))
        table, difference = summarize_runs(runs, model=self.model_name, confidence=confidence, fixed=fixed)
        return Comparison(table=table, reports=self.reports, encoded=encoded if self.frozen else {}, runs=runs,
                          difference=difference, model=self.model_name, fixed=fixed)


def _prepare(clf: LongDocClassifier, parts: dict[str, Any], frozen: bool,
             show_progress_bar: bool | None) -> dict[str, Any]:
    """Each split part encoded once (frozen) or read into a document table (fine-tuning encodes per model)."""
    started = time.perf_counter()
    if frozen:
        data = {name: clf.encode(docs, show_progress_bar=show_progress_bar) for name, docs in parts.items()}
        logger.info("encoded every split once in %.1f s", time.perf_counter() - started)
        return data
    return {name: clf.document_table(docs) for name, docs in parts.items()}


def compare_with_baselines(
    clf: LongDocClassifier,
    train_docs: Any,
    test_docs: Any,
    *,
    args: TrainConfig | None = None,
    val_docs: Any = None,
    baselines: Sequence[str] = BASELINES,
    seeds: Sequence[int] | None = None,
    model_name: str = "hierarchical",
    fit_model: bool = True,
    confidence: float = 0.95,
    cache_encodings: bool = True,
    show_progress_bar: bool | None = None,
) -> Comparison:
    """Train ``clf`` (in place) and the baselines on the same split and score them on ``test_docs``.

    With ``args.mode == "frozen"`` the documents are encoded once and every neural method reuses the
    embeddings (pass ``Encoded`` inputs, e.g. a previous ``Comparison.encoded``, to skip even that). With
    ``"finetune"`` each neural baseline fine-tunes its own copy of the pretrained encoder.

    Args:
        clf: the model. With ``fit_model=True`` it is trained in place on ``train_docs`` (the first seed's run;
            the other seeds train copies of it as it was before training); with ``fit_model=False`` it is
            scored as it is (a saved model: ``longdoc eval --baselines``) and only the baselines are trained.
        train_docs, test_docs, val_docs: the split, in any form ``LongDocClassifier.fit`` takes, or ``Encoded``.
            ``val_docs`` (optional) drives early stopping and calibration of every neural method.
        args: the training settings of every neural method (default ``TrainConfig()``: frozen encoder).
        baselines: any of ``BASELINES``; ``tfidf`` is always its own row.
        seeds: one run per seed (each ``args`` with ``seed`` replaced); default: one run with ``args.seed``.
            Several seeds give each method's mean with a confidence interval, and the paired difference of the
            model to the best baseline (see :class:`Comparison` and the module docstring).
        model_name: the model's name in the tables (the CLI uses ``"model"``).
        fit_model: ``False`` scores ``clf`` as it is, once: its table row shows one run and no interval; its
            score stands for every seed in the paired difference.
        confidence: coverage of the intervals (Student t over runs; see :func:`longdoc.metrics.mean_ci`).
        cache_encodings: reuse (and keep) the truncation baselines' embeddings in the process-wide cache.
        show_progress_bar: ``None`` shows bars when logging is at INFO.

    Raises:
        ConfigError: an unknown baseline, bad seeds, a model name that is a baseline's, bad ``confidence``.
    """
    args = args or TrainConfig()
    baselines = _check_baselines(baselines)
    seeds = _check_seeds(seeds, args)
    model_name = _check_model_name(model_name, baselines)
    frozen = args.mode == "frozen"
    parts = {"train": train_docs, "test": test_docs, **({"val": val_docs} if val_docs is not None else {})}
    data = _prepare(clf, parts, frozen, show_progress_bar)
    runner = _Runner(clf, args=args, baselines=baselines, seeds=seeds, model_name=model_name, fit_model=fit_model,
                     in_place=True, cache=cache_encodings, show_progress_bar=show_progress_bar)
    if not frozen and "head_tail" in baselines:
        logger.warning("head_tail is measured with the frozen encoder only; skipped in fine-tuning mode")
    runner.split(0, data)
    return runner.comparison(data, confidence)


def cross_validate_with_baselines(
    clf: LongDocClassifier,
    documents: Any,
    *,
    folds: int = 5,
    seeds: Sequence[int] | None = None,
    val_fraction: float | None = 0.15,
    fold_seed: int = 0,
    args: TrainConfig | None = None,
    baselines: Sequence[str] = BASELINES,
    model_name: str = "hierarchical",
    confidence: float = 0.95,
    cache_encodings: bool = True,
    show_progress_bar: bool | None = None,
) -> Comparison:
    """Stratified k-fold comparison: every method trained on each fold's training part, once per seed.

    Each fold is the test part once (:func:`stratified_folds` with ``fold_seed``); from the rest a stratified
    ``val_fraction`` (one part in ``round(1 / val_fraction)``) is held out for early stopping and calibration,
    and the remainder trains. Frozen: every document is encoded once for all folds. ``clf`` is the untrained
    template and is left unchanged: every run trains a copy (sharing the encoder when frozen). Runs are
    (fold, seed) pairs, ``folds * len(seeds)`` per method; see :class:`Comparison` for the table and the paired
    difference (the t-interval treats runs as independent: over folds it is somewhat optimistic).
    """
    args = args or TrainConfig()
    baselines = _check_baselines(baselines)
    seeds = _check_seeds(seeds, args)
    model_name = _check_model_name(model_name, baselines)
    if val_fraction is not None and (isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float))
                                     or not 0.0 < val_fraction < 0.5):
        raise ConfigError(f"val_fraction={val_fraction!r} is not valid; expected a fraction in (0, 0.5) or None")
    frozen = args.mode == "frozen"
    table = clf.document_table(documents, require_labels=True)
    all_data = _prepare(clf, {"all": documents if isinstance(documents, Encoded) else table}, frozen,
                        show_progress_bar)["all"]
    labels = [r if clf.multi_label else r[0] for r in table["labels"].to_list()]
    fold_of = stratified_folds(labels, folds, seed=fold_seed)
    runner = _Runner(clf, args=args, baselines=baselines, seeds=seeds, model_name=model_name, fit_model=True,
                     in_place=False, cache=cache_encodings, show_progress_bar=show_progress_bar)

    def take(rows: np.ndarray) -> Any:
        return all_data.select(rows) if frozen else all_data[rows.tolist()]

    for fold in range(folds):
        test_rows, rest = np.flatnonzero(fold_of == fold), np.flatnonzero(fold_of != fold)
        parts = {"test": test_rows}
        if val_fraction is None:
            parts["train"] = rest
        else:
            inner = stratified_folds([labels[i] for i in rest], max(2, round(1 / val_fraction)), seed=fold_seed + fold)
            parts["train"], parts["val"] = rest[inner != 0], rest[inner == 0]
        logger.info("fold %d/%d: %d train, %d validation, %d test", fold + 1, folds, len(parts["train"]),
                    len(parts.get("val", ())), len(test_rows))
        runner.split(fold, {name: take(rows) for name, rows in parts.items()})
    return runner.comparison({"all": all_data} if frozen else {}, confidence)


# -- summaries -------------------------------------------------------------------------------------------------


def _one_per_split(part: pl.DataFrame, method: str) -> pl.DataFrame:
    """The runs of a fixed-score method, one per split (fold): its seeds repeat one score."""
    spread = part.group_by("fold").agg(*(pl.col(s).n_unique().alias(s) for s in CI_SCORES))
    if spread.height and max(int(spread[s].max()) for s in CI_SCORES) > 1:
        raise DataError(f"{method!r} is given as a fixed score but its scores differ between the seeds of a fold")
    return part.unique(subset=["fold"], keep="first", maintain_order=True)


def summarize_runs(
    runs: pl.DataFrame, *, model: str, confidence: float = 0.95, fixed: Sequence[str] = ()
) -> tuple[pl.DataFrame, dict[str, Any] | None]:
    """The table and the paired difference of :class:`Comparison` from its ``runs`` (one row per method and run).

    Methods keep their order of first appearance. The best baseline is the one with the highest mean macro-F1
    (the first in order on a tie); its runs are paired with the model's by (fold, seed).

    ``fixed``: methods whose score no seed changes (one score per fold, repeated for every seed). Their repeats
    are not independent runs: their row counts one run per fold (``runs``), and its interval is over the folds
    (none with one fold). When the model and the best baseline are both fixed, the difference is paired fold by
    fold (``runs``: the folds; no interval with one) and carries a ``"note"`` saying why; a zero-width interval
    from identical repeats would claim a certainty the runs do not give.
    """
    need = {"method", "fold", "seed", *SCORES}
    if not need <= set(runs.columns):
        raise DataError(f"runs needs the columns {sorted(need)}, found {runs.columns}")
    methods = list(dict.fromkeys(runs["method"].to_list()))
    if model not in methods:
        raise DataError(f"model={model!r} has no runs; methods with runs: {methods}")
    fixed = [m for m in fixed if m in methods]
    several = runs.height > len(methods)
    rows = []
    for method in methods:
        part = runs.filter(pl.col("method") == method)
        if method in fixed:
            part = _one_per_split(part, method)
        row: dict[str, Any] = {"method": method}
        if several:
            row["runs"] = part.height
        for score in SCORES:
            values = part[score].drop_nulls().to_numpy()
            row[score] = float(values.mean()) if len(values) else None
            if several and score in CI_SCORES:
                half = mean_ci(values, confidence).half_width if len(values) else math.nan
                row[f"{score}_ci"] = None if math.isnan(half) else half
        rows.append(row)
    table = pl.DataFrame(rows)
    baselines = [m for m in methods if m != model]
    if not baselines:
        return table, None
    means = {r["method"]: r["macro_f1"] for r in rows}
    best = max(baselines, key=lambda m: (means[m], -baselines.index(m)))
    pairs = (runs.filter(pl.col("method") == model).select("fold", "seed", *CI_SCORES)
             .join(runs.filter(pl.col("method") == best).select("fold", "seed", *CI_SCORES),
                   on=["fold", "seed"], suffix="_baseline"))
    both_fixed = model in fixed and best in fixed
    if both_fixed:  # the same difference for every seed of a fold: one pair per fold
        pairs = pairs.unique(subset=["fold"], keep="first", maintain_order=True)
    difference: dict[str, Any] = {"model": model, "baseline": best, "runs": pairs.height, "confidence": confidence,
                                  "interval": "paired Student t-interval over runs"}
    if both_fixed:
        difference["interval"] = "paired Student t-interval over splits (folds)"
        difference["note"] = (
            f"{model} and {best} are both fixed scores, which no seed changes: one difference per split, not one "
            f"per seed; " + ("one split: no interval" if pairs.height < 2 else f"interval over {pairs.height} splits"))
    for score in CI_SCORES:
        diff: Interval = paired_difference(pairs[score].to_numpy(), pairs[f"{score}_baseline"].to_numpy(),
                                           confidence)
        difference[score] = diff.to_dict()
    return table, difference


def format_comparison(comparison: Comparison, *, scores: Sequence[str] = ("accuracy", "macro_f1")) -> str:
    """A compact text table of ``comparison`` (method and ``scores``; ``mean +- half-width`` with several runs)
    and one line with the paired difference of the model to the best baseline."""
    table = comparison.table
    several = "runs" in table.columns
    header = ["method", *(["runs"] if several else []), *scores]
    lines_rows = []
    for row in table.iter_rows(named=True):
        cells = [safe_text(str(row["method"]))]
        if several:
            cells.append(str(row["runs"]))
        for score in scores:
            value, half = row.get(score), row.get(f"{score}_ci")
            text = "-" if value is None else f"{value:.4f}"
            if several and score in CI_SCORES:
                text += "" if half is None else f" +- {half:.4f}"
            cells.append(text)
        lines_rows.append(cells)
    widths = [max(len(h), *(len(r[i]) for r in lines_rows)) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths,
                                                                                               strict=True)))

    out = [line(header), "  ".join("-" * w for w in widths), *(line(r) for r in lines_rows)]
    d = comparison.difference
    if several:
        out.append(f"(+- : half-width of the {100 * (d or {}).get('confidence', 0.95):g}% Student t-interval over "
                   f"{comparison.n_runs} runs)")
        out.extend(f"({safe_text(note)})" for note in fixed_notes(comparison.fixed, comparison.runs, None))
    if d is not None:
        parts = []
        for score in CI_SCORES:
            s = d[score]
            name = "macro-F1" if score == "macro_f1" else score
            bounds = (f" [{s['low']:+.4f}, {s['high']:+.4f}]" if s["low"] is not None else "")
            parts.append(f"{name} {s['mean']:+.4f}{bounds}")
        if "note" in d:
            how = d["note"]
        elif d["runs"] > 1:
            how = f"{d['runs']} paired runs, {100 * d['confidence']:g}% CI"
        else:
            how = "one run: no interval; pass several seeds or folds"
        out.append(f"{safe_text(d['model'])} - {safe_text(d['baseline'])} (best baseline): {', '.join(parts)} "
                   f"({how})")
    return "\n".join(out)


def fixed_notes(fixed: Sequence[str], runs: pl.DataFrame, difference: dict[str, Any] | None) -> list[str]:
    """One line per kind of fixed score in a comparison with several runs (empty otherwise): which rows count
    one run per split, and why; then the difference's note, if it has one."""
    if runs.is_empty() or runs.height <= runs["method"].n_unique():
        return []
    present = [m for m in fixed if m in set(runs["method"].to_list())]
    notes = []
    if present:
        folds = runs["fold"].n_unique()
        notes.append(
            f"{', '.join(present)}: {'a fixed score' if len(present) == 1 else 'fixed scores'} (no seed changes "
            f"{'it' if len(present) == 1 else 'them'}: TF-IDF has no random state, a saved model is scored as it "
            f"is), counted once per split; "
            + ("one split: no interval" if folds == 1 else f"interval over the {folds} splits"))
    if difference is not None and "note" in difference:
        notes.append(str(difference["note"]))
    return notes


def _align_probs(model: TfidfLogReg, labels: Sequence[str], texts: list[str]) -> np.ndarray:
    """TF-IDF probabilities with columns in ``labels`` order (labels it never saw get 0)."""
    probs = model.predict_proba(texts)
    out = np.zeros((len(texts), len(labels)), dtype=np.float64)
    index = {str(x): j for j, x in enumerate(model.labels_)}
    for col, label in enumerate(labels):
        if label in index:
            out[:, col] = probs[:, index[label]]
    return out
