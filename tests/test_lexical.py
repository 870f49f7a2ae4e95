"""The lexical branch: TF-IDF + logistic regression stored as JSON + safetensors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from longdoc.errors import ConfigError, DataError, ModelLoadError
from longdoc.lexical import LexicalConfig, LexicalModel

TEXTS = [
    "the striker scored a goal in the football match",
    "the goalkeeper saved a penalty in the football final",
    "a late goal won the football derby for the home team",
    "the central bank raised interest rates again",
    "shares fell as the bank reported weak profits",
    "interest rates and inflation worry the bank",
]
Y = np.array([0, 0, 0, 1, 1, 1])
LABELS = ["sport", "business"]


def fitted(**config) -> LexicalModel:
    return LexicalModel(LABELS, config=LexicalConfig(min_df=1, **config)).fit(TEXTS, Y)


def test_scores_are_log_probabilities_that_rank_the_right_label():
    model = fitted()
    scores = model.scores(["a goal in the football match", "the bank and interest rates"])
    assert scores.shape == (2, 2) and scores.dtype == np.float32
    np.testing.assert_allclose(np.exp(scores).sum(axis=1), 1.0, rtol=1e-5)
    assert scores.argmax(axis=1).tolist() == [0, 1]


def test_text_without_terms_is_reported():
    model = fitted()
    assert model.has_terms(["football", "!!! ... ???", "😀😀", ""]).tolist() == [True, False, False, False]


def test_cross_fitted_scores_come_from_models_that_never_saw_the_document():
    model = LexicalModel(LABELS, config=LexicalConfig(min_df=1, folds=3))
    oof = model.cross_fit_scores(TEXTS, Y, seed=0)
    assert oof.shape == (6, 2)
    in_sample = model.scores(TEXTS)
    # the full model is more confident on its own training documents than the held-out folds are
    assert (in_sample[np.arange(6), Y] >= oof[np.arange(6), Y] - 1e-6).all()
    assert not np.allclose(oof, in_sample)


def test_save_load_round_trip_gives_identical_scores(tmp_path):
    model = fitted()
    model.save(tmp_path)
    loaded = LexicalModel.load(tmp_path, labels=LABELS)
    probe = TEXTS + ["an unseen text about a goal and rates", "zzz"]
    np.testing.assert_array_equal(model.scores(probe), loaded.scores(probe))
    assert loaded.vocabulary == model.vocabulary


def test_load_refuses_parts_that_disagree(tmp_path):
    fitted().save(tmp_path)
    with pytest.raises(ModelLoadError, match="labels"):
        LexicalModel.load(tmp_path, labels=["a", "b"])
    tensors = load_file(str(tmp_path / "lexical.safetensors"))
    tensors["coef"] = tensors["coef"][:, :-1].copy()
    save_file(tensors, str(tmp_path / "lexical.safetensors"))
    with pytest.raises(ModelLoadError, match="does not match"):
        LexicalModel.load(tmp_path, labels=LABELS)
    (tmp_path / "lexical.json").write_text(json.dumps({"labels": LABELS}))
    with pytest.raises(ModelLoadError, match="malformed"):
        LexicalModel.load(tmp_path, labels=LABELS)


def test_no_words_at_all_is_a_clear_error():
    with pytest.raises(DataError, match="no word in any training document"):
        LexicalModel(LABELS).fit(["!!!", "...", "😀"], np.array([0, 1, 0]))


def test_top_terms_carry_their_spans():
    model = fitted()
    text = "Football: a GOAL, then another goal."
    terms = model.top_terms(text, 0, top_k=3)
    assert terms and all(t.weight > 0 for t in terms)
    for term in terms:
        assert term.spans
        for start, end in term.spans:
            assert " ".join(text[start:end].lower().replace(",", " ").split()) == term.term
    assert {"goal", "football"} & {t.term for t in terms}


def test_multi_label():
    y = np.array([[1, 0], [1, 0], [1, 1], [0, 1], [0, 1], [1, 1]])
    model = LexicalModel(LABELS, multi_label=True, config=LexicalConfig(min_df=1)).fit(TEXTS, y)
    scores = model.scores(TEXTS)
    assert scores.shape == (6, 2)
    assert ((scores > 0) == (y == 1)).mean() > 0.8


def test_config_is_validated_and_round_trips():
    with pytest.raises(ConfigError, match="ngram_range"):
        LexicalConfig(ngram_range=(2, 1))
    with pytest.raises(ConfigError, match="folds"):
        LexicalConfig(folds=1)
    config = LexicalConfig(max_features=10, C=2.0)
    assert LexicalConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_an_empty_batch_scores_to_an_empty_matrix():
    model = LexicalModel(["a", "b"]).fit(["apple pie recipe", "bus timetable route"] * 3, np.array([0, 1] * 3))
    scores, present = model.scores_and_presence([])
    assert scores.shape == (0, 2) and present.shape == (0,)
