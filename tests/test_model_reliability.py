"""Untrusted model directories: nothing unpickled, nothing read outside the directory, mismatches refused."""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest

from longdoc.classifier import LongDocClassifier
from longdoc.errors import ModelLoadError
from longdoc.training import TrainConfig
from longdoc.windows import WindowConfig


class _Sentinel:
    """Unpickling this creates a file: proof that someone unpickled it."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def saved_model(tiny_model_dir, tmp_path_factory):
    clf = LongDocClassifier.from_encoder(tiny_model_dir, labels=["a", "b"], window=WindowConfig(max_length=32, stride=8),
                                         device="cpu")
    clf.fit(["file mode bits", "index search query"] * 4, ["a", "b"] * 4, args=TrainConfig(epochs=2))
    path = tmp_path_factory.mktemp("model") / "m"
    clf.save(path)
    return path, clf


def test_planted_pickles_are_never_unpickled(saved_model, tmp_path):
    src, clf = saved_model
    target = tmp_path / "m"
    shutil.copytree(src, target)
    sentinel = tmp_path / "unpickled"
    for name in ("head.pt", "optimizer.pkl", "encoder/pytorch_model.bin", "encoder/training_args.bin"):
        (target / name).write_bytes(pickle.dumps(_Sentinel(sentinel)))
    loaded = LongDocClassifier.load(target, device="cpu")
    assert not sentinel.exists()
    texts = ["file mode bits", "index search query"]
    assert np.array_equal(loaded.predict_proba(texts), clf.predict_proba(texts))


def test_symlink_out_of_the_directory_is_refused(saved_model, tmp_path):
    src, _ = saved_model
    target = tmp_path / "m"
    shutil.copytree(src, target)
    outside = tmp_path / "outside.safetensors"
    shutil.copy(target / "head.safetensors", outside)
    (target / "head.safetensors").unlink()
    (target / "head.safetensors").symlink_to(outside)
    with pytest.raises(ModelLoadError, match="symlink"):
        LongDocClassifier.load(target, device="cpu")


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda c: c.update(labels=c["labels"] + ["c"]), "labels"),
        (lambda c: c["head"].update(hidden_size=64), "hidden_size"),
        (lambda c: c.update(format_version=99), "format_version"),
    ],
)
def test_mismatching_config_is_refused(saved_model, tmp_path, edit, needle):
    src, _ = saved_model
    target = tmp_path / "m"
    shutil.copytree(src, target)
    config = json.loads((target / "config.json").read_text())
    edit(config)
    (target / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=needle):
        LongDocClassifier.load(target, device="cpu")


def test_truncated_head_is_a_named_error(saved_model, tmp_path):
    src, _ = saved_model
    target = tmp_path / "m"
    shutil.copytree(src, target)
    data = (target / "head.safetensors").read_bytes()
    (target / "head.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError):
        LongDocClassifier.load(target, device="cpu")


def test_corrupt_config_is_a_named_error(saved_model, tmp_path):
    src, _ = saved_model
    target = tmp_path / "m"
    shutil.copytree(src, target)
    (target / "config.json").write_bytes(b"{\x00\xff not json")
    with pytest.raises(ModelLoadError, match="JSON"):
        LongDocClassifier.load(target, device="cpu")


def test_truncated_encoder_weights_are_a_named_error(saved_model, tmp_path):
    src, _ = saved_model
    target = tmp_path / "m"
    shutil.copytree(src, target)
    weights = target / "encoder" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelLoadError):
        LongDocClassifier.load(target, device="cpu")
