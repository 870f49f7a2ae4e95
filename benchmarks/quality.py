"""Classification and retrieval quality with the packaged MiniLM, frozen encoder, on real corpora.

Every corpus is cut and encoded ONCE (cached under ``.cache/quality``); every method then trains on the cached
window embeddings, for each fold and seed:

* hierarchical heads (attention, mean, max, transformer) over all windows,
* first-512 (first window only, mean head = a linear model on its embedding),
* head+tail (first 128 + last 382 tokens in one window),
* TF-IDF + logistic regression on the full text.

Man pages also give a retrieval figure: the NAME line is the query, its own page (NAME section left out of the
indexed text) is the relevant document; all windows indexed and a page scored by its best window, against
indexing only the first window.

    python benchmarks/quality.py --corpus bbc --seeds 3
    python benchmarks/quality.py --corpus manpages --pages-per-section 100 --seeds 3

One JSON line per figure on stdout.
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

from longdoc.baselines import TfidfLogReg  # noqa: E402
from longdoc.classifier import Encoded, LongDocClassifier  # noqa: E402
from longdoc.evaluation import first_windows, head_tail_windows, head_tokens, sibling_classifier  # noqa: E402
from longdoc.metrics import classification_report  # noqa: E402
from longdoc.training import TrainConfig  # noqa: E402
from longdoc.windows import WindowConfig, Windows  # noqa: E402

logger = logging.getLogger("benchmarks.quality")
CACHE = Path(__file__).resolve().parents[1] / ".cache" / "quality"


def load_corpus(name: str, args: argparse.Namespace) -> tuple[pl.DataFrame, list[tuple[np.ndarray, np.ndarray]]]:
    """The document table and (train, test) index folds."""
    if name == "bbc":
        from longdoc.corpora import load_bbc

        docs = load_bbc()
        fold = docs["fold"].to_numpy()
        return docs, [(np.flatnonzero(fold != f), np.flatnonzero(fold == f)) for f in range(args.folds)]
    if name == "20news":
        from longdoc.corpora import load_20news

        docs = load_20news()
        if args.limit:
            docs = docs.sample(n=min(args.limit, docs.height), seed=0)
        split = docs["split"].to_numpy()
        return docs, [(np.flatnonzero(split == "train"), np.flatnonzero(split == "test"))]
    if name == "manpages":
        from longdoc.corpora import stratified_split
        from longdoc.manpages import load_man_pages

        docs = load_man_pages(max_per_section=args.pages_per_section, seed=0)
        docs = docs.filter(pl.col("text").str.strip_chars().str.len_chars() > 0)
        train, test = stratified_split(docs, test_size=0.3, seed=0)
        index = {d: i for i, d in enumerate(docs["doc_id"].to_list())}
        return docs, [(np.array([index[d] for d in train["doc_id"]]), np.array([index[d] for d in test["doc_id"]]))]
    raise SystemExit(f"unknown corpus {name!r}")


def cached_encoding(
    clf: LongDocClassifier, docs: pl.DataFrame, key: str, *, head_tail: bool = True
) -> tuple[Encoded, Encoded | None]:
    """All windows and the head+tail windows of every document, encoded once and cached on disk."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / key
    tok = clf.encoder.tokenizer
    if (path / "emb.npy").exists():
        from longdoc.windows import make_windows

        windows = make_windows(docs, tok, clf.window)
        emb = np.load(path / "emb.npy")
        logger.info("loaded cached embeddings from %s", path)
    else:
        t0 = time.perf_counter()
        windows, emb = clf.encoder.encode_documents(docs, show_progress_bar=True)
        seconds = time.perf_counter() - t0
        n_tokens = int(windows.lengths.sum())
        emit({"bench": "quality", "what": "encode", "key": key, "windows": len(windows), "tokens": n_tokens,
              "seconds": round(seconds, 1), "tokens_per_s": round(n_tokens / seconds)})
        path.mkdir(exist_ok=True)
        np.save(path / "emb.npy", emb)
    fp = clf.encoder.fingerprint
    if not head_tail:
        return Encoded(docs, windows, emb, fp), None
    ht = head_tail_windows(windows, head=head_tokens(clf.window), cls_id=tok.cls_token_id,
                           sep_id=tok.sep_token_id)
    if (path / "ht_emb.npy").exists():
        ht_emb = np.load(path / "ht_emb.npy")
    else:
        ht_emb = clf.encoder.encode_windows(ht, show_progress_bar=True)
        np.save(path / "ht_emb.npy", ht_emb)
    return Encoded(docs, windows, emb, fp), Encoded(docs, ht, ht_emb, fp)


def score(model: LongDocClassifier, train: Encoded, test: Encoded, seed: int, args: argparse.Namespace) -> dict:
    val_n = max(1, len(train.documents) // 10)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(train.documents.height)
    tr, va = train.select(np.sort(perm[val_n:])), train.select(np.sort(perm[:val_n]))
    t0 = time.perf_counter()
    model.fit(tr, eval_dataset=va, args=TrainConfig(epochs=args.epochs, seed=seed, head_lr=args.head_lr,
                                                     batch_size=args.batch_size, patience=args.patience))
    report = model.evaluate(test)
    report["seconds"] = time.perf_counter() - t0
    return report


def retrieval(clf: LongDocClassifier, enc: Encoded) -> None:
    """NAME line -> its own page: all windows (best window per page) vs first window only."""
    from indexer import PassageIndex
    from indexer.evaluation import evaluate_retrieval

    docs = enc.documents
    queries = docs["name_line"].to_list()
    qv = clf.encoder.encode(queries)
    relevant = [{d} for d in docs["doc_id"].to_list()]
    table = enc.windows.table
    texts = enc.windows.texts(docs)
    for name, rows in (("all_windows", np.arange(len(table))),
                       ("first_window", np.flatnonzero(table["window_index"].to_numpy() == 0))):
        passages = table[rows.tolist()].select("doc_id", "window_index", "char_start", "char_end").with_columns(
            pl.Series("text", [texts[i] for i in rows]))
        index = PassageIndex.build(enc.embeddings[rows], passages, encoder=clf.encoder)
        for mode in ("dense", "hybrid"):
            t0 = time.perf_counter()
            metrics = evaluate_retrieval(index, qv if mode == "dense" else queries, relevant, k=10, mode=mode)
            emit({"bench": "quality", "what": "retrieval", "corpus": "manpages", "method": name, "mode": mode,
                  "windows": len(rows), **{k: round(float(v), 4) for k, v in metrics.items()},
                  "search_seconds": round(time.perf_counter() - t0, 2)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", choices=("bbc", "manpages", "20news"), default="bbc")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--limit", type=int, default=0, help="20news: sample this many posts")
    parser.add_argument("--pages-per-section", type=int, default=100)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--stride", type=int, default=128)
    parser.add_argument("--max-windows", type=int, default=16, help="0 keeps every window")
    parser.add_argument("--poolings", default="attention,mean,max,transformer")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--head-lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--patience", type=int, default=6)
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="bf16")
    parser.add_argument("--no-retrieval", action="store_true")
    parser.add_argument("--no-classification", action="store_true")
    args = parser.parse_args()
    setup_logging()
    emit({"bench": "quality", "what": "machine", **machine(), "args": vars(args)})
    docs, folds = load_corpus(args.corpus, args)
    labels = sorted({x for row in docs["labels"].to_list() for x in row})
    window = WindowConfig(args.max_length, args.stride, args.max_windows or None)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    clf = LongDocClassifier.from_encoder(labels=labels, window=window, dtype=dtype)
    key = hashlib.sha1(json.dumps([args.corpus, args.limit, args.pages_per_section, window.to_dict(), args.dtype,
                                   docs["doc_id"].to_list()]).encode()).hexdigest()[:16]
    enc, ht = cached_encoding(clf, docs, f"{args.corpus}-{key}", head_tail=not args.no_classification)
    if args.corpus == "manpages" and not args.no_retrieval:
        retrieval(clf, enc)
    if args.no_classification:
        return
    results: dict[str, list[dict]] = {}
    for f, (train_idx, test_idx) in enumerate(folds):
        train, test = enc.select(train_idx), enc.select(test_idx)
        for seed in range(args.seeds):
            for pooling in args.poolings.split(","):
                results.setdefault(pooling, []).append(score(sibling_classifier(clf, pooling), train, test, seed, args))
            first_train = Encoded(train.documents, *_first(train), train.fingerprint)
            first_test = Encoded(test.documents, *_first(test), test.fingerprint)
            results.setdefault("first512", []).append(score(sibling_classifier(clf, "mean"), first_train, first_test, seed, args))
            results.setdefault("head_tail", []).append(
                score(sibling_classifier(clf, "mean"), ht.select(train_idx), ht.select(test_idx), seed, args))
        t0 = time.perf_counter()
        y = [r[0] for r in docs["labels"].to_list()]
        model = TfidfLogReg().fit([docs["text"][int(i)] for i in train_idx], [y[i] for i in train_idx])
        report = classification_report([y[i] for i in test_idx], model.predict([docs["text"][int(i)] for i in test_idx]),
                                       labels)
        report["seconds"] = time.perf_counter() - t0
        results.setdefault("tfidf", []).append(report)
        logger.info("fold %d done", f)
    for method, reports in results.items():
        acc = [r["accuracy"] for r in reports]
        f1 = [r["macro_f1"] for r in reports]
        emit({"bench": "quality", "what": "classification", "corpus": args.corpus, "method": method,
              "runs": len(reports), "accuracy_mean": round(float(np.mean(acc)), 4),
              "accuracy_std": round(float(np.std(acc)), 4), "macro_f1_mean": round(float(np.mean(f1)), 4),
              "macro_f1_std": round(float(np.std(f1)), 4),
              "train_seconds_mean": round(float(np.mean([r["seconds"] for r in reports])), 2)})


def _first(enc: Encoded) -> tuple[Windows, np.ndarray]:
    rows = np.flatnonzero(enc.windows.table["window_index"].to_numpy() == 0)
    win = first_windows(enc.windows)
    return win, enc.embeddings[rows]


if __name__ == "__main__":
    main()
