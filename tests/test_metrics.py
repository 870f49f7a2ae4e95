"""Metrics: hand-computed reports, ECE in the report, text table, confusion-matrix PNG."""

from __future__ import annotations

import json

import numpy as np
import pytest

from longdoc.errors import ConfigError, DataError
from longdoc.metrics import classification_report, format_report, save_confusion_matrix_png


def test_single_label_hand_computed():
    labels = ["a", "b", "c"]
    y_true = ["a", "a", "b", "b", "c", "c"]
    y_pred = ["a", "b", "b", "b", "c", "a"]
    r = classification_report(y_true, y_pred, labels)
    assert r["accuracy"] == pytest.approx(4 / 6)
    # a: tp1 fp1 fn1 -> p .5 r .5 f .5 ; b: tp2 fp1 fn0 -> p 2/3 r 1 f .8 ; c: tp1 fp0 fn1 -> p 1 r .5 f 2/3
    assert r["per_label"]["a"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert r["per_label"]["b"]["precision"] == pytest.approx(2 / 3)
    assert r["per_label"]["b"]["f1"] == pytest.approx(0.8)
    assert r["per_label"]["c"]["f1"] == pytest.approx(2 / 3)
    assert r["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert r["micro_f1"] == pytest.approx(4 / 6)
    assert r["weighted_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)  # equal supports
    assert r["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert "ece" not in r
    json.dumps(r)  # JSON-ready


def test_label_order_and_absent_label():
    r = classification_report(["x", "x", "y"], ["x", "y", "y"], ["y", "x", "z"])
    assert list(r["per_label"]) == ["y", "x", "z"]
    assert r["per_label"]["z"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert r["confusion_matrix"] == [[1, 0, 0], [1, 1, 0], [0, 0, 0]]


def test_multi_label_hand_computed():
    labels = ["p", "q", "r"]
    y_true = [["p"], ["p", "q"], [], ["r"]]
    y_pred = [["p"], ["p"], [], ["q", "r"]]
    r = classification_report(y_true, y_pred, labels, multi_label=True)
    assert r["accuracy"] == pytest.approx(2 / 4)  # subset accuracy
    assert r["per_label"]["p"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2}
    assert r["per_label"]["q"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert r["per_label"]["r"]["f1"] == 1.0
    # micro: tp 3, fp 1, fn 1 -> f1 = 6 / 8
    assert r["micro_f1"] == pytest.approx(0.75)
    assert r["macro_f1"] == pytest.approx(2 / 3)
    assert r["weighted_f1"] == pytest.approx((2 * 1 + 0 + 1) / 4)
    assert "confusion_matrix" not in r
    json.dumps(r)


def test_ece_in_report():
    labels = ["a", "b"]
    y_true = ["a", "a", "b", "b"]
    prob = np.array([[0.6, 0.4], [0.3, 0.7], [0.1, 0.9], [0.2, 0.8]])
    y_pred = [labels[i] for i in prob.argmax(1)]
    r = classification_report(y_true, y_pred, labels, y_prob=prob)
    # 15 bins; confidences .6 (correct), .7 (wrong), .9 (correct), .8 (correct), each in its own bin
    assert r["ece"] == pytest.approx((0.4 + 0.7 + 0.1 + 0.2) / 4)
    rm = classification_report(
        [["a"], []], [["a"], []], labels, y_prob=np.array([[1.0, 0.0], [0.0, 0.0]]), multi_label=True
    )
    assert rm["ece"] == pytest.approx(0.0)
    with pytest.raises(DataError, match="y_prob must have shape"):
        classification_report(y_true, y_pred, labels, y_prob=prob[:, :1])


def test_report_errors():
    with pytest.raises(DataError, match="not in `labels`"):
        classification_report(["a"], ["zzz"], ["a", "b"])
    with pytest.raises(DataError, match="rows"):
        classification_report(["a"], [], ["a", "b"])
    with pytest.raises(DataError, match="list of label lists"):
        classification_report(["a"], [["a"]], ["a"], multi_label=True)
    with pytest.raises(DataError, match="duplicates"):
        classification_report(["a"], ["a"], ["a", "a"])


def test_format_report_is_readable():
    r = classification_report(
        ["a", "b", "b"], ["a", "b", "a"], ["a", "b"], y_prob=np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    )
    text = format_report(r)
    lines = text.splitlines()
    assert "precision" in lines[0] and "support" in lines[0]
    assert any(line.startswith("a ") for line in lines)
    assert any(line.startswith("macro avg") for line in lines)
    assert "accuracy: 0.6667" in text
    assert "ECE" in text


def test_confusion_matrix_png(tmp_path):
    cm = [[5, 1, 0], [2, 7, 1], [0, 0, 9]]
    path = save_confusion_matrix_png(
        cm, ["alpha", "beta", "gamma"], tmp_path / "sub" / "cm.png", title="test"
    )
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 1000
    save_confusion_matrix_png(np.array(cm), ["a", "b", "c"], tmp_path / "n.png", normalize=True)
    assert (tmp_path / "n.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(DataError, match="cm must be"):
        save_confusion_matrix_png(cm, ["a", "b"], tmp_path / "bad.png")
    data_file = tmp_path / "test.jsonl"  # a slip of the path never overwrites a data file
    data_file.write_text("{}\n")
    with pytest.raises(ConfigError, match="must end in .png"):
        save_confusion_matrix_png(cm, ["a", "b", "c"], data_file)
    assert data_file.read_text() == "{}\n"


def test_png_never_touches_pyplot(tmp_path):
    import sys

    save_confusion_matrix_png([[1, 0], [0, 1]], ["a", "b"], tmp_path / "x.png")
    # The figure is drawn on an Agg canvas directly; pyplot (and a GUI backend) is never imported by us.
    if "matplotlib.pyplot" in sys.modules:
        pytest.skip("pyplot imported by another test in this process")
    assert "matplotlib.pyplot" not in sys.modules


# -- statistics of repeated runs --------------------------------------------------------------------------------


def test_mean_ci_hand_computed():
    from longdoc.metrics import mean_ci

    # 1..5: mean 3, s = sqrt(2.5), se = sqrt(0.5); t(0.975, 4) = 2.7764451 (printed t tables)
    ci = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    half = 2.7764451 * np.sqrt(0.5)
    assert ci.mean == pytest.approx(3.0)
    assert (ci.low, ci.high) == (pytest.approx(3.0 - half, abs=1e-6), pytest.approx(3.0 + half, abs=1e-6))
    assert ci.half_width == pytest.approx(half, abs=1e-6) and ci.n == 5
    # 90%: t(0.95, 4) = 2.1318468
    assert mean_ci([1, 2, 3, 4, 5], confidence=0.90).half_width == pytest.approx(2.1318468 * np.sqrt(0.5), abs=1e-6)
    # two runs: t(0.975, 1) = 12.7062047; s = |a - b| / sqrt(2), se = |a - b| / 2
    assert mean_ci([0.80, 0.84]).half_width == pytest.approx(12.7062047 * 0.02, abs=1e-6)


def test_mean_ci_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    from longdoc.metrics import mean_ci

    values = np.random.default_rng(3).normal(0.8, 0.02, size=15)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
    ci = mean_ci(values)
    assert (ci.low, ci.high) == (pytest.approx(low), pytest.approx(high))


def test_mean_ci_single_run_and_constant_runs():
    from longdoc.metrics import mean_ci

    one = mean_ci([0.75])
    assert one.mean == 0.75 and one.n == 1 and np.isnan(one.low) and np.isnan(one.high)
    assert one.to_dict() == {"mean": 0.75, "low": None, "high": None, "n": 1, "confidence": 0.95}
    json.dumps(one.to_dict())
    same = mean_ci([0.5, 0.5, 0.5])
    assert (same.low, same.mean, same.high) == (0.5, 0.5, 0.5)


def test_paired_difference_cancels_what_runs_share():
    from longdoc.metrics import mean_ci, paired_difference

    base = np.array([0.70, 0.80, 0.90, 0.75, 0.85])  # runs differ a lot (easy and hard folds)
    model = base + np.array([0.02, 0.01, 0.03, 0.02, 0.02])  # ... the model is always a little better
    d = paired_difference(model, base)
    assert d.mean == pytest.approx(0.02)
    # differences 0.02, 0.01, 0.03, 0.02, 0.02: s = sqrt(0.0002 / 4), se = s / sqrt(5)
    half = 2.7764451 * np.sqrt(0.0002 / 4) / np.sqrt(5)
    assert d.low == pytest.approx(0.02 - half, abs=1e-6) and d.low > 0
    unpaired = mean_ci(model).low - mean_ci(base).high  # the intervals of each overlap: no conclusion unpaired
    assert unpaired < 0
    assert paired_difference([0.8], [0.7]).mean == pytest.approx(0.1)


def test_run_statistics_refuse_bad_input():
    from longdoc.errors import ConfigError
    from longdoc.metrics import mean_ci, paired_difference

    with pytest.raises(DataError, match="non-empty"):
        mean_ci([])
    with pytest.raises(DataError, match="non-finite"):
        mean_ci([0.5, float("nan")])
    with pytest.raises(ConfigError, match="confidence=95"):
        mean_ci([0.5, 0.6], confidence=95)
    with pytest.raises(DataError, match="a has 2 runs but b has 3"):
        paired_difference([0.1, 0.2], [0.1, 0.2, 0.3])
