"""Man-page retrieval: hand-written questions and NAME-line queries, page level, every method in one run.

Corpus: this machine's man pages (``load_man_pages``, at most 50 pages per source, every section), the NAME
section left out of the indexed text, cut into 256/64-token windows, every window encoded once by the packaged
MiniLM (bf16, cached under ``.cache/retrieval``). Questions: ``benchmarks/data/man_questions.jsonl`` (written by
hand before any system was run on them; questions whose relevant pages are not in the corpus are counted and
left out). NAME-line queries: each page's NAME line for its own page.

Methods (all on the same vectors):

* ``first_window``: MiniLM on each page's first window only (what "index the first 256 tokens" gives);
* ``bm25_pages``: BM25 over whole pages;
* ``dense_max``: every window indexed, a page scored by its best window (``doc_score="max"``);
* ``hybrid_rrf_windows``: BM25 over windows fused with the dense windows by reciprocal rank fusion;
* the document scorings of ``indexer.scoring`` (``doc_score=...``), dense and hybrid (page-level BM25).

    python benchmarks/retrieval.py                    # about 20 minutes on 2 cores the first time (encoding)

One JSON line per figure on stdout: R@1, R@10, MRR@10, nDCG@10.
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

from indexer.evaluation import mrr, ndcg_at_k, recall_at_k  # noqa: E402
from indexer.hybrid import Bm25Index  # noqa: E402
from longdoc.encoder import WindowEncoder  # noqa: E402
from longdoc.manpages import load_man_pages  # noqa: E402
from longdoc.windows import WindowConfig  # noqa: E402

logger = logging.getLogger("benchmarks.retrieval")
ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "retrieval"
QUESTIONS = Path(__file__).resolve().parent / "data" / "man_questions.jsonl"


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
    sweep(encoder, docs, table, emb, query_sets)


def doc_matrix(table: pl.DataFrame, doc_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(n_docs, max_windows) window rows of each page, -1 padded, and each page's window count."""
    position = {d: i for i, d in enumerate(doc_ids)}
    doc_of = np.asarray([position[d] for d in table["doc_id"].to_list()])
    counts = np.bincount(doc_of, minlength=len(doc_ids))
    width = int(counts.max())
    rows = np.full((len(doc_ids), width), -1, dtype=np.int64)
    order = np.argsort(doc_of, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    for d in range(len(doc_ids)):
        rows[d, : counts[d]] = order[starts[d] : starts[d] + counts[d]]
    return rows, counts


def rank_docs(scores: np.ndarray, doc_ids: list[str], k: int = 10) -> list[list[str]]:
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [[doc_ids[j] for j in row] for row in top]


def sweep(encoder, docs, table, emb, query_sets) -> None:
    """Document scorings computed from the same window scores, and page-level BM25 fused with them."""
    doc_ids = docs["doc_id"].to_list()
    rows, counts = doc_matrix(table, doc_ids)
    first = rows[:, 0]
    bm25 = Bm25Index(docs["text"].to_list())
    log_len = np.log(counts.astype(np.float64))
    for set_name, (queries, relevant) in query_sets.items():
        t0 = time.perf_counter()
        q = encoder.encode(queries)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        methods: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(q), 64):
            s = q[start : start + 64] @ emb.T  # (b, n_windows)
            per_doc = np.where(rows >= 0, s[:, np.maximum(rows, 0)], -np.inf)  # (b, n_docs, width)
            ordered = -np.sort(-per_doc, axis=2)[:, :, :3]  # best three windows of each page
            best = ordered[:, :, 0]
            second = np.where(np.isfinite(ordered[:, :, 1]), ordered[:, :, 1], best)
            third = np.where(np.isfinite(ordered[:, :, 2]), ordered[:, :, 2], second)
            first_s = s[:, first]
            cand = {
                "max": best,
                "first_window": first_s,
                "top2_mean": (best + second) / 2,
                "top3_mean": (best + second + third) / 3,
                "max_len_prior_0.01": best - 0.01 * log_len,
                "max_len_prior_0.02": best - 0.02 * log_len,
                "max_first_0.3": 0.7 * best + 0.3 * first_s,
                "max_first_0.5": 0.5 * best + 0.5 * first_s,
                "top2_first_0.3": 0.7 * (best + second) / 2 + 0.3 * first_s,
                "top3_first_0.3": 0.7 * (best + second + third) / 3 + 0.3 * first_s,
            }
            lex = np.stack([bm25.scores(text) for text in queries[start : start + 64]])  # (b, n_docs)
            lex_n = lex / np.maximum(lex.max(axis=1, keepdims=True), 1e-9)
            for name in ("max", "top2_first_0.3", "top3_first_0.3", "max_first_0.3"):
                dense = cand[name]
                cand[f"{name}+bm25_rrf"] = rrf(dense, lex)
                for w in (0.1, 0.2, 0.3):
                    cand[f"{name}+bm25_lin{w}"] = dense + w * lex_n
            cand["bm25_pages"] = lex
            for name, value in cand.items():
                methods.setdefault(name, []).append(value)
        for name, parts in methods.items():
            ranking = rank_docs(np.concatenate(parts), doc_ids)
            emit({"bench": "retrieval", "what": "sweep", "queries": set_name, "method": name,
                  **{k: round(v, 4) for k, v in metrics(ranking, relevant).items()}})
        logger.info("%s: %d queries in %.1f s", set_name, len(queries), time.perf_counter() - t0)


def rrf(a: np.ndarray, b: np.ndarray, k: int = 60) -> np.ndarray:
    """Reciprocal rank fusion of two (b, n_docs) score matrices (ranks over all documents)."""
    ra = np.argsort(np.argsort(-a, axis=1, kind="stable"), axis=1) + 1
    rb = np.argsort(np.argsort(-b, axis=1, kind="stable"), axis=1) + 1
    return 1.0 / (k + ra) + 1.0 / (k + rb)


if __name__ == "__main__":
    main()
