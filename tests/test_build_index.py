"""A search index without a classifier (build_index, `longdoc index DOCS`), paths given as str, one progress bar,
and searches that find the index's encoder with no flags. Real parts on the tiny BERT, no mocks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from cli_run import finishing_swap
from cli_run import run_cli as _run
from cli_run import write_jsonl as _jsonl

import longdoc.encoder
from indexer import PassageIndex
from indexer.errors import IndexInputError
from longdoc.classifier import Encoded, LongDocClassifier
from longdoc.data import load_documents, resolve_documents
from longdoc.errors import ConfigError, DataError
from longdoc.indexing import (
    INDEX_WINDOW,
    build_index,
    content_hash,
    encoder_layout,
    index_documents,
    index_encoder,
    passages_from_analysis,
)
from longdoc.training import TrainConfig
from longdoc.windows import WindowConfig

FILLER = "the a of to and in is it for on with as by at from that this be are was or not "
TOPICS = {"sport": "team player goal win", "tech": "device system library model", "news": "vote bank market report"}
WINDOW = WindowConfig(max_length=32, stride=8)


def _rows(n: int, seed: int, prefix: str = "d", labels: bool = True) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = list(TOPICS)[i % 3]
        text = f"{FILLER * int(rng.integers(1, 4))} {TOPICS[label]} {FILLER * int(rng.integers(1, 4))}"
        rows.append({"id": f"{prefix}{i}", "text": text, **({"label": label} if labels else {})})
    return rows






# --------------------------------------------------------------------------------------------------- Python API


def test_build_index_from_a_labelled_jsonl_path_given_as_str(tiny_model_dir, tmp_path):
    path = _jsonl(tmp_path / "docs.jsonl", _rows(9, 0))
    index, encoded = result = build_index(str(path), encoder=str(tiny_model_dir), window=WINDOW)
    assert result.counts.added == 9 and result.counts.encoded == 9 and len(index) == result.counts.windows_added
    assert isinstance(encoded, Encoded) and len(encoded.embeddings) == len(index)
    assert index.encoder_fingerprint == encoded.fingerprint
    table = index.passages
    assert set(table["doc_id"]) == {f"d{i}" for i in range(9)}
    assert table["pred_labels"].null_count() == table.height and table["weight"].null_count() == table.height
    docs = {r["id"]: r for r in _rows(9, 0)}
    for row in table.iter_rows(named=True):
        assert row["labels"] == [docs[row["doc_id"]]["label"]]
        assert row["text"] == docs[row["doc_id"]]["text"][row["char_start"] : row["char_end"]]
        assert row["content_hash"] == content_hash(docs[row["doc_id"]]["text"])
    assert index.attributes["window"] == WINDOW.to_dict()
    assert index.attributes["encoder"] == {"source": "path", "path": str(Path(tiny_model_dir).resolve()),
                                           "pooling": "mean", "normalize": True}
    assert "label_map" not in index.attributes

    hits = index.search("team player goal", k=9)
    assert len(hits) == 9
    sport = index.search("team player goal", k=9, labels=["sport"])
    assert {h.doc_id for h in sport} == {"d0", "d3", "d6"}

    index.save(tmp_path / "index")
    index.close()
    loaded = PassageIndex.load(tmp_path / "index")
    query_encoder = index_encoder(loaded, device="cpu")
    assert query_encoder.fingerprint == loaded.encoder_fingerprint and query_encoder.window == WINDOW
    assert index_encoder(tmp_path / "index", device="cpu").fingerprint == loaded.encoder_fingerprint


def test_build_index_without_labels_and_the_default_window(tiny_model_dir):
    rows = _rows(6, 1, labels=False)
    index, _ = build_index(rows, encoder=str(tiny_model_dir))
    assert index.attributes["window"] == INDEX_WINDOW.to_dict() == {"max_length": 256, "stride": 64,
                                                                   "max_windows": None}
    assert index.passages["labels"].null_count() == len(index)
    assert len(index.search("vote bank", k=3)) == 3
    with pytest.raises(IndexInputError, match="unknown label"):  # no gold labels and no predictions to filter on
        index.search("vote bank", k=3, labels=["news"])


def test_build_index_updates_and_refuses_another_window(tiny_model_dir, tmp_path):
    docs = load_documents(_rows(8, 2))
    index, _ = build_index(docs, encoder=str(tiny_model_dir), window=WINDOW)
    index.save(tmp_path / "index")
    index.close()
    loaded = PassageIndex.load(tmp_path / "index")  # no encoder given: build_index loads the recorded one
    more = pl.concat([docs, load_documents(_rows(3, 3, prefix="n"))])
    index2, encoded = result = build_index(more, index=loaded)
    c = result.counts
    assert (c.added, c.unchanged, c.encoded) == (3, 8, 3)
    assert sorted(encoded.documents["doc_id"].to_list()) == ["n0", "n1", "n2"]
    assert len(index2.doc_ids) == 11 and index2.attributes["window"] == WINDOW.to_dict()
    with pytest.raises(ConfigError, match="window geometry"):
        build_index(more, index=index2, window=WindowConfig(max_length=64, stride=16))
    pruned = build_index(docs.head(5), index=index2, prune=True)
    assert pruned.counts.removed == 6 and pruned.counts.encoded == 0 and len(index2.doc_ids) == 5


def test_a_str_that_looks_like_a_path_is_read_or_refused(tiny_model_dir, tmp_path, monkeypatch):
    path = _jsonl(tmp_path / "docs.jsonl", _rows(4, 4))
    assert resolve_documents(str(path)) == path
    assert resolve_documents("team player goal win") == "team player goal win"  # a text stays a text
    for missing in (str(tmp_path / "nope.jsonl"), "data/docs.parquet", "corpus/part-0", "my docs.csv"):
        with pytest.raises(DataError, match="looks like a path") as info:
            build_index(missing, encoder=str(tiny_model_dir), window=WINDOW)
        assert repr(missing) in str(info.value) and "to index this string as the text of one document" in str(info.value)
    monkeypatch.chdir(tmp_path)
    index, _ = build_index("docs.jsonl", encoder=str(tiny_model_dir), window=WINDOW)  # relative, read like a Path
    assert sorted(index.doc_ids) == ["d0", "d1", "d2", "d3"]
    index, _ = build_index(["nope.jsonl"], encoder=str(tiny_model_dir), window=WINDOW)  # a list: texts, as asked
    assert index.passages["text"].to_list() == ["nope.jsonl"]


# --------------------------------------------------------------------------------------------------- the classifier


@pytest.fixture(scope="module")
def clf(tiny_model_dir):
    rows = _rows(24, 5)
    model = LongDocClassifier.from_encoder(tiny_model_dir, labels=list(TOPICS), window=WINDOW, device="cpu")
    model.fit([r["text"] for r in rows], [r["label"] for r in rows], args=TrainConfig(epochs=2, batch_size=8),
              show_progress_bar=False)
    return model


def test_index_documents_reads_a_path_given_as_str(clf, tmp_path):
    path = _jsonl(tmp_path / "docs.jsonl", _rows(5, 6))
    index, analysis = index_documents(clf, str(path))
    assert sorted(index.doc_ids) == [f"d{i}" for i in range(5)] and analysis.probs.shape == (5, 3)
    with pytest.raises(DataError, match="looks like a path"):
        index_documents(clf, str(tmp_path / "missing.jsonl"))


def test_the_classifier_route_gives_the_index_it_gave_before(clf):
    docs = load_documents(_rows(10, 7))
    index, analysis = index_documents(clf, docs)
    # what index_documents built before this change: the analysis' passages and embeddings, added as they are
    expected = passages_from_analysis(clf.analyze(docs, show_progress_bar=False), clf)
    reference = PassageIndex(clf.encoder.dim, encoder=clf.encoder)
    reference.add(clf.analyze(docs, show_progress_bar=False).embeddings, expected)
    assert index.passages.drop("row_id").equals(reference.passages.drop("row_id"))
    np.testing.assert_allclose(index.vectors(), reference.vectors(), atol=1e-5)
    assert index.passages["pred_labels"].null_count() == 0
    assert index.attributes["label_map"] == list(TOPICS) and index.attributes["window"] == WINDOW.to_dict()
    assert index.attributes["encoder"]["source"] == "path"
    with pytest.raises(ConfigError, match="window geometry"):
        other = PassageIndex(clf.encoder.dim, encoder=clf.encoder)
        other.attributes = {"window": INDEX_WINDOW.to_dict()}
        index_documents(clf, docs, index=other)


def test_a_classifier_free_index_takes_a_classifier_update_with_the_same_encoder(clf):
    docs = load_documents(_rows(6, 8))
    index, _ = build_index(docs.head(3), encoder=clf.encoder, window=WINDOW)
    result = index_documents(clf, docs, index=index)
    assert (result.counts.added, result.counts.unchanged) == (3, 3)
    labelled = index.passages.filter(pl.col("pred_labels").is_not_null())["doc_id"].unique().to_list()
    assert sorted(labelled) == ["d3", "d4", "d5"]


# --------------------------------------------------------------------------------------------------- progress


def test_one_progress_bar_over_the_whole_collection(tiny_model_dir, capsys, monkeypatch):
    monkeypatch.setattr(longdoc.encoder, "_BAR_DELAY", 0.0)  # draw at once, not after 2 s
    texts = [f"{FILLER * (1 + i % 5)} {TOPICS['sport']}" for i in range(1100)]  # 3 chunks of 512 documents
    capsys.readouterr()
    index, _ = build_index(texts, encoder=str(tiny_model_dir), window=WINDOW, progress=True)
    err = capsys.readouterr().err
    frames = [f for f in err.replace("\r", "\n").split("\n") if f.startswith("encode")]
    assert frames, err
    assert not any(f.startswith("encode windows") or f.startswith("encode documents") for f in frames)
    assert "win/s" in frames[-1] and f"{len(index)}/{len(index)}" in frames[-1] and "1100/1100 docs" in frames[-1]
    totals = {int(f.split("/")[1].split()[0]) for f in frames if "%|" in f}
    assert max(totals) <= len(index) * 1.5  # one total for the collection, never one per chunk
    build_index(texts[:50], encoder=str(tiny_model_dir), window=WINDOW)  # the Python default: no bar
    assert "encode" not in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------- command line


def test_cli_index_without_a_classifier_then_search_with_no_flags(tiny_model_dir, tmp_path, capsys):
    docs = _jsonl(tmp_path / "docs.jsonl", _rows(9, 9))
    out = str(tmp_path / "index")
    code, stdout, err = _run(capsys, "index", str(docs), "-o", out, "--encoder", str(tiny_model_dir),
                             "--max-length", "32", "--stride", "8", "--json")
    assert code == 0, err
    data = json.loads(stdout)
    assert data["added"] == 9 and data["documents"] == 9 and data["window"] == WINDOW.to_dict()
    assert "Loading weights" not in err

    code, stdout, err = _run(capsys, "search", out, "team player goal", "-k", "3", "--json")
    assert code == 0, err
    assert "Loading weights" not in err
    hits = json.loads(stdout)[0]["hits"]
    assert len(hits) == 3
    code, stdout, err = _run(capsys, "search", out, "team player goal", "-k", "9", "--label", "tech", "--json")
    assert code == 0, err
    hits = json.loads(stdout)[0]["hits"]
    assert {h["doc_id"] for h in hits} == {"d1", "d4", "d7"} and all(h["labels"] == ["tech"] for h in hits)

    # a second run with more documents: only the new ones are encoded, with the recorded encoder and windows
    more = _jsonl(tmp_path / "more.jsonl", _rows(9, 9) + _rows(4, 10, prefix="n"))
    code, stdout, err = _run(capsys, "index", str(more), "-o", out, "--quiet", "--json")
    assert code == 0, err
    data = json.loads(stdout)
    assert (data["added"], data["unchanged"], data["encoded"], data["documents"]) == (4, 9, 4, 13)
    assert data["window"] == WINDOW.to_dict()
    code, _, err = _run(capsys, "index", str(more), "-o", out, "--max-length", "64", "--quiet")
    assert code == 2 and "window" in err and len(err.strip().splitlines()) == 1


def test_an_index_that_records_no_window_geometry_is_never_updated_with_a_guess(tiny_model_dir, tmp_path, capsys):
    docs = _jsonl(tmp_path / "docs.jsonl", _rows(4, 14))
    out = tmp_path / "index"
    code, _, err = _run(capsys, "index", str(docs), "-o", str(out), "--encoder", str(tiny_model_dir),
                        "--max-length", "32", "--stride", "8", "--quiet")
    assert code == 0, err
    with PassageIndex.load(out, lock=True) as old:  # as an older version wrote it: no "window" attribute
        old.attributes = {k: v for k, v in old.attributes.items() if k != "window"}
        old.save(out)
    more = _jsonl(tmp_path / "more.jsonl", _rows(4, 14) + _rows(2, 15, prefix="n"))
    for flags in ([], ["--max-length", "32"]):
        code, stdout, err = _run(capsys, "index", str(more), "-o", str(out), "--quiet", *flags)
        assert code == 2 and stdout == ""
        assert "records no window geometry" in err and "--max-length and --stride" in err
    with PassageIndex.load(out) as loaded:
        assert len(loaded.doc_ids) == 4 and "window" not in loaded.attributes  # untouched
        with pytest.raises(ConfigError, match="records no window geometry"):
            build_index(load_documents(more), index=loaded)
    code, stdout, err = _run(capsys, "index", str(more), "-o", str(out), "--max-length", "32", "--stride", "8",
                             "--quiet", "--json")
    assert code == 0, err
    data = json.loads(stdout)
    assert (data["added"], data["unchanged"]) == (2, 4) and data["window"] == WINDOW.to_dict()  # recorded now


def test_cli_index_without_labels(tiny_model_dir, tmp_path, capsys):
    docs = _jsonl(tmp_path / "docs.jsonl", _rows(5, 11, labels=False))
    out = str(tmp_path / "index")
    code, stdout, err = _run(capsys, "index", str(docs), "-o", out, "--encoder", str(tiny_model_dir), "--quiet")
    assert code == 0, err
    assert stdout.startswith(f"built {out}: 5 added")
    code, stdout, err = _run(capsys, "search", out, "vote bank", "-k", "2", "--quiet", "--json")
    assert code == 0 and len(json.loads(stdout)[0]["hits"]) == 2
    assert PassageIndex.load(out).attributes["window"] == INDEX_WINDOW.to_dict()


def test_a_search_with_no_flags_waits_for_a_swap_in_progress(tiny_model_dir, tmp_path, capsys):
    """The index directory is between the two renames of a fallback swap: a search without --model (which reads
    the encoder the manifest records) waits for the second rename, as loading the index does."""
    docs = _jsonl(tmp_path / "docs.jsonl", _rows(5, 11))
    out = tmp_path / "index"
    code, _, err = _run(capsys, "index", str(docs), "-o", str(out), "--encoder", str(tiny_model_dir), "--quiet")
    assert code == 0, err
    with finishing_swap(out):
        code, stdout, err = _run(capsys, "search", str(out), "vote bank", "-k", "2", "--quiet", "--json")
    assert code == 0, err
    assert len(json.loads(stdout)[0]["hits"]) == 2


def test_cli_index_tells_which_argument_is_wrong(tiny_model_dir, clf, tmp_path, capsys):
    docs = str(_jsonl(tmp_path / "docs.jsonl", _rows(3, 12)))
    clf.save(tmp_path / "model")
    model, out = str(tmp_path / "model"), str(tmp_path / "index")
    code, _, err = _run(capsys, "index", model, "-o", out, "--quiet")
    assert code == 2 and "model directory" in err and "DOCUMENTS" in err
    code, _, err = _run(capsys, "index", str(tiny_model_dir), "-o", out, "--quiet")
    assert code == 2 and "encoder checkpoint" in err and "--encoder" in err
    code, _, err = _run(capsys, "index", str(tmp_path / "missing.jsonl"), "-o", out, "--quiet")
    assert code == 2 and "not found" in err and "missing.jsonl" in err
    code, _, err = _run(capsys, "index", model, docs, "-o", out, "--encoder", str(tiny_model_dir), "--quiet")
    assert code == 2 and "--encoder" in err and "classifier" in err
    code, _, err = _run(capsys, "index", docs, "-o", out, "--engine", "ray", "--quiet")
    assert code == 2 and "--engine ray" in err
    code, _, err = _run(capsys, "index", docs, docs, "-o", out, "--quiet")
    assert code == 3 and "is not a model directory" in err and "longdoc index DOCUMENTS -o OUT" in err
    code, _, err = _run(capsys, "index", model, docs, docs, "-o", out, "--quiet")
    assert code == 2 and "3 arguments" in err
    code, _, err = _run(capsys, "index", docs, "-o", out, "--encoder", str(tmp_path / "no-encoder"), "--quiet")
    assert code == 3 and "no-encoder" in err
    assert not Path(out).exists()

    # the classifier route, and its index searched with no --model (the index records the model's encoder)
    code, stdout, err = _run(capsys, "index", model, docs, "-o", out, "--quiet", "--json")
    assert code == 0, err
    assert json.loads(stdout)["added"] == 3
    code, stdout, err = _run(capsys, "search", out, "vote bank", "-k", "1", "--label", "news", "--json")
    assert code == 0, err
    assert "Loading weights" not in err and json.loads(stdout)[0]["hits"][0]["doc_id"] == "d2"


def test_a_sentence_transformers_directory_gives_its_pooling_and_normalisation(tiny_model_dir, tmp_path):
    import shutil

    st = tmp_path / "st"
    shutil.copytree(tiny_model_dir, st / "0_Transformer")
    (st / "1_Pooling").mkdir()
    (st / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32,
                                                              "pooling_mode_cls_token": True,
                                                              "pooling_mode_mean_tokens": False}))
    (st / "config.json").write_text("{}")
    (st / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "0_Transformer", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]))
    assert (encoder_layout(st), encoder_layout(tiny_model_dir), encoder_layout(st / "1_Pooling")) == (
        "sentence-transformers", "checkpoint", None)
    index, _ = build_index(_rows(3, 13), encoder=str(st), window=WINDOW)
    assert index.encoder.pooling == "cls" and index.encoder.normalize is False
    assert index.attributes["encoder"] == {"source": "path", "path": str((st / "0_Transformer").resolve()),
                                           "pooling": "cls", "normalize": False}
    assert index_encoder(index).fingerprint == index.encoder_fingerprint
    (st / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_max_tokens": True}))
    with pytest.raises(ConfigError, match="max_tokens"):
        build_index(_rows(3, 13), encoder=str(st), window=WINDOW)


def test_the_packaged_minilm_by_default_and_a_search_with_no_flags(minilm_dir, tmp_path, capsys):
    docs = _jsonl(tmp_path / "docs.jsonl", [
        {"id": "chmod", "text": "chmod changes the file mode bits of each given file", "label": "1"},
        {"id": "socket", "text": "setsockopt sets a receive timeout on a network socket", "label": "2"},
        {"id": "tar", "text": "tar stores many files together in a single archive", "label": "1"},
    ])
    out = str(tmp_path / "index")
    code, stdout, err = _run(capsys, "index", str(docs), "-o", out, "--quiet", "--json")
    assert code == 0, err
    attributes = PassageIndex.load(out).attributes
    assert attributes["encoder"] == {"source": "packaged", "pooling": "mean", "normalize": True}
    assert attributes["window"] == INDEX_WINDOW.to_dict()
    code, stdout, err = _run(capsys, "search", out, "change file permissions", "-k", "1", "--json")
    assert code == 0, err
    assert "Loading weights" not in err and json.loads(stdout)[0]["hits"][0]["doc_id"] == "chmod"
    code, stdout, err = _run(capsys, "search", out, "time out a network connection", "-k", "1", "--label", "1",
                             "--json")
    assert code == 0 and json.loads(stdout)[0]["hits"][0]["doc_id"] in {"chmod", "tar"}
