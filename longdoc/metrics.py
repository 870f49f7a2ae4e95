"""Classification metrics on label names: a report dict, a readable text table, a confusion-matrix PNG, and the
statistics of repeated runs (:func:`mean_ci`, :func:`paired_difference`).

Single-label: ``y_true`` and ``y_pred`` are lists of label names. Multi-label: lists of lists (or sets) of label
names. ``labels`` fixes the label order of every per-label entry, of the confusion matrix and of the columns of
``y_prob``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from longdoc.calibration import expected_calibration_error
from longdoc.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


def _check_names(values: Sequence[Any], known: set[Any], what: str) -> None:
    unknown = sorted({str(v) for v in values if v not in known})
    if unknown:
        raise DataError(
            f"{what} holds labels not in `labels`: {unknown[:10]}; known labels: {sorted(map(str, known))}"
        )


def _binarize(rows: Sequence[Sequence[Any]], index: dict[Any, int], what: str) -> np.ndarray:
    out = np.zeros((len(rows), len(index)), dtype=np.int64)
    for i, row in enumerate(rows):
        if isinstance(row, str) or not hasattr(row, "__iter__"):
            raise DataError(f"multi-label {what} must be a list of label lists, row {i} is {row!r}")
        row = list(row)
        _check_names(row, set(index), what)
        out[i, [index[name] for name in row]] = 1
    return out


def classification_report(
    y_true: Sequence[Any],
    y_pred: Sequence[Any],
    labels: Sequence[Any],
    *,
    y_prob: np.ndarray | None = None,
    multi_label: bool = False,
) -> dict[str, Any]:
    """Accuracy, F1 averages, per-label scores, confusion matrix and (given ``y_prob``) ECE.

    Args:
        y_true: true label names (single-label) or lists of names (multi-label).
        y_pred: predicted label names / lists of names, same length.
        labels: every label name, in the order the report (and ``y_prob``'s columns) use.
        y_prob: optional (n, L) probabilities, columns in ``labels`` order, for the calibration error.
        multi_label: treat rows as label sets.

    Returns:
        A JSON-ready dict: ``n_samples``, ``labels``, ``multi_label``, ``accuracy`` (subset accuracy for
        multi-label), ``macro_f1``, ``micro_f1``, ``weighted_f1``, ``macro_precision``, ``macro_recall``,
        ``per_label`` ({name: {precision, recall, f1, support}}), ``confusion_matrix`` (single-label only,
        rows = true, columns = predicted, nested lists) and ``ece`` when ``y_prob`` is given (15 bins; on the max
        probability for single-label, over every (document, label) pair for multi-label).
    """
    from sklearn.metrics import (  # slow import
        accuracy_score,
        confusion_matrix,
        precision_recall_fscore_support,
    )

    labels = list(labels)
    if not labels:
        raise DataError("labels is empty; pass every label name in report order")
    if len(set(labels)) != len(labels):
        raise DataError(f"labels has duplicates: {labels}")
    if len(y_true) != len(y_pred):
        raise DataError(f"y_true has {len(y_true)} rows but y_pred has {len(y_pred)}")
    n = len(y_true)
    index = {name: i for i, name in enumerate(labels)}

    if multi_label:
        t = _binarize(y_true, index, "y_true")  # (n, L)
        p = _binarize(y_pred, index, "y_pred")
        accuracy = accuracy_score(t, p) if n else 0.0
        sk_true, sk_pred, sk_labels = t, p, None
    else:
        _check_names(y_true, set(index), "y_true")
        _check_names(y_pred, set(index), "y_pred")
        t = np.array([index[v] for v in y_true], dtype=np.int64)  # (n,)
        p = np.array([index[v] for v in y_pred], dtype=np.int64)
        accuracy = accuracy_score(t, p) if n else 0.0
        sk_true, sk_pred, sk_labels = t, p, list(range(len(labels)))

    def prf(average: str | None):
        return precision_recall_fscore_support(
            sk_true, sk_pred, labels=sk_labels, average=average, zero_division=0
        )

    precision, recall, f1, support = prf(None)
    macro = prf("macro")
    report: dict[str, Any] = {
        "n_samples": n,
        "labels": [str(x) for x in labels],  # str, like the per_label keys, so the dict round-trips JSON
        "multi_label": multi_label,
        "accuracy": float(accuracy),
        "macro_f1": float(macro[2]),
        "micro_f1": float(prf("micro")[2]),
        "weighted_f1": float(prf("weighted")[2]),
        "macro_precision": float(macro[0]),
        "macro_recall": float(macro[1]),
        "per_label": {
            str(name): {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(labels)
        },
    }
    if not multi_label:
        cm = confusion_matrix(t, p, labels=list(range(len(labels)))) if n else np.zeros((len(labels),) * 2)
        report["confusion_matrix"] = np.asarray(cm, dtype=np.int64).tolist()

    if y_prob is not None:
        prob = np.asarray(y_prob, dtype=np.float64)
        if prob.shape != (n, len(labels)):
            raise DataError(
                f"y_prob must have shape ({n}, {len(labels)}) in `labels` order, got {prob.shape}"
            )
        report["ece"] = expected_calibration_error(prob, t, multi_label=multi_label)
    return report


def format_report(report: dict[str, Any]) -> str:
    """A readable text table of a :func:`classification_report` dict (per-label rows, then the averages)."""
    per_label = report.get("per_label", {})
    width = max([len("weighted avg"), *(len(str(k)) for k in per_label)])
    header = f"{'':<{width}}  {'precision':>9}  {'recall':>9}  {'f1':>9}  {'support':>9}"
    lines = [header, "-" * len(header)]
    for name, s in per_label.items():
        lines.append(
            f"{name:<{width}}  {s['precision']:>9.4f}  {s['recall']:>9.4f}  {s['f1']:>9.4f}  {s['support']:>9d}"
        )
    lines.append("-" * len(header))
    total = sum(s["support"] for s in per_label.values())
    if "macro_f1" in report:
        lines.append(
            f"{'macro avg':<{width}}  {report.get('macro_precision', math.nan):>9.4f}  "
            f"{report.get('macro_recall', math.nan):>9.4f}  {report['macro_f1']:>9.4f}  {total:>9d}"
        )
    if "micro_f1" in report:
        lines.append(f"{'micro avg':<{width}}  {'':>9}  {'':>9}  {report['micro_f1']:>9.4f}  {total:>9d}")
    if "weighted_f1" in report:
        lines.append(
            f"{'weighted avg':<{width}}  {'':>9}  {'':>9}  {report['weighted_f1']:>9.4f}  {total:>9d}"
        )
    lines.append("")
    kind = "subset accuracy" if report.get("multi_label") else "accuracy"
    if "accuracy" in report:
        lines.append(f"{kind}: {report['accuracy']:.4f}  (n = {report.get('n_samples', total)})")
    if "ece" in report:
        lines.append(f"ECE (15 bins): {report['ece']:.4f}")
    return "\n".join(lines)


def check_png_path(path: str | Path, *, argument: str = "path") -> None:
    """Refuse (``ConfigError``) a confusion-matrix path that does not end in ``.png``: the PNG replaces whatever
    the path held, so a slip (``--confusion-png test.jsonl``) must not overwrite a data file."""
    if Path(path).suffix.lower() != ".png":
        raise ConfigError(f"{argument}={str(path)!r} must end in .png (the image replaces the file at that path)")


def save_confusion_matrix_png(
    cm: Sequence[Sequence[int]] | np.ndarray,
    labels: Sequence[Any],
    path: str | Path,
    *,
    title: str | None = None,
    normalize: bool = False,
) -> Path:
    """Draw a confusion matrix (rows = true, columns = predicted) to a PNG file and return its path.

    Uses matplotlib's Agg canvas directly (no pyplot, no GUI, no global backend change). With
    ``normalize=True`` the colours show each row as fractions of its true-label count; cells always show counts.
    """
    check_png_path(path)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    matrix = np.asarray(cm, dtype=np.float64)
    names = [str(x) for x in labels]
    if matrix.ndim != 2 or matrix.shape != (len(names), len(names)):
        raise DataError(
            f"cm must be a ({len(names)}, {len(names)}) matrix for {len(names)} labels, got {matrix.shape}"
        )
    shown = matrix
    if normalize:
        shown = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)

    k = len(names)
    side = min(max(4.0, 0.55 * k + 2.5), 30.0)
    fig = Figure(figsize=(side, side), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(shown, cmap="Blues", interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(names, rotation=45, ha="right")
    ax.set_yticklabels(names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    if k <= 30:  # cell annotations stay legible up to about this size
        cut = shown.max() / 2 if shown.size else 0
        for i in range(k):
            for j in range(k):
                ax.text(
                    j,
                    i,
                    f"{int(matrix[i, j])}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if shown[i, j] > cut else "black",
                )
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    logger.info("wrote confusion matrix (%d labels) to %s", k, out)
    return out


# -- statistics of repeated runs (seeds, folds) ---------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` runs and its two-sided confidence interval ``[low, high]``.

    ``low`` and ``high`` are NaN when ``n == 1`` (one run gives no interval). ``half_width`` is ``high - mean``
    (the interval is symmetric).
    """

    mean: float
    low: float
    high: float
    n: int
    confidence: float = 0.95

    @property
    def half_width(self) -> float:
        return self.high - self.mean

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: NaN bounds become ``None``."""
        bound = lambda x: None if math.isnan(x) else float(x)  # noqa: E731
        return {"mean": float(self.mean), "low": bound(self.low), "high": bound(self.high), "n": self.n,
                "confidence": self.confidence}


def _check_confidence(confidence: float) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence={confidence!r} is not valid; expected a fraction in (0, 1), e.g. 0.95")
    return float(confidence)


def _as_runs(values: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise DataError(f"{what} must be a non-empty 1-D sequence of numbers (one per run), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise DataError(f"{what} holds non-finite values at runs {np.flatnonzero(~np.isfinite(arr))[:10].tolist()}")
    return arr


def mean_ci(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> Interval:
    """Mean of per-run scores with a Student t confidence interval.

    ``mean +- t(1 - (1 - confidence) / 2, n - 1) * s / sqrt(n)``, with ``s`` the sample standard deviation
    (``ddof=1``). It treats the runs as independent draws; runs of a cross-validation share most of their
    training documents, so over folds the interval is somewhat too narrow (Nadeau and Bengio, 2003).

    Args:
        values: one score per run (at least one; finite).
        confidence: the interval's coverage, in (0, 1).

    Returns:
        An :class:`Interval`; with one run its bounds are NaN.

    Raises:
        DataError: ``values`` is empty, not 1-D, or holds NaN/inf.
        ConfigError: ``confidence`` is not in (0, 1).
    """
    confidence = _check_confidence(confidence)
    arr = _as_runs(values, "values")
    n = int(arr.size)
    mean = float(arr.mean())
    if n == 1:
        return Interval(mean, math.nan, math.nan, 1, confidence)
    from scipy.stats import t  # slow import; scipy comes with scikit-learn

    half = float(t.ppf(1.0 - (1.0 - confidence) / 2.0, n - 1) * arr.std(ddof=1) / math.sqrt(n))
    return Interval(mean, mean - half, mean + half, n, confidence)


def paired_difference(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, confidence: float = 0.95
) -> Interval:
    """Mean of the per-run differences ``a[i] - b[i]`` with its t confidence interval (a paired t-interval).

    ``a[i]`` and ``b[i]`` must come from the same run (same split, same seed), so that what the runs share
    (an easy fold, a lucky seed) cancels out; see :func:`mean_ci` for the interval.

    Raises:
        DataError: ``a`` and ``b`` differ in length, are empty, or hold NaN/inf.
        ConfigError: ``confidence`` is not in (0, 1).
    """
    x, y = _as_runs(a, "a"), _as_runs(b, "b")
    if x.size != y.size:
        raise DataError(f"a has {x.size} runs but b has {y.size}; a paired difference needs one pair per run")
    return mean_ci(x - y, confidence)
