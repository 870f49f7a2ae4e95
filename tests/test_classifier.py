"""LongDocClassifier end to end on the tiny BERT: fit, predict, explain, evaluate, save/load, resume."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from longdoc.classifier import LongDocClassifier
from longdoc.data import documents_from_texts
from longdoc.errors import ConfigError, DataError, ModelLoadError
from longdoc.training import TrainConfig
from longdoc.windows import WindowConfig

FILLER = "the a of to and in is it for on with as by at from that this be are was or not "


def _corpus(n: int, seed: int) -> tuple[list[str], list[str]]:
    """Long documents whose label is decided by one passage somewhere in the middle."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(n):
        label = ["sport", "tech", "news"][i % 3]
        marker = {"sport": "team player goal win", "tech": "device system library model",
                  "news": "vote bank market report"}[label]
        before = FILLER * int(rng.integers(1, 6))
        after = FILLER * int(rng.integers(1, 6))
        texts.append(f"{before} {marker} {marker} {after}")
        labels.append(label)
    return texts, labels


@pytest.fixture(scope="module")
def trained(tiny_model_dir):
    texts, labels = _corpus(60, 0)
    clf = LongDocClassifier.from_encoder(tiny_model_dir, labels=["sport", "tech", "news"],
                                         window=WindowConfig(max_length=32, stride=8), device="cpu")
    val_texts, val_labels = _corpus(24, 1)
    clf.fit(texts, labels, eval_dataset=val_texts, eval_labels=val_labels,
            args=TrainConfig(mode="frozen", epochs=30, head_lr=5e-3, batch_size=8, patience=30))
    return clf


def test_frozen_head_learns_a_mid_document_marker(trained):
    texts, labels = _corpus(30, 2)
    assert len(trained.history) > 0
    report = trained.evaluate(texts, labels)
    assert report["accuracy"] >= 0.9, report
    assert "ece" in report and 0 <= report["ece"] <= 1


def test_shapes_follow_input(trained):
    one = trained.predict("team player goal win " + FILLER)
    many = trained.predict(["team player goal win", "device system library model"])
    assert isinstance(one, str) and isinstance(many, list) and len(many) == 2
    probs = trained.predict_proba(["team player goal win", "vote bank"])
    assert probs.shape == (2, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)


def test_empty_document_gets_no_prediction_and_others_survive(trained):
    labels = trained.predict(["team player goal win", "", "   ", "vote bank market report"])
    assert labels[1] is None and labels[2] is None
    assert labels[0] is not None and labels[3] is not None


def test_explain_and_evaluate_refuse_what_they_cannot_do(trained, tmp_path, tiny_model_dir):
    """top_k of 0, -1 or True used to slice the ranking silently (all windows, all but the last, one); evaluate
    with nothing to score raised scikit-learn's error, and a confusion PNG path overwrote any file."""
    doc = FILLER * 4 + " device system library model " + FILLER * 4
    for bad in (0, -1, True, 1.5, "3"):
        with pytest.raises(ConfigError, match="top_k must be None"):
            trained.explain(doc, top_k=bad)
    assert len(trained.explain(doc, top_k=1)) == 1
    assert len(trained.explain(doc, top_k=np.int64(1))) == 1
    with pytest.raises(DataError, match="evaluate got no documents"):
        trained.evaluate([], [])
    with pytest.raises(DataError, match="fit got no training documents"):  # the lexical branch's words, before
        LongDocClassifier.from_encoder(tiny_model_dir, labels=["a", "b"], device="cpu").fit([], [])
    with pytest.raises(DataError, match="none of the 2 documents has a token"):
        trained.evaluate(["", "  "], ["sport", "tech"])
    data_file = tmp_path / "test.jsonl"
    data_file.write_text("{}\n")
    with pytest.raises(ConfigError, match="confusion_png=.* must end in .png"):
        trained.evaluate(["team player goal win"], ["sport"], confusion_png=data_file)
    assert data_file.read_text() == "{}\n"


def test_explain_ranks_the_marker_window_first(trained):
    doc = FILLER * 4 + " device system library model device system library model " + FILLER * 4
    ranked = trained.explain(doc, top_k=None)
    assert abs(sum(w.weight for w in ranked) - 1) < 1e-4
    assert ranked[0].text == doc[ranked[0].char_start : ranked[0].char_end]
    assert "device" in ranked[0].text


def test_save_load_gives_identical_predictions(trained, tmp_path):
    texts, _ = _corpus(9, 3)
    trained.save(tmp_path / "model")
    again = LongDocClassifier.load(tmp_path / "model", device="cpu")
    assert again.labels == trained.labels and again.temperature == trained.temperature
    assert np.array_equal(again.predict_proba(texts), trained.predict_proba(texts))
    trained.save(tmp_path / "model")  # overwrite in place works and leaves no temp dirs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_save_never_replaces_a_file_or_a_folder_that_is_not_a_model(trained, tmp_path):
    """``save`` replaces the whole directory: it refuses, before writing anything, a path that is a file and a
    non-empty folder that is not a saved model, and leaves both exactly as they were."""
    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "mine"}\n')
    with pytest.raises(ConfigError, match="exists and is not a directory"):
        trained.save(data)
    assert data.read_text() == '{"text": "mine"}\n'
    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.txt").write_text("keep me")
    (project / "config.json").write_text("{}")  # an encoder checkpoint's file, without encoder/: not a model
    with pytest.raises(ConfigError, match="not a saved longdoc model"):
        trained.save(project)
    assert sorted(p.name for p in project.iterdir()) == ["config.json", "notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project", "train.jsonl"]  # no temporary left behind
    (tmp_path / "empty").mkdir()
    trained.save(tmp_path / "empty")  # a new, an empty and an earlier model's directory are fine
    trained.save(tmp_path / "empty")


def test_load_refuses_mismatching_parts(trained, tmp_path):
    import json

    trained.save(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["labels"] = cfg["labels"] + ["extra"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="labels"):
        LongDocClassifier.load(tmp_path / "m")
    with pytest.raises(ModelLoadError, match="config.json"):
        LongDocClassifier.load(tmp_path / "nowhere")


def test_bad_labels_are_named(tiny_model_dir):
    clf = LongDocClassifier.from_encoder(tiny_model_dir, labels=["a", "b"], device="cpu")
    with pytest.raises(DataError, match="not among"):
        clf.fit(["x y", "y z"], ["a", "c"], args=TrainConfig(epochs=1))
    with pytest.raises(DataError, match="no label"):
        clf.fit(documents_from_texts(["x y", "y z"]), args=TrainConfig(epochs=1))


@pytest.mark.parametrize("pooling", ["mean", "max", "lead_attention", "transformer"])
def test_every_pooling_trains_predicts_and_round_trips(tiny_model_dir, tmp_path, pooling):
    texts, labels = _corpus(12, 4)
    clf = LongDocClassifier.from_encoder(tiny_model_dir, labels=["sport", "tech", "news"], pooling=pooling,
                                         window=WindowConfig(max_length=32, stride=8), device="cpu")
    clf.fit(texts, labels, args=TrainConfig(epochs=2))
    assert len(clf.predict(texts)) == 12
    loaded = LongDocClassifier.load(clf.save(tmp_path / "model"))
    assert loaded.head.config.pooling == pooling
    np.testing.assert_array_equal(loaded.predict_proba(texts), clf.predict_proba(texts))
    spans = loaded.explain(texts[0], top_k=None)
    assert sum(w.weight for w in spans) == pytest.approx(1.0, abs=1e-5)


def test_finetune_updates_the_encoder_and_resumes(tiny_model_dir, tmp_path):
    texts, labels = _corpus(12, 5)
    df = pl.DataFrame({"text": texts, "label": labels})
    args = TrainConfig(mode="finetune", epochs=2, batch_size=4, max_train_windows=3, train_top_layers=1,
                       checkpoint_dir=str(tmp_path / "ckpt"), encoder_lr=1e-3)
    clf = LongDocClassifier.from_encoder(tiny_model_dir, labels=["sport", "tech", "news"],
                                         window=WindowConfig(max_length=32, stride=8), device="cpu")
    before = {k: v.clone() for k, v in clf.encoder.model.state_dict().items()}
    clf.fit(df, args=args)
    after = clf.encoder.model.state_dict()
    changed = [k for k in before if not np.array_equal(before[k].numpy(), after[k].numpy())]
    assert changed and all(".layer.1." in k for k in changed), "only the top layer trains"
    assert (tmp_path / "ckpt" / "checkpoint" / "state.json").exists()
    # a new run with the same checkpoint_dir resumes after the last epoch: nothing left to do
    again = LongDocClassifier.from_encoder(tiny_model_dir, labels=["sport", "tech", "news"],
                                           window=WindowConfig(max_length=32, stride=8), device="cpu")
    again.fit(df, args=args)
    assert again.history == clf.history  # the checkpoint's epoch records come back with it (issue 14)
    assert np.allclose(again.predict_proba(texts), clf.predict_proba(texts), atol=1e-5)


def test_attention_dropout_is_set_while_fine_tuning_and_restored(tiny_model_dir):
    import torch

    from longdoc.training import attention_dropout

    clf = LongDocClassifier.from_encoder(tiny_model_dir, labels=["sport", "tech", "news"],
                                         window=WindowConfig(max_length=32, stride=8), device="cpu")
    model = clf.encoder.model
    layers = [m.dropout for m in model.modules()
              if "Attention" in type(m).__name__ and isinstance(getattr(m, "dropout", None), torch.nn.Dropout)]
    before = [d.p for d in layers]
    assert len(layers) == model.config.num_hidden_layers and all(p > 0 for p in before)
    with attention_dropout(model, 0.0) as changed:
        assert changed == len(layers) and all(d.p == 0.0 for d in layers)
    assert [d.p for d in layers] == before
    with attention_dropout(model, None) as changed:
        assert changed == 0 and [d.p for d in layers] == before
    texts, labels = _corpus(6, 7)
    clf.fit(texts, labels, args=TrainConfig(mode="finetune", epochs=1, batch_size=3, calibrate=False))
    assert [d.p for d in layers] == before  # training leaves the model's own dropout in place
    with pytest.raises(ConfigError, match="attention_dropout"):
        TrainConfig(attention_dropout=1.5)


def test_multi_label_with_thresholds(tiny_model_dir):
    texts, labels = _corpus(30, 6)
    multi = [[x] + (["news"] if i % 4 == 0 and x != "news" else []) for i, x in enumerate(labels)]
    clf = LongDocClassifier.from_encoder(tiny_model_dir, labels=["sport", "tech", "news"], multi_label=True,
                                         window=WindowConfig(max_length=32, stride=8), device="cpu")
    clf.fit(texts, multi, eval_dataset=texts, eval_labels=multi, args=TrainConfig(epochs=3))
    out = clf.predict(texts[:3])
    assert all(isinstance(x, list) for x in out)
    assert clf.thresholds is not None and len(clf.thresholds) == 3


def test_multi_task_trains_together_and_round_trips(tiny_model_dir, tmp_path):
    from longdoc.classifier import Task

    texts, labels = _corpus(45, 7)
    sensitivity = ["internal" if "device" in t else "public" for t in texts]
    df = pl.DataFrame({"text": texts, "label": labels, "sensitivity": sensitivity})
    clf = LongDocClassifier.from_encoder(
        tiny_model_dir, labels=["sport", "tech", "news"], window=WindowConfig(max_length=32, stride=8),
        device="cpu", tasks={"sensitivity": Task(labels=("public", "internal"), column="sensitivity")})
    clf.fit(df, eval_dataset=df, args=TrainConfig(epochs=40, head_lr=2e-2, batch_size=8, patience=40))
    out = clf.predict_tasks(texts[:6])
    assert [set(o) for o in out] == [{"label", "sensitivity"}] * 6
    report = clf.evaluate(df)
    assert report["tasks"]["sensitivity"]["accuracy"] >= 0.9, report["tasks"]
    clf.save(tmp_path / "mt")
    again = LongDocClassifier.load(tmp_path / "mt", device="cpu")
    assert again.predict_tasks(texts[:6]) == out
    a, b = clf.analyze(texts[:6]), again.analyze(texts[:6])
    assert np.array_equal(a.task_probs["sensitivity"], b.task_probs["sensitivity"])
    with pytest.raises(DataError, match="sensitivity"):
        clf.fit(pl.DataFrame({"text": texts, "label": labels}), args=TrainConfig(epochs=1))


def test_predict_proba_shape_follows_input(trained):
    assert trained.predict_proba("team player goal win").shape == (3,)
    assert trained.predict_proba(["team player goal win"]).shape == (1, 3)


def test_duplicate_ids_in_a_document_table_are_refused(trained):
    docs = documents_from_texts(["team player", "vote bank"], ids=["a", "b"])
    with pytest.raises(DataError, match="duplicate"):
        trained.predict(pl.concat([docs, docs]))


def test_checkpoint_survives_a_stale_leftover(tiny_model_dir, tmp_path):
    """A crash mid-checkpoint leaves a temporary directory behind: the next run still saves and resumes."""
    texts, labels = _corpus(12, 8)
    ckpt = tmp_path / "ckpt"
    (ckpt / ".checkpoint.tmp-crashed").mkdir(parents=True)
    (ckpt / ".checkpoint.tmp-crashed" / "head.safetensors").write_bytes(b"partial")
    args = TrainConfig(epochs=2, checkpoint_dir=str(ckpt), batch_size=4)
    clf = LongDocClassifier.from_encoder(tiny_model_dir, labels=["sport", "tech", "news"], device="cpu",
                                         window=WindowConfig(max_length=32, stride=8))
    clf.fit(texts, labels, args=args)
    assert (ckpt / "checkpoint" / "state.json").exists()
    clf.fit(texts, labels, args=TrainConfig(epochs=3, checkpoint_dir=str(ckpt), batch_size=4))
    assert [h["epoch"] for h in clf.history] == [1, 2, 3]


@pytest.mark.parametrize("keep_first", [False, True])
def test_training_window_sample_is_ordered_and_keeps_the_first_window_when_asked(keep_first):
    from longdoc.training import sample_windows

    rows = np.arange(40, 50)
    rng = np.random.default_rng(0)
    samples = [sample_windows(rows, 3, keep_first, rng) for _ in range(200)]
    for s in samples:
        assert len(s) == 3 and len(set(s.tolist())) == 3 and set(s.tolist()) <= set(rows.tolist())
        assert np.all(np.diff(s) > 0)
    has_first = np.mean([s[0] == 40 for s in samples])
    if keep_first:
        assert has_first == 1.0
        assert {int(x) for s in samples for x in s[1:]} == set(range(41, 50)), "the rest is sampled from all others"
    else:
        assert 0.15 < has_first < 0.5  # 3 of 10: about 0.3
    only_first = sample_windows(rows, 1, True, rng)
    assert only_first.tolist() == [40]


@pytest.mark.parametrize("select_on", ["loss", "macro_f1"])
def test_the_kept_epoch_is_the_best_on_validation_from_min_epochs_on(tiny_model_dir, select_on):
    """Issue 18: the epoch kept is the best validation epoch among those from ``min_epochs`` on (by loss, or by
    macro-F1 with the loss breaking ties), and early stopping waits for ``min_epochs``."""
    import torch

    texts, labels = _corpus(45, 0)
    val_texts, val_labels = _corpus(15, 1)
    names = ["sport", "tech", "news"]
    clf = LongDocClassifier.from_encoder(tiny_model_dir, labels=names, window=WindowConfig(max_length=32, stride=8),
                                         device="cpu")
    clf.fit(texts, labels, eval_dataset=val_texts, eval_labels=val_labels,
            args=TrainConfig(epochs=7, head_lr=5e-3, batch_size=8, patience=1, min_epochs=4, select_on=select_on,
                             calibrate=False))
    assert len(clf.history) >= 4  # patience 1 could not stop it before min_epochs
    target = torch.tensor([names.index(x) for x in val_labels])
    kept_loss = float(clf.head.loss(clf.analyze(val_texts).logits.float(), target))
    candidates = clf.history[3:]
    if select_on == "loss":
        best = min(h["eval_loss"] for h in candidates)
    else:
        top = max(h["eval_macro_f1"] for h in candidates)
        best = min(h["eval_loss"] for h in candidates if h["eval_macro_f1"] == top)
    assert kept_loss == pytest.approx(best, rel=1e-4, abs=1e-5)


def test_selection_options_are_checked():
    with pytest.raises(ConfigError, match="select_on"):
        TrainConfig(select_on="accuracy")
    with pytest.raises(ConfigError, match="min_epochs"):
        TrainConfig(min_epochs=0)
    # the default: frozen, a quarter of the epochs, rounded up, never past them; fine-tuning, the last epoch
    assert TrainConfig().first_kept_epoch == 5
    assert TrainConfig(epochs=3).first_kept_epoch == 1
    assert TrainConfig(epochs=40).first_kept_epoch == 10
    assert TrainConfig(epochs=3, min_epochs=8).first_kept_epoch == 3
    assert TrainConfig(mode="finetune", epochs=3).first_kept_epoch == 3
    assert TrainConfig(mode="finetune", epochs=20).first_kept_epoch == 20
    assert TrainConfig(mode="finetune", epochs=3, min_epochs=1).first_kept_epoch == 1


def test_fine_tuning_keeps_its_last_epoch_by_default(tiny_model_dir):
    """Issue 18: fine-tuning runs every epoch and keeps the last one, whatever the validation scores of the
    earlier epochs (patience 1 would otherwise stop it, and validation would pick among them)."""
    import torch

    texts, labels = _corpus(24, 0)
    val_texts, val_labels = _corpus(12, 1)
    names = ["sport", "tech", "news"]
    clf = LongDocClassifier.from_encoder(tiny_model_dir, labels=names, window=WindowConfig(max_length=32, stride=8),
                                         device="cpu", lexical=False)
    clf.fit(texts, labels, eval_dataset=val_texts, eval_labels=val_labels,
            args=TrainConfig(mode="finetune", epochs=4, batch_size=8, encoder_lr=1e-3, head_lr=1e-2, patience=1,
                             max_train_windows=2, calibrate=False))
    assert [h["epoch"] for h in clf.history] == [1, 2, 3, 4]
    scores = [(h["eval_macro_f1"], -h["eval_loss"]) for h in clf.history]
    # some epoch was no better than an earlier one: patience 1 would have stopped there, validation picked another
    assert any(scores[i] <= max(scores[:i]) for i in range(1, len(scores)))
    target = torch.tensor([names.index(x) for x in val_labels])
    kept_loss = float(clf.head.loss(clf.analyze(val_texts).logits.float(), target))
    assert kept_loss == pytest.approx(clf.history[-1]["eval_loss"], rel=1e-4, abs=1e-5)
