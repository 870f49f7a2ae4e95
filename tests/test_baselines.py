"""Baselines: TF-IDF + logistic regression on toy corpora, token-selection helpers."""

from __future__ import annotations

import numpy as np
import pytest

from longdoc.baselines import TfidfLogReg, first_tokens, head_tail_tokens
from longdoc.errors import ConfigError, DataError

TOPICS = {
    "sport": "team player goal match win league coach score",
    "tech": "software computer chip code network data server cloud",
    "finance": "bank market stock money price trade fund invest",
}


def toy_corpus(n_per: int = 12, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    filler = "the a of and to in is it for on with as".split()
    texts, labels = [], []
    for label, words in TOPICS.items():
        vocab = words.split()
        for _ in range(n_per):
            tokens = list(rng.choice(vocab, 6)) + list(rng.choice(filler, 6))
            rng.shuffle(tokens)
            texts.append(" ".join(tokens))
            labels.append(label)
    return texts, labels


def test_single_label_learns_toy_corpus():
    texts, labels = toy_corpus()
    clf = TfidfLogReg().fit(texts, labels)
    assert clf.labels_ == ["finance", "sport", "tech"]
    assert not clf.multi_label_
    assert clf.predict(texts) == labels
    test = [
        "the coach said the team will win the league",
        "a new chip for the cloud server",
        "stock price of the bank",
    ]
    assert clf.predict(test) == ["sport", "tech", "finance"]
    probs = clf.predict_proba(test)
    assert probs.shape == (3, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)


def test_auto_C_and_class_weight():
    texts, labels = toy_corpus(n_per=15, seed=1)
    clf = TfidfLogReg(C="auto", class_weight="balanced").fit(texts, labels)
    assert clf.C_ in clf.C_grid
    assert np.mean(np.array(clf.predict(texts)) == np.array(labels)) == 1.0


def test_multi_label():
    texts, labels = toy_corpus(n_per=12, seed=2)
    rng = np.random.default_rng(3)
    multi_texts, multi_labels = [], []
    for _ in range(60):
        i, j = rng.choice(len(texts), 2, replace=False)
        if rng.random() < 0.5:
            multi_texts.append(texts[i])
            multi_labels.append([labels[i]])
        else:
            multi_texts.append(texts[i] + " " + texts[j])
            multi_labels.append(sorted({labels[i], labels[j]}))
    clf = TfidfLogReg().fit(multi_texts, multi_labels)
    assert clf.multi_label_ and clf.labels_ == ["finance", "sport", "tech"]
    pred = clf.predict(multi_texts)
    exact = np.mean([sorted(p) == t for p, t in zip(pred, multi_labels, strict=True)])
    assert exact >= 0.9
    probs = clf.predict_proba(["bank money stock price and the team player goal win"])
    assert probs.shape == (1, 3)
    assert probs[0, 0] > 0.5 and probs[0, 1] > 0.5 and probs[0, 2] < 0.5
    assert sorted(clf.predict(["bank money stock price and the team player goal win"])[0]) == [
        "finance",
        "sport",
    ]


def test_min_df_falls_back_on_tiny_corpus():
    clf = TfidfLogReg().fit(["alpha beta", "gamma delta"], ["x", "y"])
    assert clf.predict(["alpha"]) == ["x"]


def test_errors():
    with pytest.raises(DataError, match="at least 2 distinct labels"):
        TfidfLogReg().fit(["a b", "a c"], ["x", "x"])
    with pytest.raises(DataError, match="2 texts but 1 labels"):
        TfidfLogReg().fit(["a b", "a c"], ["x"])
    with pytest.raises(ConfigError, match="C="):
        TfidfLogReg(C=-1.0)
    with pytest.raises(ConfigError, match="C="):
        TfidfLogReg(C="big")
    with pytest.raises(RuntimeError, match="not fitted"):
        TfidfLogReg().predict(["x"])
    with pytest.raises(DataError, match="multi_label=False"):
        TfidfLogReg(multi_label=False).fit(["a b", "a c"], [["x"], ["y"]])


def test_first_tokens():
    ids = np.arange(1000, dtype=np.int32)
    out = first_tokens(ids)
    assert out.dtype == np.int32 and len(out) == 510
    np.testing.assert_array_equal(out, ids[:510])
    np.testing.assert_array_equal(first_tokens(ids[:7]), ids[:7])
    out[0] = -1
    assert ids[0] == 0  # a copy
    assert len(first_tokens(ids, n=0)) == 0


def test_head_tail_tokens():
    ids = np.arange(1000, dtype=np.int64)
    out = head_tail_tokens(ids)
    assert len(out) == 510 and out.dtype == np.int64
    np.testing.assert_array_equal(out[:128], ids[:128])
    np.testing.assert_array_equal(out[128:], ids[-382:])
    short = np.arange(300)
    np.testing.assert_array_equal(head_tail_tokens(short), short)
    np.testing.assert_array_equal(head_tail_tokens(ids, head=5, tail=0), ids[:5])
    np.testing.assert_array_equal(head_tail_tokens(ids, head=0, tail=3), ids[-3:])
    exact = np.arange(510)
    np.testing.assert_array_equal(head_tail_tokens(exact), exact)
    with pytest.raises(ValueError, match="1-D"):
        head_tail_tokens(np.zeros((2, 3), dtype=int))
    with pytest.raises(ConfigError, match="tail"):
        head_tail_tokens(ids, tail=-1)
    with pytest.raises(ValueError, match="integers"):
        first_tokens(np.array([1.5, 2.0]))
