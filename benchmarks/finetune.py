"""Fine-tuning: classification quality against the first-512 fine-tune, retrieval before and after, throughput.

Three parts, each printing JSON lines:

* ``quality``: for each seed, the hierarchical classifier fine-tuned end to end against the usual first-512
  fine-tune and TF-IDF, all through ``compare_with_baselines(..., args=TrainConfig(mode="finetune"))``, on
  ``--corpus``: the man-page sections of ``longdoc demo`` (same pages, same stratified split; the default;
  with ``--cv K``, stratified K-fold CV over those pages instead), BBC (``--folds``) or 20 Newsgroups by date
  (bodies only). A ``summary`` line per method closes the part: mean macro-F1 over the runs with its 95%
  interval, and the hierarchical model's paired difference to it.
* ``retrieval`` (man pages only, part of ``quality`` unless ``--no-retrieval``): on the test pages (never
  trained on), the NAME line as the query and its own page as the relevant document, all windows indexed,
  with the pretrained encoder and with each fine-tuned one. This says whether classification fine-tuning
  hurts the embeddings the index keeps.
* ``throughput``: training tokens/s of the fine-tuning step (windows of a batch of documents through the
  encoder and the head, backward, AdamW) against a plain Hugging Face ``BertModel`` + linear layer trained on
  the same padded windows, for a BERT-base-sized random model (``--throughput-model``).

    python benchmarks/finetune.py --seeds 3                    # GPU: the full run
    python benchmarks/finetune.py --seeds 1 --epochs 2 --pages-per-section 60 --max-train-windows 3   # CPU
    python benchmarks/finetune.py --parts quality --corpus bbc --seeds 3 --max-length 512 --stride 128
    python benchmarks/finetune.py --parts quality --cv 5 --seeds 1 --epochs 3 --baselines tfidf --no-retrieval
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, machine, setup_logging  # noqa: E402

from longdoc.classifier import LongDocClassifier  # noqa: E402
from longdoc.demo import cpu_has_bf16, demo_pages, demo_split  # noqa: E402
from longdoc.encoder import WindowEncoder, default_model_path  # noqa: E402
from longdoc.evaluation import compare_with_baselines  # noqa: E402
from longdoc.training import TrainConfig  # noqa: E402
from longdoc.windows import WindowConfig, make_windows  # noqa: E402

logger = logging.getLogger("benchmarks.finetune")

#: Retrieval windows: the best measured for man pages (benchmarks/RESULTS.md, retrieval quality).
RETRIEVAL_WINDOW = WindowConfig(max_length=256, stride=64)


def retrieval(encoder: WindowEncoder, pages: pl.DataFrame, name: str) -> dict[str, Any]:
    """NAME line -> its own page over ``pages``: dense and hybrid recall@10 / MRR with all windows indexed."""
    from indexer import PassageIndex
    from indexer.evaluation import evaluate_retrieval

    windows = make_windows(pages, encoder.tokenizer, RETRIEVAL_WINDOW)
    t0 = time.perf_counter()
    emb = encoder.encode_windows(windows, show_progress_bar=False)
    seconds = time.perf_counter() - t0
    texts = windows.texts(pages)
    passages = windows.table.select("doc_id", "window_index", "char_start", "char_end").with_columns(
        pl.Series("text", texts))
    index = PassageIndex.build(emb, passages, encoder=encoder)
    queries = pages["name_line"].to_list()
    qv = encoder.encode(queries)
    relevant = [{d} for d in pages["doc_id"].to_list()]
    out: dict[str, Any] = {"encoder": name, "pages": pages.height, "windows": len(windows),
                           "encode_seconds": round(seconds, 1)}
    for mode, q in (("dense", qv), ("hybrid", queries)):
        metrics = evaluate_retrieval(index, q, relevant, k=10, mode=mode)
        out.update({f"{mode}_{k}": round(float(v), 4) for k, v in metrics.items()})
    return out


def splits(args: argparse.Namespace) -> Iterator[tuple[str, pl.DataFrame, pl.DataFrame, pl.DataFrame]]:
    """``(name, train, validation, test)`` of ``--corpus``: the demo's man-page split, each BBC fold of
    ``--folds`` (duplicates dropped), or 20 Newsgroups by date (bodies only). Validation (early stopping and
    calibration) is a stratified 10% of the training part where the corpus has no split of its own."""
    from longdoc.corpora import load_20news, load_bbc, split_bbc_fold, stratified_split

    if args.corpus == "manpages" and args.cv:
        from sklearn.model_selection import StratifiedKFold

        pages, dropped = demo_pages(pages_per_section=args.pages_per_section)
        y = np.array([labels[0] for labels in pages["labels"].to_list()])
        folds = list(StratifiedKFold(args.cv, shuffle=True, random_state=0).split(np.zeros(len(y)), y))
        for fold in (f for f in args.folds if f < args.cv):
            rest, test = pages[folds[fold][0].tolist()], pages[folds[fold][1].tolist()]
            train, val = stratified_split(rest, test_size=0.1, seed=0)
            emit({"bench": "finetune", "what": "corpus", "corpus": "manpages", "cv": args.cv, "fold": fold,
                  "pages": pages.height, "dropped": dropped, "train": train.height, "val": val.height,
                  "test": test.height})
            yield f"fold {fold}", train, val, test
    elif args.corpus == "manpages":
        pages, dropped = demo_pages(pages_per_section=args.pages_per_section)
        train, val, test = demo_split(pages)
        emit({"bench": "finetune", "what": "corpus", "corpus": "manpages", "pages": pages.height,
              "dropped": dropped, "train": train.height, "val": val.height, "test": test.height})
        yield "demo split", train, val, test
    elif args.corpus == "bbc":
        docs = load_bbc()
        for fold in args.folds:
            rest, test = split_bbc_fold(docs, fold)
            train, val = stratified_split(rest, test_size=0.1, seed=0)
            emit({"bench": "finetune", "what": "corpus", "corpus": "bbc", "fold": fold, "train": train.height,
                  "val": val.height, "test": test.height})
            yield f"fold {fold}", train, val, test
    else:
        docs = load_20news()
        test = docs.filter(pl.col("split") == "test")
        train, val = stratified_split(docs.filter(pl.col("split") == "train"), test_size=0.1, seed=0)
        emit({"bench": "finetune", "what": "corpus", "corpus": "20news", "train": train.height, "val": val.height,
              "test": test.height})
        yield "by date", train, val, test


def quality(args: argparse.Namespace, device: str, dtype: torch.dtype) -> None:
    runs: list[dict[str, Any]] = []
    for split_name, train, val, test in splits(args):
        runs += quality_on(args, device, dtype, split_name, train, val, test)
    summarize(runs)


def summarize(runs: list[dict[str, Any]]) -> None:
    """Mean macro-F1 of each method over the (split, seed) runs with its 95% t-interval, and the paired
    difference of the hierarchical model to each baseline run by run."""
    from longdoc.metrics import mean_ci, paired_difference

    def bounds(ci: Any) -> list[float | None]:  # None, not NaN (not JSON), where one run gives no interval
        return [None if v != v else round(v, 4) for v in (ci.low, ci.high)]

    by_method: dict[str, dict[tuple[str, int], float]] = {}
    for row in runs:
        by_method.setdefault(row["method"], {})[(row["split"], row["seed"])] = row["macro_f1"]
    model = by_method.get("hierarchical", {})
    for method, scores in by_method.items():
        ci = mean_ci(list(scores.values()))
        out = {"bench": "finetune", "what": "summary", "method": method, "runs": ci.n,
               "macro_f1": round(ci.mean, 4), "ci95": bounds(ci)}
        paired = sorted(set(model) & set(scores))
        if method != "hierarchical" and len(paired) > 1:
            diff = paired_difference([model[k] for k in paired], [scores[k] for k in paired])
            out["hierarchical_minus_this"] = {"mean": round(diff.mean, 4), "ci95": bounds(diff)}
        emit(out)


def quality_on(args: argparse.Namespace, device: str, dtype: torch.dtype, split_name: str, train: pl.DataFrame,
               val: pl.DataFrame, test: pl.DataFrame) -> list[dict[str, Any]]:
    """Every seed on one split; the rows emitted (one per method and seed)."""
    runs: list[dict[str, Any]] = []
    labels = sorted({x for row in train["labels"].to_list() for x in row})
    window = WindowConfig(args.max_length, args.stride, max_windows=args.max_windows)
    retrieval_too = args.corpus == "manpages" and not args.no_retrieval  # the NAME line is the query
    if retrieval_too and args.first_seed == 0:
        emit({"bench": "finetune", "what": "retrieval", "seed": None,
              **retrieval(WindowEncoder(args.model, device=device, dtype=dtype), test, "pretrained")})
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        clf = LongDocClassifier.from_encoder(args.model, labels=labels, window=window, pooling=args.pooling,
                                             device=device, dtype=dtype)
        config = TrainConfig(mode="finetune", epochs=args.epochs, batch_size=args.batch_size,
                             max_train_windows=args.max_train_windows, keep_first_window=args.keep_first_window,
                             encoder_lr=args.encoder_lr, head_lr=args.head_lr, patience=args.patience,
                             min_epochs=args.min_epochs, seed=seed)
        t0 = time.perf_counter()
        comparison = compare_with_baselines(clf, train, test, args=config, val_docs=val,
                                            baselines=tuple(args.baselines), show_progress_bar=False)
        best_val = max((r["eval_macro_f1"] for r in clf.history if "eval_macro_f1" in r), default=None)
        for row in comparison.table.to_dicts():
            if row["method"] == "hierarchical":
                row["val_macro_f1"] = best_val  # the best epoch's; every epoch's below (the test split never chooses)
                row["val_by_epoch"] = [round(r["eval_macro_f1"], 4) for r in clf.history if "eval_macro_f1" in r]
            row = {"bench": "finetune", "what": "classification", "corpus": args.corpus, "split": split_name,
                   "seed": seed, "window": window.to_dict(),
                   "epochs": config.epochs, "max_train_windows": args.max_train_windows,
                   "keep_first_window": args.keep_first_window, **row}
            emit(row)
            runs.append(row)
        logger.info("%s, %s, seed %d: %.0f s", args.corpus, split_name, seed, time.perf_counter() - t0)
        if retrieval_too:
            emit({"bench": "finetune", "what": "retrieval", "seed": seed,
                  **retrieval(clf.encoder, test, f"fine-tuned ({args.pooling} head, seed {seed})")})
    return runs


def _random_model(config_name: str, directory: str) -> str:
    """A randomly initialised BERT of the given size with the packaged tokenizer (speed only)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    sizes = {"bert-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                           "intermediate_size": 3072},
             "minilm": {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12,
                        "intermediate_size": 1536}}
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, **sizes[config_name])).save_pretrained(directory)
    AutoTokenizer.from_pretrained(default_model_path()).save_pretrained(directory)
    return directory


def throughput(args: argparse.Namespace, device: str) -> None:
    """Training tokens/s: LongDocClassifier fine-tuning vs a plain BertModel + linear layer on the same windows."""
    from transformers import BertModel

    rng = np.random.default_rng(0)
    n_docs, windows_per_doc, length = args.throughput_docs, args.max_train_windows, 512
    words = ["file", "system", "option", "network", "print", "user", "process", "memory", "device", "read"]
    # every document long enough for windows_per_doc full 512-token windows
    texts = [" ".join(rng.choice(words, size=(length - 120) * windows_per_doc)) for _ in range(n_docs)]
    labels = [str(i % 4) for i in range(n_docs)]
    with tempfile.TemporaryDirectory() as tmp:
        path = _random_model(args.throughput_model, tmp)
        clf = LongDocClassifier.from_encoder(path, labels=sorted(set(labels)), device=device,
                                             window=WindowConfig(length, 128, max_windows=windows_per_doc))
        windows = make_windows(texts, clf.encoder.tokenizer, clf.window)
        tokens = int(windows.lengths.sum())
        config = TrainConfig(mode="finetune", epochs=1, batch_size=args.throughput_batch,
                             max_train_windows=windows_per_doc, calibrate=False, warmup_ratio=0.0)
        clf.fit(texts, labels, args=config, show_progress_bar=False)  # warm-up (kernels, allocator)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        clf.fit(texts, labels, args=config, show_progress_bar=False)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        ours = time.perf_counter() - t0

        # the peer: a plain training loop on ready padded windows (no windowing, no head, no data handling),
        # in train mode with the same attention dropout (0), then with BERT's default 0.1
        ids = torch.from_numpy(np.stack([windows.ids(i) for i in range(len(windows))]).astype(np.int64))
        y = torch.from_numpy(np.repeat(np.arange(n_docs) % 4, windows_per_doc))
        batch = args.throughput_batch * windows_per_doc
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda")
                    else torch.autocast("cpu", enabled=False))
        plain = {}
        for dropout in (0.0, 0.1):
            model = BertModel.from_pretrained(path, attention_probs_dropout_prob=dropout).to(device).train()
            linear = torch.nn.Linear(model.config.hidden_size, 4).to(device)
            optimizer = torch.optim.AdamW([*model.parameters(), *linear.parameters()], lr=2e-5)

            def epoch(model: Any = model, linear: Any = linear, optimizer: Any = optimizer) -> None:
                for start in range(0, len(ids), batch):
                    x = ids[start:start + batch].to(device, non_blocking=True)
                    with autocast:
                        h = model(input_ids=x, attention_mask=torch.ones_like(x)).last_hidden_state[:, 0]
                        target = y[start:start + batch].to(device)
                        loss = torch.nn.functional.cross_entropy(linear(h).float(), target)
                    loss.backward()
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)

            epoch()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            epoch()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            plain[dropout] = time.perf_counter() - t0
    base = {"bench": "finetune", "what": "throughput", "model": args.throughput_model, "device": device,
            "docs": n_docs, "windows": len(windows), "tokens": tokens}
    emit({**base, "impl": "LongDocClassifier.fit(mode='finetune')", "seconds": round(ours, 2),
          "tokens_per_s": round(tokens / ours)})
    for dropout, seconds in plain.items():
        emit({**base, "impl": f"plain BertModel + Linear training loop, attention dropout {dropout}",
              "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds)})
    emit({**base, "figure": "ratio", "what": "longdoc / plain (same attention dropout)",
          "value": round(plain[0.0] / ours, 3)})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="quality,throughput", help="comma-separated: quality, throughput")
    parser.add_argument("--model", default=None, help="encoder (default: the packaged MiniLM)")
    parser.add_argument("--device", default=None, help="default: cuda when available")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds run: first-seed ... first-seed+seeds-1")
    parser.add_argument("--corpus", choices=("manpages", "bbc", "20news"), default="manpages")
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                        help="folds to run: BBC's own (--corpus bbc), or of --cv (man pages)")
    parser.add_argument("--cv", type=int, default=0,
                        help="man pages: stratified k-fold CV over the demo's pages (validation: 10%% of each "
                             "training part) instead of the demo split (0)")
    parser.add_argument("--pages-per-section", type=int, default=100)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--stride", type=int, default=32)
    parser.add_argument("--max-windows", type=int, default=6)
    parser.add_argument("--max-train-windows", type=int, default=4)
    parser.add_argument("--keep-first-window", action=argparse.BooleanOptionalAction, default=True,
                        help="always train on each page's first window (TrainConfig.keep_first_window)")
    parser.add_argument("--pooling", default="lead_attention")
    parser.add_argument("--epochs", type=int, default=None, help="default: the library's (TrainConfig: 3 fine-tuning)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--encoder-lr", type=float, default=3e-5)
    parser.add_argument("--head-lr", type=float, default=1e-3)
    parser.add_argument("--patience", type=int, default=2, help="early stopping (only with --min-epochs below --epochs)")
    parser.add_argument("--min-epochs", type=int, default=None,
                        help="no epoch before this one is kept (TrainConfig.min_epochs; default: the last epoch; 1: the "
                             "best validation epoch of all, the earlier default)")
    parser.add_argument("--baselines", nargs="*", default=["first512", "tfidf"])
    parser.add_argument("--no-retrieval", action="store_true")
    parser.add_argument("--throughput-model", choices=("bert-base", "minilm"), default="bert-base")
    parser.add_argument("--throughput-docs", type=int, default=256)
    parser.add_argument("--throughput-batch", type=int, default=8, help="documents per step")
    args = parser.parse_args(argv)
    setup_logging()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.model = args.model or default_model_path()
    # inference (validation, test, retrieval) in bf16 where it is fast; training runs fp32 weights either way
    dtype = torch.bfloat16 if device.startswith("cuda") or cpu_has_bf16() else torch.float32
    emit({"bench": "finetune", "machine": machine(), "device": device, "inference_dtype": str(dtype),
          "args": {k: v for k, v in vars(args).items() if k != "model"}})
    parts = set(args.parts.split(","))
    if "throughput" in parts:
        throughput(args, device)
    if "quality" in parts:
        quality(args, device, dtype)


if __name__ == "__main__":
    main()
