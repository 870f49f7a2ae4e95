"""ShardedPassageIndex: same answers as one PassageIndex, routing by doc_id, atomic save/load, refused mismatches."""

from __future__ import annotations

import json
import shutil

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from indexer import (
    IndexInputError,
    IndexLoadError,
    IndexUnsupportedError,
    PassageIndex,
    ShardedPassageIndex,
    export_vectors_parquet,
)
from indexer.sharded import load_index, shard_of

DIM = 16
LABELS = ("red", "green", "blue")


def vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def passages(n: int, *, per_doc: int = 5, prefix: str = "doc") -> pl.DataFrame:
    rows = range(n)
    return pl.DataFrame({
        "doc_id": [f"{prefix}{i // per_doc}" for i in rows],
        "window_index": [i % per_doc for i in rows],
        "char_start": [(i % per_doc) * 10 for i in rows],
        "char_end": [(i % per_doc) * 10 + 15 for i in rows],
        "text": [f"window {i}" for i in rows],
        "labels": [[LABELS[(i // per_doc) % 3]] for i in rows],
        "source": [f"s{(i // per_doc) % 4}" for i in rows],
    })


def keyed(hits) -> list[tuple[str, int, int, float]]:
    return [(h.doc_id, h.window_index, h.rank, round(h.score, 5)) for h in hits]


@pytest.fixture(scope="module")
def data():
    emb, table = vectors(600), passages(600)
    return emb, table, PassageIndex.build(emb, table), ShardedPassageIndex.build(emb, table, shards=4, workers=2)


def test_documents_are_routed_whole_by_a_stable_hash(data):
    _, table, single, sharded = data
    assert len(sharded) == len(single) == 600 and sharded.ntotal == 600
    assert sharded.doc_ids == single.doc_ids and sharded.labels == single.labels
    for i, shard in enumerate(sharded.shards):
        assert len(shard) > 0
        assert all(shard_of(d, 4) == i for d in shard.doc_ids)
    assert sum(len(s.doc_ids) for s in sharded.shards) == table["doc_id"].n_unique()
    assert shard_of("doc7", 4) == shard_of("doc7", 4)  # not salted per process: blake2b
    assert sharded.passages.height == 600 and set(sharded.passages["doc_id"]) == set(table["doc_id"])


@pytest.mark.parametrize("options", [
    {},
    {"k": 10, "per_doc": None},
    {"k": 7, "per_doc": 2},
    {"k": 5, "labels": "green"},
    {"k": 5, "labels": ["red", "blue"], "per_doc": None},
    {"k": 8, "doc_ids": ["doc3", "doc50", "doc51", "doc99", "missing"], "per_doc": 3},
    {"k": 5, "labels": ["red"], "doc_ids": ["doc0", "doc3", "doc6", "doc7"]},
    {"k": 50, "min_score": 0.3, "per_doc": None},
    {"k": 1000, "per_doc": 1},
])
def test_search_equals_one_index_on_the_same_vectors(data, options):
    _, _, single, sharded = data
    queries = vectors(12, seed=1)
    expected = single.search(queries, **options)
    found = sharded.search(queries, **options)
    assert [keyed(h) for h in found] == [keyed(h) for h in expected]
    one = sharded.search(queries[0], **options)  # a 1-D query gives one list
    assert keyed(one) == keyed(expected[0])
    assert found[0] and found[0][0].metadata["source"] == expected[0][0].metadata["source"]


def test_text_queries_use_the_encoder_once(data):
    emb, table, single, _ = data

    class Encoder:
        dim = DIM
        fingerprint = "enc-1"
        calls = 0

        def encode(self, texts):
            Encoder.calls += 1
            return vectors(len(texts), seed=len(texts[0]))

    sharded = ShardedPassageIndex.build(emb, table, shards=3, encoder=Encoder())
    single.encoder = Encoder()
    try:
        assert keyed(sharded.search("a question", k=6)) == keyed(single.search("a question", k=6))
        assert Encoder.calls == 2 and sharded.encoder_fingerprint == "enc-1"
    finally:
        single.encoder = None
    with pytest.raises(IndexUnsupportedError, match="dense"):
        sharded.search("a question", mode="hybrid")


def test_bad_queries_and_filters_are_refused(data):
    _, _, _, sharded = data
    with pytest.raises(IndexInputError, match="unknown label"):
        sharded.search(vectors(1)[0], labels="purple")
    with pytest.raises(IndexInputError, match="dimension"):
        sharded.search(np.zeros(DIM + 1, dtype=np.float32))
    with pytest.raises(IndexInputError, match="encoder"):
        sharded.search("text without an encoder")
    with pytest.raises(IndexInputError, match="k must"):
        sharded.search(vectors(1)[0], k=0)
    assert sharded.search(vectors(1)[0], doc_ids=["nobody"]) == []


def test_remove_and_upsert_go_to_the_owning_shard():
    emb, table = vectors(100), passages(100)
    single = PassageIndex.build(emb, table)
    sharded = ShardedPassageIndex.build(emb, table, shards=3)
    before = [len(s) for s in sharded.shards]
    owner = shard_of("doc4", 3)
    assert sharded.remove(doc_ids=["doc4", "unknown"]) == 5 == single.remove(doc_ids=["doc4"])
    assert [len(s) for s in sharded.shards] == [n - 5 * (i == owner) for i, n in enumerate(before)]
    new_emb = vectors(3, seed=9)
    new = pl.DataFrame({"doc_id": ["doc7"] * 2 + ["fresh"], "window_index": [0, 1, 0], "char_start": [0, 5, 0],
                        "char_end": [5, 9, 4], "text": ["a", "b", "c"], "labels": [["red"], ["red"], ["blue"]],
                        "source": ["x", "x", "y"]})
    sharded.upsert(new_emb, new)
    single.upsert(new_emb, new)
    assert len(sharded) == len(single) == 95 - 5 + 3
    seven = sharded.shards[shard_of("doc7", 3)].passages.filter(pl.col("doc_id") == "doc7")
    assert seven["window_index"].to_list() == [0, 1]
    assert "fresh" in sharded.shards[shard_of("fresh", 3)].doc_ids
    queries = vectors(6, seed=4)
    assert [keyed(h) for h in sharded.search(queries, k=9, per_doc=None)] == \
        [keyed(h) for h in single.search(queries, k=9, per_doc=None)]
    with pytest.raises(IndexInputError, match="already in the index"):
        sharded.add(new_emb, new)
    bad = new_emb.copy()
    bad[2, 0] = np.nan
    with pytest.raises(IndexInputError, match="NaN"):
        sharded.upsert(bad, new)
    assert len(sharded) == 93  # nothing changed


def test_save_load_round_trip_and_export(data, tmp_path):
    emb, table, single, sharded = data
    path = tmp_path / "idx"
    sharded.save(path)
    sharded.close()
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["kind"] == "sharded" and manifest["shards"] == 4 and manifest["count"] == 600
    assert sorted(p.name for p in path.iterdir()) == ["manifest.json"] + [f"shard-0000{i}" for i in range(4)]
    loaded = ShardedPassageIndex.load(path, mmap=True)
    queries = vectors(5, seed=3)
    assert [keyed(h) for h in loaded.search(queries, k=7, labels="blue")] == \
        [keyed(h) for h in single.search(queries, k=7, labels="blue")]
    assert isinstance(load_index(path), ShardedPassageIndex)
    on_cpu = load_index(path, device="cpu")
    assert on_cpu.device == "cpu" and all(s.device == "cpu" for s in on_cpu._shards)
    assert [keyed(h) for h in on_cpu.search(queries, k=7)] == [keyed(h) for h in single.search(queries, k=7)]
    single.save(tmp_path / "plain")
    single.close()
    assert isinstance(load_index(tmp_path / "plain"), PassageIndex)
    assert load_index(tmp_path / "plain", device="cpu").device == "cpu"
    with pytest.raises(IndexLoadError, match="single PassageIndex"):
        ShardedPassageIndex.load(tmp_path / "plain")
    loaded.save(path)  # saving over itself swaps atomically, no leftovers
    loaded.close()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    out = tmp_path / "vectors.parquet"
    assert export_vectors_parquet(loaded, out, include_text=True) == 600
    exported = pl.read_parquet(out)
    assert exported.columns == ["doc_id", "window_index", "char_start", "char_end", "labels", "pred_labels", "text",
                                "vector"]
    meta = pq.read_schema(out).metadata
    assert meta[b"longdoc.dim"] == str(DIM).encode()
    by_key = {(d, w): np.asarray(v, dtype=np.float32)
              for d, w, v in exported.select("doc_id", "window_index", "vector").iter_rows()}
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    for i, (d, w) in enumerate(table.select("doc_id", "window_index").iter_rows()):
        np.testing.assert_allclose(by_key[(d, w)], unit[i], atol=1e-6)


def test_export_refuses_layouts_without_stored_vectors(tmp_path):
    sharded = ShardedPassageIndex.build(vectors(400), passages(400), shards=2, factory="IVF4,Flat")
    with pytest.raises(IndexUnsupportedError, match="flat layouts"):
        export_vectors_parquet(sharded, tmp_path / "v.parquet")
    assert not list(tmp_path.iterdir())


def test_mismatched_or_damaged_directories_are_refused(data, tmp_path):
    _, _, _, sharded = data
    a, b = tmp_path / "a", tmp_path / "b"
    sharded.save(a)
    other = ShardedPassageIndex.build(vectors(50, seed=5), passages(50), shards=4)
    other.save(b)
    for idx in (sharded, other):
        idx.close()

    swapped = tmp_path / "swapped"
    shutil.copytree(a, swapped)
    shutil.rmtree(swapped / "shard-00001")
    shutil.copytree(b / "shard-00001", swapped / "shard-00001")  # a shard from another save
    with pytest.raises(IndexLoadError, match="shard-00001.*different save"):
        ShardedPassageIndex.load(swapped)

    missing = tmp_path / "missing"
    shutil.copytree(a, missing)
    shutil.rmtree(missing / "shard-00002")
    with pytest.raises(IndexLoadError, match="shard-00002"):
        ShardedPassageIndex.load(missing)

    wrong_count = tmp_path / "count"
    shutil.copytree(a, wrong_count)
    m = json.loads((wrong_count / "manifest.json").read_text())
    m["shards"] = 3
    (wrong_count / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IndexLoadError, match="lists 4 shards"):
        ShardedPassageIndex.load(wrong_count)

    class Encoder:
        dim = DIM
        fingerprint = "someone-else"

        def encode(self, texts):
            return vectors(len(texts))

    fp = tmp_path / "fp"
    ShardedPassageIndex.build(vectors(20), passages(20), shards=2, encoder=Encoder()).save(fp)
    Encoder.fingerprint = "another"
    with pytest.raises(IndexLoadError, match="fingerprint"):
        ShardedPassageIndex.load(fp, encoder=Encoder())
    with pytest.raises(IndexLoadError, match="does not exist"):
        ShardedPassageIndex.load(tmp_path / "nothing")
    (tmp_path / "notindex").mkdir()
    (tmp_path / "notindex" / "data.txt").write_text("x")
    with pytest.raises(IndexInputError, match="not an index"):
        sharded.save(tmp_path / "notindex")
