"""Man-page retrieval: hand-written questions and NAME-line queries, page level, every method in one run.

Corpus: this machine's man pages (``load_man_pages``, at most 50 pages per source, every section), the NAME
section left out of the indexed text, cut into 256/64-token windows, every window encoded once by the packaged
MiniLM (bf16, cached under ``.cache/retrieval``). Questions: ``benchmarks/data/man_questions.jsonl`` (written by
hand before any system was run on them; questions whose relevant pages are not in the corpus are counted and
left out). NAME-line queries: each page's NAME line for its own page.

Methods, each the real ``PassageIndex.search`` over the same window vectors (queries encoded once, cached):

* ``first_window``: an index of each page's first window only (MiniLM on the first 256 tokens), per page;
* ``bm25_pages``: BM25 over whole pages (``indexer.hybrid.Bm25Index``);
* ``dense_<doc_score>``: every window indexed, per-page results with ``doc_score=`` each of ``DOC_SCORES``;
* ``hybrid_<doc_score>_w<W>``: ``mode="hybrid"`` per page (page-level BM25 fused by ``fuse_scores`` with weight
  W, the library's ``HYBRID_LEXICAL_WEIGHT`` set for the sweep);
* ``hybrid_<doc_score>_rrf``: the dense per-page ranking and the page BM25 ranking (``CANDIDATE_POOL`` each)
  fused by ``indexer.hybrid.reciprocal_rank_fusion``;
* ``hybrid_windows_rrf``: ``mode="hybrid", per_doc=None`` (window BM25 + dense windows, RRF), pages in order of
  their first window.

    python benchmarks/retrieval.py                    # about 20 minutes on 2 cores the first time (encoding)
    python benchmarks/retrieval.py --ideas            # fusion ideas beside the default (benchmarks/retrieval_ideas.py)
    python benchmarks/retrieval.py --query-ideas      # query-side ideas: PRF, query rewriting (same file)

One JSON line per figure on stdout: R@1, R@10, MRR@10, nDCG@10 and the search seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, machine, setup_logging  # noqa: E402

import indexer.index as index_module  # noqa: E402
from indexer import PassageIndex  # noqa: E402
from indexer.evaluation import mrr, ndcg_at_k, recall_at_k  # noqa: E402
from indexer.hybrid import Bm25Index, reciprocal_rank_fusion  # noqa: E402
from indexer.inputs import DOC_SCORES  # noqa: E402
from longdoc.encoder import WindowEncoder  # noqa: E402
from longdoc.manpages import load_man_pages  # noqa: E402
from longdoc.windows import WindowConfig  # noqa: E402

logger = logging.getLogger("benchmarks.retrieval")
ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "retrieval"
QUERY_CACHE = ROOT / ".cache" / "retrieval-queries"
QUESTIONS = Path(__file__).resolve().parent / "data" / "man_questions.jsonl"
#: The lexical weights of per-page hybrid search that the sweep measures.
HYBRID_WEIGHTS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3)


def metrics(rankings: list[list[str]], relevant: list[set[str]]) -> dict[str, float]:
    return {"r@1": recall_at_k(rankings, relevant, 1), "r@10": recall_at_k(rankings, relevant, 10),
            "mrr@10": mrr(rankings, relevant, 10), "ndcg@10": ndcg_at_k(rankings, relevant, 10)}


def encode_corpus(encoder: WindowEncoder, docs: pl.DataFrame) -> tuple[pl.DataFrame, np.ndarray]:
    key = hashlib.sha1(json.dumps([encoder.window.to_dict(), docs["doc_id"].to_list()]).encode()).hexdigest()[:16]
    path = CACHE / key
    if (path / "emb.npy").exists():
        return pl.read_parquet(path / "windows.parquet"), np.load(path / "emb.npy")
    t0 = time.perf_counter()
    windows, emb = encoder.encode_documents(docs, show_progress_bar=True)
    n_tokens = int(windows.lengths.sum())
    emit({"bench": "retrieval", "what": "encode", "windows": len(windows), "tokens": n_tokens,
          "seconds": round(time.perf_counter() - t0, 1)})
    path.mkdir(parents=True, exist_ok=True)
    table = windows.table.select("doc_id", "window_index", "char_start", "char_end")
    table.write_parquet(path / "windows.parquet")
    np.save(path / "emb.npy", emb)
    return table, emb


def load_questions(docs: pl.DataFrame) -> tuple[list[str], list[set[str]], int]:
    """The questions whose relevant pages are in the corpus (only those pages kept), and how many were left out."""
    present = set(docs["doc_id"].to_list())
    questions, relevant, left_out = [], [], 0
    for line in QUESTIONS.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        rel = {d for d in row["relevant"] if d in present}
        if not rel:
            left_out += 1
            continue
        questions.append(row["question"])
        relevant.append(rel)
    return questions, relevant, left_out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-per-source", type=int, default=50)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--stride", type=int, default=64)
    parser.add_argument("--encode-only", action="store_true")
    parser.add_argument("--sets", default="questions,name_lines", help="query sets to run (comma-separated)")
    parser.add_argument("--speed-only", action="store_true",
                        help="only the filtered-search timing on the questions (best of --repeat)")
    parser.add_argument("--repeat", type=int, default=3, help="timing repeats (best kept)")
    parser.add_argument("--ideas", action="store_true",
                        help="only the fusion ideas of per-page hybrid search (pool depth, BM25 fields and "
                             "parameters, normalisation, weighted RRF), scored in numpy beside the library's default")
    parser.add_argument("--query-ideas", action="store_true",
                        help="only the query-side ideas of per-page hybrid search (dense and lexical pseudo-relevance "
                             "feedback, query rewriting), with bootstrap intervals and cross-validation")
    args = parser.parse_args()
    setup_logging()
    emit({"bench": "retrieval", "what": "machine", **machine(), "args": vars(args)})
    docs = load_man_pages(max_per_source=args.max_per_source, seed=0)
    docs = docs.filter(pl.col("text").str.strip_chars().str.len_chars() > 0)
    encoder = WindowEncoder(window=WindowConfig(args.max_length, args.stride), dtype=torch.bfloat16)
    table, emb = encode_corpus(encoder, docs)
    emit({"bench": "retrieval", "what": "corpus", "pages": docs.height, "windows": table.height})
    if args.encode_only:
        return
    questions, relevant, left_out = load_questions(docs)
    emit({"bench": "retrieval", "what": "questions", "kept": len(questions), "left_out": left_out})
    names = docs["name_line"].to_list()
    name_rows = [i for i, n in enumerate(names) if n and n.strip()]
    query_sets = {"questions": (questions, relevant),
                  "name_lines": ([names[i] for i in name_rows], [{docs["doc_id"][i]} for i in name_rows])}
    wanted = args.sets.split(",")
    if args.ideas or args.query_ideas:
        from retrieval_ideas import ideas, query_ideas  # noqa: PLC0415

        (query_ideas if args.query_ideas else ideas)(encoder, docs, table, emb, {name: value for name, value in query_sets.items() if name in wanted},
              build_index=build_index, cached_encoder=CachedEncoder, page_ranking=page_ranking, metrics=metrics)
        return
    sweep(encoder, docs, table, emb, {name: value for name, value in query_sets.items() if name in wanted},
          speed_only=args.speed_only, repeat=args.repeat)


class CachedEncoder:
    """The query encoder for the index: the MiniLM vectors of the benchmark's queries, encoded once."""

    def __init__(self, encoder: WindowEncoder, texts: list[str]) -> None:
        self.dim = encoder.dim
        unique = list(dict.fromkeys(texts))
        key = hashlib.sha1(json.dumps(unique).encode()).hexdigest()[:16]
        path = QUERY_CACHE / f"{key}.npy"
        if path.exists():
            vectors = np.load(path)
        else:
            vectors = np.asarray(encoder.encode(unique), dtype=np.float32)
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, vectors)
        self._rows = {t: i for i, t in enumerate(unique)}
        self._vectors = vectors

    def encode(self, texts: list[str]) -> np.ndarray:
        return self._vectors[[self._rows[t] for t in texts]]


def page_ranking(hits: list, k: int = 10) -> list[str]:
    """The first k distinct pages of a hit list."""
    return list(dict.fromkeys(h.doc_id for h in hits))[:k]


def passage_table(docs, table) -> pl.DataFrame:
    """The window table with each window's text and its page's labels."""
    texts = docs["text"].to_list()
    position = {d: i for i, d in enumerate(docs["doc_id"].to_list())}
    starts, ends = table["char_start"].to_list(), table["char_end"].to_list()
    labels = docs["labels"].to_list()
    passages = table.with_columns(
        pl.Series("text", [texts[position[d]][a:b] for d, a, b in zip(table["doc_id"].to_list(), starts, ends,
                                                                        strict=True)]),
        pl.Series("labels", [labels[position[d]] for d in table["doc_id"].to_list()], dtype=pl.List(pl.String)),
    )
    return passages


def build_index(docs, table, emb, encoder) -> PassageIndex:
    """The index of every window (texts and labels from the pages)."""
    return PassageIndex.build(emb, passage_table(docs, table), encoder=encoder)


def sweep(encoder, docs, table, emb, query_sets, *, speed_only: bool = False, repeat: int = 3) -> None:
    """Every method through the library's search, on both query sets."""
    passages = passage_table(docs, table)
    all_queries = [q for queries, _ in query_sets.values() for q in queries]
    cached = CachedEncoder(encoder, all_queries)
    index = PassageIndex.build(emb, passages, encoder=cached)
    first = table["window_index"] == 0
    first_index = PassageIndex.build(emb[first.to_numpy()], passages.filter(first), encoder=cached)
    doc_ids = docs["doc_id"].to_list()
    page_bm25 = Bm25Index(docs["text"].to_list())
    emit({"bench": "retrieval", "what": "index", "windows": len(index), "pages": len(index.doc_ids),
          "first_windows": len(first_index), "candidate_pool": index_module.CANDIDATE_POOL})
    for set_name, (queries, relevant) in query_sets.items():
        if not speed_only:
            run_set(set_name, queries, relevant, index, first_index, page_bm25, doc_ids)
    if "questions" in query_sets:
        filter_speed(index, query_sets["questions"][0], repeat=repeat)


def filter_speed(index: PassageIndex, queries: list[str], repeat: int = 3) -> None:
    """Seconds for the questions as one batch and one per call, with each section's label filter and without."""
    sections = {lab: int(index.passages.filter(pl.col("labels").list.contains(lab))["doc_id"].n_unique())
                for lab in index.labels}
    for mode, per_doc in (("dense", 1), ("dense", None), ("hybrid", 1), ("hybrid", None)):
        for label in (None, "1", "3", "2", "4"):
            def batch(mode=mode, per_doc=per_doc, label=label):
                return index.search(queries, k=10, mode=mode, per_doc=per_doc, labels=label)

            def one_by_one(mode=mode, per_doc=per_doc, label=label):
                return [index.search(q, k=10, mode=mode, per_doc=per_doc, labels=label) for q in queries]

            found = batch()
            seconds = min(timed(batch)[1] for _ in range(repeat))
            single = min(timed(one_by_one)[1] for _ in range(repeat))
            emit({"bench": "retrieval", "what": "filter_speed", "mode": mode, "per_doc": per_doc, "label": label,
                  "pages_in_filter": sections.get(label, len(index.doc_ids)), "queries": len(queries),
                  "batch_s": round(seconds, 3), "one_per_call_s": round(single, 3),
                  "min_hits": min(len(h) for h in found)})


def timed(fn):
    t0 = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t0


def run_set(set_name, queries, relevant, index, first_index, page_bm25, doc_ids) -> None:
    position = {d: i for i, d in enumerate(doc_ids)}
    pool = index_module.CANDIDATE_POOL

    def report(method: str, rankings: list[list[str]], seconds: float) -> None:
        emit({"bench": "retrieval", "queries": set_name, "n": len(queries), "method": method,
              **{k: round(v, 4) for k, v in metrics(rankings, relevant).items()}, "seconds": round(seconds, 2)})

    hits, sec = timed(lambda: first_index.search(queries, k=10, doc_score="max"))
    report("first_window", [page_ranking(h) for h in hits], sec)
    bm25_top, sec = timed(lambda: [page_bm25.top(q, pool) for q in queries])
    report("bm25_pages", [[doc_ids[j] for j in top[:10]] for top in bm25_top], sec)
    for doc_score in DOC_SCORES:
        hits, sec = timed(lambda ds=doc_score: index.search(queries, k=pool, doc_score=ds))
        dense = [[h.doc_id for h in found] for found in hits]
        report(f"dense_{doc_score}", [r[:10] for r in dense], sec)
        # page-level RRF of the dense and BM25 rankings, with the library's fusion
        fused = [[doc_ids[j] for j, _ in reciprocal_rank_fusion([[position[d] for d in ranked], top.tolist()])][:10]
                 for ranked, top in zip(dense, bm25_top, strict=True)]
        report(f"hybrid_{doc_score}_rrf", fused, 0.0)
        saved = index_module.HYBRID_LEXICAL_WEIGHT
        try:
            for weight in HYBRID_WEIGHTS:
                index_module.HYBRID_LEXICAL_WEIGHT = weight
                hits, sec = timed(lambda ds=doc_score: index.search(queries, k=10, mode="hybrid", doc_score=ds))
                report(f"hybrid_{doc_score}_w{weight}", [page_ranking(h) for h in hits], sec)
        finally:
            index_module.HYBRID_LEXICAL_WEIGHT = saved
    hits, sec = timed(lambda: index.search(queries, k=100, mode="hybrid", per_doc=None))
    report("hybrid_windows_rrf", [page_ranking(h) for h in hits], sec)
    logger.info("%s: %d queries done", set_name, len(queries))


if __name__ == "__main__":
    main()
