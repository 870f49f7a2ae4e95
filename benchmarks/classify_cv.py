"""The default classifier against its own halves and the baselines, cross-validated, frozen encoder (issue 18).

Every corpus is cut and encoded once with the packaged MiniLM (cached under ``.cache/quality``, shared with
``quality.py``); then, for each fold and seed, on the same split:

* ``default``: ``LongDocClassifier.from_encoder(labels=...)`` + ``fit(train)`` exactly as a user gets them (lexical
  branch on, the validation split carved inside ``fit``),
* ``dense``: the same with ``lexical=False`` (the window head alone),
* ``lexical``: the lexical branch alone (``longdoc.lexical.LexicalModel``, argmax of its scores),
* ``first512``: a linear head on the first window only; ``head_tail``: on the first 128 + last 382 tokens,
* ``tfidf``: ``longdoc.baselines.TfidfLogReg`` (the users' baseline).

It prints one JSON line per run and then per method: macro-F1 and accuracy as [mean, low, high] of the 95% t-interval over
the runs, the paired difference of ``default`` to each other method (same split, same seed) with its interval, and
the mean fit+predict seconds.

    python benchmarks/classify_cv.py --corpus manpages --pages-per-section 200 --folds 5 --seeds 1
    python benchmarks/classify_cv.py --corpus bbc --seeds 3
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
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, machine, setup_logging  # noqa: E402
from quality import _first, cached_encoding, load_corpus  # noqa: E402

from longdoc.baselines import TfidfLogReg  # noqa: E402
from longdoc.classifier import Encoded, LongDocClassifier  # noqa: E402
from longdoc.heads import DocumentHead, HeadConfig  # noqa: E402
from longdoc.lexical import LexicalModel  # noqa: E402
from longdoc.metrics import classification_report, mean_ci, paired_difference  # noqa: E402
from longdoc.training import TrainConfig  # noqa: E402
from longdoc.windows import WindowConfig  # noqa: E402

logger = logging.getLogger("benchmarks.classify_cv")
METHODS = ("default", "dense", "lexical", "first512", "head_tail", "tfidf")


def interval(values: list[float]) -> list[float | None]:
    """[mean, low, high] of the 95% t-interval over runs (bounds None for one run)."""
    ci = mean_ci(values).to_dict()
    return [round(ci["mean"], 4)] + [None if ci[k] is None else round(ci[k], 4) for k in ("low", "high")]


def classifier(base: LongDocClassifier, *, pooling: str | None, lexical: bool) -> LongDocClassifier:
    """A new classifier over ``base``'s encoder with the default head (or ``pooling``) and optional lexical branch."""
    cfg = HeadConfig(**{**({"pooling": pooling} if pooling else {}), "hidden_size": base.encoder.dim,
                        "num_labels": len(base.labels), "multi_label": base.multi_label, "lexical_fusion": lexical})
    lex = LexicalModel(base.labels, multi_label=base.multi_label) if lexical else None
    return LongDocClassifier(base.encoder, DocumentHead(cfg), base.labels, lexical=lex)


def run_fold(base: LongDocClassifier, enc: Encoded, ht: Encoded, train_idx: np.ndarray, test_idx: np.ndarray,
             seed: int, methods: list[str], train_config: dict | None = None) -> dict[str, dict]:
    train, test = enc.select(train_idx), enc.select(test_idx)
    truth = [r[0] for r in test.documents["labels"].to_list()]
    out: dict[str, dict] = {}

    def timed(name: str, fn) -> None:
        t0 = time.perf_counter()
        predicted = fn()
        report = classification_report(truth, predicted, base.labels)
        report["seconds"] = time.perf_counter() - t0
        out[name] = report

    def neural(clf: LongDocClassifier, tr: Encoded, te: Encoded) -> list[str]:
        clf.fit(tr, args=TrainConfig(**{**(train_config or {}), "seed": seed}))
        return list(clf.predict(te))

    for name in methods:
        if name == "default":
            timed(name, lambda: neural(classifier(base, pooling=None, lexical=True), train, test))
        elif name == "dense":
            timed(name, lambda: neural(classifier(base, pooling=None, lexical=False), train, test))
        elif name == "first512":
            timed(name, lambda: neural(classifier(base, pooling="mean", lexical=False),
                                       Encoded(train.documents, *_first(train), train.fingerprint),
                                       Encoded(test.documents, *_first(test), test.fingerprint)))
        elif name == "head_tail":
            timed(name, lambda: neural(classifier(base, pooling="mean", lexical=False), ht.select(train_idx),
                                       ht.select(test_idx)))
        elif name == "lexical":
            def lexical_only() -> list[str]:
                y = np.array([base.labels.index(r[0]) for r in train.documents["labels"].to_list()])
                model = LexicalModel(base.labels).fit(train.documents["text"].to_list(), y)
                return [base.labels[i] for i in model.scores(test.documents["text"].to_list()).argmax(1)]
            timed(name, lexical_only)
        elif name == "tfidf":
            def tfidf() -> list[str]:
                y = [r[0] for r in train.documents["labels"].to_list()]
                return list(TfidfLogReg().fit(train.documents["text"].to_list(), y)
                            .predict(test.documents["text"].to_list()))
            timed(name, tfidf)
        else:
            raise SystemExit(f"unknown method {name!r}; valid: {METHODS}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", choices=("bbc", "manpages", "20news"), default="manpages")
    parser.add_argument("--pages-per-section", type=int, default=200)
    parser.add_argument("--limit", type=int, default=0, help="20news: sample this many posts")
    parser.add_argument("--folds", type=int, default=5, help="bbc: its folds; manpages: stratified k-fold")
    parser.add_argument("--only-folds", type=int, default=0, help="run only the first N folds (0: all)")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--stride", type=int, default=128)
    parser.add_argument("--max-windows", type=int, default=16)
    parser.add_argument("--train-config", type=json.loads, default=None,
                        help='TrainConfig overrides of every trained method, as JSON, e.g. \'{"min_epochs": 5}\'')
    args = parser.parse_args()
    setup_logging()
    logging.getLogger("longdoc").setLevel(logging.WARNING)
    emit({"bench": "classify_cv", "what": "machine", **machine(), "args": vars(args)})
    torch.set_num_threads(max(1, torch.get_num_threads()))
    docs, folds = load_corpus(args.corpus, args)
    if args.corpus == "manpages":  # the whole set in stratified folds, not quality.py's one split
        from sklearn.model_selection import StratifiedKFold

        y = [r[0] for r in docs["labels"].to_list()]
        folds = list(StratifiedKFold(args.folds, shuffle=True, random_state=0).split(np.zeros(len(y)), y))
    has_text = docs["text"].str.strip_chars().str.len_chars().to_numpy() > 0  # 20news: some bodies are empty
    if not has_text.all():
        logger.info("leaving out %d documents without text", int((~has_text).sum()))
        folds = [(tr[has_text[tr]], te[has_text[te]]) for tr, te in folds]
    if args.only_folds:
        folds = folds[: args.only_folds]
    labels = sorted({x for row in docs["labels"].to_list() for x in row})
    window = WindowConfig(args.max_length, args.stride, args.max_windows or None)
    base = LongDocClassifier.from_encoder(labels=labels, window=window, dtype=torch.bfloat16, lexical=False)
    key = hashlib.sha1(json.dumps([args.corpus, args.limit, args.pages_per_section, window.to_dict(), "bf16",
                                   docs["doc_id"].to_list()]).encode()).hexdigest()[:16]
    methods = args.methods.split(",")
    enc, ht = cached_encoding(base, docs, f"{args.corpus}-{key}", head_tail="head_tail" in methods)
    runs: list[dict[str, dict]] = []
    for f, (train_idx, test_idx) in enumerate(folds):
        for seed in range(args.seeds):
            run = run_fold(base, enc, ht, train_idx, test_idx, seed, methods, args.train_config)
            runs.append(run)
            emit({"bench": "classify_cv", "what": "run", "corpus": args.corpus, "fold": f, "seed": seed,
                  **{m: round(r["macro_f1"], 4) for m, r in run.items()}})
    for m in methods:
        f1 = [r[m]["macro_f1"] for r in runs]
        acc = [r[m]["accuracy"] for r in runs]
        row = {"bench": "classify_cv", "what": "method", "corpus": args.corpus, "method": m, "runs": len(runs),
               "macro_f1": interval(f1), "accuracy": interval(acc),
               "seconds": round(float(np.mean([r[m]["seconds"] for r in runs])), 2)}
        if m != "default" and "default" in methods:
            diff = paired_difference([r["default"]["macro_f1"] for r in runs], [r[m]["macro_f1"] for r in runs])
            row["default_minus_this_f1"] = [round(v, 4) if v == v else None for v in (diff.mean, diff.low, diff.high)]
        emit(row)


if __name__ == "__main__":
    main()
