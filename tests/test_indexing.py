"""Encode once, use twice: index_documents labels and indexes in one pass; updates re-encode only changes."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from indexer import PassageIndex
from longdoc.classifier import LongDocClassifier
from longdoc.data import documents_from_texts
from longdoc.errors import ConfigError
from longdoc.indexing import content_hash, index_documents, passages_from_analysis
from longdoc.training import TrainConfig
from longdoc.windows import WindowConfig

FILLER = "the a of to and in is it for on with as by at from that this be are was or not "
TOPICS = {"sport": "team player goal win", "tech": "device system library model", "news": "vote bank market report"}


def _texts(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(n):
        label = list(TOPICS)[i % 3]
        texts.append(f"{FILLER * int(rng.integers(1, 4))} {TOPICS[label]} {FILLER * int(rng.integers(1, 4))}")
        labels.append(label)
    return texts, labels


@pytest.fixture(scope="module")
def clf(tiny_model_dir):
    texts, labels = _texts(24)
    model = LongDocClassifier.from_encoder(tiny_model_dir, labels=list(TOPICS), window=WindowConfig(max_length=32, stride=8),
                                           device="cpu")
    model.fit(texts, labels, args=TrainConfig(epochs=3, batch_size=8), show_progress_bar=False)
    return model


class _Counting:
    """Wraps ``encoder.encode_documents`` to count the documents it encodes."""

    def __init__(self, encoder):
        self.encoder, self.original, self.documents = encoder, encoder.encode_documents, 0

    def __enter__(self):
        def counted(docs, **kw):
            self.documents += docs.height if isinstance(docs, pl.DataFrame) else len(docs)
            return self.original(docs, **kw)

        self.encoder.encode_documents = counted
        return self

    def __exit__(self, *exc):
        del self.encoder.encode_documents


def _docs(texts, labels, ids):
    return documents_from_texts(texts, labels, ids=ids)


def test_passages_from_analysis_columns_and_exact_slices(clf):
    texts, labels = _texts(6)
    docs = _docs(texts, labels, [f"d{i}" for i in range(6)]).with_columns(pl.lit("src").alias("source"),
                                                                          pl.lit(1).alias("weight"))
    analysis = clf.analyze(docs, show_progress_bar=False)
    table = passages_from_analysis(analysis, clf)
    assert table.height == len(analysis.embeddings)
    assert table.columns[:10] == ["doc_id", "window_index", "char_start", "char_end", "text", "labels",
                                  "pred_labels", "pred_probs", "weight", "content_hash"]
    assert "source" in table.columns and "meta_weight" in table.columns  # a clashing metadata name is renamed
    by_id = dict(zip(docs["doc_id"], docs["text"], strict=True))
    for row in table.iter_rows(named=True):
        assert row["text"] == by_id[row["doc_id"]][row["char_start"] : row["char_end"]]
        assert row["content_hash"] == content_hash(by_id[row["doc_id"]])
        assert row["pred_labels"][0] in TOPICS and len(row["pred_probs"]) == 3
    sums = table.group_by("doc_id").agg(pl.col("weight").sum())["weight"].to_numpy()
    assert np.allclose(sums, 1.0, atol=1e-5)


def test_update_reencodes_only_new_and_changed_documents(clf, tmp_path):
    texts, labels = _texts(9)
    ids = [f"d{i}" for i in range(9)]
    with _Counting(clf.encoder) as count:
        index, analysis = result = index_documents(clf, _docs(texts, labels, ids), show_progress_bar=False)
    assert count.documents == 9 and result.counts.added == 9 and result.counts.encoded == 9
    assert analysis.probs.shape == (9, 3) and len(index) == len(analysis.embeddings)
    assert index.encoder is clf.encoder
    index.save(tmp_path / "index")
    index.close()

    # edit d1, add d9, delete d2
    edited = "the unique zebra marker " + texts[1]
    texts2 = [edited if i == "d1" else t for i, t in zip(ids, texts, strict=True)]
    texts2, labels2, ids2 = texts2 + [texts[0] + " goal"], labels + ["sport"], ids + ["d9"]
    keep = [i != 2 for i in range(10)]
    docs2 = _docs([t for t, k in zip(texts2, keep, strict=True) if k], [x for x, k in zip(labels2, keep, strict=True) if k],
                  [x for x, k in zip(ids2, keep, strict=True) if k])
    loaded = PassageIndex.load(tmp_path / "index", encoder=clf.encoder)
    with _Counting(clf.encoder) as count:
        index2, analysis2 = result = index_documents(clf, docs2, index=loaded, prune=True, show_progress_bar=False)
    assert count.documents == 2, "only the edited and the new document are encoded"
    assert (result.counts.added, result.counts.updated, result.counts.unchanged, result.counts.removed) == (1, 1, 7, 1)
    assert sorted(analysis2.documents["doc_id"].to_list()) == ["d1", "d9"]
    assert "d2" not in index2.doc_ids and "d9" in index2.doc_ids
    d1 = index2.passages.filter(pl.col("doc_id") == "d1")
    assert d1["content_hash"].unique().to_list() == [content_hash(edited)]
    assert any("zebra" in t for t in d1["text"].to_list())
    hits = index2.search("the unique zebra marker", k=3, mode="hybrid")
    assert hits[0].doc_id == "d1"
    # the label filter works on gold labels
    assert {h.doc_id for h in index2.search("goal", k=9, labels=["sport"])} <= {f"d{i}" for i in (0, 3, 6, 9)}

    # a third pass with nothing changed encodes nothing; without prune nothing is removed
    with _Counting(clf.encoder) as count:
        _, _ = result = index_documents(clf, docs2.head(3), index=index2, show_progress_bar=False)
    assert count.documents == 0 and result.counts.unchanged == 3 and result.counts.removed == 0


def test_reuses_an_encoded_pass_without_encoding_again(clf):
    texts, labels = _texts(5)
    encoded = clf.encode(_docs(texts, labels, [f"e{i}" for i in range(5)]), show_progress_bar=False)
    with _Counting(clf.encoder) as count:
        index, analysis = index_documents(clf, encoded)
    assert count.documents == 0
    assert len(index) == len(encoded.embeddings) and analysis.probs.shape == (5, 3)


def test_an_analysis_cut_with_other_windows_is_refused(clf, tiny_model_dir):
    texts, labels = _texts(3)
    analysis = clf.analyze(_docs(texts, labels, ["w0", "w1", "w2"]), show_progress_bar=False)
    assert analysis.window == clf.window
    wider = LongDocClassifier.from_encoder(tiny_model_dir, labels=list(TOPICS),
                                           window=WindowConfig(max_length=64, stride=16), device="cpu")
    with pytest.raises(ConfigError, match="cut with windows") as info:
        index_documents(wider, analysis)
    assert str(clf.window.to_dict()) in str(info.value) and str(wider.window.to_dict()) in str(info.value)
    index, _ = index_documents(clf, analysis)  # the classifier that cut it
    assert index.doc_ids == ["w0", "w1", "w2"]


def test_empty_document_is_labelled_but_not_indexed_and_edit_to_empty_removes_windows(clf):
    docs = _docs(["team player goal win " * 3, "   "], ["sport", "sport"], ["a", "b"])
    index, analysis = index_documents(clf, docs)
    assert index.doc_ids == ["a"] and np.isnan(analysis.probs[1]).all()
    emptied = _docs(["", "   "], ["sport", "sport"], ["a", "b"])
    index, _ = result = index_documents(clf, emptied, index=index)
    assert len(index) == 0 and result.counts.updated == 1


def test_refuses_an_index_of_another_encoder(clf):
    other = PassageIndex(dim=clf.encoder.dim)
    other._fingerprint = "0" * 32  # as if built by another model
    with pytest.raises(ConfigError, match="another encoder"):
        index_documents(clf, ["team player"], index=other)


def test_an_index_refuses_a_classifier_with_another_label_map(tiny_model_dir, tmp_path):
    from indexer import PassageIndex
    from longdoc.classifier import LongDocClassifier
    from longdoc.errors import ConfigError
    from longdoc.indexing import index_documents
    from longdoc.windows import WindowConfig

    window = WindowConfig(max_length=32, stride=8)
    first = LongDocClassifier.from_encoder(tiny_model_dir, labels=["a", "b"], window=window, device="cpu")
    index, _ = index_documents(first, ["file mode bits", "index search query"])
    index.save(tmp_path / "index")
    index.close()
    loaded = PassageIndex.load(tmp_path / "index")
    assert loaded.attributes["label_map"] == ["a", "b"]
    other = LongDocClassifier.from_encoder(tiny_model_dir, labels=["b", "a"], window=window, device="cpu")
    with pytest.raises(ConfigError, match="labels"):
        index_documents(other, ["read write run"], index=loaded)


def test_a_fine_tuned_classifier_indexes_with_the_pretrained_encoder(tiny_model_dir, tmp_path):
    from longdoc.cli import load_query_encoder

    texts, labels = _texts(12, seed=4)
    window = WindowConfig(max_length=32, stride=8)
    clf = LongDocClassifier.from_encoder(tiny_model_dir, labels=list(TOPICS), window=window, device="cpu")
    pretrained = clf.encoder.fingerprint
    assert clf.retrieval_encoder is clf.encoder  # nothing kept twice before fine-tuning
    clf.fit(texts, labels, args=TrainConfig(mode="finetune", epochs=1, batch_size=4, encoder_lr=1e-3,
                                           calibrate=False), show_progress_bar=False)
    assert clf.encoder.fingerprint != pretrained  # the classification encoder changed ...
    assert clf.retrieval_encoder.fingerprint == pretrained  # ... the index's did not

    docs = _docs(texts, labels, [f"d{i}" for i in range(12)])
    index, analysis = index_documents(clf, docs)
    assert index.encoder_fingerprint == pretrained
    expected = clf.retrieval_encoder.encode_windows(analysis.windows, show_progress_bar=False)
    hits = index.search(expected[:3], k=1, per_doc=None)
    assert [h[0].score for h in hits] == pytest.approx([1.0] * 3, abs=1e-5)  # stored vectors are the pretrained ones
    np.testing.assert_allclose(analysis.probs, clf.predict_proba(texts), atol=1e-5)  # labels from the fine-tuned

    clf.save(tmp_path / "model")
    assert (tmp_path / "model" / "retrieval_encoder").is_dir()
    loaded = LongDocClassifier.load(tmp_path / "model", device="cpu")
    assert loaded.retrieval_encoder.fingerprint == pretrained
    assert loaded.encoder.fingerprint == clf.encoder.fingerprint
    assert load_query_encoder(str(tmp_path / "model"), device="cpu").fingerprint == pretrained
    index.save(tmp_path / "index")
    PassageIndex.load(tmp_path / "index", encoder=loaded.retrieval_encoder)  # fingerprints agree

    import shutil

    shutil.rmtree(tmp_path / "model" / "retrieval_encoder")
    from longdoc.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="retrieval_encoder"):
        LongDocClassifier.load(tmp_path / "model", device="cpu")


def test_retrieval_encoder_finetuned_indexes_with_the_fine_tuned_weights(tiny_model_dir, tmp_path):
    texts, labels = _texts(6, seed=5)
    clf = LongDocClassifier.from_encoder(tiny_model_dir, labels=list(TOPICS), device="cpu",
                                         window=WindowConfig(max_length=32, stride=8))
    clf.fit(texts, labels, args=TrainConfig(mode="finetune", epochs=1, batch_size=3, calibrate=False,
                                           retrieval_encoder="finetuned"), show_progress_bar=False)
    assert clf.retrieval_encoder is clf.encoder
    index, _ = index_documents(clf, texts)
    assert index.encoder_fingerprint == clf.encoder.fingerprint
    clf.save(tmp_path / "model")
    assert not (tmp_path / "model" / "retrieval_encoder").exists()
    loaded = LongDocClassifier.load(tmp_path / "model", device="cpu")
    assert loaded.retrieval_encoder is loaded.encoder
    with pytest.raises(ConfigError, match="retrieval_encoder"):
        TrainConfig(retrieval_encoder="best")
