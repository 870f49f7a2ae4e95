"""Hybrid search (window level: BM25 + dense by reciprocal rank fusion; per document: dense document score +
weighted page BM25) and the retrieval metrics."""

from __future__ import annotations

import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import polars as pl
import pytest

from indexer import IndexInputError, PassageIndex, evaluate_retrieval, mrr, ndcg_at_k, recall_at_k
from indexer.hybrid import Bm25Index, fuse_scores, reciprocal_rank_fusion
from indexer.index import HYBRID_LEXICAL_WEIGHT

DIM = 32
WORDS = "file mode bits change user group read write run command option system call library device".split()


class RandomEncoder:
    """A real encoder object whose vectors carry no meaning: a seeded random vector per text."""

    dim = DIM
    fingerprint = "random-32"

    def encode(self, texts: list[str]) -> np.ndarray:
        return np.stack([np.random.default_rng(zlib.crc32(t.encode())).standard_normal(DIM) for t in texts]).astype(
            np.float32
        )


def corpus(n_docs: int = 60, per_doc: int = 4) -> pl.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for d in range(n_docs):
        for w in range(per_doc):
            text = " ".join(rng.choice(WORDS, 12))
            rows.append({"doc_id": f"doc{d}", "window_index": w, "char_start": w * 100,
                         "char_end": w * 100 + len(text), "text": text,
                         "labels": ["man1" if d % 2 else "man8"]})
    return pl.DataFrame(rows)


@pytest.fixture
def flagged():
    table = corpus()
    # one window (of a man1 document) mentions a made-up flag; dense vectors know nothing about it
    target = 2 * 4 + 1 * 4 + 2  # doc3, window 2
    text = table["text"][target] + " use --frobnicate-xyz to enable it"
    table = table.with_columns(
        pl.when(pl.int_range(pl.len()) == target).then(pl.lit(text)).otherwise(pl.col("text")).alias("text"),
        pl.when(pl.int_range(pl.len()) == target).then(pl.col("char_start") + len(text)).otherwise(pl.col("char_end"))
        .alias("char_end"),
    )
    encoder = RandomEncoder()
    index = PassageIndex.build(encoder.encode(table["text"].to_list()), table, encoder=encoder)
    return index, ("doc3", 2)


def test_hybrid_windows_find_an_identifier_that_dense_search_misses(flagged):
    index, target = flagged
    dense = index.search("--frobnicate-xyz", k=5, per_doc=None)
    assert target not in [(h.doc_id, h.window_index) for h in dense]
    hybrid = index.search("--frobnicate-xyz", k=5, mode="hybrid", per_doc=None)
    assert (hybrid[0].doc_id, hybrid[0].window_index) == target
    assert 1 / 61 <= hybrid[0].score <= 2 / 61  # a fused score, not a cosine
    assert all(h.score <= hybrid[0].score for h in hybrid)
    own = index.search("--frobnicate-xyz", k=240, per_doc=None)  # the window's cosine, kept beside the fused score
    assert hybrid[0].window_score == pytest.approx(next(h.score for h in own if (h.doc_id, h.window_index) == target),
                                                   abs=1e-5)
    batch = index.search(["--frobnicate-xyz", "frobnicate"], k=3, mode="hybrid", per_doc=None)
    assert len(batch) == 2 and all((r[0].doc_id, r[0].window_index) == target for r in batch)


def test_per_doc_hybrid_score_is_the_dense_document_score_plus_weighted_page_bm25(flagged):
    index, _ = flagged
    for doc_score in ("top2_first", "max"):
        dense = {h.doc_id: h for h in index.search("frobnicate", k=60, doc_score=doc_score)}
        hybrid = index.search("frobnicate", k=60, mode="hybrid", doc_score=doc_score)
        assert len(hybrid) == len(dense) == 60 and [h.rank for h in hybrid] == list(range(1, 61))
        for h in hybrid:  # only doc3 has the word: it alone gets the whole lexical weight
            bonus = HYBRID_LEXICAL_WEIGHT if h.doc_id == "doc3" else 0.0
            assert h.score == pytest.approx(dense[h.doc_id].score + bonus, abs=1e-5)
            assert (h.window_index, h.window_score) == (dense[h.doc_id].window_index,
                                                        pytest.approx(dense[h.doc_id].window_score, abs=1e-6))
        dense_rank = [d for d in dense].index("doc3")
        assert [h.doc_id for h in hybrid].index("doc3") <= dense_rank
        assert [h.score for h in hybrid] == sorted((h.score for h in hybrid), reverse=True)


def test_fuse_scores_units():
    assert fuse_scores(np.array([0.5, 0.4]), np.array([2.0, 4.0]), weight=0.1).tolist() == pytest.approx([0.55, 0.5])
    assert fuse_scores(np.array([0.5, 0.4]), np.zeros(2), weight=0.1).tolist() == pytest.approx([0.5, 0.4])
    rows = fuse_scores(np.zeros((2, 2)), np.array([[1.0, 2.0], [3.0, 0.0]]), weight=1.0)
    np.testing.assert_allclose(rows, [[0.5, 1.0], [1.0, 0.0]])


def test_hybrid_applies_the_filters_to_bm25_too(flagged):
    index, target = flagged
    hits = index.search("--frobnicate-xyz", k=10, mode="hybrid", labels="man8")
    assert hits and all(h.labels == ("man8",) for h in hits)
    assert target not in [(h.doc_id, h.window_index) for h in hits]
    only = index.search("--frobnicate-xyz", k=10, mode="hybrid", doc_ids=["doc3"], per_doc=None)
    assert {h.doc_id for h in only} == {"doc3"} and (only[0].doc_id, only[0].window_index) == target


def test_hybrid_follows_changes(flagged):
    index, target = flagged
    for per_doc in (None, 1):
        hits = index.search("frobnicate", k=60, mode="hybrid", per_doc=per_doc)
        assert hits[0].doc_id == "doc3" if per_doc is None else "doc3" in [h.doc_id for h in hits]
    index.remove(doc_ids=["doc3"])
    for per_doc in (None, 1):
        assert all(h.doc_id != "doc3" for h in index.search("frobnicate", k=60, mode="hybrid", per_doc=per_doc))
    row = {"doc_id": "new", "window_index": 0, "char_start": 0, "char_end": 15, "text": "frobnicate here"}
    index.add(index.encoder.encode([row["text"]]), pl.DataFrame([row]))
    assert index.search("frobnicate", k=1, mode="hybrid", per_doc=None)[0].doc_id == "new"
    # the page-level BM25 follows the change too: "new" is now the only page with the word
    per_doc = {h.doc_id: h.score for h in index.search("frobnicate", k=60, mode="hybrid")}
    dense = {h.doc_id: h.score for h in index.search("frobnicate", k=60)}
    assert per_doc["new"] == pytest.approx(dense["new"] + HYBRID_LEXICAL_WEIGHT, abs=1e-5)


def test_hybrid_needs_text_and_an_encoder():
    index = PassageIndex.build(np.eye(4, DIM, dtype=np.float32), corpus(1))
    with pytest.raises(IndexInputError, match="need an encoder"):
        index.search("flag", mode="hybrid")


def test_bm25_and_rrf_units():
    bm25 = Bm25Index(["the cat sat", "a dog ran", "cat and dog"])
    assert bm25.top("cat", 5).tolist() == [0, 2] or bm25.top("cat", 5).tolist() == [2, 0]
    assert bm25.top("cat", 5, np.array([False, True, True])).tolist() == [2]
    assert bm25.top("zebra", 5).tolist() == [] and Bm25Index([]).top("x", 3).tolist() == []
    fused = reciprocal_rank_fusion([[1, 2, 3], [3, 1]])
    assert [row for row, _ in fused] == [1, 3, 2]
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 62)


def test_bm25_matches_word_forms_by_their_stem_and_drops_stop_words():
    bm25 = Bm25Index(["paste merges the lines of files", "sort orders lines", "a page about nothing"])
    assert bm25.top("merging line", 5).tolist() == [0, 1]  # "merging" -> merg, "line" -> line
    assert bm25.scores("merged")[0] > 0 and bm25.scores("merged")[1:].tolist() == [0, 0]
    assert bm25.scores("the of a and").tolist() == [0, 0, 0]  # stop words only: nothing to score


@pytest.mark.parametrize("texts", [["😀 😀", "!!! ...", "the of a"], ["", ""]])
def test_bm25_over_texts_without_a_word_scores_zero_and_hybrid_search_falls_back_to_dense(texts):
    bm25 = Bm25Index(texts)
    assert bm25.scores("merge files").tolist() == [0] * len(texts) and bm25.top("merge", 5).tolist() == []
    encoder = RandomEncoder()
    vectors = np.eye(len(texts), DIM, dtype=np.float32)
    vectors[1] = encoder.encode(["merge files"])[0]  # d1 is the query's own vector: dense puts it first
    table = pl.DataFrame({"doc_id": [f"d{i}" for i in range(len(texts))], "window_index": [0] * len(texts),
                          "char_start": [0] * len(texts), "char_end": [len(t) for t in texts], "text": texts})
    index = PassageIndex.build(vectors, table, encoder=encoder)
    for per_doc in (1, None):
        hybrid = index.search("merge files", k=len(texts), mode="hybrid", per_doc=per_doc)
        dense = index.search("merge files", k=len(texts), per_doc=per_doc)
        assert [h.doc_id for h in hybrid] == [h.doc_id for h in dense] and hybrid[0].doc_id == "d1"


def test_bm25_scores_are_the_same_from_many_threads():
    bm25 = Bm25Index([f"page {i} about merging files number {i}" for i in range(50)])
    queries = [f"merged file {i}" for i in range(50)]
    alone = [bm25.scores(q) for q in queries]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(bm25.scores, queries * 4))
    assert all(np.array_equal(a, b) for a, b in zip(alone * 4, together, strict=True))


# -- metrics ------------------------------------------------------------------------------------------------------
def test_metrics_by_hand():
    rankings = [["a", "b", "c"], ["x", "y", "z"], ["q"]]
    relevant = [{"b"}, {"z", "w"}, set()]  # the last query has no relevant document: left out
    assert recall_at_k(rankings, relevant, 2) == pytest.approx((1 + 0) / 2)
    assert recall_at_k(rankings, relevant, 3) == pytest.approx((1 + 0.5) / 2)
    assert mrr(rankings, relevant) == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert mrr(rankings, relevant, k=2) == pytest.approx((1 / 2 + 0) / 2)
    ideal2 = 1 + 1 / np.log2(3)
    assert ndcg_at_k(rankings, relevant, 3) == pytest.approx(((1 / np.log2(3)) / 1 + (1 / np.log2(4)) / ideal2) / 2)
    assert ndcg_at_k([["a"]], [{"a"}], 5) == pytest.approx(1.0)
    with pytest.raises(IndexInputError, match="must align"):
        recall_at_k([["a"]], [], 1)
    with pytest.raises(IndexInputError, match="undefined"):
        mrr([["a"]], [set()])
    with pytest.raises(IndexInputError, match="k must be"):
        ndcg_at_k([["a"]], [{"a"}], 0)


def test_evaluate_an_index(flagged):
    index, _ = flagged
    result = evaluate_retrieval(index, ["--frobnicate-xyz", "frobnicate"], [{"doc3"}, {"doc3"}], k=5, mode="hybrid",
                                per_doc=None)
    assert result == {"recall@5": 1.0, "mrr@5": 1.0, "ndcg@5": 1.0, "queries": 2.0}
    # hits count a document once, at its best window
    hits = index.search("frobnicate", k=5, mode="hybrid", per_doc=None)
    assert recall_at_k([hits], [{"doc3"}], 1) == 1.0
