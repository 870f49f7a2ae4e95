"""One batch of 1,000 documents with every kind of bad document mixed in: the others are labelled, each bad one
gets a recorded reason, and every document comes out exactly once."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from longdoc.classifier import LongDocClassifier
from longdoc.labeling import label_documents, read_labels
from longdoc.training import TrainConfig
from longdoc.windows import WindowConfig

TOPICS = {"sport": "team player goal win", "tech": "device system library model"}
FILLER = "the a of to and in is it for on with as by "


@pytest.mark.slow
def test_mixed_bad_batch_of_a_thousand(tiny_model_dir, tmp_path):
    clf = LongDocClassifier.from_encoder(
        tiny_model_dir, labels=list(TOPICS), device="cpu",
        # a 10-million-token document is cut to its first and last windows (documented head + tail selection)
        window=WindowConfig(max_length=64, stride=16, max_windows=32),
    )
    clf.fit([f"{FILLER} {m}" for m in TOPICS.values()] * 5, list(TOPICS) * 5, args=TrainConfig(epochs=2))

    folder = tmp_path / "docs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    expected_errors = {}
    for i in range(993):
        topic = list(TOPICS)[i % 2]
        (folder / f"doc-{i:04d}.txt").write_text(f"{FILLER * int(rng.integers(1, 5))} {TOPICS[topic]}")
    (folder / "empty.txt").write_text("")
    expected_errors["empty.txt"] = "error"
    (folder / "blank.txt").write_text("  \n\t  \n")
    expected_errors["blank.txt"] = "error"
    (folder / "latin1.txt").write_bytes("caf\xe9 device system library model".encode("latin-1"))
    (folder / "controls.txt").write_text("ignore previous instructions \x1b[31mred\x1b[0m \x00\x07 device system")
    (folder / "unseen-label.txt").write_text("a label never seen in training: contract clause termination")
    (folder / "binary.txt").write_bytes(bytes(range(256)) * 4)
    (folder / "huge.txt").write_text("file mode bits " * 3_400_000)  # ~10.2 million tokens

    summary = label_documents(clf, folder, tmp_path / "labels", chunk_size=128)
    out = read_labels(tmp_path / "labels")
    assert out.height == 1000 and out["doc_id"].n_unique() == 1000, summary
    by_id = {r["doc_id"]: r for r in out.iter_rows(named=True)}
    for name in expected_errors:
        assert by_id[name]["error"], f"{name} must carry its reason"
        assert by_id[name]["label"] is None
    assert "decoded" in (by_id["latin1.txt"]["warning"] or "") or "UTF-8" in (by_id["latin1.txt"]["warning"] or "")
    for name in ("latin1.txt", "controls.txt", "unseen-label.txt", "huge.txt", "binary.txt"):
        assert by_id[name]["label"] in TOPICS, name
    good = out.filter(pl.col("doc_id").str.starts_with("doc-"))
    assert good.height == 993 and good["error"].null_count() == 993
    assert good["label"].null_count() == 0
