"""The model card (README.md) that save writes: its facts, their round trip through config.json, escaping."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
import transformers

import longdoc
from longdoc.classifier import LongDocClassifier
from longdoc.errors import ModelLoadError
from longdoc.model_card import CardFacts, markdown_text, render_model_card
from longdoc.model_dir import read_model_config
from longdoc.training import TrainConfig
from longdoc.windows import WindowConfig

# label names that would break a Markdown table or inject HTML if written as they are
LABELS = ["a|b", "<script>alert(1)</script>", "two\nlines"]
TEXTS = ["file mode bits permission", "index search query vector", "team player goal match"] * 4
CELL_SEPARATOR = re.compile(r"(?<!\\)\|")


@pytest.fixture(scope="module")
def trained(tiny_model_dir):
    clf = LongDocClassifier.from_encoder(tiny_model_dir, labels=LABELS, window=WindowConfig(max_length=32, stride=8),
                                         device="cpu")
    return clf.fit(TEXTS, LABELS * 4, args=TrainConfig(epochs=2, batch_size=4))


@pytest.fixture(scope="module")
def evaluated(trained, tmp_path_factory):
    """(model directory saved after evaluate, the report evaluate returned)."""
    report = trained.evaluate(TEXTS, LABELS * 4)
    return trained.save(tmp_path_factory.mktemp("card") / "model"), report


def _card(directory):
    return (directory / "README.md").read_text(encoding="utf-8")


def _section(card, title):
    return card.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_the_card_says_what_the_model_is(trained, tiny_model_dir, tmp_path):
    card = _card(trained.save(tmp_path / "m"))
    front, body = card.split("---\n", 2)[1:]
    assert card.startswith("---\n") and "library_name: longdoc" in front
    assert "pipeline_tag: text-classification" in front and "- single-label-classification" in front
    assert "base_model" not in front  # a local checkpoint: no hub id to link
    for escaped in ("a\\|b", "&lt;script&gt;alert(1)&lt;/script&gt;", "two\\\\nlines"):
        assert f"| {escaped} | 4 |" in _section(body, "Labels")  # name, training documents
    windows = _section(body, "Window geometry")
    assert "| max_length | 32 |" in windows and "| stride | 8 |" in windows and "| max_windows | all |" in windows
    assert "| pooling | `lead_attention` |" in _section(body, "Head")
    assert re.search(r"\| vocabulary \| \d+ terms", body)
    encoder = _section(body, "Encoder")
    assert f"`{trained.encoder.fingerprint}`" in encoder and "| dimension | 32 |" in encoder
    # the checkpoint directory's name, never the machine's path to it
    assert f"local checkpoint named {markdown_text(tiny_model_dir.name)} |" in encoder
    assert str(tiny_model_dir.parent) not in card and str(tmp_path) not in card
    training = _section(body, "Training")
    assert "| training documents | 12 (12 trained the head) |" in training
    assert "| epochs | 2 run (at most 2) |" in training and "| seed | 0 |" in training
    versions = _section(body, "Library versions")
    for name, version in (("longdoc", longdoc.__version__), ("torch", torch.__version__),
                          ("transformers", transformers.__version__)):
        assert f"| {name} | {version} | {version} |" in versions
    assert 'LongDocClassifier.load("path/to/this/directory")' in body and "longdoc label " in body


def test_the_card_shows_the_figures_evaluate_returned(evaluated):
    directory, report = evaluated
    evaluation = _section(_card(directory), "Evaluation")
    for name, key in (("accuracy", "accuracy"), ("macro-F1", "macro_f1"), ("micro-F1", "micro_f1"),
                      ("expected calibration error", "ece")):
        assert f"| {name} | {report[key]:.4f} |" in evaluation
    assert f"on {report['n_documents']} documents" in evaluation
    scores = report["per_label"]["a|b"]
    assert (f"| a\\|b | {scores['precision']:.4f} | {scores['recall']:.4f} | {scores['f1']:.4f} | "
            f"{scores['support']} |") in evaluation


def test_special_label_names_keep_every_table_row_whole(evaluated):
    card = _card(evaluated[0])
    assert "<script" not in card and "<" not in card.split("```python")[0]
    lines = card.split("\n")
    columns = None  # cell separators of the current table's header
    for line in lines:
        if not line.startswith("|"):
            columns = None
        elif columns is None:
            columns = len(CELL_SEPARATOR.findall(line))
        else:
            assert len(CELL_SEPARATOR.findall(line)) == columns, line
    assert all(not line.startswith(("lines", "alert")) for line in lines)  # no label spilled onto a line of its own


def test_facts_survive_a_round_trip_and_a_refit_replaces_them(evaluated, tmp_path):
    directory, _ = evaluated
    config = json.loads((directory / "config.json").read_text())
    again = LongDocClassifier.load(directory, device="cpu")
    assert again.training_facts == config["training"] and again.evaluation_facts == config["evaluation"]
    assert again.base_encoder == config["base_encoder"] and config["base_encoder"]["source"] == "local"
    resaved = again.save(tmp_path / "again")
    assert _card(resaved) == _card(directory)  # same facts, same process: the same card
    for key in ("base_encoder", "training", "evaluation"):
        assert json.loads((resaved / "config.json").read_text())[key] == config[key]

    again.fit(TEXTS[:9], (LABELS * 3), args=TrainConfig(epochs=1, batch_size=4))
    refit = json.loads((again.save(tmp_path / "refit") / "config.json").read_text())
    assert refit["training"]["documents"] == 9 and refit["training"]["epochs_run"] == 1
    assert refit["evaluation"] is None and refit["base_encoder"] == config["base_encoder"]
    assert "`evaluate` was not run" in _card(tmp_path / "refit")


def test_calibrate_drops_a_stale_evaluation(evaluated):
    clf = LongDocClassifier.load(evaluated[0], device="cpu")
    assert clf.evaluation_facts is not None
    clf.calibrate(TEXTS, LABELS * 4)
    assert clf.evaluation_facts is None


def test_an_older_directory_without_card_facts_loads_and_gets_a_card(evaluated, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(evaluated[0], old)
    (old / "README.md").unlink()
    config = json.loads((old / "config.json").read_text())
    for key in ("base_encoder", "training", "evaluation"):
        del config[key]
    (old / "config.json").write_text(json.dumps(config))
    clf = LongDocClassifier.load(old, device="cpu")
    assert clf.base_encoder is clf.training_facts is clf.evaluation_facts is None
    card = _card(clf.save(tmp_path / "resaved"))
    assert "Not recorded" in _section(card, "Training") and "not recorded" in _section(card, "Encoder")


def test_load_never_reads_the_card(evaluated, tmp_path):
    copy = tmp_path / "m"
    shutil.copytree(evaluated[0], copy)
    (copy / "README.md").write_bytes(b"\xff\xfe not markdown, not UTF-8")
    assert LongDocClassifier.load(copy, device="cpu").labels == LABELS


@pytest.mark.parametrize(("key", "value", "match"), [
    ("training", "twelve documents", "must be a JSON object"),
    ("training", {"mode": "frozen", "documents": "many"}, "'documents' is 'many'"),
    ("evaluation", {"documents": 3, "accuracy": float("nan")}, "'accuracy'"),
    ("base_encoder", {"name": "x"}, "lacks \\['source'\\]"),
])
def test_a_damaged_card_fact_is_refused_by_name(evaluated, tmp_path, key, value, match):
    copy = tmp_path / "m"
    shutil.copytree(evaluated[0], copy)
    config = json.loads((copy / "config.json").read_text())
    config[key] = value
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=match) as caught:
        read_model_config(copy)
    assert f"delete the {key!r} key" in str(caught.value)


def test_a_hand_edited_history_cannot_stop_the_next_save(evaluated, tmp_path):
    """``history`` is not a card fact, yet the card reads its scores: a string among them (max() of str and float
    was a TypeError inside save) is skipped, so load -> save still works and the card shows the real best."""
    copy = tmp_path / "m"
    shutil.copytree(evaluated[0], copy)
    config = json.loads((copy / "config.json").read_text())
    config["history"] = [{"eval_macro_f1": "x"}, {"eval_macro_f1": 0.5}, {"eval_macro_f1": True}, 3, "row"]
    (copy / "config.json").write_text(json.dumps(config))
    out = LongDocClassifier.load(copy, device="cpu").save(tmp_path / "again")
    assert "| validation macro-F1 | 0.5000 |" in _card(out)


def test_markdown_text_escapes_what_would_format_or_inject():
    assert markdown_text("a|b") == "a\\|b"
    assert markdown_text("<img src=x onerror=alert(1)>") == "&lt;img src=x onerror=alert(1)&gt;"
    assert markdown_text("*bold* _it_ `code` [link](u) $x$") == "\\*bold\\* \\_it\\_ \\`code\\` \\[link\\](u) \\$x\\$"
    assert markdown_text("x\ny\u2028z\u202e") == "x\\\\ny\\\\u2028z\\\\u202e"
    assert markdown_text("") == "*(empty)*" and markdown_text("R&D") == "R&amp;D"


def test_front_matter_is_yaml_and_names_a_hub_base_model_safely(evaluated):
    yaml = pytest.importorskip("yaml")
    config = json.loads((evaluated[0] / "config.json").read_text())
    for name, expected in (("org/model-v1.2", "org/model-v1.2"), ('bad"\n---\nname', None)):
        config["base_encoder"] = {"name": name, "source": "hub"}
        card = render_model_card(CardFacts(config=config, encoder_fingerprint="f" * 32))
        meta = yaml.safe_load(card.split("---\n", 2)[1])
        assert meta["library_name"] == "longdoc" and meta.get("base_model") == expected
        assert card.count("\n---\n") == 1  # only the front matter's closing line
