"""``longdoc demo``: the whole product on this machine's man pages, in one command, within minutes on a CPU.

Steps (each logged, with its elapsed time):

1. **Corpus.** ``load_man_pages`` over sections 1, 2, 3, 4, 5, 7 and 8 (cached after the first run), a
   deterministic sample of at most ``--pages-per-section`` pages per section (seed 0); pages that failed to
   render or have fewer than 50 words are dropped. The label is the section digit.
2. **Split.** Fixed and stratified: 25 % of each section is the test set (``stratified_split(seed=0)``), then
   15 % of the rest is the validation set (``seed=1``, early stopping and calibration), the remainder trains.
3. **Train and compare.** The default classifier (lead_attention pooling over windows of ``--max-length``
   tokens, overlap ``--stride``, at most ``--max-windows`` windows per page, head + tail; 256/64 by default,
   the geometry the README recommends for the packaged MiniLM) is trained with the default MiniLM encoder:
   frozen on a CPU (bfloat16 when the CPU has avx512_bf16 or amx_bf16, else float32), fine-tuned when CUDA is
   present. The first-512 / head+tail / TF-IDF baselines are trained on the same split
   (``compare_with_baselines``); every split is encoded once and shared. Frozen, the model and the neural
   baselines train with 3 seeds (``--seeds``; one each fine-tuning or with ``--quick``): 155 test pages cannot
   tell methods a few points apart from one draw. One compact table follows: the model first (``model``), then
   the baselines (mean and 95% interval over the seeds; TF-IDF is one fixed score), and the model's paired
   difference to the best baseline.
4. **Index.** The passage index is filled from those same encodings (no second pass over the corpus).
5. **Ask.** A few questions, with and without a section filter, and ``explain`` for one test page.
6. **Save.** The model in ``--out/model`` and the index in ``--out/index``: query it later with
   ``longdoc search --model OUT/model OUT/index "your question"``.

Training settings: frozen, the library's defaults (``TrainConfig(mode="frozen")``: what ``fit`` and ``longdoc
train`` give, lexical branch on), so the table's first row is the default model; fine-tuned, 3 epochs.

Output: by default the narration, one line per step with its time, the table and the answers; ``--verbose``
adds the INFO logs (per-epoch lines), the progress bars and the model's per-section report.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from longdoc.errors import ConfigError
from longdoc.terminal import safe_text

logger = logging.getLogger(__name__)

SECTIONS = ("1", "2", "3", "4", "5", "7", "8")
QUESTIONS = (
    ("change file permissions", None),
    ("change file permissions", "2"),
    ("create a new process", None),
    ("create a new process", "2"),
    ("format of the password file", None),
    ("format of the password file", "5"),
    ("mount a filesystem", "8"),
)
MIN_WORDS = 50


def cpu_has_bf16() -> bool:
    """Whether this CPU runs bfloat16 matrix products natively (avx512_bf16 or amx_bf16 in /proc/cpuinfo)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``longdoc demo`` options (defaults fit the 15-minute budget of a 2-core CPU)."""
    parser.add_argument("--pages-per-section", type=int, default=None,
                        help="man pages sampled per section (default 100; 6 with --quick)")
    parser.add_argument("--max-windows", type=int, default=None,
                        help="windows per page, head + tail (default 6; 2 with --quick)")
    parser.add_argument("--max-length", type=int, default=256,
                        help="tokens per window (default 256: MiniLM was trained on 256-token inputs)")
    parser.add_argument("--stride", type=int, default=64, help="overlap of consecutive windows in tokens (default 64)")
    parser.add_argument("--mode", default=None, choices=["frozen", "finetune"],
                        help="default: finetune when CUDA is present, else frozen")
    parser.add_argument("--epochs", type=int, default=None,
                        help="default: 20 frozen (the library default), 3 fine-tuning, 2 with --quick")
    parser.add_argument("--seeds", type=int, default=None,
                        help="training seeds of the model and the neural baselines: the table gives their mean and "
                             "95%% interval (default 3 frozen, 1 fine-tuning or with --quick)")
    parser.add_argument("--baselines", nargs="*", default=None, choices=["first512", "head_tail", "tfidf"],
                        help="baselines to compare (default: all three)")
    parser.add_argument("--model", default=None, help="encoder checkpoint (default: the packaged MiniLM)")
    parser.add_argument("--man-root", default="/usr/share/man", help="man page tree")
    parser.add_argument("-o", "--out", default="./longdoc-demo", help="where the model and index are saved")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: CUDA when present)")
    parser.add_argument("--no-bf16", action="store_true", help="run the encoder in float32 even when bf16 is fast")
    parser.add_argument("--quick", action="store_true", help="a tiny run (a few pages per section, 2 epochs)")
    parser.add_argument("--verbose", action="store_true",
                        help="also the INFO logs (one line per epoch), the progress bars and the model's "
                             "per-section report (default: one line per step)")


class _Steps:
    def __init__(self, say) -> None:
        self.say = say
        self.times: dict[str, float] = {}
        self.t0 = time.perf_counter()

    def run(self, name: str, fn, *a, **kw):
        self.say(f"\n== {name} ...")
        start = time.perf_counter()
        out = fn(*a, **kw)
        self.times[name] = round(time.perf_counter() - start, 2)
        self.say(f"== {name}: {self.times[name]:.1f}s")
        return out

    @property
    def total(self) -> float:
        return round(time.perf_counter() - self.t0, 2)


def demo_pages(
    *, pages_per_section: int = 100, man_root: str = "/usr/share/man", show_progress_bar: bool | None = None
) -> tuple[Any, int]:
    """The demo's corpus: man pages of ``SECTIONS``, rendered, at least ``MIN_WORDS`` words; (pages, dropped)."""
    import polars as pl

    from longdoc.errors import DataError
    from longdoc.manpages import load_man_pages

    pages = load_man_pages(root=man_root, sections=SECTIONS, max_per_section=pages_per_section, seed=0,
                           show_progress=show_progress_bar)
    kept = pages.filter(pl.col("warning").is_null() & (pl.col("n_words") >= MIN_WORDS))
    if kept.height < 2 * len(SECTIONS):
        raise DataError(f"only {kept.height} usable man pages under {man_root!r}; the demo needs man pages "
                        "(install man-db / manpages, or pass --man-root)")
    return kept, pages.height - kept.height


def demo_split(pages: Any) -> tuple[Any, Any, Any]:
    """The demo's fixed split, stratified by section: (train, validation, test) = 64% / 11% / 25%."""
    from longdoc.corpora import stratified_split

    rest, test = stratified_split(pages, test_size=0.25, seed=0)
    train, val = stratified_split(rest, test_size=0.15, seed=1)
    return train, val, test


def run_demo(
    *,
    pages_per_section: int = 100,
    max_windows: int = 6,
    max_length: int = 256,
    stride: int = 64,
    mode: str | None = None,
    epochs: int | None = None,
    seeds: int | None = None,
    baselines: tuple[str, ...] = ("first512", "head_tail", "tfidf"),
    model: str | None = None,
    man_root: str = "/usr/share/man",
    out: str | Path = "./longdoc-demo",
    device: str | None = None,
    bf16: bool | None = None,
    questions: tuple[tuple[str, str | None], ...] = QUESTIONS,
    say=print,
    show_progress_bar: bool | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Run the demo (see the module docstring); returns a JSON-ready summary. ``say`` prints the narration;
    ``verbose`` adds the model's per-section report (the CLI also turns on INFO logs and progress bars)."""
    import polars as pl
    import torch

    from longdoc.classifier import LongDocClassifier
    from longdoc.evaluation import compare_with_baselines, format_comparison
    from longdoc.indexing import index_documents
    from longdoc.metrics import format_report
    from longdoc.training import TrainConfig
    from longdoc.windows import WindowConfig

    steps = _Steps(say)
    cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
    mode = mode or ("finetune" if cuda else "frozen")
    if bf16 is None:
        bf16 = cuda or cpu_has_bf16()
    dtype = torch.bfloat16 if bf16 else torch.float32
    say(f"longdoc demo: man pages, {pages_per_section} per section, sections {', '.join(SECTIONS)}; "
        f"{mode} encoder on {'cuda' if cuda else 'cpu'} in {'bf16' if bf16 else 'fp32'}; windows of {max_length} "
        f"tokens, overlap {stride}, at most {max_windows} per page")

    def corpus() -> pl.DataFrame:
        kept, dropped = demo_pages(pages_per_section=pages_per_section, man_root=man_root,
                                   show_progress_bar=show_progress_bar)
        counts = kept.group_by("section").len().sort("section")
        say(f"{kept.height} pages ({dropped} dropped: unrendered or under {MIN_WORDS} words); "
            + ", ".join(f"section {s}: {n}" for s, n in counts.iter_rows()))
        return kept

    docs = steps.run("corpus (man pages)", corpus)
    train, val, test = demo_split(docs)
    labels = sorted({x for row in docs["labels"].to_list() for x in row})
    say(f"split: {train.height} train, {val.height} validation, {test.height} test (stratified by section)")

    window = WindowConfig(max_length=max_length, stride=stride, max_windows=max_windows)
    clf = steps.run("load encoder", LongDocClassifier.from_encoder, model, labels=labels, window=window,
                    pooling="lead_attention", device=device, dtype=dtype)
    # frozen: the library's defaults (what `fit` and `longdoc train` give), so the table shows the default model;
    # fine-tuning: the library's 3 epochs, the last one kept, with batches of 8
    config = (TrainConfig(mode=mode, epochs=epochs or None) if mode == "frozen" else
              TrainConfig(mode=mode, epochs=epochs or None, batch_size=8))
    # several seeds frozen (each a few seconds once the pages are encoded): 155 test pages cannot tell methods
    # a few points apart, so the table gives the mean and its interval rather than one draw
    seeds = seeds or (3 if mode == "frozen" else 1)
    if seeds < 1:
        raise ConfigError(f"seeds must be >= 1, got {seeds!r}")
    comparison = steps.run(
        "train + baselines", compare_with_baselines, clf, train, test, args=config, val_docs=val,
        baselines=tuple(baselines), seeds=list(range(seeds)), model_name="model",
        show_progress_bar=show_progress_bar,
    )
    report = comparison.reports[comparison.model]
    if verbose:
        say("\nthe model on the test pages:")
        say(format_report(report))
        say("\nseconds (training + scoring, after the shared encoding): "
            + ", ".join(f"{m}: {t:.1f}" for m, t in comparison.table.select("method", "seconds").iter_rows()))
    say(f"\nthe model, then the baselines: {test.height} test pages, same split")
    say(format_comparison(comparison))

    def build_index():
        index = None
        parts = {"train": train, "val": val, "test": test}
        for part, pages in parts.items():
            index, _ = index_documents(clf, comparison.encoded.get(part, pages), index=index,
                                       show_progress_bar=show_progress_bar)
        reused = len(comparison.encoded) == len(parts)
        how = ("from the encodings of the training step (no page encoded again)" if reused else
               "encoded with the fine-tuned encoder")
        say(f"index: {len(index)} windows of {len(index.doc_ids)} pages ({index.layout}), {how}")
        return index

    index = steps.run("index", build_index)

    def ask() -> list[dict[str, Any]]:
        answers = []
        logging.getLogger("longdoc.encoder").setLevel(logging.WARNING)  # no progress bar per one-line query
        for question, section in questions:
            hits = index.search(question, k=3, labels=[section] if section else None)
            where = f"  [section {section} only]" if section else ""
            say(f"\nQ: {question}{where}")
            for h in hits:
                page = h.metadata.get("page", h.doc_id)
                sec = h.metadata.get("section", ",".join(h.labels))
                say(f"  {h.rank}. {h.score:.3f}  {safe_text(str(page))}({safe_text(str(sec))})  "
                    f"{safe_text(h.text, max_chars=110)}")
            answers.append({"question": question, "section": section,
                            "hits": [{"doc_id": h.doc_id, "page": h.metadata.get("page"), "score": h.score,
                                      "char_start": h.char_start, "char_end": h.char_end} for h in hits]})
        logging.getLogger("longdoc.encoder").setLevel(logging.NOTSET)
        return answers

    answers = steps.run("questions", ask)

    def explain() -> dict[str, Any]:
        test_docs = comparison.encoded["test"].documents
        multi = test_docs.filter(pl.col("n_words") > 800)
        row = (multi if multi.height else test_docs).row(0, named=True)
        label = clf.predict(row["text"])
        say(f"page {row['page']}({row['section']}): predicted section {label}; windows that drove it:")
        windows = clf.explain(row["text"], top_k=3)
        for w in windows:
            say(f"  window {w.window_index}  weight {w.weight:.3f}  chars {w.char_start}-{w.char_end}: "
                f"{safe_text(w.text, max_chars=100)}")
        return {"doc_id": row["doc_id"], "true": row["section"], "predicted": label,
                "windows": [{"window_index": w.window_index, "weight": w.weight} for w in windows]}

    explained = steps.run("explain one page", explain)

    out = Path(out)

    def save() -> None:
        clf.save(out / "model")
        index.save(out / "index")
        index.close()
        say(f"saved the model to {out / 'model'} and the index to {out / 'index'}")

    steps.run("save", save)
    say(f"\ntotal: {steps.total:.1f}s  ({', '.join(f'{k}: {v:.0f}s' for k, v in steps.times.items())})")
    say("\nnext:\n"
        f"  longdoc search {out / 'index'} \"how do I list open files\" --model {out / 'model'} --label 8\n"
        f"  longdoc label {out / 'model'} pages.jsonl --out labels/\n"
        "scale up: --pages-per-section 400 --max-windows 16 (more pages and windows: longer CPU run);\n"
        "          on a GPU: --mode finetune --max-length 512 (fine-tunes MiniLM end to end; bf16 on CUDA)")
    return {
        "pages": docs.height, "train": train.height, "val": val.height, "test": test.height,
        "mode": mode, "bf16": bool(bf16), "window": window.to_dict(),
        "table": comparison.table.to_dicts(), "difference": comparison.difference, "report": report,
        "answers": answers, "explain": explained, "out": str(out), "seconds": steps.times, "total_seconds": steps.total,
    }


def cmd_demo(args: argparse.Namespace) -> int:
    """The ``longdoc demo`` subcommand."""
    import sys

    quick = args.quick
    options = {
        "pages_per_section": args.pages_per_section or (6 if quick else 100),
        "max_windows": args.max_windows or (2 if quick else 6),
        "max_length": 128 if quick and args.max_length == 256 else args.max_length,
        "stride": min(args.stride, 16) if quick else args.stride,
        "mode": args.mode, "epochs": args.epochs or (2 if quick else None), "model": args.model,
        "seeds": args.seeds or (1 if quick else None),
        "man_root": args.man_root, "out": args.out, "device": args.device,
        "bf16": False if args.no_bf16 else None,
        "baselines": tuple(args.baselines) if args.baselines is not None else ("first512", "head_tail", "tfidf"),
    }
    if quick:
        options["questions"] = QUESTIONS[:2]
    # With --json the narration goes to stderr and stdout carries only the JSON summary.
    say = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
    verbose = bool(getattr(args, "verbose", False))
    with _log_level(None if verbose or args.debug else logging.WARNING):
        summary = run_demo(**options, say=say, show_progress_bar=None if verbose and not args.quiet else False,
                           verbose=verbose)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    return 0


@contextlib.contextmanager
def _log_level(level: int | None):
    """Raise the ``longdoc`` and ``indexer`` loggers to ``level`` (and hide transformers' bars) for the block;
    ``None`` changes nothing."""
    if level is None:
        yield
        return
    loggers = [logging.getLogger(name) for name in ("longdoc", "indexer")]
    saved = [log.level for log in loggers]
    hf_bars = None
    try:
        from transformers.utils import logging as hf_logging

        hf_bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    for log in loggers:
        log.setLevel(max(level, log.getEffectiveLevel()))
    try:
        yield
    finally:
        for log, old in zip(loggers, saved, strict=True):
            log.setLevel(old)
        if hf_bars:
            hf_logging.enable_progress_bar()
