"""Per-document scores (``doc_score``), the fixed candidate pool, k hits under a filter, page-level hybrid.

Real components throughout: real ``PassageIndex`` objects (faiss storage, torch or faiss scans), real texts (the
docstrings of this Python's standard library, windowed by words with exact character spans) with a deterministic
bag-of-words encoder, and numpy brute force as the reference.
"""

from __future__ import annotations

import importlib
import inspect
import re
import zlib

import numpy as np
import polars as pl
import pytest

from indexer import IndexInputError, PassageIndex, ShardedPassageIndex
from indexer.index import CANDIDATE_POOL, DOC_SCORE_FIRST_WEIGHT, DOC_SCORE_TOP2_WEIGHT

DIM = 64
MODULES = ("os", "shutil", "json", "re", "itertools", "functools", "pathlib", "subprocess", "logging", "argparse",
           "textwrap", "string", "socket", "threading", "collections", "tarfile", "zipfile", "csv", "email.utils")


class BagOfWords:
    """A deterministic bag-of-words encoder: every word hashes to a coordinate and a signed weight in [0.5, 1.5)
    (weights that are not all 1 keep exact score ties between different texts rare); a real QueryEncoder."""

    dim = DIM
    fingerprint = "bow-64"

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        for row, text in enumerate(texts):
            out[row, 0] = 1e-3
            for word in re.findall(r"[a-z]+", text.lower()):
                h = zlib.crc32(word.encode())
                weight = 0.5 + ((h >> 17) % 1000) / 1000
                out[row, 1 + h % (DIM - 1)] += weight if (h >> 16) & 1 else -weight
        return out


class NoisyBagOfWords(BagOfWords):
    """Bag of words plus a seeded random vector per text, as large: a dense ranking that agrees with BM25 only in
    part, as a real encoder's does (with one that mirrors BM25, fusion depth would never matter)."""

    fingerprint = "noisy-bow-64"

    def encode(self, texts: list[str]) -> np.ndarray:
        bow = super().encode(texts)
        bow /= np.linalg.norm(bow, axis=1, keepdims=True)
        noise = np.stack([np.random.default_rng(zlib.crc32(t.encode())).standard_normal(DIM) for t in texts])
        return (bow + noise / np.sqrt(DIM)).astype(np.float32)


def windows_of(text: str, words: int = 24, overlap: int = 8) -> list[tuple[int, int]]:
    """Character spans of windows of ``words`` words sharing ``overlap`` words (the last one right-aligned)."""
    spans = [m.span() for m in re.finditer(r"\S+", text)]
    if len(spans) <= words:
        return [(spans[0][0], spans[-1][1])]
    out, step = [], words - overlap
    starts = list(range(0, len(spans) - words, step)) + [len(spans) - words]
    for s in starts:
        out.append((spans[s][0], spans[s + words - 1][1]))
    return out


def stdlib_documents(long_docs: int = 8, parts: int = 12) -> list[tuple[str, str, str]]:
    """(doc_id, label, text): docstrings of public stdlib functions (label = module), and ``long_docs`` long
    documents (label "long"), each the concatenation of ``parts`` other docstrings (no text twice: exact
    duplicates would tie)."""
    docs, seen = [], set()
    for name in MODULES:
        module = importlib.import_module(name)
        for attr in sorted(dir(module)):
            if attr.startswith("_"):
                continue
            doc = inspect.getdoc(getattr(module, attr))
            if not doc or len(doc.split()) < 12 or doc in seen:
                continue
            seen.add(doc)
            docs.append((f"{name}.{attr}", name, doc))
    rng = np.random.default_rng(0)
    reserved = rng.choice(len(docs), long_docs * parts, replace=False)
    out = [d for i, d in enumerate(docs) if i not in set(reserved.tolist())]
    for i in range(long_docs):
        chosen = reserved[i * parts:(i + 1) * parts]
        out.append((f"long{i}", "long", "\n\n".join(docs[j][2] for j in chosen)))
    return out


def build_real(encoder: BagOfWords | None = None, **options) -> tuple[PassageIndex, pl.DataFrame, np.ndarray]:
    rows = []
    for doc_id, label, text in stdlib_documents():
        for w, (a, b) in enumerate(windows_of(text)):
            rows.append({"doc_id": doc_id, "window_index": w, "char_start": a, "char_end": b, "text": text[a:b],
                         "labels": [label]})
    table = pl.DataFrame(rows)
    encoder = encoder or BagOfWords()
    X = encoder.encode(table["text"].to_list())
    return PassageIndex.build(X, table, encoder=encoder, **options), table, X


@pytest.fixture(scope="module")
def real():
    return build_real()


@pytest.fixture(scope="module")
def noisy():
    return build_real(NoisyBagOfWords())


QUERIES = ["create a directory and its parents", "read a file line by line", "split a string on a pattern",
           "run a command and capture its output", "open a network connection to a host", "join path components",
           "encode an object as JSON", "copy a file with its permissions", "wait for a thread to finish",
           "compress files into an archive"]


def doc_scores_brute(X: np.ndarray, table: pl.DataFrame, q: np.ndarray, allowed: np.ndarray | None = None):
    """Every document's top2_first score, max score and best window by numpy (allowed: a row mask)."""
    s = (X / np.linalg.norm(X, axis=1, keepdims=True)) @ (q / np.linalg.norm(q))
    out = {}
    for doc, part in table.with_row_index("row").group_by("doc_id", maintain_order=True):
        rows = part.sort("window_index")["row"].to_numpy()
        if allowed is not None:
            rows = rows[allowed[rows]]
        if not len(rows):
            continue
        ranked = np.sort(s[rows])[::-1]
        second = ranked[1] if len(ranked) > 1 else ranked[0]
        blend = DOC_SCORE_TOP2_WEIGHT * (ranked[0] + second) / 2 + DOC_SCORE_FIRST_WEIGHT * s[rows[0]]
        best = rows[np.argmax(s[rows])]
        out[doc[0]] = (float(blend), float(ranked[0]), int(table["window_index"][int(best)]))
    return out


# -- document scores ---------------------------------------------------------------------------------------------
def test_top2_first_is_the_default_and_equals_numpy_on_every_document():
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 16, 300)  # one-window documents too
    rows = [(f"doc{d}", w) for d in range(300) for w in range(lengths[d])]
    table = pl.DataFrame({"doc_id": [d for d, _ in rows], "window_index": [w for _, w in rows],
                          "char_start": [w * 10 for _, w in rows], "char_end": [w * 10 + 12 for _, w in rows],
                          "text": ["x" * 12] * len(rows),
                          "labels": [["odd" if int(d[3:]) % 2 else "even"] for d, _ in rows]})
    X = rng.standard_normal((len(rows), 16)).astype(np.float32)
    index = PassageIndex.build(X, table)
    even = np.array([int(d[3:]) % 2 == 0 for d, _ in rows])
    for q in rng.standard_normal((6, 16)).astype(np.float32):
        for labels, allowed in ((None, None), ("even", even)):
            want = doc_scores_brute(X, table, q, allowed)
            order = sorted(want, key=lambda d: (-want[d][0], d))[:10]
            hits = index.search(q, k=10, labels=labels)
            assert [h.doc_id for h in hits] == order
            for h in hits:
                assert h.score == pytest.approx(want[h.doc_id][0], abs=1e-5)
                assert h.window_score == pytest.approx(want[h.doc_id][1], abs=1e-5)  # its best window
                assert h.window_index == want[h.doc_id][2]
            assert index.search(q, k=10, labels=labels, doc_score="top2_first") == hits
            two = index.search(q, k=10, labels=labels, per_doc=2)  # each document's two best windows
            docs = list(dict.fromkeys(h.doc_id for h in two))
            assert docs == order[: len(docs)] and len(two) == 10
            for d in docs:
                mine = [h for h in two if h.doc_id == d]
                assert all(h.score == mine[0].score for h in mine) and mine[0].window_index == want[d][2]
                assert [h.window_score for h in mine] == sorted((h.window_score for h in mine), reverse=True)
            best = index.search(q, k=10, labels=labels, doc_score="max")
            order_max = sorted(want, key=lambda d: -want[d][1])[:10]
            assert [h.doc_id for h in best] == order_max
            assert all(h.score == pytest.approx(h.window_score) for h in best)


def test_top2_first_ranks_a_focused_page_above_a_long_one_that_matches_once():
    # the long document has one window equal to the query and 40 unrelated ones; the short one matches well in
    # both of its windows: by its best window the long one wins, by top2_first the short one
    rng = np.random.default_rng(0)
    q = rng.standard_normal(8).astype(np.float32)
    noise = rng.standard_normal((40, 8)).astype(np.float32)
    X = np.concatenate([noise, q[None], q[None] + 0.9 * rng.standard_normal((2, 8)).astype(np.float32)])
    table = pl.DataFrame({"doc_id": ["long"] * 41 + ["short"] * 2, "window_index": list(range(41)) + [0, 1],
                          "char_start": [0] * 43, "char_end": [1] * 43, "text": ["x"] * 43})
    index = PassageIndex.build(X, table)
    assert index.search(q, k=1, doc_score="max")[0].doc_id == "long"
    assert index.search(q, k=1)[0].doc_id == "short"


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"doc_score": "mean"}, r"doc_score must be one of \['top2_first', 'max'\] or None \(the default\), got 'mean'"),
    ({"doc_score": 1}, "doc_score must be one of"),
    ({"doc_score": "max", "per_doc": None}, r"doc_score='max' scores documents, but per_doc=None asks for windows"),
])
def test_bad_doc_score(real, kwargs, match):
    index, _, _ = real
    with pytest.raises(IndexInputError, match=match):
        index.search("a query", **kwargs)
    sharded = ShardedPassageIndex.build(np.eye(4, 8, dtype=np.float32), index.passages.head(4).drop("row_id"),
                                        shards=2)
    with pytest.raises(IndexInputError, match=match):
        sharded.search(np.ones(8, dtype=np.float32), **kwargs)


def test_sharded_index_passes_doc_score_through(real):
    index, table, X = real
    sharded = ShardedPassageIndex.build(X, table, shards=3, workers=1, encoder=BagOfWords())
    for options in ({}, {"doc_score": "max"}, {"per_doc": 2}, {"labels": ["json", "os"]}, {"doc_score": "top2_first"}):
        want = index.search(QUERIES, k=8, **options)
        got = sharded.search(QUERIES, k=8, **options)
        for w, g in zip(want, got, strict=True):
            assert [(h.doc_id, h.rank) for h in g] == [(h.doc_id, h.rank) for h in w]
            assert [h.score for h in g] == pytest.approx([h.score for h in w], abs=1e-6)
            # the best window: its score (two windows of a short page can tie to the last bit)
            assert [h.window_score for h in g] == pytest.approx([h.window_score for h in w], abs=1e-6)


def test_ivf_layout_scores_documents_from_its_stored_vectors(real, tmp_path):
    _, table, X = real
    flat = PassageIndex.build(X, table, encoder=BagOfWords())
    ivf = PassageIndex.build(X, table, encoder=BagOfWords(), factory="IVF16,Flat")
    ivf.nprobe = 16  # every cell: exact
    for index in (ivf, PassageIndex.load(_saved(ivf, tmp_path), encoder=BagOfWords())):
        for options in ({}, {"mode": "hybrid"}, {"labels": "long"}):
            want = flat.search(QUERIES, k=10, **options)
            got = index.search(QUERIES, k=10, **options)
            for w, g in zip(want, got, strict=True):
                assert [h.doc_id for h in g] == [h.doc_id for h in w]
                assert [h.score for h in g] == pytest.approx([h.score for h in w], abs=1e-5)
    ivf.remove(doc_ids=["long0", "long1"])
    flat.remove(doc_ids=["long0", "long1"])
    assert [h.doc_id for h in ivf.search(QUERIES[0], k=10)] == [h.doc_id for h in flat.search(QUERIES[0], k=10)]


def _saved(index: PassageIndex, tmp_path) -> str:
    path = str(tmp_path / "ivf")
    index.save(path)
    index.close()
    return path


# -- the fixed candidate pool --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("mode", "per_doc", "doc_score"), [
    ("dense", None, None), ("dense", 1, "top2_first"), ("dense", 1, "max"), ("dense", 2, "top2_first"),
    ("hybrid", None, None), ("hybrid", 1, "top2_first"), ("hybrid", 1, "max"), ("hybrid", 3, "top2_first"),
])
def test_top_k_is_a_prefix_of_top_k_plus_m(noisy, mode, per_doc, doc_score):
    index, _, _ = noisy
    assert len(index.doc_ids) > 2 * CANDIDATE_POOL  # the pool is a real cut, not the whole collection
    deep = index.search(QUERIES, k=CANDIDATE_POOL, mode=mode, per_doc=per_doc, doc_score=doc_score)
    for k in (1, 3, 10, 25, 60):
        for labels in (None, ["os", "long", "subprocess"]):
            top = index.search(QUERIES, k=k, mode=mode, per_doc=per_doc, doc_score=doc_score, labels=labels)
            more = index.search(QUERIES, k=k + 17, mode=mode, per_doc=per_doc, doc_score=doc_score, labels=labels)
            for a, b in zip(top, more, strict=True):
                assert len(a) == k
                assert_prefix(a, b)
            if labels is None:
                for a, b in zip(top, deep, strict=True):
                    assert_prefix(a, b)


def assert_prefix(a: list, b: list) -> None:
    """``a`` is the start of ``b``: the same scores, and the same hits up to the order of exact ties (real texts
    hold near-duplicate pages whose windows score the same to the last bit; at the cut of ``a`` one of several
    tied hits may stand for another). Scores are compared to 1e-6: a batch of another size rounds the last bit
    differently."""
    assert [h.score for h in a] == pytest.approx([h.score for h in b[: len(a)]], abs=1e-6)
    groups_a: dict[float, set] = {}
    groups_b: dict[float, set] = {}
    for h in a:
        groups_a.setdefault(round(h.score, 5), set()).add((h.doc_id, h.window_index))
    for h in b:
        groups_b.setdefault(round(h.score, 5), set()).add((h.doc_id, h.window_index))
    for score, hits in groups_a.items():
        assert hits <= groups_b[score]
        if score != round(a[-1].score, 5):
            assert hits == groups_b[score]


# -- k hits under a filter -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["dense", "hybrid"])
@pytest.mark.parametrize("per_doc", [None, 1, 2])
def test_k_hits_whenever_k_match_the_filter(noisy, mode, per_doc):
    index, table, _ = noisy
    windows_per_doc = table.group_by("doc_id").agg(pl.col("labels").first(), pl.len())
    for label in ("long", "json", "csv", "re"):
        mine = windows_per_doc.filter(pl.col("labels") == [label])["len"].to_numpy()
        available = mine.sum() if per_doc is None else np.minimum(mine, per_doc).sum()
        for k in (5, 10, 12, 40):
            results = index.search(QUERIES, k=k, mode=mode, per_doc=per_doc, labels=label)
            for hits in results:
                assert len(hits) == min(k, available), (label, k)
                assert all(h.labels == (label,) for h in hits)
                if per_doc is not None:
                    counts = pl.Series([h.doc_id for h in hits]).value_counts()["count"]
                    assert counts.max() <= per_doc
    few = ["json.dumps", "json.loads", "os.walk"]
    hits = index.search(QUERIES[0], k=10, mode=mode, per_doc=per_doc, doc_ids=few)
    windows = table.filter(pl.col("doc_id").is_in(few)).group_by("doc_id").len()["len"].to_numpy()
    assert len(hits) == min(10, windows.sum() if per_doc is None else np.minimum(windows, per_doc).sum())
    hits = index.search(QUERIES[0], k=100, mode=mode, per_doc=per_doc, doc_ids=few)
    assert len(hits) == min(100, windows.sum() if per_doc is None else np.minimum(windows, per_doc).sum())


def test_min_score_cuts_document_scores(real):
    index, _, _ = real
    hits = index.search(QUERIES[1], k=50)
    cut = index.search(QUERIES[1], k=50, min_score=hits[9].score)
    assert [h.doc_id for h in cut] == [h.doc_id for h in hits if h.score >= hits[9].score]


# -- page-level BM25 ---------------------------------------------------------------------------------------------
def test_document_text_is_rebuilt_without_the_overlaps(real):
    index, table, _ = real
    texts = {d: t for d, _, t in stdlib_documents()}
    caches = index._caches_now()
    rebuilt = dict(zip(caches.doc_names.tolist(), caches.document_texts(index.passages), strict=True))
    windows = table.group_by("doc_id").len()
    several = windows.filter(pl.col("len") >= 3).sort("doc_id")["doc_id"].to_list()
    assert len(several) > 20 and "long3" in several
    for doc in [*several[:20], "long3"]:
        original = texts[doc]
        spans = [m.span() for m in re.finditer(r"\S+", original)]
        assert rebuilt[doc] == original[spans[0][0]:spans[-1][1]]
    # spans that do not fit the texts: the windows joined by newlines
    odd = PassageIndex.build(np.eye(2, 4, dtype=np.float32), pl.DataFrame({
        "doc_id": ["a", "a"], "window_index": [0, 1], "char_start": [0, 0], "char_end": [0, 0],
        "text": ["first part", "second part"]}))
    assert odd._caches_now().document_texts(odd.passages) == ["first part\nsecond part"]


def test_a_kept_filter_follows_changes_of_the_index():
    index, table, X = build_real()
    query = "serialize an object to a JSON formatted string"
    before = index.search(query, k=5, labels="json", per_doc=None)
    assert before and all(h.labels == ("json",) for h in before)
    assert index.search(query, k=5, labels="json", per_doc=None) == before  # the kept filter: same answer
    new = {"doc_id": "json.new", "window_index": 0, "char_start": 0, "char_end": len(query), "text": query,
           "labels": ["json"]}
    index.add(index.encoder.encode([query]), pl.DataFrame([new]))
    for per_doc in (None, 1):
        assert index.search(query, k=5, labels="json", per_doc=per_doc)[0].doc_id == "json.new"
    index.remove(doc_ids=["json.new", before[0].doc_id])
    after = index.search(query, k=5, labels="json", per_doc=None)
    assert {h.doc_id for h in after}.isdisjoint({"json.new", before[0].doc_id}) and len(after) == 5
    assert all(h.labels == ("json",) for h in after)
