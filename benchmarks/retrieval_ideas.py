"""Ideas for per-page hybrid search, measured beside the library's default (``retrieval.py --ideas``).

Everything is scored in numpy from the same window vectors and the index's own page BM25, so each idea changes
one thing of the default (``doc_score="top2_first"`` dense page score + ``HYBRID_LEXICAL_WEIGHT`` x page BM25 /
best page BM25 among the candidates; candidates: the ``CANDIDATE_POOL`` pages of the best windows and the
``CANDIDATE_POOL`` best BM25 pages). The default is also run through ``PassageIndex.search`` and the two
rankings are compared, so the numpy reconstruction is checked against the library.

Ideas (each one change from the default):

* ``pool<N>``: a deeper candidate pool (N pages from each ranking; ``all``: every page); also how many
  relevant pages fall outside the pool;
* ``bm25_k<k1>_b<b>``: page BM25 with other (k1, b) (bm25s default 1.5 / 0.75);
* ``bm25f_head<r>``: BM25F-like: the page's first window counted r times in the page's text (one length
  normalisation), so title/SYNOPSIS terms weigh more;
* ``plus_first_bm25``: lexical half = mean of (page BM25 / best) and (first-window BM25 / best);
* ``minmax``: lexical half min-max scaled over the candidates instead of / max, same weight;
* ``z_w<W>``: both halves z-scored over the candidates, z(dense) + W x z(BM25);
* ``rrf_w<W>``: 1 / (60 + dense rank) + W / (60 + BM25 rank) over the candidates (W=1: plain RRF).
"""

from __future__ import annotations

import logging
import time

import bm25s
import numpy as np
from _common import emit

import indexer.index as index_module
from indexer.hybrid import Bm25Index, _tokenize

logger = logging.getLogger("benchmarks.retrieval")


class Bm25:
    """bm25s with chosen k1, b over texts (row order kept); scores like ``Bm25Index.scores``."""

    def __init__(self, texts: list[str], k1: float, b: float) -> None:
        self.size = len(texts)
        self.retriever = bm25s.BM25(k1=k1, b=b)
        self.retriever.index(bm25s.tokenize(texts, show_progress=False, stopwords="en"), show_progress=False)

    def scores(self, query: str) -> np.ndarray:
        vocab = self.retriever.vocab_dict
        ids = [vocab[t] for t in _tokenize([query])[0] if t in vocab]
        if not ids:
            return np.zeros(self.size, dtype=np.float32)
        return np.asarray(self.retriever.get_scores(ids), dtype=np.float32)


def page_scores(window_scores: np.ndarray, order: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(top2_first, max) page scores for a (queries, windows) score matrix; pages in code order."""
    s = window_scores[:, order].astype(np.float64)
    best = np.maximum.reduceat(s, starts, axis=1)
    lengths = np.diff(np.append(starts, s.shape[1]))
    best_b = np.repeat(best, lengths, axis=1)
    ties = np.add.reduceat((s == best_b).astype(np.int64), starts, axis=1)
    second = np.maximum.reduceat(np.where(s < best_b, s, -np.inf), starts, axis=1)
    second = np.where(ties >= 2, best, second)
    second = np.where(lengths[None, :] >= 2, second, best)
    first = s[:, starts]
    top2 = index_module.DOC_SCORE_TOP2_WEIGHT * (best + second) / 2 + index_module.DOC_SCORE_FIRST_WEIGHT * first
    return top2, best


def top_codes(scores: np.ndarray, depth: int, positive: bool = False) -> np.ndarray:
    cand = np.flatnonzero(scores > 0) if positive else np.arange(len(scores))
    if len(cand) > depth:
        cand = cand[np.argpartition(-scores[cand], depth - 1)[:depth]]
    return cand[np.lexsort((cand, -scores[cand]))]


def ranks_within(pool: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Rank (1 = best) of each pool member by ``scores`` (ties by code)."""
    order = np.lexsort((pool, -scores))
    ranks = np.empty(len(pool), dtype=np.float64)
    ranks[order] = np.arange(1, len(pool) + 1)
    return ranks


def zscore(x: np.ndarray) -> np.ndarray:
    sd = x.std()
    return (x - x.mean()) / (sd if sd > 0 else 1.0)


def fuse(kind: str, dense: np.ndarray, lex: np.ndarray, pool: np.ndarray, weight: float) -> np.ndarray:
    if kind == "max":
        top = lex.max() if len(lex) else 0.0
        return dense + weight * lex / (top if top > 0 else 1.0)
    if kind == "minmax":
        lo, hi = lex.min(), lex.max()
        return dense + weight * (lex - lo) / (hi - lo if hi > lo else 1.0)
    if kind == "z":
        return zscore(dense) + weight * zscore(lex)
    if kind == "rrf":
        lex_rank = np.where(lex > 0, ranks_within(pool, lex), np.inf)
        return 1.0 / (60 + ranks_within(pool, dense)) + weight / (60 + lex_rank)
    raise ValueError(kind)


def ideas(encoder, docs, table, emb, query_sets, *, build_index, cached_encoder, page_ranking, metrics) -> None:
    all_queries = [q for queries, _ in query_sets.values() for q in queries]
    cached = cached_encoder(encoder, all_queries)
    index = build_index(docs, table, emb, cached)
    caches = index._caches_now()
    names = list(caches.doc_names)
    order, starts = caches.doc_order, caches.doc_starts[:-1]
    t0 = time.perf_counter()
    page_texts = caches.document_texts(index._table)
    window_texts = index._table["text"].to_list()
    head_texts = [window_texts[caches.doc_order[st]] for st in starts.tolist()]
    lexicals = {
        "page": index._doc_bm25(),
        "first": Bm25Index(head_texts),
        "bm25f_head2": Bm25Index([h + "\n" + p for h, p in zip(head_texts, page_texts, strict=True)]),
        "bm25f_head3": Bm25Index([h + "\n" + h + "\n" + p for h, p in zip(head_texts, page_texts, strict=True)]),
    }
    for k1, b in ((0.9, 0.4), (1.2, 0.75), (1.5, 0.9), (2.0, 0.75)):
        lexicals[f"bm25_k{k1}_b{b}"] = Bm25(page_texts, k1, b)
    logger.info("BM25 variants built in %.0f s", time.perf_counter() - t0)
    pool_default = index_module.CANDIDATE_POOL
    weight = index_module.HYBRID_LEXICAL_WEIGHT
    emb32 = np.asarray(emb, dtype=np.float32)

    # (name, pool depth, lexical, fusion kind, weight)
    variants = [("default", pool_default, "page", "max", weight)]
    variants += [(f"pool{d}", d, "page", "max", weight) for d in (200, 300)]
    variants += [("pool_all", None, "page", "max", weight)]
    variants += [(name, pool_default, name, "max", weight) for name in lexicals if name.startswith("bm25")]
    variants += [("plus_first_bm25", pool_default, "page+first", "max", weight)]
    variants += [("minmax", pool_default, "page", "minmax", weight)]
    variants += [(f"z_w{w}", pool_default, "page", "z", w) for w in (0.3, 0.5, 1.0)]
    variants += [(f"rrf_w{w}", pool_default, "page", "rrf", w) for w in (0.3, 0.5, 1.0)]
    variants += [("dense_only", pool_default, "page", "max", 0.0)]

    for set_name, (queries, relevant) in query_sets.items():
        t0 = time.perf_counter()
        rankings: dict[str, list[list[str]]] = {v[0]: [] for v in variants}
        outside = {d: 0 for d in (100, 200, 300)}
        n_rel = 0
        miss_ranks: list[int] = []
        qvec = cached.encode(queries)
        for lo in range(0, len(queries), 256):
            chunk = list(range(lo, min(lo + 256, len(queries))))
            top2, best = page_scores(qvec[chunk] @ emb32.T, order, starts)
            for row, qi in enumerate(chunk):
                text = queries[qi]
                lex = {name: lx.scores(text).astype(np.float64) for name, lx in lexicals.items()}
                rel_codes = [names.index(d) for d in relevant[qi]] if set_name == "questions" else []
                for depth in outside:
                    pool = np.union1d(top_codes(best[row], depth), top_codes(lex["page"], depth, positive=True))
                    outside[depth] += sum(c not in set(pool.tolist()) for c in rel_codes)
                n_rel += len(rel_codes)
                if rel_codes:  # where the default (every page scored) ranks the best relevant page of a miss
                    everything = fuse("max", top2[row], lex["page"], np.arange(len(names)), weight)
                    rank_of = ranks_within(np.arange(len(names)), everything)
                    best_rank = int(min(rank_of[c] for c in rel_codes))
                    if best_rank > 10:
                        miss_ranks.append(best_rank)
                for name, depth, lexical, kind, w in variants:
                    lx = lex[lexical] if lexical != "page+first" else None
                    if depth is None:
                        pool = np.arange(len(names))
                    else:
                        lex_for_pool = lex["page"] if lx is None else lx
                        pool = np.union1d(top_codes(best[row], depth),
                                          top_codes(lex_for_pool, depth, positive=True)).astype(np.int64)
                    dense = top2[row, pool]
                    if lx is None:
                        page, first = lex["page"][pool], lex["first"][pool]
                        lex_pool = (page / max(page.max(), 1e-12) + first / max(first.max(), 1e-12)) / 2
                    else:
                        lex_pool = lx[pool]
                    fused = fuse(kind, dense, lex_pool, pool, w)
                    top = pool[np.lexsort((pool, -fused))][:10]
                    rankings[name].append([names[c] for c in top.tolist()])
        logger.info("%s: ideas scored in %.0f s", set_name, time.perf_counter() - t0)
        # the numpy default against the library's own hybrid search
        lib = [page_ranking(h) for h in index.search(queries, k=10, mode="hybrid")]
        same = sum(a == b for a, b in zip(lib, rankings["default"], strict=True))
        emit({"bench": "retrieval", "what": "ideas_check", "queries": set_name, "n": len(queries),
              "top10_identical_to_library": same, **{k: round(v, 4) for k, v in metrics(lib, relevant).items()}})
        if set_name == "questions":
            emit({"bench": "retrieval", "what": "relevant_outside_pool", "relevant_pages": n_rel,
                  **{f"pool{d}": n for d, n in outside.items()}})
            bins = ((11, 20), (21, 50), (51, 100), (101, 10**9))
            emit({"bench": "retrieval", "what": "default_misses", "questions_missed_at_10": len(miss_ranks),
                  **{f"rank_{a}-{b if b < 10**9 else 'end'}": sum(a <= r <= b for r in miss_ranks) for a, b in bins}})
        for name, depth, lexical, kind, w in variants:
            emit({"bench": "retrieval", "what": "idea", "queries": set_name, "n": len(queries), "method": name,
                  "pool": depth, "lexical": lexical, "fusion": kind, "weight": w,
                  **{k: round(v, 4) for k, v in metrics(rankings[name], relevant).items()}})
