"""compare_with_baselines on the tiny BERT: every method scored on the same split, windows shared; several runs
with intervals; a saved model scored as it is; the truncation encodings never encoded twice."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from longdoc.classifier import LongDocClassifier
from longdoc.data import documents_from_texts
from longdoc.errors import ConfigError, DataError
from longdoc.evaluation import (
    Comparison,
    clear_encoding_cache,
    compare_with_baselines,
    cross_validate_with_baselines,
    first_windows,
    format_comparison,
    head_tail_windows,
    stratified_folds,
    summarize_runs,
    truncation_length,
    truncation_windows,
)
from longdoc.metrics import mean_ci, paired_difference
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


# -- several runs, intervals, the paired difference ----------------------------------------------------------------

QUICK = TrainConfig(epochs=3, head_lr=2e-2, batch_size=8, patience=3)


def _classifier(tiny_model_dir, **window):
    return LongDocClassifier.from_encoder(tiny_model_dir, labels=["sport", "tech"],
                                          window=WindowConfig(**({"max_length": 24, "stride": 4} | window)),
                                          device="cpu")


def _runs(rows):
    return pl.DataFrame([{"method": m, "fold": f, "seed": s, "accuracy": a, "macro_f1": f1, "micro_f1": a,
                          "ece": None, "seconds": 1.0} for m, f, s, a, f1 in rows])


def test_summary_of_runs_picks_the_best_baseline_and_pairs_runs():
    rows = []
    model = {(0, 0): 0.80, (0, 1): 0.82, (1, 0): 0.70, (1, 1): 0.74}
    tfidf = {(0, 0): 0.79, (0, 1): 0.79, (1, 0): 0.71, (1, 1): 0.70}
    first = {(0, 0): 0.60, (0, 1): 0.61, (1, 0): 0.58, (1, 1): 0.59}
    for fold, seed in model:  # baselines listed first: the order of first appearance is kept
        rows.append(("first512", fold, seed, first[fold, seed], first[fold, seed]))
    for key in reversed(list(model)):  # pairing goes by (fold, seed), not by row order
        rows.append(("model", *key, model[key], model[key]))
        rows.append(("tfidf", *key, tfidf[key], tfidf[key]))
    table, diff = summarize_runs(_runs(rows), model="model")
    assert table["method"].to_list() == ["first512", "model", "tfidf"]
    assert table.columns == ["method", "runs", "accuracy", "accuracy_ci", "macro_f1", "macro_f1_ci", "micro_f1",
                             "ece", "seconds"]
    m = table.row(1, named=True)
    assert m["runs"] == 4 and m["macro_f1"] == pytest.approx(0.765)
    assert diff["baseline"] == "tfidf" and diff["runs"] == 4
    keys = list(model)
    expected = paired_difference([model[k] for k in keys], [tfidf[k] for k in keys])
    assert diff["macro_f1"]["mean"] == pytest.approx((0.01 + 0.03 - 0.01 + 0.04) / 4)
    assert (diff["macro_f1"]["low"], diff["macro_f1"]["high"]) == (pytest.approx(expected.low),
                                                                   pytest.approx(expected.high))
    text = format_comparison(Comparison(table=table, runs=_runs(rows), difference=diff, model="model"))
    assert "0.7650 +- " in text and "model - tfidf (best baseline)" in text and "4 paired runs" in text


def test_summary_of_one_run_is_the_plain_table():
    table, diff = summarize_runs(_runs([("model", 0, 0, 0.75, 0.74), ("tfidf", 0, 0, 0.85, 0.86)]), model="model")
    assert table.columns == ["method", "accuracy", "macro_f1", "micro_f1", "ece", "seconds"]
    assert diff["baseline"] == "tfidf" and diff["macro_f1"]["mean"] == pytest.approx(-0.12)
    assert diff["macro_f1"]["low"] is None
    text = format_comparison(Comparison(table=table, difference=diff, model="model",
                                        runs=_runs([("model", 0, 0, 0.75, 0.74)])))
    lines = text.splitlines()
    assert lines[0].split() == ["method", "accuracy", "macro_f1"]
    assert lines[2].split() == ["model", "0.7500", "0.7400"] and lines[3].split() == ["tfidf", "0.8500", "0.8600"]
    assert "-0.1200" in lines[4] and "one run: no interval" in lines[4] and "+-" not in text
    with pytest.raises(DataError, match="model='nope' has no runs"):
        summarize_runs(_runs([("model", 0, 0, 0.75, 0.74)]), model="nope")


def test_fixed_scores_get_no_interval_from_identical_repeats():
    """A saved model and tfidf, three seeds, one split: the scores repeat, so no interval and no paired interval
    (a zero-width one would claim certainty); over two folds the interval is over the folds."""
    rows = [(m, 0, s, a, a) for s in range(3) for m, a in (("model", 0.80), ("first512", 0.60 + s / 100),
                                                            ("tfidf", 0.75))]
    table, diff = summarize_runs(_runs(rows), model="model", fixed=("model", "tfidf"))
    assert table["runs"].to_list() == [1, 3, 1]
    assert table["macro_f1_ci"].to_list()[0] is None and table["macro_f1_ci"].to_list()[2] is None
    assert table["macro_f1_ci"].to_list()[1] > 0
    assert diff["baseline"] == "tfidf" and diff["runs"] == 1 and diff["macro_f1"]["low"] is None
    assert diff["macro_f1"]["mean"] == pytest.approx(0.05)
    assert "both fixed scores" in diff["note"] and "one split: no interval" in diff["note"]
    comparison = Comparison(table=table, runs=_runs(rows), difference=diff, model="model", fixed=("model", "tfidf"))
    text = format_comparison(comparison)
    assert "model, tfidf: fixed scores" in text and "one split: no interval" in text
    assert "+0.0500 (model and tfidf are both fixed scores" in text and "[" not in text.splitlines()[-1]
    assert comparison.notes[-1] == diff["note"]
    without = summarize_runs(_runs(rows), model="model")[1]  # what it did before: a zero-width interval
    assert without["macro_f1"]["low"] == pytest.approx(without["macro_f1"]["high"])

    folds = [(m, f, s, a + f / 10, a + f / 10) for m, f0, s, a, _ in rows for f in (0, 1) if f0 == 0]
    table, diff = summarize_runs(_runs(folds), model="model", fixed=("model", "tfidf"))
    assert table["runs"].to_list() == [2, 6, 2] and diff["runs"] == 2
    assert table["macro_f1_ci"].to_list()[0] == pytest.approx(mean_ci([0.80, 0.90]).half_width)
    with pytest.raises(DataError, match="'first512' is given as a fixed score"):
        summarize_runs(_runs(rows), model="model", fixed=("first512",))


def test_several_seeds_report_mean_and_interval_per_method(tiny_model_dir):
    clf = _classifier(tiny_model_dir)
    result = compare_with_baselines(clf, _docs(24, 0), _docs(12, 1), args=QUICK, seeds=[0, 1, 2],
                                    baselines=("first512", "tfidf"))
    assert result.table["method"].to_list() == ["hierarchical", "first512", "tfidf"]
    # tfidf has no random state: its three seeds repeat one score, which counts as one run with no interval
    assert result.table["runs"].to_list() == [3, 3, 1] and result.n_runs == 3 and result.fixed == ("tfidf",)
    assert result.runs.height == 9 and sorted(set(result.runs["seed"].to_list())) == [0, 1, 2]
    for method in ("hierarchical", "first512", "tfidf"):
        values = result.runs.filter(pl.col("method") == method)["macro_f1"].to_numpy()
        row = result.table.filter(pl.col("method") == method).row(0, named=True)
        assert row["macro_f1"] == pytest.approx(values.mean())
        assert row["macro_f1_ci"] is None if method == "tfidf" else row["macro_f1_ci"] >= 0
    assert "tfidf: a fixed score" in result.notes[0] and "one split: no interval" in result.notes[0]
    best = max(("first512", "tfidf"), key=lambda m: result.table.filter(pl.col("method") == m)["macro_f1"].item())
    assert result.difference["baseline"] == best and result.difference["runs"] == 3
    runs = {m: result.runs.filter(pl.col("method") == m).sort("seed")["macro_f1"].to_numpy()
            for m in ("hierarchical", best)}
    assert result.difference["macro_f1"]["mean"] == pytest.approx((runs["hierarchical"] - runs[best]).mean())
    assert set(result.reports) == {"hierarchical", "first512", "tfidf"}
    assert clf.history, "the first seed's run trains clf in place"


def test_saved_model_is_scored_as_it_is(tiny_model_dir, tmp_path):
    trained = _classifier(tiny_model_dir)
    trained.fit(_docs(24, 0), args=QUICK)
    trained.save(tmp_path / "model")
    saved = LongDocClassifier.load(tmp_path / "model", device="cpu")
    before = {k: v.clone() for k, v in saved.head.state_dict().items()}
    test = _docs(12, 1)
    expected = LongDocClassifier.load(tmp_path / "model", device="cpu").evaluate(test)
    result = compare_with_baselines(saved, _docs(30, 5), test, args=QUICK, baselines=("first512", "tfidf"),
                                    model_name="model", fit_model=False, seeds=[0, 1])
    assert result.table["method"].to_list() == ["model", "first512", "tfidf"]
    assert result.table["runs"].to_list() == [1, 2, 1] and result.fixed == ("model", "tfidf")
    # the saved model is fixed: paired with first512 its difference varies with first512's seeds; with tfidf
    # (fixed too) it is one number
    assert result.difference["runs"] == (1 if result.difference["baseline"] == "tfidf" else 2)
    first = result.table.row(0, named=True)
    assert first["macro_f1_ci"] is None and result.table.row(2, named=True)["macro_f1_ci"] is None
    assert first["accuracy"] == pytest.approx(expected["accuracy"])
    assert first["macro_f1"] == pytest.approx(expected["macro_f1"])
    assert result.reports["model"]["confusion_matrix"] == expected["confusion_matrix"]
    assert all(torch.equal(before[k], v) for k, v in saved.head.state_dict().items()), "the saved model changed"
    assert saved.history == trained.history


class _ForwardCounter:
    """Counts the windows the real encoder models run (each real forward still runs)."""

    def __init__(self):
        self.windows = self.calls = 0

    def attach(self, clf):
        forward = clf.encoder.model.forward

        def counted(*a, **kw):
            ids = kw.get("input_ids", a[0] if a else None)
            self.calls += 1
            self.windows += int(ids.shape[0])
            return forward(*a, **kw)

        clf.encoder.model.forward = counted
        return clf


def test_truncation_encodings_are_encoded_once(tiny_model_dir):
    """24-token windows: first-512 and head+tail are cut and encoded apart; a second call encodes nothing."""
    clear_encoding_cache()
    counter = _ForwardCounter()
    clf = counter.attach(_classifier(tiny_model_dir))
    train, test = _docs(20, 0), _docs(10, 1)
    one = compare_with_baselines(clf, train, test, args=QUICK, baselines=("first512", "head_tail"))
    own_windows = sum(len(e.windows) for e in one.encoded.values())
    assert counter.windows == own_windows + 2 * 30  # the model's windows, then one window per doc per baseline
    counter.windows = counter.calls = 0
    again = compare_with_baselines(counter.attach(_classifier(tiny_model_dir)), one.encoded["train"],
                                   one.encoded["test"], args=QUICK, baselines=("first512", "head_tail"))
    assert counter.calls == 0, "pre-encoded inputs and the cache: nothing encoded again"
    assert again.table["method"].to_list() == ["hierarchical", "first512", "head_tail"]
    for method in ("first512", "head_tail"):  # same embeddings, same seed: the same baseline scores
        assert again.reports[method]["macro_f1"] == pytest.approx(one.reports[method]["macro_f1"])
    compare_with_baselines(counter.attach(_classifier(tiny_model_dir)), one.encoded["train"], one.encoded["test"],
                           args=QUICK, baselines=("head_tail",), cache_encodings=False)
    assert counter.windows == 30  # without the cache head+tail is encoded again
    counter.windows = 0
    changed = one.encoded["test"].documents.with_columns(pl.lit("team player goal win").alias("text"))
    compare_with_baselines(counter.attach(_classifier(tiny_model_dir)), one.encoded["train"], changed, args=QUICK,
                           baselines=("head_tail",))
    assert counter.windows == 2 * 10  # new texts under the same ids: the model's windows and head+tail, re-encoded
    counter.windows = 0
    compare_with_baselines(counter.attach(_classifier(tiny_model_dir)), train, test, args=QUICK,
                           baselines=("first512", "head_tail"))
    assert counter.windows == own_windows  # plain documents again: only the model's own windows are encoded


def test_cross_validation_runs_every_fold_and_seed_on_one_encoding(tiny_model_dir):
    clear_encoding_cache()
    counter = _ForwardCounter()
    clf = counter.attach(_classifier(tiny_model_dir))
    before = {k: v.clone() for k, v in clf.head.state_dict().items()}
    docs = _docs(30, 0)
    result = cross_validate_with_baselines(clf, docs, folds=3, seeds=[0, 1], args=QUICK,
                                           baselines=("head_tail", "tfidf"))
    assert result.table["method"].to_list() == ["hierarchical", "head_tail", "tfidf"]
    assert result.table["runs"].to_list() == [6, 6, 3]  # tfidf: one score per fold, whatever the seed
    tfidf = result.table.row(2, named=True)
    per_fold = result.runs.filter(pl.col("method") == "tfidf").unique("fold")["macro_f1"].to_numpy()
    assert tfidf["macro_f1"] == pytest.approx(per_fold.mean())
    assert tfidf["macro_f1_ci"] == pytest.approx(mean_ci(per_fold).half_width)  # over 3 folds, not 6 repeats
    runs = result.runs.filter(pl.col("method") == "hierarchical")
    assert sorted(runs.select("fold", "seed").rows()) == [(f, s) for f in range(3) for s in (0, 1)]
    assert counter.windows == len(result.encoded["all"].windows) + 30  # every document once, head+tail once
    assert result.reports["tfidf"]["n_samples"] == 10  # the first fold's test part
    assert all(torch.equal(before[k], v) for k, v in clf.head.state_dict().items()), "the template is untouched"
    assert result.difference["runs"] == 6 and result.difference["macro_f1"]["low"] is not None


def test_stratified_folds_spread_every_label():
    labels = ["a"] * 10 + ["b"] * 7 + ["c"] * 3
    folds = stratified_folds(labels, 3, seed=1)
    assert sorted(np.bincount(folds).tolist()) == [6, 7, 7]
    for label in "abc":
        counts = np.bincount(folds[np.array(labels) == label], minlength=3)
        assert counts.max() - counts.min() <= 1
    assert stratified_folds(labels, 3, seed=1).tolist() == folds.tolist()
    assert stratified_folds(labels, 3, seed=2).tolist() != folds.tolist()
    with pytest.raises(ConfigError, match="folds=1"):
        stratified_folds(labels, 1)
    with pytest.raises(DataError, match="2 documents cannot fill 3 folds"):
        stratified_folds(["a", "b"], 3)


def test_bad_comparison_arguments_are_named(tiny_model_dir):
    clf = _classifier(tiny_model_dir)
    with pytest.raises(ConfigError, match="seeds=\\[\\]"):
        compare_with_baselines(clf, _docs(8, 0), _docs(4, 1), seeds=[])
    with pytest.raises(ConfigError, match="model_name='tfidf'"):
        compare_with_baselines(clf, _docs(8, 0), _docs(4, 1), model_name="tfidf")
    with pytest.raises(ConfigError, match="'bm25'"):
        compare_with_baselines(clf, _docs(8, 0), _docs(4, 1), baselines=["bm25"])


def test_finetune_with_several_seeds(tiny_model_dir):
    clf = _classifier(tiny_model_dir, max_windows=2)
    pretrained = clf.encoder.fingerprint
    args = TrainConfig(mode="finetune", epochs=1, batch_size=8, max_train_windows=2, calibrate=False)
    result = compare_with_baselines(clf, _docs(12, 0), _docs(6, 1), args=args, seeds=[0, 1],
                                    baselines=("tfidf",))
    assert result.table["method"].to_list() == ["hierarchical", "tfidf"] and result.n_runs == 2
    assert clf.encoder.fingerprint != pretrained  # the first seed fine-tuned clf itself
    assert result.encoded == {}


def test_untrained_copies_share_only_what_training_leaves_alone(tiny_model_dir):
    from longdoc.evaluation import _untrained_copy

    clf = _classifier(tiny_model_dir)
    frozen = _untrained_copy(clf, share_encoder=True)
    assert frozen.encoder is clf.encoder and frozen.head is not clf.head
    assert all(torch.equal(a, b) for a, b in zip(frozen.head.state_dict().values(), clf.head.state_dict().values(),
                                                 strict=True))
    tuned = _untrained_copy(clf, share_encoder=False)
    assert tuned.encoder is not clf.encoder and tuned.encoder.tokenizer is clf.encoder.tokenizer
    with torch.no_grad():
        next(tuned.encoder.model.parameters()).add_(1.0)  # fine-tuning the copy ...
    tuned.encoder.invalidate_fingerprint()
    assert tuned.encoder.fingerprint != clf.encoder.fingerprint  # ... leaves the original's weights alone
