"""The Ray Data path gives what the single-machine path gives: same labels, same probabilities, same search hits.

A local Ray cluster (2 CPUs, no dashboard), two model actors, the tiny random BERT briefly trained.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

ray = pytest.importorskip("ray")

from indexer import PassageIndex, ShardedPassageIndex  # noqa: E402
from longdoc.classifier import LongDocClassifier  # noqa: E402
from longdoc.data import load_documents  # noqa: E402
from longdoc.distributed import (  # noqa: E402
    EncodingStage,
    LabellingStage,
    WindowingStage,
    index_with_ray,
    label_with_ray,
)
from longdoc.indexing import index_documents  # noqa: E402
from longdoc.labeling import label_documents, read_labels  # noqa: E402
from longdoc.training import TrainConfig  # noqa: E402
from longdoc.windows import WindowConfig  # noqa: E402

pytestmark = pytest.mark.slow

FILLER = "the a of to and in is it for on with as by at from that this be are was or not "
WORDS = ("file mode bits change user group read write run command option system call library function device "
         "format page manual data model text window token label document index search query contract").split()
TOPICS = {"sport": "team player goal win", "tech": "device system library model", "news": "vote bank market report"}


def _rows(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = list(TOPICS)[i % 3]
        words = lambda n: " ".join(rng.choice(WORDS, size=n))  # noqa: E731 - every window differs
        text = " ".join([words(int(rng.integers(5, 30))), TOPICS[label], FILLER, words(int(rng.integers(5, 40))),
                         TOPICS[list(TOPICS)[int(rng.integers(0, 3))]]])
        rows.append({"id": f"doc-{i:03d}", "label": label, "text": text, "source": f"s{i % 2}"})
    return rows


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False,
             configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    rows = _rows(30, seed=1)
    clf = LongDocClassifier.from_encoder(tiny_model_dir, labels=list(TOPICS), window=WindowConfig(max_length=32, stride=8),
                                         device="cpu")
    clf.fit([r["text"] for r in rows], [r["label"] for r in rows], args=TrainConfig(epochs=3, batch_size=8),
            show_progress_bar=False)
    return clf.save(tmp_path_factory.mktemp("model") / "model")


@pytest.fixture(scope="module")
def documents(tmp_path_factory) -> tuple[Path, Path]:
    rows = _rows(40)
    rows[5]["text"] = "   "  # an error row on both paths
    folder = tmp_path_factory.mktemp("docs")
    parquet = folder / "docs.parquet"
    pl.DataFrame(rows).write_parquet(parquet)
    jsonl = folder / "docs.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return parquet, jsonl


def test_stages_are_plain_callables(model_dir, documents):
    docs = pl.read_parquet(documents[0]).rename({"id": "doc_id"}).head(4)
    windows = pl.from_arrow(WindowingStage(model_dir, explode=True)(docs.to_arrow()))
    assert windows.columns[:2] == ["doc_id", "window_index"] and windows["input_ids"].list.len().max() <= 32
    embedded = pl.from_arrow(EncodingStage(model_dir, device="cpu")(windows.to_pandas()))
    clf = LongDocClassifier.load(model_dir, device="cpu")
    encoded = clf.encode(docs["text"].to_list())
    np.testing.assert_allclose(np.stack(embedded["embedding"].to_numpy()), encoded.embeddings, atol=1e-5)
    per_doc = WindowingStage(model_dir)(docs.to_arrow())
    labelled = pl.from_arrow(LabellingStage(model_dir, device="cpu")(per_doc))
    assert labelled.columns == ["doc_id", "label", "probs", "top_passages", "warning", "error", "failed"]
    assert labelled["label"].to_list() == clf.predict(docs["text"].to_list())
    assert labelled["failed"].to_list() == [False] * 4


def _break_analysis_of(monkeypatch: pytest.MonkeyPatch, doc_id: str) -> None:
    """``LongDocClassifier.analyze`` raises a CUDA out-of-memory for any batch holding ``doc_id`` (in this
    process, until the monkeypatch is undone: a transient failure)."""
    import torch

    real = LongDocClassifier.analyze

    def analyze(self, documents, **kwargs):
        table = documents if isinstance(documents, pl.DataFrame) else documents.documents  # or an Encoded
        if doc_id in table["doc_id"].to_list():
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, documents, **kwargs)

    monkeypatch.setattr(LongDocClassifier, "analyze", analyze)


def test_labelling_stage_marks_a_raising_document_failed(model_dir, documents, monkeypatch):
    docs = pl.read_parquet(documents[0]).rename({"id": "doc_id"}).slice(4, 4)  # doc-005 has no tokens
    stage = LabellingStage(model_dir, device="cpu")
    _break_analysis_of(monkeypatch, "doc-006")
    labelled = pl.from_arrow(stage(WindowingStage(model_dir)(docs.to_arrow())))
    assert labelled["doc_id"].to_list() == ["doc-004", "doc-005", "doc-006", "doc-007"]
    assert labelled["failed"].to_list() == [False, False, True, False]
    assert labelled["error"][1] is not None and labelled["error"][2].startswith("OutOfMemoryError")
    assert labelled["label"][0] is not None and labelled["label"][3] is not None


def test_label_with_ray_matches_label_documents(cluster, model_dir, documents, tmp_path):
    parquet, _ = documents
    clf = LongDocClassifier.load(model_dir, device="cpu")
    label_documents(clf, parquet, tmp_path / "local", chunk_size=16, show_progress_bar=False)
    summary = label_with_ray(model_dir, parquet, tmp_path / "ray", concurrency=2, num_cpus=0.5, batch_size=8)
    assert summary.n_labelled == 40 and summary.n_errors == 1 and summary.n_parts >= 1
    local = read_labels(tmp_path / "local").sort("doc_id")
    remote = read_labels(tmp_path / "ray").sort("doc_id")
    assert remote.columns == local.columns
    assert remote["doc_id"].to_list() == local["doc_id"].to_list()
    assert remote["label"].to_list() == local["label"].to_list()
    assert remote["error"].to_list() == local["error"].to_list()
    for a, b in zip(remote["probs"].to_list(), local["probs"].to_list(), strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_allclose(a, b, atol=1e-5)
    top = lambda t: [[p["window_index"] for p in row] if row else None for row in t["top_passages"].to_list()]  # noqa: E731
    assert top(remote) == top(local)
    again = label_with_ray(model_dir, parquet, tmp_path / "ray", concurrency=2, num_cpus=0.5, batch_size=8)
    assert again.n_labelled == 0 and again.n_skipped == 40  # resumed: nothing left to do
    assert read_labels(tmp_path / "ray").height == 40


def test_label_with_ray_retries_failed_rows(cluster, model_dir, documents, tmp_path, monkeypatch):
    """Failed rows (here from the single-machine engine, whose analysis raised once) are retried by the Ray
    engine resuming the same directory, unless ``retry_failed=False``."""
    parquet, _ = documents
    clf = LongDocClassifier.load(model_dir, device="cpu")
    out = tmp_path / "labels"
    with monkeypatch.context() as m:
        _break_analysis_of(m, "doc-012")
        first = label_documents(clf, parquet, out, chunk_size=16, show_progress_bar=False)
    assert first.n_errors == 2 and read_labels(out).filter(pl.col("failed"))["doc_id"].to_list() == ["doc-012"]
    kept = label_with_ray(model_dir, parquet, out, concurrency=1, num_cpus=0.5, batch_size=8, retry_failed=False)
    assert (kept.n_labelled, kept.n_retried, kept.n_skipped) == (0, 0, 40)
    retried = label_with_ray(model_dir, parquet, out, concurrency=1, num_cpus=0.5, batch_size=8)
    assert (retried.n_labelled, retried.n_retried, retried.n_skipped, retried.n_errors) == (1, 1, 39, 0)
    table = read_labels(out)
    assert table["doc_id"].n_unique() == table.height == 40 and table["failed"].sum() == 0
    row = table.filter(pl.col("doc_id") == "doc-012").row(0, named=True)
    assert row["error"] is None and row["label"] == clf.predict(pl.read_parquet(parquet)["text"][12])


def test_index_with_ray_matches_index_documents(cluster, model_dir, documents, tmp_path):
    _, jsonl = documents
    clf = LongDocClassifier.load(model_dir, device="cpu")
    single, _ = index_documents(clf, load_documents(jsonl), show_progress_bar=False)
    result = index_with_ray(model_dir, jsonl, tmp_path / "index", shards=3, concurrency=2, num_cpus=0.5,
                            batch_size=8, vectors_output=tmp_path / "vectors")
    assert result["windows"] == len(single) and len(result["per_shard"]) == 3
    sharded = ShardedPassageIndex.load(tmp_path / "index", encoder=clf.encoder)
    assert len(sharded) == len(single) and sharded.doc_ids == single.doc_ids
    assert sharded.encoder_fingerprint == single.encoder_fingerprint
    queries = np.random.default_rng(0).standard_normal((6, clf.encoder.dim)).astype(np.float32)
    key = lambda hits: [(h.doc_id, h.window_index, h.text, h.labels, h.pred_labels) for h in hits]  # noqa: E731

    def same(found, expected):
        assert key(found) == key(expected)
        np.testing.assert_allclose([h.score for h in found], [h.score for h in expected], atol=1e-5)

    for options in ({"k": 5}, {"k": 8, "per_doc": None}, {"k": 4, "labels": "tech"}):
        for found, expected in zip(sharded.search(queries, **options), single.search(queries, **options), strict=True):
            same(found, expected)
    text = ["team player goal", "bank market"]
    for found, expected in zip(sharded.search(text, k=5), single.search(text, k=5), strict=True):
        same(found, expected)
    hit = sharded.search("device system", k=1)[0]
    assert hit.metadata["source"] in ("s0", "s1") and hit.pred_labels
    vectors = pl.read_parquet(tmp_path / "vectors")
    assert vectors.height == len(single) and "embedding" in vectors.columns
    assert isinstance(single, PassageIndex)
