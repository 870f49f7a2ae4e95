"""Side-by-side evaluation: the hierarchical classifier against what users do today.

Every method is trained and scored on the same split:

* ``hierarchical``: the classifier as configured (all windows, its pooling head).
* ``first512``: each document truncated to its first 512 tokens (the model's limit), a mean head over that one
  window: with the frozen encoder a linear model on its embedding; with ``mode="finetune"`` the usual first-512
  fine-tuning recipe.
* ``head_tail``: one 512-token window of the first 128 and the last 382 document tokens, which often beats plain
  truncation (frozen encoder only).
* ``tfidf``: TF-IDF word 1-2 grams + logistic regression on the full text.

The truncation baselines always see the model's full 512 tokens, whatever window length the classifier uses
(with shorter windows they are cut and encoded separately). With the frozen encoder every document is encoded
once and the embeddings are shared by every method that can share them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from longdoc.baselines import TfidfLogReg
from longdoc.classifier import Encoded, LongDocClassifier
from longdoc.errors import ConfigError
from longdoc.heads import DocumentHead, HeadConfig
from longdoc.metrics import classification_report
from longdoc.training import TrainConfig
from longdoc.windows import WindowConfig, Windows, make_windows

logger = logging.getLogger(__name__)

BASELINES = ("first512", "head_tail", "tfidf")


@dataclass
class Comparison:
    """Results of :func:`compare_with_baselines`.

    Attributes:
        table: one row per method: method, accuracy, macro_f1, micro_f1, ece, seconds (training + scoring).
        reports: the full ``classification_report`` of each method.
        encoded: the shared encodings (``"train"``, ``"test"`` and ``"val"`` when given), reusable for indexing;
            frozen mode only (empty after fine-tuning: the encoder that made them has changed).
    """

    table: pl.DataFrame
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    encoded: dict[str, Encoded] = field(default_factory=dict)


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


def _row(method: str, report: dict[str, Any], seconds: float) -> dict[str, Any]:
    return {"method": method, "accuracy": report["accuracy"], "macro_f1": report["macro_f1"],
            "micro_f1": report["micro_f1"], "ece": report.get("ece"), "seconds": round(seconds, 2)}


def sibling_classifier(clf: LongDocClassifier, pooling: str) -> LongDocClassifier:
    """A classifier with a fresh ``pooling`` head over the same (frozen) encoder, labels and dropout."""
    cfg = HeadConfig(pooling=pooling, hidden_size=clf.encoder.dim, num_labels=len(clf.labels),
                     multi_label=clf.multi_label, dropout=clf.head.config.dropout)
    return LongDocClassifier(clf.encoder, DocumentHead(cfg), clf.labels)


def _with_windows(enc: Encoded, clf: LongDocClassifier, windows: Windows, *, reencode: bool) -> Encoded:
    """``enc`` restricted to other windows: embeddings are looked up when the windows are a subset, else encoded."""
    if not reencode:
        keys = enc.windows.table.select("doc_id", "window_index").with_row_index("row")
        rows = windows.table.select("doc_id", "window_index").join(keys, on=["doc_id", "window_index"],
                                                                   how="left", maintain_order="left")["row"]
        return Encoded(enc.documents, windows, enc.embeddings[rows.to_numpy()], enc.fingerprint)
    return Encoded(enc.documents, windows, clf.encoder.encode_windows(windows, show_progress_bar=False),
                   enc.fingerprint)


def compare_with_baselines(
    clf: LongDocClassifier,
    train_docs: Any,
    test_docs: Any,
    *,
    args: TrainConfig | None = None,
    val_docs: Any = None,
    baselines: Sequence[str] = BASELINES,
    show_progress_bar: bool | None = None,
) -> Comparison:
    """Train ``clf`` (in place) and the baselines on the same split and score them on ``test_docs``.

    With ``args.mode == "frozen"`` the documents are encoded once and every neural method reuses the
    embeddings. With ``"finetune"`` each neural baseline fine-tunes its own copy of the pretrained encoder.
    """
    args = args or TrainConfig()
    unknown = sorted(set(baselines) - set(BASELINES))
    if unknown:
        raise ConfigError(f"baselines {unknown} are unknown; valid: {list(BASELINES)}")
    rows, reports = [], {}
    frozen = args.mode == "frozen"
    pretrained = clf.encoder.model_name_or_path
    splits = {"train": train_docs, "test": test_docs, **({"val": val_docs} if val_docs is not None else {})}
    started = time.perf_counter()
    if frozen:  # encode once, share the embeddings
        data: dict[str, Any] = {name: clf.encode(docs, show_progress_bar=show_progress_bar)
                                for name, docs in splits.items()}
        logger.info("encoded every split once in %.1f s", time.perf_counter() - started)
    else:  # each fine-tuned model encodes with its own weights: only read the documents here
        data = {name: clf.document_table(docs) for name, docs in splits.items()}

    def documents(name: str) -> pl.DataFrame:
        return data[name].documents if frozen else data[name]

    def run(method: str, model: LongDocClassifier, split: dict[str, Any]) -> None:
        t0 = time.perf_counter()
        model.fit(split["train"], eval_dataset=split.get("val"), args=args, show_progress_bar=show_progress_bar)
        reports[method] = model.evaluate(split["test"])
        rows.append(_row(method, reports[method], time.perf_counter() - t0))
        logger.info("%s: accuracy %.4f, macro-F1 %.4f", method, reports[method]["accuracy"], reports[method]["macro_f1"])

    truncated: dict[str, Windows] = {}  # the truncation baselines' windows of each split, cut once
    head = head_tokens(truncation_config(clf, max_windows=2))  # head length of head+tail

    for method in baselines:
        if method == "tfidf":
            t0 = time.perf_counter()
            train_table, test_table = documents("train"), documents("test")
            multi = clf.multi_label
            y_train = train_table["labels"].to_list() if multi else [r[0] for r in train_table["labels"].to_list()]
            y_test = test_table["labels"].to_list() if multi else [r[0] for r in test_table["labels"].to_list()]
            model = TfidfLogReg(multi_label=multi).fit(train_table["text"].to_list(), y_train)
            reports[method] = classification_report(
                y_test, model.predict(test_table["text"].to_list()), clf.labels,
                y_prob=_align_probs(model, clf.labels, test_table["text"].to_list()), multi_label=multi,
            )
            rows.append(_row(method, reports[method], time.perf_counter() - t0))
            continue
        if not frozen:
            if method == "head_tail":
                logger.warning("head_tail is measured with the frozen encoder only; skipped in fine-tuning mode")
                continue
            # the usual first-512 recipe: fine-tune the pretrained encoder on each document's first 512 tokens
            window = truncation_config(clf, max_windows=1)
            model = LongDocClassifier.from_encoder(pretrained, labels=clf.labels, window=window, pooling="mean",
                                                   multi_label=clf.multi_label, device=str(clf.encoder.device),
                                                   dtype=clf.encoder.dtype)
            run(method, model, data)
            continue
        model = sibling_classifier(clf, "mean")
        tok = clf.encoder.tokenizer
        split = {}
        for name, enc in data.items():
            if name not in truncated:
                truncated[name] = truncation_windows(clf, enc.documents, enc.windows)
            windows = truncated[name]
            reuse = windows is enc.windows
            if method == "first512":
                split[name] = _with_windows(enc, model, first_windows(windows), reencode=not reuse)
            else:
                win = head_tail_windows(windows, head=head, cls_id=tok.cls_token_id, sep_id=tok.sep_token_id)
                split[name] = _with_windows(enc, model, win, reencode=True)
        run(method, model, split)
    run("hierarchical", clf, data)
    table = pl.DataFrame(rows)
    order = ["hierarchical", *[b for b in BASELINES if b in baselines]]
    table = table.with_columns(pl.col("method").cast(pl.Enum(order))).sort("method").with_columns(
        pl.col("method").cast(pl.Utf8))
    return Comparison(table=table, reports=reports, encoded=data if frozen else {})


def _align_probs(model: TfidfLogReg, labels: Sequence[str], texts: list[str]) -> np.ndarray:
    """TF-IDF probabilities with columns in ``labels`` order (labels it never saw get 0)."""
    probs = model.predict_proba(texts)
    out = np.zeros((len(texts), len(labels)), dtype=np.float64)
    index = {str(x): j for j, x in enumerate(model.labels_)}
    for col, label in enumerate(labels):
        if label in index:
            out[:, col] = probs[:, index[label]]
    return out
