"""Search benchmark: PassageIndex (exact and IVF) against its peers in the same run.

Peers: plain faiss ``IndexFlatIP`` / ``IndexIVFFlat`` (the same library without the wrapper) and
sentence-transformers ``util.semantic_search`` (torch exact search, what users write today). With a CUDA device
(and CPU-only faiss) also: ``PassageIndex`` searching on the GPU through torch, against a plain torch bf16
matrix product + ``topk`` over the same vectors. Vectors are synthetic, clustered and L2-normalised, queries
from the same distribution; or real window embeddings (``--real FILE.npy``: the last ``--queries`` rows are the
queries). For IVF, nprobe is the smallest power of two reaching recall@10 >= 0.95 against exact search. Prints
one JSON line per figure.

    python benchmarks/search.py --n 1000000 --dims 384,768 --queries 200
    python benchmarks/search.py --real .cache/bench/man_windows.npy --queries 1000
    python benchmarks/search.py --filtered             # filtered against unfiltered search, every search kind

``--filtered``: one index (``--n`` windows of ``--windows-per-doc``, one label per document out of
``--labels``, each window a short text of a fixed vocabulary), ``--queries`` text queries searched as one
batch and one per call, with and without a label filter (one label: about 1/labels of the documents) and a
selective ``doc_ids`` filter (2% of the documents), for dense and hybrid, window and per-document results.
Prints the seconds of each and the ratio filtered / unfiltered (best of ``--repeat``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl

import indexer.backend
from indexer import PassageIndex
from indexer.backend import auto_nlist

# The peer is raw faiss. indexer/backend.py stays the one module that imports faiss; this reaches the same
# module object through it.
faiss = indexer.backend.faiss

K = 10
TARGET_RECALL = 0.95


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def clustered(n: int, dim: int, *, clusters: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim), dtype=np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    step = 100_000
    for start in range(0, n, step):  # in chunks: bounded temporary memory at 1M x 768
        m = min(step, n - start)
        chunk = centers[rng.integers(0, clusters, m)] + 1.5 * rng.standard_normal((m, dim), dtype=np.float32)
        out[start:start + m] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return out


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[f >= 0]) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


def qps(fn: Callable[[], Any], n_queries: int, *, min_seconds: float = 1.0) -> float:
    """Queries per second of ``fn`` (which answers n_queries), repeated for at least min_seconds."""
    fn()  # warm-up
    runs, start = 0, time.perf_counter()
    while True:
        fn()
        runs += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return runs * n_queries / elapsed


def single_qps(fn: Callable[[np.ndarray], Any], queries: np.ndarray, n: int = 100) -> float:
    """One query per call (an interactive RAG request), over the first n queries."""
    fn(queries[0])
    start = time.perf_counter()
    for q in queries[:n]:
        fn(q)
    return n / (time.perf_counter() - start)


def hit_ids(results: list[list[Any]], table_row: dict[tuple[str, int], int]) -> np.ndarray:
    out = np.full((len(results), K), -1, dtype=np.int64)
    for i, hits in enumerate(results):
        for j, h in enumerate(hits[:K]):
            out[i, j] = table_row[(h.doc_id, h.window_index)]
    return out


def pick_nprobe(nlist: int, search: Callable[[int], np.ndarray], truth: np.ndarray) -> tuple[int, float]:
    nprobe = 1
    while True:
        r = recall(search(nprobe), truth)
        if r >= TARGET_RECALL or nprobe >= nlist:
            return nprobe, r
        nprobe = min(nlist, nprobe * 2)


def gpu_exact(base: dict[str, Any], X: np.ndarray, Q: np.ndarray, table: pl.DataFrame,
              row_of: dict[tuple[str, int], int], truth: np.ndarray) -> None:
    """Exact search on a CUDA device: PassageIndex (torch path) against a plain torch bf16 matmul + topk."""
    import torch

    if not torch.cuda.is_available() or faiss.get_num_gpus() > 0:
        emit(figure="skipped", what="GPU exact search with torch", why="no CUDA device, or faiss has its own GPUs")
        return
    n, dim = X.shape
    base = {**base, "device": torch.cuda.get_device_name(0)}
    corpus = torch.from_numpy(X).to("cuda", torch.bfloat16)
    queries = torch.from_numpy(Q).to("cuda")

    def plain() -> np.ndarray:
        out = []
        for start in range(0, len(queries), 4096):
            scores = queries[start:start + 4096].to(torch.bfloat16) @ corpus.T
            out.append(scores.topk(K, dim=1).indices)
        found = torch.cat(out).cpu().numpy()
        torch.cuda.synchronize()
        return found

    found = plain()
    plain_qps = qps(plain, len(Q))
    emit(**base, impl="torch bf16 matmul + topk (plain)", qps=round(plain_qps, 1),
         recall_at_10=round(recall(found, truth), 4))
    build, index = timed(lambda: PassageIndex.build(X, table, ivf_threshold=n + 1, device="cuda"))
    index.search(Q[:1], k=K, per_doc=None)  # the device copy is made on the first search
    found = hit_ids(index.search(Q, k=K, per_doc=None), row_of)
    ours = qps(lambda: index.search(Q, k=K, per_doc=None), len(Q))
    emit(**base, impl="PassageIndex(Flat, device='cuda', torch)", build_s=round(build, 3), qps=round(ours, 1),
         qps_single=round(single_qps(lambda q: index.search(q, k=K, per_doc=None), Q), 1),
         recall_at_10=round(recall(found, truth), 4))
    emit(**base, figure="ratio", what="PassageIndex(cuda) qps / plain torch matmul+topk qps",
         value=round(ours / plain_qps, 3))


def run(n: int, dim: int, n_queries: int, clusters: int, seed: int, windows_per_doc: int,
        real: np.ndarray | None = None, exact_only: bool = False) -> None:
    if real is not None:  # real embeddings: the last n_queries rows are the queries
        n = len(real) - n_queries
        X, Q = np.ascontiguousarray(real[:n]), np.ascontiguousarray(real[n:])
    else:
        data = clustered(n + n_queries, dim, clusters=clusters, seed=seed)
        X, Q = data[:n], np.ascontiguousarray(data[n:])  # queries: new points around the same centers
    base: dict[str, Any] = {"n": n, "dim": dim, "queries": n_queries, "k": K,
                            "data": "real" if real is not None else "synthetic"}
    table = pl.DataFrame({
        "doc_id": [f"doc{i // windows_per_doc}" for i in range(n)],
        "window_index": [i % windows_per_doc for i in range(n)],
        "char_start": [0] * n,
        "char_end": [0] * n,
        "text": [""] * n,
    })
    row_of = {(f"doc{i // windows_per_doc}", i % windows_per_doc): i for i in range(n)}

    # -- exact: plain faiss ------------------------------------------------------------------------------------
    def build_flat() -> Any:
        flat = faiss.IndexFlatIP(dim)
        flat.add(X)
        return flat

    build, flat = timed(build_flat)
    truth = flat.search(Q, K)[1]
    faiss_flat_qps = qps(lambda: flat.search(Q, K), n_queries)
    emit(**base, impl="faiss.IndexFlatIP", build_s=round(build, 3), qps=round(faiss_flat_qps, 1),
         qps_single=round(single_qps(lambda q: flat.search(q[None, :], K), Q), 1), recall_at_10=1.0)
    flat.reset()  # free the memory before the next contender

    # -- exact: sentence-transformers util.semantic_search (torch) ------------------------------------------------
    import torch
    from sentence_transformers import util

    build, corpus = timed(lambda: torch.from_numpy(X))
    queries_t = torch.from_numpy(Q)
    st_found = np.array([[h["corpus_id"] for h in r] for r in util.semantic_search(queries_t, corpus, top_k=K)])
    st_qps = qps(lambda: util.semantic_search(queries_t, corpus, top_k=K), n_queries)
    emit(**base, impl="sentence_transformers.util.semantic_search", build_s=round(build, 3), qps=round(st_qps, 1),
         qps_single=round(single_qps(lambda q: util.semantic_search(torch.from_numpy(q[None, :]), corpus, top_k=K), Q), 1),
         recall_at_10=round(recall(st_found, truth), 4), torch_threads=torch.get_num_threads())

    # -- exact: indexer's torch search on this CPU (what the GPU path runs, here in float32) ----------------------
    from indexer.torch_search import TorchExactSearch

    build, on_torch = timed(lambda: TorchExactSearch(np.arange(n, dtype=np.int64), X, device="cpu", dtype="float32"))
    found = on_torch.search(Q, K)[1]
    emit(**base, impl="TorchExactSearch(cpu, float32)", build_s=round(build, 3),
         qps=round(qps(lambda: on_torch.search(Q, K), n_queries), 1),
         qps_single=round(single_qps(lambda q: on_torch.search(q[None, :], K), Q), 1),
         recall_at_10=round(recall(found, truth), 4))
    on_torch = None  # free the copy before the next contender

    # -- exact: the wrapper ---------------------------------------------------------------------------------------------
    build, index = timed(lambda: PassageIndex.build(X, table, ivf_threshold=n + 1))
    found = hit_ids(index.search(Q, k=K, per_doc=None), row_of)
    wrapper_qps = qps(lambda: index.search(Q, k=K, per_doc=None), n_queries)
    grouped_qps = qps(lambda: index.search(Q, k=K), n_queries)
    emit(**base, impl="PassageIndex(Flat)", build_s=round(build, 3), qps=round(wrapper_qps, 1),
         qps_per_doc_1=round(grouped_qps, 1),
         qps_single=round(single_qps(lambda q: index.search(q, k=K, per_doc=None), Q), 1),
         recall_at_10=round(recall(found, truth), 4))
    emit(**base, figure="ratio", what="PassageIndex(Flat) qps / faiss.IndexFlatIP qps",
         value=round(wrapper_qps / faiss_flat_qps, 3))
    emit(**base, figure="ratio", what="PassageIndex(Flat) qps / sentence-transformers semantic_search qps",
         value=round(wrapper_qps / st_qps, 3))
    del index
    gpu_exact(base, X, Q, table, row_of, truth)
    if exact_only:
        return

    # -- IVF: plain faiss -----------------------------------------------------------------------------------------------
    nlist = auto_nlist(n)

    def build_ivf() -> Any:
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.train(X)
        ivf.add(X)
        return ivf

    build, ivf = timed(build_ivf)

    def ivf_search(nprobe: int) -> np.ndarray:
        ivf.nprobe = nprobe
        return ivf.search(Q, K)[1]

    nprobe, r = pick_nprobe(nlist, ivf_search, truth)
    ivf.nprobe = nprobe
    faiss_ivf_qps = qps(lambda: ivf.search(Q, K), n_queries)
    emit(**base, impl="faiss.IndexIVFFlat", nlist=nlist, nprobe=nprobe, build_s=round(build, 3),
         qps=round(faiss_ivf_qps, 1), qps_single=round(single_qps(lambda q: ivf.search(q[None, :], K), Q), 1),
         recall_at_10=round(r, 4))
    ivf.reset()

    # -- IVF: the wrapper (automatic layout) ------------------------------------------------------------------------
    build, index = timed(lambda: PassageIndex.build(X, table, ivf_threshold=min(n, 50_000)))

    def wrapper_ivf_search(p: int) -> np.ndarray:
        index.nprobe = p
        return hit_ids(index.search(Q, k=K, per_doc=None), row_of)

    nprobe_w, r_w = pick_nprobe(nlist, wrapper_ivf_search, truth)
    index.nprobe = nprobe_w
    wrapper_ivf_qps = qps(lambda: index.search(Q, k=K, per_doc=None), n_queries)
    emit(**base, impl=f"PassageIndex({index.layout})", nlist=nlist, nprobe=nprobe_w, build_s=round(build, 3),
         qps=round(wrapper_ivf_qps, 1), qps_single=round(single_qps(lambda q: index.search(q, k=K, per_doc=None), Q), 1),
         recall_at_10=round(r_w, 4))
    emit(**base, figure="ratio", what="PassageIndex(IVF) qps / faiss.IndexIVFFlat qps",
         value=round(wrapper_ivf_qps / faiss_ivf_qps, 3))
    emit(**base, figure="ratio", what="PassageIndex(IVF) qps / PassageIndex(Flat) qps (recall@10 >= 0.95)",
         value=round(wrapper_ivf_qps / wrapper_qps, 3))


class TableEncoder:
    """Text queries for the filtered case: each known text has its vector (real text -> vector lookups)."""

    def __init__(self, texts: list[str], vectors: np.ndarray) -> None:
        self.dim = vectors.shape[1]
        self._rows = {t: i for i, t in enumerate(texts)}
        self._vectors = vectors

    def encode(self, texts: list[str]) -> np.ndarray:
        return self._vectors[[self._rows[t] for t in texts]]


def filtered(n: int, dim: int, n_queries: int, windows_per_doc: int, n_labels: int, seed: int, repeat: int) -> None:
    """Filtered against unfiltered search on one index: dense and hybrid, windows and documents."""
    data = clustered(n + n_queries, dim, clusters=max(1, n // 500), seed=seed)
    X, Q = data[:n], np.ascontiguousarray(data[n:])
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(5000)]
    texts = [" ".join(rng.choice(vocab, 40)) for _ in range(n)]
    queries = [" ".join(rng.choice(vocab, 6)) + f" q{i}" for i in range(n_queries)]
    n_docs = (n + windows_per_doc - 1) // windows_per_doc
    table = pl.DataFrame({
        "doc_id": [f"doc{i // windows_per_doc}" for i in range(n)],
        "window_index": [i % windows_per_doc for i in range(n)],
        "char_start": [0] * n,
        "char_end": [len(t) for t in texts],
        "text": texts,
        "labels": [[f"label{(i // windows_per_doc) % n_labels}"] for i in range(n)],
    })
    index = PassageIndex.build(X, table, encoder=TableEncoder(queries, Q), ivf_threshold=n + 1)
    few_docs = [f"doc{i}" for i in rng.choice(n_docs, max(1, n_docs // 50), replace=False)]
    base = {"figure": "filtered", "n": n, "dim": dim, "docs": n_docs, "queries": n_queries, "k": K,
            "labels": n_labels}
    cases = [("dense", None, None), ("dense", 1, "max"), ("dense", 1, "top2_first"), ("hybrid", None, None),
             ("hybrid", 1, "top2_first")]
    filters = {"none": {}, "label": {"labels": "label0"}, "doc_ids_2pct": {"doc_ids": few_docs}}
    for mode, per_doc, doc_score in cases:
        seconds = {}
        for name, options in filters.items():
            def search(options: dict[str, Any] = options, mode: str = mode, per_doc: int | None = per_doc,
                       doc_score: str | None = doc_score) -> Any:
                return index.search(queries, k=K, mode=mode, per_doc=per_doc, doc_score=doc_score, **options)

            def one_by_one(options: dict[str, Any] = options, mode: str = mode, per_doc: int | None = per_doc,
                           doc_score: str | None = doc_score) -> Any:
                return [index.search(q, k=K, mode=mode, per_doc=per_doc, doc_score=doc_score, **options)
                        for q in queries]

            found = search()  # warm-up (BM25 and caches built here)
            assert all(len(hits) == K for hits in found), "a filtered search returned fewer than k hits"
            seconds[name] = min(timed(search)[0] for _ in range(repeat))
            seconds[name + "/single"] = min(timed(one_by_one)[0] for _ in range(repeat))
        for name in ("label", "doc_ids_2pct"):
            emit(**base, mode=mode, per_doc=per_doc, doc_score=doc_score, filter=name,
                 seconds=round(seconds[name], 3), unfiltered_seconds=round(seconds["none"], 3),
                 ratio=round(seconds[name] / seconds["none"], 2),
                 one_per_call_seconds=round(seconds[name + "/single"], 3),
                 one_per_call_unfiltered_seconds=round(seconds["none/single"], 3),
                 one_per_call_ratio=round(seconds[name + "/single"] / seconds["none/single"], 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="vectors in the collection")
    parser.add_argument("--dims", default="384,768", help="comma-separated embedding sizes")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--clusters", type=int, default=None,
                        help="clusters in the synthetic data (default n/500: overlapping, so IVF needs nprobe > 1)")
    parser.add_argument("--windows-per-doc", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--real", default=None, help="a .npy of real (n, dim) embeddings instead of synthetic ones")
    parser.add_argument("--exact-only", action="store_true", help="skip the IVF contenders (their k-means is slow)")
    parser.add_argument("--filtered", action="store_true",
                        help="only the filtered-vs-unfiltered case (default there: --n 34563 --queries 60)")
    parser.add_argument("--labels", type=int, default=3, help="labels in the filtered case (one per document)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    emit(figure="machine", cpus=os.cpu_count(), faiss_threads=faiss.omp_get_max_threads(),
         gpus=faiss.get_num_gpus(), python=platform.python_version(), faiss=indexer.backend.faiss_version(),
         processor=platform.processor() or platform.machine())
    if args.filtered:
        n = args.n if args.n != parser.get_default("n") else 34_563
        queries = args.queries if args.queries != parser.get_default("queries") else 60
        for dim in (int(d) for d in args.dims.split(",")):
            filtered(n, dim, queries, args.windows_per_doc, args.labels, args.seed, args.repeat)
        return
    if args.real:
        real = np.load(args.real).astype(np.float32)
        real /= np.linalg.norm(real, axis=1, keepdims=True)
        rows = np.random.default_rng(args.seed).permutation(len(real))  # queries: a random sample of windows
        run(len(real), real.shape[1], args.queries, 0, args.seed, args.windows_per_doc, real=real[rows],
            exact_only=args.exact_only)
        return
    for dim in (int(d) for d in args.dims.split(",")):
        run(args.n, dim, args.queries, args.clusters or max(1, args.n // 500), args.seed, args.windows_per_doc,
            exact_only=args.exact_only)


if __name__ == "__main__":
    main()
