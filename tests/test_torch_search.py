"""Exact search with torch (the GPU path when faiss is CPU-only), checked against faiss exact search on CPU."""

from __future__ import annotations

import logging

import faiss
import numpy as np
import polars as pl
import pytest
import torch

import indexer.torch_search as torch_search
from indexer import IndexInputError, PassageIndex
from indexer.torch_search import TorchExactSearch


def _clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((20, dim)).astype(np.float32)
    x = centers[rng.integers(0, 20, n)] + rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _faiss_exact(x: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int, allowed: np.ndarray | None = None):
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(x.shape[1]))
    index.add_with_ids(x, ids)
    if allowed is None:
        return index.search(q, k)
    params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed))
    return index.search(q, k, params=params)


@pytest.fixture(scope="module")
def data():
    x = _clustered(3000, 48, 0)
    ids = np.random.default_rng(1).permutation(10_000)[:3000].astype(np.int64)  # sparse, unordered ids
    q = _clustered(64, 48, 2)
    return x, ids, q


def test_float32_equals_faiss_exact(data):
    x, ids, q = data
    search = TorchExactSearch(ids, x, device="cpu", dtype="float32")
    for k in (1, 10, 3000):
        scores, found = search.search(q, k)
        ref_scores, ref_ids = _faiss_exact(x, ids, q, k)
        np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
        agree = (found == ref_ids).mean()
        assert agree > 0.999, agree  # only exact ties may swap


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_scan_is_rescored_to_exact_float32(data, dtype):
    x, ids, q = data
    search = TorchExactSearch(ids, x, device="cpu", dtype=dtype)
    scores, found = search.search(q, 10)
    ref_scores, ref_ids = _faiss_exact(x, ids, q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, ref_ids, strict=True)])
    assert recall >= 0.99, recall
    # the returned scores are float32 inner products of the returned ids, best first
    row = {int(i): r for r, i in enumerate(ids)}
    exact = np.array([[x[row[int(i)]] @ qq for i in f] for f, qq in zip(found, q, strict=True)])
    np.testing.assert_allclose(scores, exact, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-7).all()


@pytest.mark.parametrize("n_allowed", [5, 40, 2500])  # small sets search their rows, large ones mask
def test_filters_give_the_exact_top_k_among_allowed(data, n_allowed):
    x, ids, q = data
    allowed = np.sort(np.random.default_rng(n_allowed).choice(ids, n_allowed, replace=False))
    search = TorchExactSearch(ids, x, device="cpu", dtype="bfloat16")
    scores, found = search.search(q, 10, allowed=allowed)
    ref_scores, ref_ids = _faiss_exact(x, ids, q, 10, allowed)
    assert set(found[found >= 0].tolist()) <= set(allowed.tolist())
    want = min(10, n_allowed)
    assert (found[:, :want] >= 0).all() and (found[:, want:] == -1).all()
    recall = np.mean([len(set(a[a >= 0]) & set(b[b >= 0])) / want for a, b in zip(found, ref_ids, strict=True)])
    assert recall >= 0.99
    np.testing.assert_allclose(scores[:, :want], ref_scores[:, :want], atol=1e-4)


def test_unknown_or_empty_filters_and_query_blocks(data, monkeypatch):
    x, ids, q = data
    search = TorchExactSearch(ids, x, device="cpu", dtype="float32")
    scores, found = search.search(q, 5, allowed=np.array([10_001, 10_002], dtype=np.int64))  # no such ids
    assert (found == -1).all() and np.isneginf(scores).all()
    whole = search.search(q, 10)
    monkeypatch.setattr(torch_search, "CPU_BLOCK_ELEMENTS", 3000 * 7)  # 7 queries per block
    blocked = search.search(q, 10)
    np.testing.assert_array_equal(whole[1], blocked[1])
    np.testing.assert_allclose(whole[0], blocked[0], atol=1e-6)
    assert search.search(q[:0], 10)[1].shape == (0, 10)


def _table(n: int) -> pl.DataFrame:
    return pl.DataFrame({
        "doc_id": [f"d{i // 4}" for i in range(n)], "window_index": [i % 4 for i in range(n)],
        "char_start": [0] * n, "char_end": [1] * n, "text": ["x"] * n,
        "labels": [["odd" if (i // 4) % 2 else "even"] for i in range(n)],
    })


def test_device_option_is_checked_and_kept_across_save_and_load(tmp_path, data):
    x, _, q = data
    with pytest.raises(IndexInputError, match="device must be None"):
        PassageIndex(48, device="gpu0")
    index = PassageIndex.build(x[:400], _table(400), device="cpu")
    assert index.device == "cpu"
    hits = index.search(q[:3], k=5)
    index.save(tmp_path / "ix")
    loaded = PassageIndex.load(tmp_path / "ix", device="cuda:0")
    assert loaded.device == "cuda:0"
    loaded.device = None
    assert [[h.doc_id for h in r] for r in loaded.search(q[:3], k=5)] == [[h.doc_id for h in r] for r in hits]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback of a machine without CUDA")
def test_asking_for_cuda_without_one_searches_on_the_cpu_and_says_so_once(data, caplog):
    x, _, q = data
    ref = PassageIndex.build(x[:400], _table(400), device="cpu").search(q[:4], k=5, labels="odd")
    for factory in (None, "IVF4,Flat"):
        index = PassageIndex.build(x[:400], _table(400), factory=factory, device="cuda", nprobe=4)
        with caplog.at_level(logging.WARNING, logger="indexer.backend"):
            caplog.clear()
            for _ in range(3):
                hits = index.search(q[:4], k=5, labels="odd")
        assert len([r for r in caplog.records if "device='cuda'" in r.getMessage()]) == 1
        assert [[h.doc_id for h in r] for r in hits] == [[h.doc_id for h in r] for r in ref]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_search_matches_cpu_search(data):
    x, _, q = data
    table = _table(len(x))
    cpu = PassageIndex.build(x, table, device="cpu")
    gpu = PassageIndex.build(x, table)  # automatic: torch on CUDA when faiss has no GPU
    if faiss.get_num_gpus() == 0:
        assert gpu._backend._torch_search() is not None
    for kwargs in ({}, {"labels": "odd"}, {"doc_ids": ["d3", "d10"]}):
        a = cpu.search(q, k=10, per_doc=None, **kwargs)
        b = gpu.search(q, k=10, per_doc=None, **kwargs)
        overlap = np.mean([len({(h.doc_id, h.window_index) for h in r} & {(h.doc_id, h.window_index) for h in s})
                           / max(1, len(r)) for r, s in zip(a, b, strict=True)])
        assert overlap >= 0.99
    gpu.remove(doc_ids=["d0"])  # a change rebuilds the device copy
    assert all(h.doc_id != "d0" for r in gpu.search(q, k=10, per_doc=None) for h in r)


def test_exact_layouts_are_scanned_by_torch_on_the_cpu_and_follow_every_change(data):
    x, _, q = data
    table = _table(800)
    index = PassageIndex.build(x[:400], table[:400], device="cpu")
    assert index._backend._torch_search() is not None  # exact layout: torch scans faiss's own storage
    ivf = PassageIndex.build(x[:400], table[:400], factory="IVF4,Flat", device="cpu")
    assert ivf._backend._torch_search() is None  # approximate layouts stay with faiss
    index.search(q[:2], k=3)
    index.add(x[400:800], table[400:800])  # faiss may reallocate its storage: the scan must follow
    index.remove(doc_ids=["d0", "d150"])
    kept = np.array([i for i in range(800) if i // 4 not in (0, 150)])
    scores, ids = _faiss_exact(x[kept], kept.astype(np.int64), q, 10)
    hits = index.search(q, k=10, per_doc=None)
    got = [[h.doc_id for h in r] for r in hits]
    want = [[f"d{i // 4}" for i in row] for row in ids]
    assert got == want
    np.testing.assert_allclose([[h.score for h in r] for r in hits], scores, atol=1e-5)
