"""Post-hoc calibration on a validation set: temperature scaling, per-label thresholds, and ECE.

- :func:`fit_temperature` finds the T that minimises the validation NLL of ``logits / T``.
- :func:`tune_thresholds` picks, per label, the probability threshold that maximises that label's F1.
- :func:`expected_calibration_error` measures how far confidence is from accuracy (15 equal-width bins).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from longdoc.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_GRID: np.ndarray = np.round(np.arange(0.05, 0.951, 0.025), 4)
"""Threshold grid of :func:`tune_thresholds`: 0.05, 0.075, ..., 0.95."""

_T_MIN, _T_MAX = 0.05, 100.0


def _as_numpy(x: object, dtype: type | None = None) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().float().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def fit_temperature(
    logits: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor | Sequence,
    *,
    multi_label: bool = False,
    min_samples: int = 20,
    max_iter: int = 200,
) -> float:
    """Temperature T > 0 minimising the NLL of ``logits / T`` on validation data.

    Args:
        logits: (n, L) validation logits.
        labels: single-label: (n,) class indices; multi-label: (n, L) 0/1 targets.
        multi_label: False: softmax cross-entropy; True: per-label sigmoid BCE (one shared T).
        min_samples: below this many rows the data are too few to fit and T = 1.0 is returned.
        max_iter: LBFGS iterations.

    Returns:
        T in [0.05, 100]; divide logits by it before softmax/sigmoid (``predict_probs(..., temperature=T)``).
        T > 1 softens an over-confident model.
    """
    z = torch.as_tensor(_as_numpy(logits, np.float64))
    if z.dim() != 2:
        raise ValueError(f"logits must be 2-D (n, L), got shape {tuple(z.shape)}")
    target = _target(labels, tuple(z.shape), multi_label)
    n = z.shape[0]
    if n < min_samples:
        logger.warning("fit_temperature: %d validation rows (< %d); keeping T = 1.0", n, min_samples)
        return 1.0

    def nll(log_t: torch.Tensor) -> torch.Tensor:
        return _nll(z / log_t.exp(), target, multi_label)

    with torch.no_grad():
        before = float(nll(torch.zeros((), dtype=torch.float64)))
    t = float(_fit_log_parameters(nll, (), max_iter))
    if not np.isfinite(t):
        logger.warning("fit_temperature: optimisation diverged; keeping T = 1.0")
        return 1.0
    t = float(np.clip(t, _T_MIN, _T_MAX))
    with torch.no_grad():
        after = float(nll(torch.tensor(np.log(t), dtype=torch.float64)))
    logger.info("fit_temperature: T = %.4f, NLL %.4f -> %.4f on %d rows", t, before, after, n)
    return t


def tune_thresholds(
    probs: np.ndarray | torch.Tensor,
    labels_bin: np.ndarray | torch.Tensor,
    *,
    grid: Sequence[float] | np.ndarray = DEFAULT_GRID,
    default: float = 0.5,
) -> np.ndarray:
    """Per-label decision thresholds maximising each label's F1 on validation data (multi-label).

    Args:
        probs: (n, L) predicted probabilities.
        labels_bin: (n, L) 0/1 true labels.
        grid: candidate thresholds; a label is predicted when ``prob >= threshold``.
        default: threshold for a label without any positive in the validation data.

    Returns:
        (L,) float array. Among thresholds with equal F1 the one closest to ``default`` wins.
    """
    p = _as_numpy(probs, np.float64)
    y = _as_numpy(labels_bin).astype(bool)
    if p.ndim != 2 or p.shape != y.shape:
        raise ValueError(
            f"probs and labels_bin must both be (n, L) of one shape, got {p.shape} and {y.shape}"
        )
    candidates = np.asarray(grid, dtype=np.float64).ravel()
    if candidates.size == 0 or np.any((candidates < 0) | (candidates > 1)):
        raise ConfigError(f"grid must be a non-empty sequence of thresholds in [0, 1], got {candidates!r}")

    n_labels = p.shape[1]
    positives = y.sum(axis=0)  # (L,)
    f1 = np.zeros((candidates.size, n_labels))  # (G, L)
    for g, t in enumerate(candidates):
        pred = p >= t  # (n, L)
        tp = (pred & y).sum(axis=0)
        denom = pred.sum(axis=0) + positives  # 2tp + fp + fn
        f1[g] = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)

    thresholds = np.full(n_labels, float(default))
    # Break ties towards the default: order the grid by distance to it, argmax takes the first maximum.
    order = np.argsort(np.abs(candidates - default), kind="stable")
    best = order[np.argmax(f1[order], axis=0)]  # (L,)
    has_pos = positives > 0
    thresholds[has_pos] = candidates[best[has_pos]]
    if not has_pos.all():
        logger.info(
            "tune_thresholds: %d label(s) without positives keep %.2f", int((~has_pos).sum()), default
        )
    return thresholds


def expected_calibration_error(
    probs: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor | Sequence,
    *,
    n_bins: int = 15,
    multi_label: bool = False,
) -> float:
    """Expected calibration error with ``n_bins`` equal-width confidence bins.

    Single-label: ``probs`` (n, L), ``labels`` (n,) class indices; the confidence is the max probability and a
    row is correct when its argmax equals the label. Multi-label: ``probs`` and ``labels`` (n, L); every
    (row, label) pair is one binary prediction and each bin compares the mean probability with the fraction of
    positives. ECE = sum over bins of (bin size / total) * |accuracy - confidence|; 0 is perfectly calibrated.
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ConfigError(f"n_bins={n_bins!r} is not valid; expected an integer >= 1")
    p = _as_numpy(probs, np.float64)
    y = _as_numpy(labels)
    if p.ndim != 2:
        raise ValueError(f"probs must be 2-D (n, L), got shape {p.shape}")
    if multi_label:
        if y.shape != p.shape:
            raise ValueError(f"multi-label labels must have shape {p.shape}, got {y.shape}")
        confidence = p.ravel()
        outcome = y.astype(np.float64).ravel()
    else:
        if y.shape != (p.shape[0],):
            raise ValueError(f"single-label labels must have shape ({p.shape[0]},), got {y.shape}")
        confidence = p.max(axis=1)
        outcome = (p.argmax(axis=1) == y.astype(np.int64)).astype(np.float64)
    if confidence.size == 0:
        return 0.0
    # Bins (lo, hi], the first one closed at 0.
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    conf_sum = np.bincount(bins, weights=confidence, minlength=n_bins)
    out_sum = np.bincount(bins, weights=outcome, minlength=n_bins)
    # sum_b (n_b / N) * |acc_b - conf_b| == sum_b |sum outcome_b - sum confidence_b| / N
    return float(np.abs(out_sum - conf_sum).sum() / confidence.size)


def fit_fusion_weights(
    dense_logits: np.ndarray | torch.Tensor,
    lexical_scores: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor | Sequence,
    *,
    multi_label: bool = False,
    min_samples: int = 20,
    max_iter: int = 200,
) -> tuple[float, float] | None:
    """Weights (a, b) > 0 minimising the NLL of ``a * dense_logits + b * lexical_scores`` on validation data.

    The two halves of a hybrid classifier are trained together on the training documents, where the window
    head can fit what the (cross-fitted) lexical scores get wrong; on documents it never saw, that correction
    may help or hurt. Two scalars fitted on held-out documents say how much each half is worth there, the way a
    temperature is fitted (and, like it, with too few parameters to overfit a few dozen documents).

    Returns None (keep the weights as trained) below ``min_samples`` rows or when the fit diverges; else
    (a, b), each in [0.01, 100].
    """
    d = torch.as_tensor(_as_numpy(dense_logits, np.float64))
    s = torch.as_tensor(_as_numpy(lexical_scores, np.float64))
    if d.dim() != 2 or s.shape != d.shape:
        raise ValueError(f"dense_logits and lexical_scores must be 2-D of one shape, got {tuple(d.shape)} and "
                         f"{tuple(s.shape)}")
    target = _target(labels, tuple(d.shape), multi_label)
    n = d.shape[0]
    if n < min_samples:
        logger.info("fit_fusion_weights: %d validation rows (< %d); keeping the trained weights", n, min_samples)
        return None

    def nll(log_ab: torch.Tensor) -> torch.Tensor:
        a, b = log_ab.exp()
        return _nll(a * d + b * s, target, multi_label)

    a, b = (float(x) for x in _fit_log_parameters(nll, (2,), max_iter))
    if not (np.isfinite(a) and np.isfinite(b)):
        logger.warning("fit_fusion_weights: optimisation diverged; keeping the trained weights")
        return None
    return float(np.clip(a, 0.01, 100.0)), float(np.clip(b, 0.01, 100.0))


def _target(labels: np.ndarray | torch.Tensor | Sequence, shape: tuple[int, int], multi_label: bool) -> torch.Tensor:
    """The validation targets of (n, L) logits, checked: multi-label (n, L) 0/1 as float, else (n,) class
    indices in [0, L)."""
    y = _as_numpy(labels)
    n, width = shape
    if multi_label:
        if y.shape != shape:
            raise ValueError(f"multi-label labels must have shape {shape}, got {y.shape}")
        return torch.as_tensor(y.astype(np.float64))
    if y.shape != (n,):
        raise ValueError(f"single-label labels must have shape ({n},) of class indices, got {y.shape}")
    if n and (y.min() < 0 or y.max() >= width):
        raise ValueError(f"class indices must lie in [0, {width}), got [{y.min()}, {y.max()}]")
    return torch.as_tensor(y.astype(np.int64))


def _nll(logits: torch.Tensor, target: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """Per-label sigmoid BCE (multi-label) or softmax cross-entropy, averaged."""
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits, target)
    return F.cross_entropy(logits, target)


def _fit_log_parameters(loss: Callable[[torch.Tensor], torch.Tensor], shape: tuple[int, ...],
                        max_iter: int) -> torch.Tensor:
    """exp of the log-parameters (starting at 0: every scale 1) that minimise ``loss``, by LBFGS."""
    log_p = torch.zeros(shape, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_p], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        value = loss(log_p)
        value.backward()
        return value

    optimizer.step(closure)
    return log_p.detach().exp()
