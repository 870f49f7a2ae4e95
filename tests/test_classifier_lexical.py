"""The classifier's lexical branch (on by default) and the fair-comparison fixes around ``fit``: seeded heads,
a validation split carved in ``fit``, window geometry checks, paths given as str."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from longdoc.classifier import NO_LEXICAL_TERMS, LongDocClassifier
from longdoc.errors import ConfigError, DataError, ModelLoadError
from longdoc.training import TrainConfig
from longdoc.windows import WindowConfig

LABELS = ["sport", "tech", "news"]
MARKERS = {"sport": "team player goal win", "tech": "device system library model", "news": "vote bank market report"}
FILLER = "the a of to and in is it for on with as by at from that this be are was or not "
WINDOW = WindowConfig(max_length=32, stride=8)


def _corpus(n: int, seed: int) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(n):
        label = LABELS[i % 3]
        texts.append(f"{FILLER * int(rng.integers(1, 4))} {MARKERS[label]} {FILLER * int(rng.integers(1, 4))}")
        labels.append(label)
    return texts, labels


def _new(tiny_model_dir, **kwargs) -> LongDocClassifier:
    return LongDocClassifier.from_encoder(tiny_model_dir, labels=LABELS, window=WINDOW, device="cpu", **kwargs)


@pytest.fixture(scope="module")
def trained(tiny_model_dir):
    texts, labels = _corpus(45, 0)
    return _new(tiny_model_dir).fit(texts, labels, args=TrainConfig(epochs=4, batch_size=8))


def test_lexical_branch_is_on_by_default_and_off_on_request(tiny_model_dir, trained):
    assert trained.lexical is not None and trained.lexical.fitted
    assert trained.head.config.lexical_fusion
    plain = _new(tiny_model_dir, lexical=False)
    assert plain.lexical is None and not plain.head.config.lexical_fusion
    with pytest.raises(ConfigError, match="lexical must be"):
        _new(tiny_model_dir, lexical="yes")


def test_fused_logits_are_head_logits_plus_weighted_lexical_scores(trained):
    texts, _ = _corpus(6, 3)
    a = trained.analyze(texts)
    assert a.lexical_scores is not None and a.lexical_scores.shape == (6, 3)
    expected = trained.lexical.scores(texts)
    np.testing.assert_allclose(a.lexical_scores, expected, rtol=1e-6)
    # the same head without the lexical scores: the difference is exactly lexical_weight * scores
    enc = trained.encode(texts)
    from longdoc.training import doc_offsets

    dense, _, _ = trained._head_logits(torch.from_numpy(enc.embeddings), doc_offsets(enc.windows))
    weight = float(trained.head.lexical_weight.detach())
    np.testing.assert_allclose(a.logits.numpy(), dense.numpy() + weight * expected, rtol=1e-4, atol=1e-4)


def test_save_load_round_trip_gives_identical_probabilities(trained, tmp_path):
    texts, _ = _corpus(9, 4)
    path = trained.save(tmp_path / "model")
    assert (path / "lexical.json").is_file() and (path / "lexical.safetensors").is_file()
    assert not [p for p in path.rglob("*") if p.suffix in {".pkl", ".pickle", ".joblib", ".bin"}]
    loaded = LongDocClassifier.load(path)
    np.testing.assert_array_equal(loaded.predict_proba(texts), trained.predict_proba(texts))
    assert loaded.lexical.vocabulary == trained.lexical.vocabulary
    assert [t.term for t in loaded.explain(texts[0]).terms] == [t.term for t in trained.explain(texts[0]).terms]


def test_a_model_missing_its_lexical_files_is_refused(trained, tmp_path):
    path = trained.save(tmp_path / "model")
    (path / "lexical.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="lexical"):
        LongDocClassifier.load(path)


def test_lexical_labels_that_disagree_with_the_model_are_refused(trained, tmp_path):
    path = trained.save(tmp_path / "model")
    meta = json.loads((path / "lexical.json").read_text())
    meta["labels"] = ["a", "b", "c"]
    (path / "lexical.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="labels"):
        LongDocClassifier.load(path)


def test_document_without_lexical_terms_is_labelled_by_the_windows_with_a_note(trained):
    texts = ["!!! ??? ... ;;; 🙂🙂🙂", MARKERS["tech"] + " " + FILLER]
    a = trained.analyze(texts)
    assert a.notes == [NO_LEXICAL_TERMS, None]
    np.testing.assert_array_equal(a.lexical_scores[0], np.zeros(3, dtype=np.float32))
    assert np.isfinite(a.probs[0]).all() and a.probs[0].sum() == pytest.approx(1.0, abs=1e-5)
    assert trained.explain(texts[0]).terms == []


def test_explain_gives_terms_with_their_character_spans(trained):
    text = f"{FILLER} {MARKERS['sport']} {FILLER}"
    explanation = trained.explain(text, top_k=3)
    assert len(explanation) >= 1 and 1 <= len(explanation.terms) <= 3
    for term in explanation.terms:
        assert term.weight > 0 and term.spans
        for start, end in term.spans:
            assert text[start:end].lower().split() == term.term.split()
    first = explanation[:1]  # a slice is an Explanation too: the terms stay with the windows kept
    assert type(first) is type(explanation) and first.terms == explanation.terms
    assert list(first) == [explanation[0]] and explanation[0].weight > 0
    assert explanation[::-1].terms == explanation.terms and explanation.copy().terms == explanation.terms


def test_every_document_empty_at_fit_time_is_a_clear_error(tiny_model_dir):
    clf = _new(tiny_model_dir)
    with pytest.raises(DataError, match="no word"):
        clf.fit(["!!! ???", "... ;;;", "--- +++"] * 2, ["sport", "tech", "news"] * 2, args=TrainConfig(epochs=1))


def test_same_seed_gives_the_same_model_whatever_was_drawn_before(tiny_model_dir):
    texts, labels = _corpus(24, 5)
    probs = []
    for noise in (1, 2):
        torch.manual_seed(noise)  # a different global random state before the classifier is built
        np.random.seed(noise)
        clf = _new(tiny_model_dir)
        torch.randn(17)
        clf.fit(texts, labels, args=TrainConfig(epochs=3, batch_size=8, seed=7))
        probs.append(clf.predict_proba(texts))
    np.testing.assert_array_equal(probs[0], probs[1])


def test_fit_holds_out_a_validation_split_and_calibrates(tiny_model_dir):
    texts, labels = _corpus(60, 6)
    clf = _new(tiny_model_dir, lexical=False).fit(texts, labels, args=TrainConfig(epochs=3, batch_size=8))
    assert all("eval_macro_f1" in h for h in clf.history)  # early stopping had a validation set
    none = _new(tiny_model_dir, lexical=False).fit(
        texts, labels, args=TrainConfig(epochs=3, batch_size=8, eval_fraction=0))
    assert all("eval_macro_f1" not in h for h in none.history) and none.temperature == 1.0
    with pytest.raises(ConfigError, match="eval_fraction"):
        TrainConfig(eval_fraction=1.5)


def test_encodings_cut_with_other_windows_are_refused(tiny_model_dir, trained):
    texts, _ = _corpus(3, 7)
    other = LongDocClassifier.from_encoder(tiny_model_dir, labels=LABELS, window=WindowConfig(24, 4),
                                           device="cpu", lexical=False)
    enc = other.encode(texts)
    with pytest.raises(ConfigError, match="max_length"):
        trained.predict(enc)


def test_a_str_path_is_read_for_training_and_refused_as_text(tiny_model_dir, tmp_path):
    texts, labels = _corpus(12, 8)
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(texts, labels, strict=True)))
    clf = _new(tiny_model_dir).fit(str(path), args=TrainConfig(epochs=1))
    assert clf.evaluate(str(path))["n_documents"] == 12
    with pytest.raises(DataError, match="existing file"):
        clf.predict(str(path))
    with pytest.raises(DataError, match="no such file"):
        clf.fit(str(tmp_path / "missing.jsonl"))


@pytest.mark.parametrize("damage", ["nan_weights", "duplicate_terms", "not_json", "vocabulary_not_a_list"])
def test_a_damaged_lexical_branch_is_refused_at_load(trained, tmp_path, damage):
    from safetensors.numpy import load_file, save_file

    path = trained.save(tmp_path / "model")
    meta_path, tensors_path = path / "lexical.json", path / "lexical.safetensors"
    meta = json.loads(meta_path.read_text())
    if damage == "nan_weights":
        tensors = load_file(str(tensors_path))
        tensors["coef"][0, 0] = np.nan
        save_file(tensors, str(tensors_path))
    elif damage == "duplicate_terms":
        meta["vocabulary"][1] = meta["vocabulary"][0]
        meta_path.write_text(json.dumps(meta))
    elif damage == "not_json":
        meta_path.write_text("{not json")
    else:
        meta["vocabulary"] = 5
        meta_path.write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="lexical"):
        LongDocClassifier.load(path)


def test_one_letter_words_and_digits_only_get_the_windows_alone(trained):
    a = trained.analyze(["1 2 3 a b c", "x\x00y\x00z"])
    assert a.notes == [NO_LEXICAL_TERMS, NO_LEXICAL_TERMS]
    assert np.isfinite(a.probs).all()


def test_path_shaped_texts_are_classified_and_only_existing_files_refused(trained):
    assert len(trained.predict(["TCP/IP", "notes.txt", "https://example.com/a"])) == 3
    assert isinstance(trained.predict("TCP/IP"), str)


def test_the_fusion_is_refitted_on_validation_documents(tiny_model_dir):
    """``refit_fusion`` (the default) re-weighs the two halves by two scalars fitted on the validation documents:
    their NLL there is no worse than with the weights as trained, and the predictions are the refitted mix."""
    from longdoc.calibration import fit_fusion_weights

    texts, labels = _corpus(60, 4)
    val_texts, val_labels = _corpus(30, 5)
    cfg = {"epochs": 4, "batch_size": 8, "calibrate": False}
    kept = _new(tiny_model_dir).fit(texts, labels, eval_dataset=val_texts, eval_labels=val_labels,
                                    args=TrainConfig(refit_fusion=False, **cfg))
    refit = _new(tiny_model_dir).fit(texts, labels, eval_dataset=val_texts, eval_labels=val_labels,
                                     args=TrainConfig(**cfg))
    y = np.array([LABELS.index(x) for x in val_labels])

    def nll(clf) -> float:
        logits = torch.as_tensor(np.asarray(clf.analyze(val_texts).logits, dtype=np.float64))
        return float(torch.nn.functional.cross_entropy(logits, torch.as_tensor(y)))

    assert nll(refit) <= nll(kept) + 1e-6
    # the refitted model is the trained one with its halves scaled by the weights fitted on the validation set
    a = kept.analyze(val_texts)
    w = float(kept.head.lexical_weight.detach())
    dense = np.asarray(a.logits, dtype=np.float64) - w * a.lexical_scores
    scale, weight = fit_fusion_weights(dense, a.lexical_scores, y)
    assert float(refit.head.lexical_weight.detach()) == pytest.approx(weight, rel=1e-4)
    expected = scale * dense + weight * a.lexical_scores
    np.testing.assert_allclose(np.asarray(refit.analyze(val_texts).logits, dtype=np.float64), expected, atol=1e-4)
