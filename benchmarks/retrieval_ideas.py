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
* ``rrf_w<W>``: 1 / (60 + dense rank) + W / (60 + BM25 rank) over the candidates (W=1: plain RRF);
* ``w<W>``: another lexical weight (the default's family: a 5-fold cross-validation over the questions picks
  the weight on 4/5 and scores the held-out 1/5);
* ``unstemmed_w<W>``: the page BM25 without stemming (the library before it stemmed), at weight W.

Each idea's MRR@10 and R@10 gain over the default come with a paired bootstrap 95% interval.
"""

from __future__ import annotations

import logging
import re
import time

import numpy as np
import scipy.sparse as sp
from _common import emit

import indexer.index as index_module
from indexer.hybrid import Bm25Index, _tokenize

logger = logging.getLogger("benchmarks.retrieval")


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


#: The lexical weights the ideas run beside the default's (its cross-validated family).
WEIGHT_GRID = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3)


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
        lexicals[f"bm25_k{k1}_b{b}"] = Bm25Index(page_texts, k1=k1, b=b)
    lexicals["unstemmed"] = Bm25Index(page_texts, stem=False)
    logger.info("BM25 variants built in %.0f s", time.perf_counter() - t0)
    pool_default = index_module.CANDIDATE_POOL
    weight = index_module.HYBRID_LEXICAL_WEIGHT
    emb32 = np.asarray(emb, dtype=np.float32)

    # (name, pool depth, lexical, fusion kind, weight)
    variants = [("default", pool_default, "page", "max", weight)]
    variants += [(f"pool{d}", d, "page", "max", weight) for d in (200, 300)]
    variants += [("pool_all", None, "page", "max", weight)]
    variants += [(name, pool_default, name, "max", weight) for name in lexicals if name.startswith("bm25")]
    variants += [(f"w{w}", pool_default, "page", "max", w) for w in WEIGHT_GRID if w != weight]
    variants += [(f"unstemmed_w{w}", pool_default, "unstemmed", "max", w) for w in (0.1, weight)]
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
        rr, rec = {}, {}
        for name, *_ in variants:
            rr[name], rec[name] = per_query(rankings[name], relevant)
        for name, depth, lexical, kind, w in variants:
            d_rr, d_rec = rr[name] - rr["default"], rec[name] - rec["default"]
            emit({"bench": "retrieval", "what": "idea", "queries": set_name, "n": len(queries), "method": name,
                  "pool": depth, "lexical": lexical, "fusion": kind, "weight": w,
                  **{k: round(v, 4) for k, v in metrics(rankings[name], relevant).items()},
                  "mrr_gain_ci95": [round(x, 4) for x in bootstrap(d_rr)],
                  "r@10_gain_ci95": [round(x, 4) for x in bootstrap(d_rec)],
                  "better": int((d_rr > 0).sum()), "worse": int((d_rr < 0).sum())})
        if set_name == "questions":
            family = ["default"] + [f"w{w}" for w in WEIGHT_GRID if w != weight]
            cv = cross_validate(family, rr, rec)
            cv.pop("seed0_rr")
            emit({"bench": "retrieval", "what": "weight_cv", "queries": set_name, "family": family, **cv})


# ---------------------------------------------------------------------------------------------------------------
# Query-side ideas (``retrieval.py --query-ideas``): pseudo-relevance feedback and query rewriting, each scored by
# the default fusion (top2_first dense page score + HYBRID_LEXICAL_WEIGHT x page BM25 / best, pool CANDIDATE_POOL).
#
# * ``rocchio_pages_m<m>_b<beta>``: q' = normalize(q + beta x mean of the best window vectors of the m best pages
#   of the dense ranking (top2_first)); the default scoring with q' (page BM25 of the original text unchanged);
# * ``rocchio_windows_m<m>_b<beta>``: the same with the m best windows (whatever their pages);
# * ``rm3_bm25_m<m>_a<alpha>``: RM3 on the page BM25: P(t|R) = sum over the m best BM25 pages of (their BM25 score,
#   normalised to sum 1) x tf(t, page) / |page|; the 10 most likely terms; query term weights = alpha x the original
#   (counts / their sum) + (1 - alpha) x P(t|R) (renormalised over the 10 terms); the default fusion with the BM25
#   of that weighted query (candidates from it);
# * ``prf_fused_m<m>_b<beta>``: both at once from the m best pages of the default hybrid ranking: dense Rocchio from
#   their best windows (beta) and RM3 from them (fused scores as page weights, alpha 0.7, 10 terms);
#   ``prf_fused_dense_m<m>`` (beta 0.5, BM25 unchanged) and ``prf_fused_lex_m<m>`` (alpha 0.7, dense unchanged)
#   split that in its halves;
# * ``rm3_dense_m<m>``: RM3 (alpha 0.7) from the m best pages of the dense ranking (dense scores as weights): the
#   words of the pages MiniLM finds, for the BM25 half;
# * ``rewrite``: leading question words stripped ("how do I", "what is the", "which", ...; NAME lines are
#   left alone as no pattern is followed by " -"), the rewritten text encoded and used for both halves;
# * ``rewrite_mean``: q' = normalize(q + q(rewritten)), BM25 of the original text (two query vectors in one).
# ---------------------------------------------------------------------------------------------------------------

QUESTION_WORDS = re.compile(
    r"^(?:how (?:do|can|should|would) (?:i|you|we|one)|how (?:does|do|is|are)|how to|is there a way to|"
    r"what (?:command|program|tool)(?: do i use to| can i use to)?|"
    r"what (?:is|are|does|do|happens to|makes)(?: an?| the)?|which|why (?:does|do|is|can|doesn't)|"
    r"where (?:is|are|do))\b(?!\s*[-,])\s*", re.IGNORECASE)
ROCCHIO_M = (3, 5, 10)
ROCCHIO_BETA = (0.3, 0.5, 1.0)
RM3_ALPHA = (0.5, 0.7, 0.9)
RM3_TERMS = 10
PRF_ALPHA = 0.7


def rewrite(question: str) -> str:
    """The question without its leading question words (and a final '?'); unchanged when nothing is left."""
    out = QUESTION_WORDS.sub("", question.strip()).rstrip("?").strip()
    return out or question


class LexicalPrf:
    """The page BM25 as a (pages x vocabulary) matrix of per-term scores, plus each page's term distribution."""

    def __init__(self, bm25: Bm25Index, page_texts: list[str]) -> None:
        retriever = bm25._retriever
        sc = retriever.scores
        self.n_terms = len(sc["indptr"]) - 1
        self.scores_matrix = sp.csc_matrix((sc["data"], sc["indices"], sc["indptr"]),
                                           shape=(int(sc["num_docs"]), self.n_terms))
        self.vocab = retriever.vocab_dict
        tokens = _tokenize(page_texts, ids=True)
        if tokens.vocab != {t: i for t, i in self.vocab.items() if t}:  # bm25s adds '' to the index's vocabulary
            raise RuntimeError("page tokenisation differs from the index's BM25 vocabulary")
        rows = np.repeat(np.arange(len(tokens.ids)), [len(t) for t in tokens.ids])
        cols = np.concatenate([np.asarray(t, dtype=np.int64) for t in tokens.ids])
        keep = cols < self.n_terms
        tf = sp.csr_matrix((np.ones(int(keep.sum())), (rows[keep], cols[keep])),
                           shape=(len(tokens.ids), self.n_terms))
        lengths = np.maximum(np.asarray(tf.sum(axis=1)).ravel(), 1.0)
        self.p_term = sp.diags(1.0 / lengths) @ tf  # P(t | page), csr

    def query_weights(self, text: str) -> dict[int, float]:
        weights: dict[int, float] = {}
        for t in _tokenize([text])[0]:
            if t in self.vocab and self.vocab[t] < self.n_terms:
                weights[self.vocab[t]] = weights.get(self.vocab[t], 0.0) + 1.0
        return weights

    def scores(self, weights: dict[int, float]) -> np.ndarray:
        if not weights:
            return np.zeros(self.scores_matrix.shape[0])
        ids = np.fromiter(weights, dtype=np.int64)
        return np.asarray(self.scores_matrix[:, ids] @ np.fromiter(weights.values(), dtype=np.float64)).ravel()

    def expand(self, weights: dict[int, float], codes: np.ndarray, page_weights: np.ndarray,
               alpha: float) -> dict[int, float]:
        """RM3: alpha x original (normalised) + (1 - alpha) x the RM3_TERMS most likely feedback terms."""
        pw = np.maximum(np.asarray(page_weights, dtype=np.float64), 0.0)
        pw = pw / pw.sum() if pw.sum() > 0 else np.full(len(codes), 1.0 / len(codes))
        p = np.asarray(self.p_term[codes].T @ pw).ravel()
        top = np.argpartition(-p, RM3_TERMS - 1)[:RM3_TERMS]
        top = top[p[top] > 0]
        total = sum(weights.values())
        out = {t: alpha * w / total for t, w in weights.items()} if total else {}
        fb = p[top] / p[top].sum() if len(top) else []
        for t, v in zip(top.tolist(), fb, strict=True):
            out[t] = out.get(t, 0.0) + (1 - alpha) * float(v)
        return out


def best_windows(scores: np.ndarray, codes: np.ndarray, order: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """The row of each page's best window under one query's window scores."""
    out = []
    for c in codes.tolist():
        rows = order[bounds[c]:bounds[c + 1]]
        out.append(rows[int(np.argmax(scores[rows]))])
    return np.asarray(out, dtype=np.int64)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def default_rank(top2: np.ndarray, best: np.ndarray, lex: np.ndarray, depth: int, weight: float,
                 k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """The default per-page hybrid: (best k page codes, their fused scores)."""
    pool = np.union1d(top_codes(best, depth), top_codes(lex, depth, positive=True)).astype(np.int64)
    fused = fuse("max", top2[pool], lex[pool], pool, weight)
    order = np.lexsort((pool, -fused))[:k]
    return pool[order], fused[order]


def per_query(rankings: list[list[str]], relevant: list[set[str]]) -> tuple[np.ndarray, np.ndarray]:
    """Reciprocal rank at 10 and recall at 10 of each query (their means are ``metrics``' MRR@10 and R@10)."""
    rr = np.array([next((1.0 / i for i, d in enumerate(r[:10], 1) if d in rel), 0.0)
                   for r, rel in zip(rankings, relevant, strict=True)])
    rec = np.array([len(set(r[:10]) & rel) / len(rel) for r, rel in zip(rankings, relevant, strict=True)])
    return rr, rec


def bootstrap(diff: np.ndarray, n: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Paired bootstrap 95% percentile interval of the mean of per-query differences."""
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(n, len(diff)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def cross_validate(family: list[str], rr: dict[str, np.ndarray], rec: dict[str, np.ndarray],
                   seeds: int = 20) -> dict:
    """5-fold CV over the questions: the family member with the best training MRR@10, scored on the held-out fold;
    repeated over ``seeds`` shuffles. Returns the mean, min and max held-out MRR@10 and R@10 and the picks."""
    n = len(next(iter(rr.values())))
    mrrs, recs, picks, held_rr = [], [], {}, None
    for seed in range(seeds):
        folds = np.array_split(np.random.default_rng(seed).permutation(n), 5)
        out_rr, out_rec = np.zeros(n), np.zeros(n)
        for fold in folds:
            train = np.setdiff1d(np.arange(n), fold)
            pick = max(family, key=lambda name: (rr[name][train].mean(), -family.index(name)))
            picks[pick] = picks.get(pick, 0) + 1
            out_rr[fold], out_rec[fold] = rr[pick][fold], rec[pick][fold]
        mrrs.append(out_rr.mean())
        recs.append(out_rec.mean())
        held_rr = out_rr if held_rr is None else held_rr
    return {"cv_mrr@10": round(float(np.mean(mrrs)), 4), "cv_mrr_min": round(float(np.min(mrrs)), 4),
            "cv_mrr_max": round(float(np.max(mrrs)), 4), "cv_r@10": round(float(np.mean(recs)), 4),
            "picks": dict(sorted(picks.items(), key=lambda kv: -kv[1])), "seed0_rr": held_rr}


def query_ideas(encoder, docs, table, emb, query_sets, *, build_index, cached_encoder, page_ranking,
                metrics) -> None:
    all_queries = [q for queries, _ in query_sets.values() for q in queries]
    cached = cached_encoder(encoder, all_queries)
    rewritten_all = [rewrite(q) for q in all_queries]
    cached_rw = cached_encoder(encoder, rewritten_all)
    index = build_index(docs, table, emb, cached)
    caches = index._caches_now()
    names = list(caches.doc_names)
    order, bounds = caches.doc_order, caches.doc_starts
    starts = bounds[:-1]
    t0 = time.perf_counter()
    bm25 = index._doc_bm25()
    lexical = LexicalPrf(bm25, caches.document_texts(index._table))
    logger.info("page term matrices built in %.0f s", time.perf_counter() - t0)
    depth = index_module.CANDIDATE_POOL
    weight = index_module.HYBRID_LEXICAL_WEIGHT
    emb32 = np.asarray(emb, dtype=np.float32)

    variants = ["default", "dense_only"]
    variants += [f"rocchio_pages_m{m}_b{b}" for m in ROCCHIO_M for b in ROCCHIO_BETA]
    variants += [f"rocchio_windows_m{m}_b{b}" for m in ROCCHIO_M for b in ROCCHIO_BETA]
    variants += [f"rm3_bm25_m{m}_a{a}" for m in ROCCHIO_M for a in RM3_ALPHA]
    variants += [f"prf_fused_m{m}_b{b}" for m in ROCCHIO_M for b in ROCCHIO_BETA]
    variants += [f"prf_fused_dense_m{m}" for m in ROCCHIO_M] + [f"prf_fused_lex_m{m}" for m in ROCCHIO_M]
    variants += [f"rm3_dense_m{m}" for m in ROCCHIO_M]
    variants += ["rewrite", "rewrite_mean"]
    families = {
        "rocchio_pages": [v for v in variants if v.startswith("rocchio_pages")],
        "rocchio_windows": [v for v in variants if v.startswith("rocchio_windows")],
        "rm3_bm25": [v for v in variants if v.startswith("rm3_bm25")],
        "prf_fused": [v for v in variants if v.startswith("prf_fused_m")],
        "prf_fused_halves": [v for v in variants if v.startswith(("prf_fused_dense", "prf_fused_lex"))],
        "rm3_dense": [v for v in variants if v.startswith("rm3_dense")],
        "rewrite": ["rewrite", "rewrite_mean"],
    }
    families["every query-side idea + default"] = ["default"] + [v for f in families.values() for v in f]
    per_set: dict[str, tuple[dict, dict]] = {}

    for set_name, (queries, relevant) in query_sets.items():
        t_set = time.perf_counter()
        seconds = {v: 0.0 for v in variants}
        rankings: dict[str, list[list[str]]] = {v: [] for v in variants}
        qvec = np.asarray(cached.encode(queries), dtype=np.float32)
        rw_texts = [rewrite(q) for q in queries]
        lex_check = 0.0  # the term-matrix BM25 of the original query against the index's own page BM25
        rw_vec = np.asarray(cached_rw.encode(rw_texts), dtype=np.float32)
        emit({"bench": "retrieval", "what": "rewrite", "queries": set_name,
              "changed": sum(a != b for a, b in zip(queries, rw_texts, strict=True)),
              "examples": [[a, b] for a, b in zip(queries, rw_texts, strict=True) if a != b][:5]})
        for lo in range(0, len(queries), 256):
            chunk = list(range(lo, min(lo + 256, len(queries))))
            t0 = time.perf_counter()
            s0 = qvec[chunk] @ emb32.T
            top2, best = page_scores(s0, order, starts)
            base = time.perf_counter() - t0
            q_new: dict[str, np.ndarray] = {}  # variant -> (chunk, dim) query vectors
            lex_new: dict[str, list[np.ndarray]] = {}  # variant -> per-query page BM25 vectors
            lex0 = []
            for row, qi in enumerate(chunk):
                t0 = time.perf_counter()
                text, q, s = queries[qi], qvec[qi], s0[row]
                lex = bm25.scores(text).astype(np.float64)
                lex0.append(lex)
                qw = lexical.query_weights(text)
                base += time.perf_counter() - t0
                lex_check = max(lex_check, float(np.abs(lexical.scores(qw) - lex).max()))
                hyb_codes, hyb_scores = default_rank(top2[row], best[row], lex, depth, weight)
                dense_codes = top_codes(top2[row], max(ROCCHIO_M))
                bm25_codes = top_codes(lex, max(ROCCHIO_M), positive=True)
                win_rows = top_codes(s.astype(np.float64), max(ROCCHIO_M))
                for m in ROCCHIO_M:
                    t0 = time.perf_counter()
                    fb_pages = emb32[best_windows(s, dense_codes[:m], order, bounds)].mean(axis=0)
                    fb_windows = emb32[win_rows[:m]].mean(axis=0)
                    fb_fused = emb32[best_windows(s, hyb_codes[:m], order, bounds)].mean(axis=0)
                    t_dense = (time.perf_counter() - t0) / 3
                    for b in ROCCHIO_BETA:
                        for name, fb in ((f"rocchio_pages_m{m}_b{b}", fb_pages),
                                         (f"rocchio_windows_m{m}_b{b}", fb_windows),
                                         (f"prf_fused_m{m}_b{b}", fb_fused)):
                            q_new.setdefault(name, np.zeros((len(chunk), len(q)), dtype=np.float32))[row] = \
                                unit(q + b * fb)
                            seconds[name] += t_dense
                    q_new.setdefault(f"prf_fused_dense_m{m}", np.zeros((len(chunk), len(q)), np.float32))[row] = \
                        unit(q + 0.5 * fb_fused)
                    seconds[f"prf_fused_dense_m{m}"] += t_dense
                    for a in RM3_ALPHA:
                        t0 = time.perf_counter()
                        codes = bm25_codes[:m]
                        vec = lexical.scores(lexical.expand(qw, codes, lex[codes], a)) if len(codes) else lex
                        lex_new.setdefault(f"rm3_bm25_m{m}_a{a}", []).append(vec)
                        seconds[f"rm3_bm25_m{m}_a{a}"] += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    vec = lexical.scores(lexical.expand(qw, hyb_codes[:m], hyb_scores[:m], PRF_ALPHA))
                    t_lex = time.perf_counter() - t0
                    for name in [f"prf_fused_m{m}_b{b}" for b in ROCCHIO_BETA] + [f"prf_fused_lex_m{m}"]:
                        lex_new.setdefault(name, []).append(vec)
                        seconds[name] += t_lex
                    t0 = time.perf_counter()
                    codes = dense_codes[:m]
                    lex_new.setdefault(f"rm3_dense_m{m}", []).append(
                        lexical.scores(lexical.expand(qw, codes, top2[row, codes], PRF_ALPHA)))
                    seconds[f"rm3_dense_m{m}"] += time.perf_counter() - t0
                q_new.setdefault("rewrite", np.zeros((len(chunk), len(q)), np.float32))[row] = rw_vec[qi]
                q_new.setdefault("rewrite_mean", np.zeros((len(chunk), len(q)), np.float32))[row] = \
                    unit(q + rw_vec[qi])
                lex_new.setdefault("rewrite", []).append(bm25.scores(rw_texts[qi]).astype(np.float64))
            for name in variants:
                t0 = time.perf_counter()
                if name in q_new:
                    v_top2, v_best = page_scores(q_new[name] @ emb32.T, order, starts)
                else:
                    v_top2, v_best = top2, best
                lexes = lex_new.get(name, lex0)
                w = 0.0 if name == "dense_only" else weight
                for row in range(len(chunk)):
                    codes, _ = default_rank(v_top2[row], v_best[row], lexes[row], depth, w)
                    rankings[name].append([names[c] for c in codes.tolist()])
                seconds[name] += time.perf_counter() - t0 + base
            logger.info("%s: %d / %d queries", set_name, chunk[-1] + 1, len(queries))
        logger.info("%s: query ideas scored in %.0f s", set_name, time.perf_counter() - t_set)
        lib = [page_ranking(h) for h in index.search(queries, k=10, mode="hybrid")]
        same = sum(a == b for a, b in zip(lib, rankings["default"], strict=True))
        emit({"bench": "retrieval", "what": "query_ideas_check", "queries": set_name, "n": len(queries),
              "top10_identical_to_library": same, "term_matrix_bm25_max_abs_diff": lex_check})
        rr, rec = {}, {}
        for name in variants:
            rr[name], rec[name] = per_query(rankings[name], relevant)
            emit({"bench": "retrieval", "what": "query_idea", "queries": set_name, "n": len(queries),
                  "method": name, **{k: round(v, 4) for k, v in metrics(rankings[name], relevant).items()},
                  "ms_per_query": round(1000 * seconds[name] / len(queries), 2)})
        per_set[set_name] = (rr, rec)
        if set_name == "questions":
            for name in variants[1:]:
                d_rr, d_rec = rr[name] - rr["default"], rec[name] - rec["default"]
                emit({"bench": "retrieval", "what": "query_idea_gain", "method": name,
                      "mrr_gain": round(float(d_rr.mean()), 4),
                      "mrr_gain_ci95": [round(x, 4) for x in bootstrap(d_rr)],
                      "r@10_gain": round(float(d_rec.mean()), 4),
                      "r@10_gain_ci95": [round(x, 4) for x in bootstrap(d_rec)],
                      "better_rr": int((d_rr > 0).sum()), "worse_rr": int((d_rr < 0).sum()),
                      "default_misses_found": int(((rr["default"] == 0) & (rr[name] > 0)).sum()),
                      "new_misses": int(((rr["default"] > 0) & (rr[name] == 0)).sum()),
                      "found": [queries[i] for i in np.flatnonzero((rr["default"] == 0) & (rr[name] > 0))]})
            for family, members in families.items():
                cv = cross_validate(members, rr, rec)
                held = cv.pop("seed0_rr")
                d = held - rr["default"]
                emit({"bench": "retrieval", "what": "query_idea_cv", "family": family, **cv,
                      "seed0_cv_mrr_gain_ci95": [round(x, 4) for x in bootstrap(d)]})
    if "name_lines" in per_set:
        rr, _ = per_set["name_lines"]
        emit({"bench": "retrieval", "what": "query_idea_name_mrr_change",
              **{name: round(float((rr[name] - rr["default"]).mean()), 4) for name in variants[1:]}})
