"""PassageIndex: exactness against numpy brute force, filters, grouping, changes, persistence, bad input."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from indexer import (
    Hit,
    IndexInputError,
    IndexLoadError,
    IndexLockedError,
    IndexUnsupportedError,
    PassageIndex,
    ShardedPassageIndex,
)

DIM = 32


# -- helpers ---------------------------------------------------------------------------------------------------
def vectors(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered(n: int, dim: int, *, clusters: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim)).astype(np.float32)
    points = centers[rng.integers(0, clusters, n)] + 0.35 * rng.standard_normal((n, dim)).astype(np.float32)
    return unit(points).astype(np.float32)


def passages(n: int, *, per_doc: int = 4, prefix: str = "d", start: int = 0, labels: bool = True) -> pl.DataFrame:
    """Windows of 20 characters overlapping by 5, doc i // per_doc; labels: even docs 'even', odd 'odd'."""
    rows = range(start, start + n)
    data: dict[str, list] = {
        "doc_id": [f"{prefix}{i // per_doc}" for i in rows],
        "window_index": [i % per_doc for i in rows],
        "char_start": [(i % per_doc) * 15 for i in rows],
        "char_end": [(i % per_doc) * 15 + 20 for i in rows],
        "text": [f"window {i:013d}" for i in rows],
    }
    if labels:
        data["labels"] = [["even" if (i // per_doc) % 2 == 0 else "odd"] for i in rows]
    return pl.DataFrame(data)


def key(hit: Hit) -> tuple[str, int]:
    return hit.doc_id, hit.window_index


def brute(index_vectors: np.ndarray, table: pl.DataFrame, query: np.ndarray, k: int,
          allowed: np.ndarray | None = None) -> list[tuple[str, int, float]]:
    """Exact top-k (doc_id, window_index, score) by numpy over the rows of ``table`` (same order as vectors)."""
    scores = unit(index_vectors) @ unit(query[None, :])[0]
    rows = np.arange(len(scores)) if allowed is None else np.flatnonzero(allowed)
    order = rows[np.argsort(-scores[rows], kind="stable")][:k]
    docs, wins = table["doc_id"].to_list(), table["window_index"].to_list()
    return [(docs[i], wins[i], float(scores[i])) for i in order]


def check_consistent(index: PassageIndex) -> None:
    assert index.ntotal == len(index) == index.passages.height
    assert index.passages["row_id"].is_unique().all()


class HashEncoder:
    """A deterministic bag-of-words encoder: every word hashes to a signed coordinate."""

    def __init__(self, dim: int = DIM, fingerprint: str = "hash-bow") -> None:
        self.dim = dim
        self.fingerprint = fingerprint

    def encode(self, texts: list[str]) -> np.ndarray:
        import zlib

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            out[row, 0] = 1e-3
            for word in text.lower().split():
                h = zlib.crc32(word.encode())
                out[row, h % self.dim] += 1.0 if (h >> 16) & 1 else -1.0
        return out


# -- exactness -------------------------------------------------------------------------------------------------
def test_flat_search_equals_numpy_brute_force():
    X, table = vectors(600), passages(600)
    index = PassageIndex.build(X, table)
    assert index.layout == "Flat"
    queries = vectors(25, seed=1)
    results = index.search(queries, k=10, per_doc=None)
    assert len(results) == 25
    for q, hits in zip(queries, results, strict=True):
        expected = brute(X, table, q, 10)
        assert [key(h) for h in hits] == [(d, w) for d, w, _ in expected]
        np.testing.assert_allclose([h.score for h in hits], [s for _, _, s in expected], rtol=1e-5, atol=1e-5)
        assert [h.rank for h in hits] == list(range(1, 11))


def test_unnormalized_inner_product():
    X, table = vectors(100), passages(100)
    index = PassageIndex.build(X, table, normalize=False)
    q = vectors(1, seed=3)[0]
    hits = index.search(q, k=5, per_doc=None)
    raw = X @ q
    order = np.argsort(-raw)[:5]
    assert [h.score for h in hits] == pytest.approx(raw[order].tolist(), rel=1e-5)


@pytest.mark.parametrize("how", ["auto", "factory"])
def test_ivf_recall_at_10_against_exact(how):
    X = clustered(12_000, DIM)
    table = passages(12_000, per_doc=1)
    if how == "auto":
        index = PassageIndex.build(X, table, ivf_threshold=5_000)
        assert index.layout.startswith("IVF")
    else:
        index = PassageIndex.build(X, table, factory="IVF128,Flat")
    check_consistent(index)
    queries = clustered(200, DIM, seed=7)
    exact = PassageIndex.build(X, table)
    got = index.search(queries, k=10, per_doc=None)
    want = exact.search(queries, k=10, per_doc=None)
    recall = np.mean([len({key(h) for h in g} & {key(h) for h in w}) / 10 for g, w in zip(got, want, strict=True)])
    assert recall >= 0.95, f"recall@10={recall:.3f} with nprobe={index.nprobe}"


def test_fp16_storage_finds_each_vector():
    X, table = vectors(300), passages(300)
    index = PassageIndex.build(X, table, fp16=True)
    assert index.layout == "SQfp16"
    hits = index.search(X[:50], k=1, per_doc=None)
    assert [key(h[0]) for h in hits] == [tuple(r) for r in table.select("doc_id", "window_index").head(50).iter_rows()]
    with pytest.raises(IndexInputError, match="fp16"):
        PassageIndex(DIM, factory="IVF16,Flat", fp16=True)


def test_auto_layout_switches_to_ivf_at_threshold(tmp_path):
    index = PassageIndex(DIM, ivf_threshold=2_000, nprobe=64)
    X = clustered(2_400, DIM)
    index.add(X[:1_500], passages(1_500))
    assert index.layout == "Flat"
    index.add(X[1_500:], passages(900, start=1_500))
    assert index.layout.startswith("IVF") and index.nprobe is not None
    check_consistent(index)
    hits = index.search(X[:100], k=1, per_doc=None)
    assert sum(key(h[0]) == (f"d{i // 4}", i % 4) for i, h in enumerate(hits)) >= 97
    index.save(tmp_path / "ix")
    loaded = PassageIndex.load(tmp_path / "ix")
    assert loaded.layout == index.layout and loaded.nprobe == index.nprobe
    assert [key(h[0]) for h in loaded.search(X[:20], k=1)] == [key(h[0]) for h in index.search(X[:20], k=1)]
    index.close()


# -- filters and grouping -----------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [400, 9_000])  # 9,000 rows: the allowed set is large enough for a bitmap selector
def test_label_filter_is_exact_top_k_among_allowed(n):
    X, table = vectors(n), passages(n)
    index = PassageIndex.build(X, table)
    allowed = np.array(["even" in labs for labs in table["labels"].to_list()])
    for q in vectors(10, seed=2):
        hits = index.search(q, k=8, labels=["even"], per_doc=None)
        assert all(h.labels == ("even",) for h in hits)
        assert [key(h) for h in hits] == [(d, w) for d, w, _ in brute(X, table, q, 8, allowed)]


def test_doc_filter_and_combined_filters():
    X, table = vectors(400), passages(400)
    index = PassageIndex.build(X, table)
    docs = ["d3", "d4", "d10", "nope"]
    q = vectors(1, seed=5)[0]
    hits = index.search(q, k=50, doc_ids=docs, per_doc=None)
    assert {h.doc_id for h in hits} <= {"d3", "d4", "d10"} and len(hits) == 12
    mask = table["doc_id"].is_in(docs).to_numpy()
    assert [key(h) for h in hits] == [(d, w) for d, w, _ in brute(X, table, q, 50, mask)]
    both = index.search(q, k=50, doc_ids=docs, labels="even", per_doc=None)
    assert {h.doc_id for h in both} == {"d4", "d10"}
    assert index.search(q, k=5, doc_ids=["nope"]) == []
    assert index.search(q, k=5, doc_ids="d3", per_doc=None)[0].doc_id == "d3"  # a str is one id


def test_filter_inside_ivf_is_exact_with_full_probe():
    X, table = clustered(4_000, DIM), passages(4_000)
    index = PassageIndex.build(X, table, factory="IVF32,Flat")
    index.nprobe = 32
    allowed = np.array(["odd" in labs for labs in table["labels"].to_list()])
    for q in clustered(5, DIM, seed=9):
        hits = index.search(q, k=10, labels=["odd"], per_doc=None)
        assert [key(h) for h in hits] == [(d, w) for d, w, _ in brute(X, table, q, 10, allowed)]


def test_unknown_label_lists_known_labels():
    index = PassageIndex.build(vectors(40), passages(40))
    with pytest.raises(IndexInputError, match=r"unknown label\(s\) \['contract'\].*known labels: \['even', 'odd'\]"):
        index.search(vectors(1)[0], labels=["contract"])


def test_labels_fall_back_to_predicted_labels():
    table = passages(8, per_doc=2, labels=False).with_columns(
        pl.Series("labels", [["gold"], ["gold"], None, None, None, None, [], []], dtype=pl.List(pl.String)),
        pl.Series("pred_labels", [["p1"], ["p1"], ["p1"], ["p1"], ["p2"], ["p2"], ["p2"], ["p2"]]),
    )
    index = PassageIndex.build(vectors(8), table)
    q = vectors(1, seed=1)[0]
    assert {h.doc_id for h in index.search(q, k=10, labels="p1")} == {"d1"}  # d0 has gold labels
    assert {h.doc_id for h in index.search(q, k=10, labels="gold")} == {"d0"}
    assert {h.doc_id for h in index.search(q, k=10, labels="p2")} == {"d2"}  # d3's gold list is empty
    hit = index.search(q, k=10, doc_ids="d1")[0]
    assert hit.labels == ("p1",) and hit.pred_labels == ("p1",)
    assert index.labels == ["gold", "p1", "p2"]


def test_per_doc_grouping():
    X, table = vectors(800), passages(800, per_doc=8)
    index = PassageIndex.build(X, table)
    docs = table["doc_id"].to_numpy()
    for q in vectors(5, seed=4):
        full = brute(X, table, q, len(X))
        one = index.search(q, k=10, doc_score="max")
        expected_docs = list(dict.fromkeys(d for d, _, _ in full))[:10]
        assert [h.doc_id for h in one] == expected_docs
        assert all(h.window_index == next(w for d, w, _ in full if d == h.doc_id) for h in one)
        two = index.search(q, k=10, per_doc=2, doc_score="max")
        counts: dict[str, int] = {}
        expected = []
        for d, w, _ in full:
            if counts.get(d, 0) < 2:
                counts[d] = counts.get(d, 0) + 1
                expected.append((d, w))
        assert [key(h) for h in two] == expected[:10]
        assert len(set(docs)) == 100


def test_per_doc_when_one_document_dominates():
    # 300 near-identical windows of one document, then others: grouping must look past all of them
    X = vectors(400)
    X[:300] = X[0] + 0.01 * vectors(300, seed=9)
    table = pl.concat([passages(300, per_doc=300, prefix="big"), passages(100, per_doc=1, prefix="s", start=0)])
    index = PassageIndex.build(X, table)
    hits = index.search(X[0], k=5)
    assert hits[0].doc_id == "big0" and len({h.doc_id for h in hits}) == 5


def test_min_score_and_k_larger_than_collection():
    X, table = vectors(30), passages(30)
    index = PassageIndex.build(X, table)
    hits = index.search(X[0], k=100, per_doc=None)
    assert len(hits) == 30  # k beyond the collection returns what exists
    cut = index.search(X[0], k=100, per_doc=None, min_score=0.2)
    assert cut and all(h.score >= 0.2 for h in cut)
    assert [key(h) for h in cut] == [key(h) for h in hits if h.score >= 0.2]


def test_empty_index_and_query_shapes():
    empty = PassageIndex(DIM, encoder=HashEncoder())
    assert empty.search("anything") == []
    assert empty.search(["a", "b"]) == [[], []]
    assert empty.search(np.ones(DIM, np.float32)) == []
    index = PassageIndex.build(vectors(40), passages(40), encoder=HashEncoder())
    assert isinstance(index.search("window 1", k=3), list) and isinstance(index.search("x", k=3)[0], Hit)
    batch = index.search(["one", "two", "three"], k=3)
    assert len(batch) == 3 and all(isinstance(r, list) and len(r) == 3 for r in batch)
    assert isinstance(index.search(vectors(1)[0], k=2)[0], Hit)
    two_d = index.search(vectors(4), k=2)
    assert len(two_d) == 4 and all(len(r) == 2 for r in two_d)
    assert index.search([], k=2) == []
    assert len(index.search(("a", "b"), k=1)) == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": 0}, "k must be a positive int, got 0"),
        ({"k": -3}, "k must be"),
        ({"k": 2.5}, "k must be"),
        ({"per_doc": 0}, "per_doc must be a positive int or None"),
        ({"mode": "sparse"}, "mode must be 'dense' or 'hybrid'"),
        ({"min_score": float("nan")}, "min_score"),
        ({"labels": [3]}, "labels must hold str"),
    ],
)
def test_bad_search_arguments(kwargs, match):
    index = PassageIndex.build(vectors(20), passages(20))
    with pytest.raises(IndexInputError, match=match):
        index.search(vectors(1)[0], **kwargs)


def test_bad_queries():
    index = PassageIndex.build(vectors(20), passages(20))
    with pytest.raises(IndexInputError, match="need an encoder"):
        index.search("text without an encoder")
    assert index.search([]) == []  # an empty batch needs no encoder, like ShardedPassageIndex
    sharded = ShardedPassageIndex.build(vectors(20), passages(20), shards=2)
    assert sharded.search([]) == []
    for idx in (index, sharded):
        with pytest.raises(IndexInputError, match="holding non-str items"):
            idx.search(["a", 3])
        with pytest.raises(IndexInputError, match="need an encoder"):
            idx.search(["text"])
    with pytest.raises(IndexInputError, match="dimension 5, the index has dim=32"):
        index.search(np.ones(5, np.float32))
    with pytest.raises(IndexInputError, match="NaN or Inf"):
        index.search(np.full(DIM, np.nan, np.float32))
    with pytest.raises(IndexInputError, match="list of str, or a numpy array"):
        index.search([0.1] * DIM)
    with pytest.raises(IndexInputError, match="1-D or 2-D"):
        index.search(np.ones((1, 1, DIM), np.float32))
    with pytest.raises(IndexInputError, match="all zeros"):
        index.search(np.zeros(DIM, np.float32))
    with pytest.raises(IndexInputError, match="needs text queries"):
        index.search(np.ones(DIM, np.float32), mode="hybrid")


# -- changes ---------------------------------------------------------------------------------------------------
def test_add_upsert_remove_keep_faiss_and_table_in_step():
    index = PassageIndex(DIM)
    X = vectors(100)
    index.add(X[:40], passages(40))  # d0..d9
    check_consistent(index)
    index.add(X[40:60], passages(20, start=40))  # d10..d14
    assert len(index) == 60 and index.doc_ids == sorted(f"d{i}" for i in range(15))
    # upsert d2 with 2 windows (was 4) and a new doc
    new = pl.DataFrame({"doc_id": ["d2", "d2", "z"], "window_index": [0, 1, 0], "char_start": [0, 5, 0],
                        "char_end": [5, 9, 3], "text": ["aaaaa", "bbbb", "ccc"]})
    index.upsert(X[60:63], new)
    check_consistent(index)
    assert len(index) == 60 - 4 + 3
    assert sorted(h.window_index for h in index.search(X[60], k=10, doc_ids="d2", per_doc=None)) == [0, 1]
    assert index.search(X[60], k=1, per_doc=None)[0].doc_id == "d2"
    assert index.search(X[62], k=1)[0].doc_id == "z"
    assert index.remove(doc_ids=["d0", "d1", "ghost"]) == 8
    check_consistent(index)
    assert index.remove(doc_ids="d0") == 0
    assert "d0" not in index.doc_ids and len(index) == 51
    # removed rows are never returned and row ids are never reused
    assert all(h.doc_id not in {"d0", "d1"} for h in index.search(X[:8], k=3, per_doc=None)[0])
    before = set(index.passages["row_id"].to_list())
    index.add(X[:4], passages(4))
    assert set(index.passages["row_id"].to_list()).isdisjoint(before - set(index.passages["row_id"].to_list()))
    assert min(set(index.passages["row_id"].to_list()) - before) >= 63
    check_consistent(index)


def test_metadata_and_optional_columns_round_trip(tmp_path):
    table = passages(6, per_doc=3).with_columns(
        pl.Series("source", ["a.txt"] * 3 + ["b.txt"] * 3),
        pl.Series("weight", [0.1, 0.2, 0.7, 0.3, 0.3, 0.4]),
        pl.Series("pred_probs", [[0.9, 0.1]] * 6),
    )
    X = vectors(6)
    index = PassageIndex.build(X, table)
    # a later batch with another metadata column: both are kept, missing values are None
    index.add(vectors(2, seed=5), passages(2, prefix="e").with_columns(pl.lit(7).alias("page")))
    hit = index.search(X[2], k=1, per_doc=None)[0]
    assert hit.metadata == {"source": "a.txt", "page": None} and hit.weight == pytest.approx(0.7)
    index.save(tmp_path / "ix")
    loaded = PassageIndex.load(tmp_path / "ix")
    assert loaded.search(X[2], k=1, per_doc=None)[0] == hit
    index.close()


@pytest.mark.parametrize(
    ("embeddings", "table", "match"),
    [
        (np.full((4, DIM), np.nan, np.float32), passages(4), "NaN or Inf"),
        (np.full((4, DIM), np.inf, np.float32), passages(4), "NaN or Inf"),
        (vectors(4, dim=8), passages(4), "dimension 8, the index has dim=32"),
        (vectors(1)[0], passages(1), "must be 2-D"),
        (np.array([["a"] * DIM] * 4, dtype=object), passages(4), "float array"),
        (np.ones((4, DIM), dtype=np.int64), passages(4), "float array"),
        (vectors(5), passages(4), "embeddings has 5 rows but passages has 4"),
        (vectors(2), pl.DataFrame({"doc_id": ["a", "a"], "window_index": [0, 0], "char_start": [0, 0],
                                   "char_end": [1, 1], "text": ["x", "y"]}), "duplicate"),
        (vectors(1), pl.DataFrame({"doc_id": ["a"], "text": ["x"]}), "missing required column"),
        (vectors(1), pl.DataFrame({"doc_id": [1], "window_index": [0], "char_start": [0], "char_end": [1],
                                   "text": ["x"]}), "must hold str"),
        (vectors(1), pl.DataFrame({"doc_id": ["a"], "window_index": [0], "char_start": [5], "char_end": [1],
                                   "text": ["x"]}), "char_start <= char_end"),
        (vectors(1), passages(1).with_columns(pl.lit(3).alias("row_id")), "row_id"),
        (vectors(1), passages(1).with_columns(pl.lit(3).alias("labels")), "labels"),
        (np.zeros((2, DIM), np.float32), passages(2), "all zeros"),
    ],
)
def test_bad_add_changes_nothing(embeddings, table, match):
    index = PassageIndex.build(vectors(12), passages(12, prefix="base"))
    q = vectors(1, seed=8)[0]
    before = index.search(q, k=5, per_doc=None)
    with pytest.raises(IndexInputError, match=match):
        index.add(embeddings, table)
    assert len(index) == 12 and index.search(q, k=5, per_doc=None) == before
    check_consistent(index)


def test_add_rejects_existing_windows_and_float64_is_accepted():
    index = PassageIndex.build(vectors(8), passages(8))
    with pytest.raises(IndexInputError, match=r"already in the index.*upsert"):
        index.add(vectors(2, seed=3), passages(2))
    index.add(vectors(2, seed=3).astype(np.float64), passages(2, prefix="f"))
    assert len(index) == 10


def test_string_labels_and_list_of_dicts():
    rows = [{"doc_id": "a", "window_index": 0, "char_start": 0, "char_end": 2, "text": "hi", "labels": "news"}]
    index = PassageIndex.build(vectors(1), rows)
    assert index.search(vectors(1)[0], labels="news")[0].labels == ("news",)


def test_hnsw_cannot_remove_and_says_so():
    X, table = vectors(200), passages(200)
    index = PassageIndex.build(X, table, factory="HNSW16")
    assert index.search(X[5], k=1, per_doc=None)[0].window_index == 1
    with pytest.raises(IndexUnsupportedError, match="cannot remove"):
        index.remove(doc_ids=["d1"])
    with pytest.raises(IndexUnsupportedError, match="cannot remove"):
        index.upsert(X[:1], passages(1))
    check_consistent(index)
    assert len(index) == 200


def test_untrainable_factory_is_rejected_before_any_change():
    index = PassageIndex(DIM, factory="IVF64,Flat")
    with pytest.raises(IndexInputError, match="at least nlist=64"):
        index.add(vectors(10), passages(10))
    assert len(index) == 0 and index.ntotal == 0
    with pytest.raises(IndexInputError, match="index_factory"):
        PassageIndex(DIM, factory="NotAFactory99")


# -- persistence ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("factory", [None, "IVF16,Flat", "IVF16,SQfp16"])
@pytest.mark.parametrize("mmap", [False, True])
def test_save_load_gives_identical_results(tmp_path, factory, mmap):
    X, table = clustered(1_000, DIM), passages(1_000)
    index = PassageIndex.build(X, table, factory=factory, encoder=HashEncoder())
    index.save(tmp_path / "ix")
    loaded = PassageIndex.load(tmp_path / "ix", mmap=mmap, encoder=HashEncoder())
    check_consistent(loaded)
    queries = clustered(20, DIM, seed=3)
    assert loaded.search(queries, k=7, labels="odd") == index.search(queries, k=7, labels="odd")
    assert loaded.search("window 12", k=3) == index.search("window 12", k=3)
    # a memory-mapped index becomes a private in-memory copy on the first change
    loaded.add(X[:4], passages(4, prefix="new"))
    loaded.remove(doc_ids=["d3"])
    check_consistent(loaded)
    assert PassageIndex.load(tmp_path / "ix").search(queries, k=7) == index.search(queries, k=7)
    index.close()


def test_load_checks_the_encoder(tmp_path):
    index = PassageIndex.build(vectors(10), passages(10), encoder=HashEncoder(fingerprint="model-A"))
    index.save(tmp_path / "ix")
    index.close()
    with pytest.raises(IndexLoadError, match="encoder dim 16 does not match the index dim 32"):
        PassageIndex.load(tmp_path / "ix", encoder=HashEncoder(dim=16))
    with pytest.raises(IndexLoadError, match="fingerprint 'model-B' differs.*'model-A'"):
        PassageIndex.load(tmp_path / "ix", encoder=HashEncoder(fingerprint="model-B"))
    assert PassageIndex.load(tmp_path / "ix", encoder=HashEncoder(fingerprint="model-A")).encoder_fingerprint == "model-A"
    with pytest.raises(IndexInputError, match="encoder.dim=16 does not match"):
        PassageIndex(DIM, encoder=HashEncoder(dim=16))


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(IndexLoadError, match="does not exist"):
        PassageIndex.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IndexLoadError, match="incomplete: manifest.json is missing"):
        PassageIndex.load(tmp_path / "empty")


def test_save_never_replaces_a_directory_that_is_not_an_index(tmp_path):
    precious = tmp_path / "docs"
    precious.mkdir()
    (precious / "thesis.txt").write_text("years of work")
    index = PassageIndex.build(vectors(4), passages(4))
    with pytest.raises(IndexInputError, match="not an index"):
        index.save(precious)
    assert (precious / "thesis.txt").read_text() == "years of work"
    index.save(tmp_path / "fresh")  # an absent directory is created
    (tmp_path / "empty").mkdir()
    index.save(tmp_path / "empty")  # an empty one is filled
    assert len(PassageIndex.load(tmp_path / "empty")) == 4
    index.close()


def test_writer_lock_within_one_process(tmp_path):
    target = tmp_path / "ix"
    first = PassageIndex.build(vectors(4), passages(4))
    first.save(target)
    second = PassageIndex.build(vectors(6), passages(6))
    with pytest.raises(IndexLockedError, match=r"index at .* is locked by pid \d+"):
        second.save(target)
    with pytest.raises(IndexLockedError):
        PassageIndex.load(target, lock=True)
    assert len(PassageIndex.load(target)) == 4  # readers need no lock
    first.save(target)  # the holder saves again freely
    first.close()
    with PassageIndex.load(target, lock=True) as writer:
        writer.add(vectors(1, seed=4), passages(1, prefix="w"))
        writer.save(target)
    second.save(target)
    second.close()
    assert len(PassageIndex.load(target)) == 6


def test_empty_index_saves_and_loads(tmp_path):
    empty = PassageIndex(DIM, encoder=HashEncoder())
    empty.save(tmp_path / "ix")
    empty.close()
    loaded = PassageIndex.load(tmp_path / "ix", lock=True)
    assert len(loaded) == 0 and loaded.search(np.ones(DIM, np.float32)) == [] and loaded.doc_ids == []
    loaded.add(vectors(4), passages(4))
    loaded.save(tmp_path / "ix")
    loaded.close()
    assert len(PassageIndex.load(tmp_path / "ix")) == 4


def test_gpu_path_serves_unfiltered_search_and_follows_changes(monkeypatch):
    """No GPU here: a stand-in 'GPU copy' (a CPU clone) checks when the copy is made and used."""
    import indexer.backend

    faiss = indexer.backend.faiss
    copies: list[int] = []

    def to_gpu(index):
        copies.append(index.ntotal)
        return faiss.clone_index(index)

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", to_gpu)
    X, table = vectors(200), passages(200)
    index = PassageIndex.build(X, table)
    q = vectors(3, seed=1)
    first = index.search(q, k=5, per_doc=None)
    assert copies == [200]
    assert index.search(q, k=5, per_doc=None) == first and copies == [200]  # the copy is reused
    index.search(q, k=5, labels="odd")  # filtered: on the CPU
    assert copies == [200]
    index.remove(doc_ids=["d0"])
    index.search(q, k=5)
    assert copies == [200, 196]  # changed: copied again
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", lambda index: (_ for _ in ()).throw(RuntimeError("no")))
    index.add(vectors(1, seed=9), passages(1, prefix="g"))
    assert len(index.search(q, k=5)) == 3  # a failed copy falls back to the CPU


def test_encoder_setter_refuses_another_encoders_fingerprint():
    import numpy as np
    import polars as pl
    import pytest

    from indexer import IndexInputError, PassageIndex

    class Enc:
        def __init__(self, fp):
            self.fingerprint, self.dim = fp, 4

        def encode(self, texts):
            return np.ones((len(texts), 4), dtype=np.float32)

    passages = pl.DataFrame({"doc_id": ["a"], "window_index": [0], "char_start": [0], "char_end": [1], "text": ["x"]})
    index = PassageIndex.build(np.ones((1, 4), dtype=np.float32), passages, encoder=Enc("AAA"))
    with pytest.raises(IndexInputError, match="fingerprint"):
        index.encoder = Enc("BBB")
    index.encoder = Enc("AAA")
    assert index.encoder_fingerprint == "AAA"
