"""One reader of a model directory's config.json; the window geometry stored once; the durable file writer."""

from __future__ import annotations

import errno
import json
import shutil

import pytest

from indexer.storage import write_bytes_atomically, write_file_atomically
from longdoc.classifier import LongDocClassifier
from longdoc.cli import load_query_encoder
from longdoc.distributed import _model_parts
from longdoc.errors import ModelLoadError
from longdoc.model_dir import read_model_config
from longdoc.training import TrainConfig
from longdoc.windows import WindowConfig

WINDOW = {"max_length": 32, "stride": 8, "max_windows": None}


@pytest.fixture(scope="module")
def saved(tiny_model_dir, tmp_path_factory):
    clf = LongDocClassifier.from_encoder(tiny_model_dir, labels=["a", "b"], window=WindowConfig(max_length=32, stride=8),
                                         device="cpu")
    clf.fit(["file mode bits", "index search query"] * 4, ["a", "b"] * 4, args=TrainConfig(epochs=1))
    return clf.save(tmp_path_factory.mktemp("model") / "m")


def _old_layout(src, target):
    """A copy of ``src`` as versions before the geometry was stored once wrote it (three copies)."""
    shutil.copytree(src, target)
    config = json.loads((target / "config.json").read_text())
    config["encoder"] = {"pooling": config["encoder"]["pooling"], "normalize": config["encoder"]["normalize"],
                         "window": config["window"], "dim": config["encoder"]["dim"]}
    (target / "config.json").write_text(json.dumps(config, indent=2))
    settings = json.loads((target / "encoder" / "longdoc_encoder.json").read_text())
    settings["window"] = config["window"]
    (target / "encoder" / "longdoc_encoder.json").write_text(json.dumps(settings, indent=2))
    return target


def test_new_saves_store_the_window_once(saved):
    config = json.loads((saved / "config.json").read_text())
    assert config["window"] == WINDOW
    assert "window" not in config["encoder"]
    assert "window" not in json.loads((saved / "encoder" / "longdoc_encoder.json").read_text())
    assert read_model_config(saved).window == WindowConfig(max_length=32, stride=8)
    assert LongDocClassifier.load(saved, device="cpu").window == WindowConfig(max_length=32, stride=8)


def test_old_directories_with_agreeing_copies_still_load(saved, tmp_path):
    old = _old_layout(saved, tmp_path / "old")
    assert LongDocClassifier.load(old, device="cpu").window == WindowConfig(max_length=32, stride=8)
    assert _model_parts(old)[1] == WindowConfig(max_length=32, stride=8)
    assert load_query_encoder(str(old), device="cpu").dim == 32


@pytest.mark.parametrize("where", ["config", "encoder_settings"])
def test_disagreeing_copies_are_refused_naming_both(saved, tmp_path, where):
    old = _old_layout(saved, tmp_path / "old")
    if where == "config":
        path = old / "config.json"
        config = json.loads(path.read_text())
        config["encoder"]["window"] = {**WINDOW, "stride": 4}
    else:
        path = old / "encoder" / "longdoc_encoder.json"
        config = json.loads(path.read_text())
        config["window"] = {**WINDOW, "stride": 4}
    path.write_text(json.dumps(config))
    for load in (lambda: LongDocClassifier.load(old, device="cpu"), lambda: _model_parts(old),
                 lambda: load_query_encoder(str(old), device="cpu")):
        with pytest.raises(ModelLoadError, match="disagree") as caught:
            load()
        assert "'stride': 8" in str(caught.value) and "'stride': 4" in str(caught.value)


def test_file_writer_replaces_atomically_and_cleans_up(tmp_path):
    target = tmp_path / "f.json"
    write_bytes_atomically(target, b"one")
    assert target.read_bytes() == b"one"

    def failing(tmp):
        tmp.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        write_file_atomically(target, failing)
    assert target.read_bytes() == b"one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]
    assert write_file_atomically(target, lambda tmp: tmp.write_text("two")) == 3
    assert target.read_text() == "two"


def test_loading_an_encoder_checkpoint_as_a_classifier_says_what_it_is(tiny_model_dir):
    """It said "format_version None, expected 1"; a plain Hugging Face checkpoint is a start for from_encoder."""
    with pytest.raises(ModelLoadError, match=r"is an encoder checkpoint .* LongDocClassifier\.from_encoder"):
        LongDocClassifier.load(tiny_model_dir, device="cpu")
