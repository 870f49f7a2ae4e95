"""Calibration: temperature scaling, per-label thresholds, expected calibration error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from longdoc.calibration import expected_calibration_error, fit_temperature, tune_thresholds
from longdoc.errors import ConfigError


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def sample_single_label(n: int = 4000, k: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """True logits and labels drawn from their softmax: these logits are perfectly calibrated."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, size=(n, k))
    p = softmax(z)
    y = (rng.random((n, 1)) > p.cumsum(axis=1)).sum(axis=1)
    return z, np.minimum(y, k - 1)


def test_temperature_recovers_known_scale():
    z, y = sample_single_label()
    t = fit_temperature(z * 3.0, y)
    assert abs(t - 3.0) / 3.0 < 0.1
    t_cold = fit_temperature(z / 2.0, y)
    assert abs(t_cold - 0.5) / 0.5 < 0.1
    # torch input works too
    assert abs(fit_temperature(torch.tensor(z * 3.0), torch.tensor(y)) - t) < 1e-6


def test_temperature_multi_label():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2.0, size=(3000, 4))
    y = (rng.random(z.shape) < 1 / (1 + np.exp(-z))).astype(np.float32)
    t = fit_temperature(z * 3.0, y, multi_label=True)
    assert abs(t - 3.0) / 3.0 < 0.1


def test_temperature_too_few_rows_is_one():
    z, y = sample_single_label(n=5)
    assert fit_temperature(z * 10, y) == 1.0


def test_temperature_bad_inputs():
    z, y = sample_single_label(n=50)
    with pytest.raises(ValueError, match="class indices"):
        fit_temperature(z, y + 10)
    with pytest.raises(ValueError, match="2-D"):
        fit_temperature(z[:, 0], y)
    with pytest.raises(ValueError, match="multi-label labels"):
        fit_temperature(z, y, multi_label=True)


def test_thresholds_beat_half_on_skewed_data():
    rng = np.random.default_rng(0)
    n = 2000
    y = np.zeros((n, 3), dtype=int)
    y[:, 0] = rng.random(n) < 0.05  # rare label whose scores are squashed low
    y[:, 1] = rng.random(n) < 0.5
    # label 2 never positive -> default threshold
    probs = np.empty((n, 3))
    probs[:, 0] = np.clip(0.25 * y[:, 0] + rng.normal(0.1, 0.05, n), 0, 1)
    probs[:, 1] = np.clip(0.7 * y[:, 1] + rng.normal(0.15, 0.1, n), 0, 1)
    probs[:, 2] = rng.random(n) * 0.3
    th = tune_thresholds(probs, y)
    assert th.shape == (3,)
    assert th[2] == 0.5

    def f1(col: int, t: float) -> float:
        pred = probs[:, col] >= t
        tp = (pred & (y[:, col] == 1)).sum()
        return 2 * tp / max(pred.sum() + y[:, col].sum(), 1)

    assert f1(0, th[0]) > f1(0, 0.5) + 0.5
    assert f1(1, th[1]) >= f1(1, 0.5)


def test_thresholds_tie_break_and_errors():
    probs = np.array([[0.9], [0.1]])
    y = np.array([[1], [0]])
    # Every threshold in (0.1, 0.9] is perfect; the one closest to 0.5 is chosen.
    assert tune_thresholds(probs, y)[0] == 0.5
    assert tune_thresholds(probs, y, grid=[0.2, 0.3])[0] == 0.3
    with pytest.raises(ValueError, match="one shape"):
        tune_thresholds(probs, y.T)
    with pytest.raises(ConfigError, match="grid"):
        tune_thresholds(probs, y, grid=[1.5])


def test_ece_calibrated_near_zero_and_overconfident_positive():
    rng = np.random.default_rng(0)
    n = 200_000
    conf = rng.uniform(0.5, 1.0, n)
    correct = rng.random(n) < conf
    probs = np.stack([conf, 1 - conf], axis=1)
    labels = np.where(correct, 0, 1)
    assert expected_calibration_error(probs, labels) < 0.01

    over = np.tile([0.99, 0.01], (1000, 1))
    y = (np.arange(1000) % 10 >= 6).astype(int)  # 60% label 0
    assert expected_calibration_error(over, y) == pytest.approx(0.39, abs=1e-9)

    p = rng.random((50_000, 3))
    yb = (rng.random(p.shape) < p).astype(int)
    assert expected_calibration_error(p, yb, multi_label=True) < 0.01
    assert expected_calibration_error(np.clip(p * 2 - 0.5, 0, 1), yb, multi_label=True) > 0.05


def test_ece_hand_computed():
    probs = np.array([[0.6, 0.4], [0.3, 0.7], [0.9, 0.1], [0.2, 0.8]])
    labels = np.array([0, 0, 0, 1])  # correct: yes, no, yes, yes
    # one bin (0.5, 1]: mean conf = 0.75, accuracy = 0.75 -> 0
    assert expected_calibration_error(probs, labels, n_bins=2) == pytest.approx(0.0)
    # 10 bins: (0.5,0.6]: conf .6 acc 1 ; (0.6,0.7]: .7 acc 0 ; (0.7,0.8]: .8 acc 1 ; (0.8,0.9]: .9 acc 1
    expected = (0.4 + 0.7 + 0.2 + 0.1) / 4
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(expected)
    assert expected_calibration_error(np.zeros((0, 2)), np.zeros(0)) == 0.0
    with pytest.raises(ConfigError, match="n_bins"):
        expected_calibration_error(probs, labels, n_bins=0)


def test_fusion_weights_recover_known_weights():
    from longdoc.calibration import fit_fusion_weights

    rng = np.random.default_rng(3)
    n, k = 6000, 4
    dense, lexical = rng.normal(size=(n, k)), rng.normal(size=(n, k))
    z = 2.0 * dense + 0.5 * lexical
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = np.array([rng.choice(k, p=row) for row in p])
    a, b = fit_fusion_weights(dense, lexical, y)
    assert abs(a - 2.0) < 0.15 and abs(b - 0.5) < 0.1
    # multi-label: per-label sigmoid
    ym = (rng.random((n, k)) < 1 / (1 + np.exp(-(0.7 * dense + 1.5 * lexical)))).astype(float)
    a, b = fit_fusion_weights(dense, lexical, ym, multi_label=True)
    assert abs(a - 0.7) < 0.1 and abs(b - 1.5) < 0.15


def test_fusion_weights_keep_the_trained_ones_on_too_few_rows_and_refuse_bad_shapes():
    from longdoc.calibration import fit_fusion_weights

    z = np.zeros((5, 3))
    assert fit_fusion_weights(z, z, np.zeros(5, int)) is None
    with pytest.raises(ValueError, match="one shape"):
        fit_fusion_weights(np.zeros((30, 3)), np.zeros((30, 2)), np.zeros(30, int))
