"""compare_with_baselines on the tiny BERT: every method scored on the same split, windows shared."""

from __future__ import annotations

import numpy as np
import polars as pl

from longdoc.classifier import LongDocClassifier
from longdoc.data import documents_from_texts
from longdoc.evaluation import (
    compare_with_baselines,
    first_windows,
    head_tail_windows,
    truncation_length,
    truncation_windows,
)
from longdoc.training import TrainConfig
from longdoc.windows import WindowConfig, make_windows

FILLER = "the a of to and in is it for on with as by at from that this be are was or not "


def _docs(n, seed):
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(n):
        label = ["sport", "tech"][i % 2]
        marker = "team player goal win" if label == "sport" else "device system library model"
        texts.append(FILLER * int(rng.integers(2, 5)) + marker + " " + FILLER * int(rng.integers(2, 5)))
        labels.append(label)
    return documents_from_texts(texts, labels, ids=[f"{seed}-{i}" for i in range(n)])


def test_head_tail_window_is_first_tokens_plus_last_tokens(tiny_tokenizer):
    text = " ".join(f"{w}" for w in ["file", "mode", "bits", "read", "write"] * 40)
    cfg = WindowConfig(max_length=18, stride=4)
    w = make_windows([text, "chmod"], tiny_tokenizer, cfg)
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    ht = head_tail_windows(w, head=4, cls_id=tiny_tokenizer.cls_token_id, sep_id=tiny_tokenizer.sep_token_id)
    assert len(ht) == 2
    assert ht.ids(0).tolist() == [tiny_tokenizer.cls_token_id, *ids[:4], *ids[-12:], tiny_tokenizer.sep_token_id]
    assert ht.ids(1).tolist() == w.ids(len(w) - 1).tolist()
    first = first_windows(w)
    assert first.documents["n_windows"].to_list() == [1, 1]
    assert first.ids(0).tolist() == w.ids(0).tolist()


def test_compare_reports_every_method_on_the_same_split(tiny_model_dir):
    clf = LongDocClassifier.from_encoder(tiny_model_dir, labels=["sport", "tech"],
                                         window=WindowConfig(max_length=24, stride=4), device="cpu")
    result = compare_with_baselines(clf, _docs(40, 0), _docs(16, 1), val_docs=_docs(10, 2),
                                    args=TrainConfig(epochs=40, head_lr=2e-2, batch_size=8, patience=40))
    assert result.table["method"].to_list() == ["hierarchical", "first512", "head_tail", "tfidf"]
    assert set(result.encoded) == {"train", "test", "val"}
    assert all(r["n_samples"] == 16 for r in result.reports.values())
    hier = result.table.filter(pl.col("method") == "hierarchical")["accuracy"].item()
    assert hier >= 0.8, result.table


def test_truncation_baselines_see_512_tokens_whatever_the_window_length(tiny_model_dir, tiny_tokenizer):
    """With 24-token windows the first-512 baseline still reads the first 512 tokens, not the first window."""
    clf = LongDocClassifier.from_encoder(tiny_model_dir, labels=["sport", "tech"],
                                         window=WindowConfig(max_length=24, stride=4), device="cpu")
    assert truncation_length(clf) == 512
    long_text = FILLER * 60  # about 1,200 tokens
    docs = documents_from_texts([long_text, "team player"], ["sport", "sport"], ids=["long", "short"])
    own = make_windows(docs, tiny_tokenizer, clf.window)
    cut = truncation_windows(clf, docs, own)
    first = first_windows(cut)
    ids = tiny_tokenizer(long_text, add_special_tokens=False)["input_ids"]
    assert first.ids(0).tolist() == [tiny_tokenizer.cls_token_id, *ids[:510], tiny_tokenizer.sep_token_id]
    ht = head_tail_windows(cut, head=128, cls_id=tiny_tokenizer.cls_token_id, sep_id=tiny_tokenizer.sep_token_id)
    assert ht.ids(0).tolist() == [tiny_tokenizer.cls_token_id, *ids[:128], *ids[-382:], tiny_tokenizer.sep_token_id]
    assert first.ids(1).tolist() == own.ids(len(own) - 1).tolist()  # a short document is one window either way
    same = LongDocClassifier.from_encoder(tiny_model_dir, labels=["sport", "tech"], device="cpu")
    w512 = make_windows(docs, tiny_tokenizer, same.window)
    assert truncation_windows(same, docs, w512) is w512  # 512-token windows are reused, nothing re-cut


def test_finetune_comparison_trains_first512_on_512_tokens(tiny_model_dir):
    clf = LongDocClassifier.from_encoder(tiny_model_dir, labels=["sport", "tech"],
                                         window=WindowConfig(max_length=24, stride=4, max_windows=4), device="cpu")
    args = TrainConfig(mode="finetune", epochs=1, batch_size=8, max_train_windows=2, calibrate=False)
    result = compare_with_baselines(clf, _docs(16, 0), _docs(8, 1), args=args, baselines=("first512", "tfidf"))
    assert result.table["method"].to_list() == ["hierarchical", "first512", "tfidf"]
    assert result.encoded == {}  # fine-tuned encoders: nothing shared to reuse
    assert all(r["n_samples"] == 8 for r in result.reports.values())
