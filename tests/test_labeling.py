"""Batch labelling: chunked parts, error rows, exactly-once output across a real SIGKILL."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from longdoc.classifier import LongDocClassifier
from longdoc.cli import main
from longdoc.errors import ConfigError, DataError
from longdoc.labeling import label_documents, read_labels
from longdoc.training import TrainConfig
from longdoc.windows import WindowConfig

FILLER = "the a of to and in is it for on with as by at from that this be are was or not "
TOPICS = {"sport": "team player goal win", "tech": "device system library model", "news": "vote bank market report"}
REPO = Path(__file__).resolve().parents[1]


def _rows(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = list(TOPICS)[i % 3]
        rows.append({"id": f"doc-{i:04d}", "label": label,
                     "text": f"{FILLER * int(rng.integers(1, 4))} {TOPICS[label]} {FILLER * int(rng.integers(1, 4))}"})
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def clf(tiny_model_dir):
    rows = _rows(30)
    model = LongDocClassifier.from_encoder(tiny_model_dir, labels=list(TOPICS), window=WindowConfig(max_length=32, stride=8),
                                           device="cpu")
    model.fit([r["text"] for r in rows], [r["label"] for r in rows], args=TrainConfig(epochs=3, batch_size=8),
              show_progress_bar=False)
    return model


@pytest.fixture(scope="module")
def saved_model(clf, tmp_path_factory) -> Path:
    return clf.save(tmp_path_factory.mktemp("model") / "model")


def test_chunks_become_parts_and_bad_documents_become_error_rows(clf, tmp_path):
    rows = _rows(10)
    rows[3]["text"] = ""
    rows[7]["text"] = "   \n\t "
    src = _write_jsonl(tmp_path / "docs.jsonl", rows)
    with src.open("a") as fh:
        fh.write("{not json\n")  # an unreadable line: an error row, the batch goes on
    out = tmp_path / "labels"
    summary = label_documents(clf, src, out, chunk_size=4, top_passages=2, show_progress_bar=False)
    assert summary.n_documents == 11 and summary.n_labelled == 11 and summary.n_errors == 3
    assert sorted(p.name for p in out.glob("part-*.parquet")) == [f"part-0000{i}.parquet" for i in range(3)]
    table = read_labels(out)
    assert table.columns == ["doc_id", "label", "probs", "top_passages", "warning", "error", "failed"]
    assert table["failed"].to_list() == [False] * 11  # no-token and unreadable documents are final, not failed
    assert table["doc_id"].to_list() == [r["id"] for r in rows] + ["docs.jsonl:11"]
    errors = dict(zip(table["doc_id"], table["error"], strict=True))
    assert "empty" in errors["doc-0003"] and "whitespace" in errors["doc-0007"]
    assert "not a JSON object" in errors["docs.jsonl:11"]
    ok = table.filter(pl.col("error").is_null())
    assert ok.height == 8 and ok["label"].is_in(list(TOPICS)).all()
    assert all(abs(sum(p) - 1) < 1e-5 and len(p) == 3 for p in ok["probs"].to_list())
    passages = ok["top_passages"].to_list()
    texts = {r["id"]: r["text"] for r in rows}
    for doc_id, tops in zip(ok["doc_id"], passages, strict=True):
        assert 1 <= len(tops) <= 2
        assert tops == sorted(tops, key=lambda p: -p["weight"])
        assert all(0 <= p["char_start"] < p["char_end"] <= len(texts[doc_id]) for p in tops)
    meta = json.loads((out / "_labels.json").read_text())
    assert meta["labels"] == clf.labels

    # a second call finds everything done
    again = label_documents(clf, src, out, chunk_size=4, show_progress_bar=False)
    assert again.n_labelled == 0 and again.n_skipped == 11 and read_labels(out).height == 11


def test_refuses_another_models_directory_and_foreign_directories(clf, tiny_model_dir, tmp_path):
    src = _write_jsonl(tmp_path / "docs.jsonl", _rows(3))
    out = tmp_path / "labels"
    label_documents(clf, src, out, show_progress_bar=False)
    other = LongDocClassifier.from_encoder(tiny_model_dir, labels=["x", "y"], device="cpu",
                                           window=WindowConfig(max_length=32, stride=8))
    with pytest.raises(ConfigError, match="another model"):
        label_documents(other, src, out, show_progress_bar=False)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        label_documents(clf, src, foreign, show_progress_bar=False)
    with pytest.raises(ConfigError, match="chunk_size"):
        label_documents(clf, src, tmp_path / "x", chunk_size=0)


def test_multi_label_output_has_a_labels_list(tiny_model_dir, tmp_path):
    rows = _rows(12)
    model = LongDocClassifier.from_encoder(tiny_model_dir, labels=list(TOPICS), multi_label=True, device="cpu",
                                           window=WindowConfig(max_length=32, stride=8))
    model.fit([r["text"] for r in rows], [[r["label"]] for r in rows], args=TrainConfig(epochs=1, calibrate=False),
              show_progress_bar=False)
    src = _write_jsonl(tmp_path / "docs.jsonl", rows)
    label_documents(model, src, tmp_path / "out", show_progress_bar=False)
    table = read_labels(tmp_path / "out")
    assert "labels" in table.columns and table.schema["labels"] == pl.List(pl.String)


MARKER = "xyzzy"  # documents holding it hit a (transient) CUDA out-of-memory while the analysis is broken


def _break_analysis(monkeypatch: pytest.MonkeyPatch) -> None:
    """``LongDocClassifier.analyze`` raises a CUDA out-of-memory for any batch holding a MARKER document, until
    the monkeypatch is undone (a transient failure: the next call succeeds)."""
    real = LongDocClassifier.analyze

    def analyze(self, documents, **kwargs):
        table = documents if isinstance(documents, pl.DataFrame) else documents.documents  # or an Encoded
        texts = table["text"].to_list()
        if any(MARKER in t for t in texts):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, documents, **kwargs)

    monkeypatch.setattr(LongDocClassifier, "analyze", analyze)


def _source_with_a_transient_failure(tmp_path: Path) -> tuple[Path, list[dict]]:
    rows = _rows(10, seed=3)
    rows[2]["text"] = f"{rows[2]['text']} {MARKER}"  # raises on the first call only
    rows[6]["text"] = ""  # no tokens: a final error row, never retried
    return _write_jsonl(tmp_path / "docs.jsonl", rows), rows


def _rows_in_parts(out: Path) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(p) for p in sorted(out.glob("part-*.parquet"))], how="diagonal_relaxed")


def test_a_failed_document_is_retried_by_the_next_call(clf, tmp_path, monkeypatch):
    src, rows = _source_with_a_transient_failure(tmp_path)
    out = tmp_path / "labels"
    with monkeypatch.context() as m:
        _break_analysis(m)
        first = label_documents(clf, src, out, chunk_size=4, show_progress_bar=False)
    assert first.n_labelled == 10 and first.n_errors == 2 and first.n_retried == 0 and first.n_parts == 3
    table = read_labels(out)
    assert table["doc_id"].to_list() == [r["id"] for r in rows]
    failed = table.filter(pl.col("failed"))
    assert failed["doc_id"].to_list() == ["doc-0002"]
    assert failed["error"][0].startswith("OutOfMemoryError: CUDA out of memory") and failed["label"][0] is None
    empty = table.filter(pl.col("doc_id") == "doc-0006")
    assert empty["error"][0] is not None and empty["failed"][0] is False

    again = label_documents(clf, src, out, chunk_size=4, show_progress_bar=False)  # the same call, analysis healed
    assert (again.n_labelled, again.n_retried, again.n_skipped, again.n_errors) == (1, 1, 9, 0)
    assert again.n_parts == 4  # the retried row went into a new part; the old ones are untouched
    in_parts = _rows_in_parts(out)["doc_id"].to_list()
    assert in_parts.count("doc-0002") == 2 and len(in_parts) == 11
    table = read_labels(out)
    ids = table["doc_id"].to_list()
    assert len(ids) == len(set(ids)) == 10 and set(ids) == {r["id"] for r in rows}
    retried = table.filter(pl.col("doc_id") == "doc-0002").row(0, named=True)
    assert retried["error"] is None and retried["failed"] is False and retried["label"] in TOPICS
    assert abs(sum(retried["probs"]) - 1) < 1e-5 and retried["top_passages"]
    assert table["failed"].sum() == 0 and table["error"].null_count() == 9  # only the empty document is an error
    assert table.filter(pl.col("doc_id") == "doc-0006")["failed"][0] is False

    done = label_documents(clf, src, out, chunk_size=4, show_progress_bar=False)  # nothing left, nothing retried
    assert (done.n_labelled, done.n_retried, done.n_skipped, done.n_parts) == (0, 0, 10, 4)


def test_retry_failed_false_keeps_failed_rows_as_done(clf, tmp_path, monkeypatch):
    src, _ = _source_with_a_transient_failure(tmp_path)
    out = tmp_path / "labels"
    with monkeypatch.context() as m:
        _break_analysis(m)
        label_documents(clf, src, out, chunk_size=4, show_progress_bar=False)
    kept = label_documents(clf, src, out, chunk_size=4, retry_failed=False, show_progress_bar=False)
    assert (kept.n_labelled, kept.n_retried, kept.n_skipped, kept.n_parts) == (0, 0, 10, 3)
    table = read_labels(out)
    assert table.filter(pl.col("failed"))["doc_id"].to_list() == ["doc-0002"]
    with pytest.raises(ConfigError, match="retry_failed must be True or False"):
        label_documents(clf, src, out, retry_failed="yes")
    # still retried later, when asked
    retried = label_documents(clf, src, out, chunk_size=4, show_progress_bar=False)
    assert (retried.n_labelled, retried.n_retried) == (1, 1)
    assert read_labels(out)["failed"].sum() == 0


def test_parts_without_a_failed_column_still_resume(clf, tmp_path, monkeypatch):
    """Parts written before the ``failed`` column existed: their rows read as not failed, and are done."""
    src, rows = _source_with_a_transient_failure(tmp_path)
    head = _write_jsonl(tmp_path / "head.jsonl", rows[:6])
    out = tmp_path / "labels"
    with monkeypatch.context() as m:
        _break_analysis(m)
        label_documents(clf, head, out, chunk_size=4, show_progress_bar=False)
    for part in out.glob("part-*.parquet"):  # as an older version wrote them
        pl.read_parquet(part).drop("failed").write_parquet(part)
        assert "failed" not in pl.read_parquet_schema(part)
    resumed = label_documents(clf, src, out, chunk_size=4, show_progress_bar=False)
    # the old failure of doc-0002 cannot be told apart from a final error: it counts as done
    assert (resumed.n_labelled, resumed.n_retried, resumed.n_skipped) == (4, 0, 6)
    table = read_labels(out)
    assert table.columns[-1] == "failed" and table.schema["failed"] == pl.Boolean
    assert table["doc_id"].to_list() == [r["id"] for r in rows]
    assert table["failed"].to_list() == [False] * 10
    assert table.filter(pl.col("doc_id") == "doc-0002")["error"][0].startswith("OutOfMemoryError")


def test_cli_label_retry_failed_flags(saved_model, tmp_path, monkeypatch, capsys):
    src, _ = _source_with_a_transient_failure(tmp_path)
    out = tmp_path / "labels"
    argv = ["label", str(saved_model), str(src), "--out", str(out), "--chunk-size", "4", "--device", "cpu",
            "--quiet", "--json"]
    with monkeypatch.context() as m:
        _break_analysis(m)
        assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["n_errors"] == 2 and first["n_retried"] == 0
    assert main([*argv, "--no-retry-failed"]) == 0
    kept = json.loads(capsys.readouterr().out)
    assert kept["n_labelled"] == 0 and kept["n_retried"] == 0 and kept["n_skipped"] == 10
    assert main([*argv, "--retry-failed"]) == 0
    retried = json.loads(capsys.readouterr().out)
    assert retried["n_labelled"] == 1 and retried["n_retried"] == 1 and retried["n_errors"] == 0
    assert read_labels(out)["failed"].sum() == 0


def _n_parts(out: Path) -> int:
    return len(list(out.glob("part-*.parquet"))) if out.is_dir() else 0


@pytest.mark.slow
def test_sigkill_then_rerun_gives_every_document_exactly_once(saved_model, tmp_path):
    rows = _rows(300, seed=1)
    rows[5]["text"] = ""
    src = _write_jsonl(tmp_path / "docs.jsonl", rows)
    out = tmp_path / "labels"
    cmd = [sys.executable, "-m", "longdoc.cli", "label", str(saved_model), str(src), "--out", str(out),
           "--chunk-size", "8", "--quiet", "--device", "cpu"]
    rng = random.Random(1234)
    kills = 0
    for _ in range(3):
        before = _n_parts(out)
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while proc.poll() is None and _n_parts(out) <= before and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.05))
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        assert _n_parts(out) < 300 // 8 + 1
    assert kills >= 1, "the run finished before it could be killed"
    (out / ".part-99999.parquet.tmp").write_bytes(b"half a parquet file")  # as a kill mid-write leaves it
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert not list(out.glob(".*.tmp"))
    table = read_labels(out)
    ids = table["doc_id"].to_list()
    assert len(ids) == len(set(ids)) == 300
    assert set(ids) == {r["id"] for r in rows}
    assert table.filter(pl.col("doc_id") == "doc-0005")["error"][0] is not None
    assert table["error"].null_count() == 299
