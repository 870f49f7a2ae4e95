"""Why the dense half falls below first-512 on long binary news (issue 18): proxies, variants, diagnostics.

The held-out collection of issue 18 is binary, long news articles, a few hundred documents; this script builds
development proxies of it from the visible data only, on the cached window encodings of ``classify_cv.py`` /
``quality.py`` (``.cache/quality``: BBC, and the 4,000-post sample of 20 Newsgroups; nothing is re-encoded, a
missing cache is an error). A proxy keeps only documents longer than one 512-token window (>= 2 windows), two
classes, a few hundred documents:

* ``bbc-bus-pol``: BBC business vs politics; ``bbc-bus-tech``: business vs tech; ``bbc-ent-tech``: entertainment
  vs tech;
* ``news-pol-rel``: 20 Newsgroups talk.politics.* vs the religion groups (alt.atheism, soc.religion.christian,
  talk.religion.misc); ``news-sci-comp``: sci.* vs comp.*; ``news-rel``: soc.religion.christian vs alt.atheism +
  talk.religion.misc (the hardest, about 140 documents).

Each proxy runs stratified 5-fold CV x ``--seeds`` seeds; every variant trains on the same folds with
``LongDocClassifier.fit`` (the validation split carved inside ``fit``, as a user gets it) unless the variant says
otherwise. ``first512`` is the baseline of ``classify_cv.py``: a linear head (``mean`` pooling) on the first
window only; ``dense`` is the default window head with ``lexical=False``.

One JSON line per run (macro-F1, accuracy, epochs run, best epoch, training-fold F1, attention statistics) and
per variant and proxy; then per variant the mean over proxies and the paired difference to ``first512`` over
every (proxy, fold, seed) run with its 95% t-interval.

    python benchmarks/dense_half.py --seeds 2 --variants first512,dense
    python benchmarks/dense_half.py --proxies bbc-bus-pol,news-pol-rel --variants first512,dense,dense_wd0.1
"""

from __future__ import annotations

import argparse
import dataclasses
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
from quality import CACHE, _first  # noqa: E402

from longdoc.classifier import Encoded, LongDocClassifier  # noqa: E402
from longdoc.heads import DocumentHead, HeadConfig  # noqa: E402
from longdoc.metrics import classification_report, mean_ci, paired_difference  # noqa: E402
from longdoc.training import TrainConfig  # noqa: E402
from longdoc.windows import WindowConfig, make_windows  # noqa: E402

logger = logging.getLogger("benchmarks.dense_half")

RELIGION = ("alt.atheism", "soc.religion.christian", "talk.religion.misc")
# proxy name -> (corpus, {new label: the corpus labels it gathers})
PROXIES: dict[str, tuple[str, dict[str, tuple[str, ...]]]] = {
    "bbc-bus-pol": ("bbc", {"business": ("business",), "politics": ("politics",)}),
    "bbc-bus-tech": ("bbc", {"business": ("business",), "tech": ("tech",)}),
    "bbc-ent-tech": ("bbc", {"entertainment": ("entertainment",), "tech": ("tech",)}),
    "news-pol-rel": ("20news", {"politics": ("talk.politics.guns", "talk.politics.mideast", "talk.politics.misc"),
                                "religion": RELIGION}),
    "news-sci-comp": ("20news", {"sci": ("sci.crypt", "sci.electronics", "sci.med", "sci.space"),
                                 "comp": ("comp.graphics", "comp.os.ms-windows.misc", "comp.sys.ibm.pc.hardware",
                                          "comp.sys.mac.hardware", "comp.windows.x")}),
    "news-rel": ("20news", {"christian": ("soc.religion.christian",),
                            "atheism": ("alt.atheism", "talk.religion.misc")}),
}

# variant -> head-config overrides, TrainConfig overrides, first window only
VARIANTS: dict[str, tuple[dict, dict, bool]] = {
    "first512": ({"pooling": "mean"}, {}, True),
    "dense": ({}, {}, False),
    "mean": ({"pooling": "mean"}, {}, False),
    "attention": ({"pooling": "attention"}, {}, False),
    "max": ({"pooling": "max"}, {}, False),
    "dense_drop0.3": ({"dropout": 0.3}, {}, False),
    "dense_drop0.5": ({"dropout": 0.5}, {}, False),
    "dense_wd0.1": ({}, {"weight_decay": 0.1}, False),
    "dense_wd1": ({}, {"weight_decay": 1.0}, False),
    "dense_lr3e-4": ({}, {"head_lr": 3e-4}, False),
    "dense_lr3e-3": ({}, {"head_lr": 3e-3}, False),
    "dense_ep40": ({}, {"epochs": 40, "patience": 8}, False),
    "dense_ep10": ({}, {"epochs": 10}, False),
    "dense_val0.2": ({}, {"eval_fraction": 0.2}, False),
    "dense_noval": ({}, {"eval_fraction": 0.0}, False),
    "first512_val0.2": ({"pooling": "mean"}, {"eval_fraction": 0.2}, True),
    "first512_noval": ({"pooling": "mean"}, {"eval_fraction": 0.0}, True),
}


def add_variant(spec: str) -> str:
    """``name:key=value,key=value`` on the command line defines a variant (keys of HeadConfig or TrainConfig;
    ``first=1`` for the first window only)."""
    if ":" not in spec:
        return spec
    name, _, body = spec.partition(":")
    head_keys = {f.name for f in dataclasses.fields(HeadConfig)}
    head, train, first = {}, {}, False
    for item in filter(None, body.split(";")):
        key, _, raw = item.partition("=")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if key == "first":
            first = bool(value)
        elif key in head_keys:
            head[key] = value
        else:
            train[key] = value
    VARIANTS[name] = (head, train, first)
    return name


def load_cached(corpus: str, base: LongDocClassifier) -> Encoded:
    """The corpus's window encodings from ``.cache/quality`` under classify_cv.py's key (never re-encoded)."""
    if corpus == "bbc":
        from longdoc.corpora import load_bbc

        docs, limit, pages = load_bbc(), 0, 100
    else:
        from longdoc.corpora import load_20news

        docs, limit, pages = load_20news(), 4000, 100
        docs = docs.sample(n=min(limit, docs.height), seed=0)
    key = hashlib.sha1(json.dumps([corpus, limit, pages, base.window.to_dict(), "bf16",
                                   docs["doc_id"].to_list()]).encode()).hexdigest()[:16]
    path = CACHE / f"{corpus}-{key}" / "emb.npy"
    if not path.exists():
        raise SystemExit(f"no cached encoding at {path}: run classify_cv.py --corpus {corpus} first (or link "
                         f"the main checkout's .cache)")
    windows = make_windows(docs, base.encoder.tokenizer, base.window)
    return Encoded(docs, windows, np.load(path), base.encoder.fingerprint)


def proxy(enc: Encoded, groups: dict[str, tuple[str, ...]]) -> Encoded:
    """The documents of ``groups`` with >= 2 windows, relabelled to the group names."""
    of = {old: new for new, olds in groups.items() for old in olds}
    labels = [of.get(r[0]) for r in enc.documents["labels"].to_list()]
    n_windows = enc.windows.documents["n_windows"].to_numpy()
    keep = np.array([lab is not None and n >= 2 for lab, n in zip(labels, n_windows, strict=True)])
    idx = np.flatnonzero(keep)
    sub = enc.select(idx)
    sub.documents = sub.documents.with_columns(pl.Series("labels", [[labels[i]] for i in idx]))
    return sub


def attention_stats(clf: LongDocClassifier, enc: Encoded) -> dict:
    """On documents with >= 3 windows: mean weight of the first window, mean normalised entropy of the
    attention (1 = uniform, 0 = one window), and for lead_attention the lead half's share of the logits."""
    head = clf.head
    if head.config.pooling not in ("attention", "lead_attention"):
        return {}
    from longdoc.training import doc_offsets, pad_windows

    emb = torch.from_numpy(enc.embeddings).float()
    offsets = doc_offsets(enc.windows)
    docs = [i for i in range(len(offsets) - 1) if offsets[i + 1] - offsets[i] >= 3]
    if not docs:
        return {}
    x, mask = pad_windows(emb, offsets, docs)
    with torch.no_grad():
        m = mask.unsqueeze(-1)
        h = ((x - head.input_shift) * head.input_scale).masked_fill(~m, 0.0)
        attended, w = head.attention(h, mask)
        n = mask.sum(1).float()
        ent = -(w.clamp_min(1e-12).log() * w).sum(1) / n.log()
        out = {"att_first": round(float(w[:, 0].mean()), 3), "att_entropy": round(float(ent.mean()), 3)}
        if head.config.pooling == "lead_attention":
            out["lead_share"] = round(float(head._lead_share(h[:, 0], attended).mean()), 3)
    return out


def run_one(base: LongDocClassifier, labels: list[str], train: Encoded, test: Encoded, variant: str,
            seed: int) -> dict:
    head_over, train_over, first = VARIANTS[variant]
    cfg = HeadConfig(**{"hidden_size": base.encoder.dim, "num_labels": len(labels), **head_over})
    clf = LongDocClassifier(base.encoder, DocumentHead(cfg), labels)
    if first:
        train = Encoded(train.documents, *_first(train), train.fingerprint)
        test = Encoded(test.documents, *_first(test), test.fingerprint)
    t0 = time.perf_counter()
    clf.fit(train, args=TrainConfig(**{"seed": seed, **train_over}))
    predicted = list(clf.predict(test))
    seconds = time.perf_counter() - t0
    truth = [r[0] for r in test.documents["labels"].to_list()]
    report = classification_report(truth, predicted, labels)
    train_truth = [r[0] for r in train.documents["labels"].to_list()]
    train_f1 = classification_report(train_truth, list(clf.predict(train)), labels)["macro_f1"]
    hist = clf.history
    scored = [h for h in hist if "eval_macro_f1" in h]
    cfg_train = TrainConfig(**train_over)  # the epoch fit kept: the first best from min_epochs on
    first_candidate = min(cfg_train.first_kept_epoch, len(scored)) - 1
    key = ((lambda h: (-h["eval_loss"], h["eval_macro_f1"])) if cfg_train.select_on == "loss"
           else (lambda h: (h["eval_macro_f1"], -h["eval_loss"])))
    best = (max(range(first_candidate, len(scored)), key=lambda i: key(scored[i])) + 1 if scored else len(hist))
    return {"macro_f1": report["macro_f1"], "accuracy": report["accuracy"], "train_f1": round(train_f1, 4),
            "epochs_run": len(hist), "best_epoch": best,
            "val_f1": round(scored[best - 1]["eval_macro_f1"], 4) if scored else None,
            "train_loss_best": round(hist[best - 1]["train_loss"], 4) if hist else None,
            "val_loss_best": round(scored[best - 1]["eval_loss"], 4) if scored else None,
            "seconds": round(seconds, 2), **attention_stats(clf, test if not first else test)}


def interval(values: list[float]) -> list[float | None]:
    ci = mean_ci(values).to_dict()
    return [round(ci["mean"], 4)] + [None if ci[k] is None else round(ci[k], 4) for k in ("low", "high")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--proxies", default=",".join(PROXIES))
    parser.add_argument("--variants", default="first512,dense",
                        help=f"comma-separated; known: {','.join(VARIANTS)}; or define one as "
                             "name:key=value;key=value (HeadConfig/TrainConfig keys, first=1)")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--runs", action="store_true", help="print every run's line too")
    args = parser.parse_args()
    setup_logging()
    logging.getLogger("longdoc").setLevel(logging.WARNING)
    emit({"bench": "dense_half", "what": "machine", **machine(), "args": vars(args)})
    variants = [add_variant(v) for v in args.variants.split(",")]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {list(VARIANTS)}")
    window = WindowConfig(512, 128, 16)
    base = LongDocClassifier.from_encoder(labels=["a", "b"], window=window, dtype=torch.bfloat16, lexical=False)
    from sklearn.model_selection import StratifiedKFold

    encodings: dict[str, Encoded] = {}
    results: dict[str, dict[str, list[dict]]] = {v: {} for v in variants}
    for name in args.proxies.split(","):
        corpus, groups = PROXIES[name]
        if corpus not in encodings:
            encodings[corpus] = load_cached(corpus, base)
        enc = proxy(encodings[corpus], groups)
        labels = sorted(groups)
        y = [r[0] for r in enc.documents["labels"].to_list()]
        nw = enc.windows.documents["n_windows"].to_numpy()
        emit({"bench": "dense_half", "what": "proxy", "proxy": name, "documents": len(y),
              "per_label": {lab: y.count(lab) for lab in labels}, "windows_mean": round(float(nw.mean()), 2),
              "windows_median": float(np.median(nw))})
        folds = list(StratifiedKFold(args.folds, shuffle=True, random_state=0).split(np.zeros(len(y)), y))
        for f, (tr, te) in enumerate(folds):
            train, test = enc.select(tr), enc.select(te)
            for seed in range(args.seeds):
                for v in variants:
                    r = run_one(base, labels, train, test, v, seed)
                    results[v].setdefault(name, []).append(r)
                    if args.runs:
                        emit({"bench": "dense_half", "what": "run", "proxy": name, "fold": f, "seed": seed,
                              "variant": v, **r})
        for v in variants:
            rs = results[v][name]
            row = {"bench": "dense_half", "what": "variant_proxy", "proxy": name, "variant": v,
                   "macro_f1": interval([r["macro_f1"] for r in rs])}
            for k in ("train_f1", "epochs_run", "best_epoch", "val_f1", "att_first", "att_entropy", "lead_share"):
                vals = [r[k] for r in rs if r.get(k) is not None]
                if vals:
                    row[k] = round(float(np.mean(vals)), 3)
            if v != variants[0]:
                ref = [r["macro_f1"] for r in results[variants[0]][name]]
                d = paired_difference([r["macro_f1"] for r in rs], ref)
                row[f"minus_{variants[0]}"] = [round(x, 4) for x in (d.mean, d.low, d.high)]
            emit(row)
    ref = variants[0]
    for v in variants:
        per_proxy = {p: round(float(np.mean([r["macro_f1"] for r in rs])), 4) for p, rs in results[v].items()}
        row = {"bench": "dense_half", "what": "variant", "variant": v, "mean_over_proxies":
               round(float(np.mean(list(per_proxy.values()))), 4), "per_proxy": per_proxy,
               "seconds": round(float(np.mean([r["seconds"] for rs in results[v].values() for r in rs])), 2)}
        if v != ref:
            mine = [r["macro_f1"] for p in results[v] for r in results[v][p]]
            theirs = [r["macro_f1"] for p in results[v] for r in results[ref][p]]
            d = paired_difference(mine, theirs)
            row[f"minus_{ref}"] = [round(x, 4) for x in (d.mean, d.low, d.high)]
            row["wins_ties_losses"] = [int(sum(a > b for a, b in zip(mine, theirs, strict=True))),
                                       int(sum(a == b for a, b in zip(mine, theirs, strict=True))),
                                       int(sum(a < b for a, b in zip(mine, theirs, strict=True)))]
        emit(row)


if __name__ == "__main__":
    main()
