"""Windowing throughput: raw text -> window table + token ids, against the Hugging Face paths.

Methods (all on the same texts, same process, interleaved, best of ``--repeat``):

* ``longdoc``: ``longdoc.windows.make_windows`` (tokenize each document once, cut windows as arrays, build
  the polars window table and the flat id array), with ``processes`` in ``--processes``.
* ``hf_overflow``: what users write today, ``tokenizer(texts, truncation=True, max_length=512, stride=128,
  return_overflowing_tokens=True, return_offsets_mapping=True)``.
* ``hf_plain``: plain tokenization with offsets, no windows: ``tokenizer(texts, add_special_tokens=False,
  return_offsets_mapping=True)``.
* ``raw_encode_batch``: the Rust backend alone, ``Tokenizer.encode_batch(texts, add_special_tokens=False)``
  (encodings stay in Rust: no Python lists of ids/offsets); the floor.

Tokenizer threads: ``threads=1`` sets ``TOKENIZERS_PARALLELISM=false`` around a call (read by the tokenizers
library at every call); ``threads=N`` lets the Rayon pool run, sized by ``--threads`` (exported as
``RAYON_NUM_THREADS`` before the tokenizer is first used). Worker processes of ``make_windows`` always run
their tokenizer single-threaded (it sets ``TOKENIZERS_PARALLELISM=false``), so ``processes=P`` uses P cores.

``tokens`` is the same for every method: the document tokens, i.e. the number of WordPiece tokens of the
documents without special tokens (what plain tokenization returns), so ``tokens_per_s`` compares like with like.
``ratio_vs_X`` is this method's tokens/s (wall clock) over X's at the same number of cores
(``processes * threads``); ``cpu_ratio_vs_X`` compares tokens per CPU-second (this process, its threads and
its reaped worker processes) with X at the same thread count: the work per token, which other jobs on a shared
machine disturb far less than the wall clock. ``overhead_vs_hf_plain`` is ``seconds / hf_plain seconds - 1``.

Run: ``python benchmarks/windows.py`` (prints JSON lines; ``--help`` for options).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import CORPORA, emit, interleaved_best, load_corpus, logger, machine, rate, setup_logging  # noqa: E402

PEERS = ("hf_overflow", "hf_plain", "raw_encode_batch")


@contextmanager
def tokenizer_threads(threads: int):
    """Run the tokenizers library single-threaded (``threads == 1``) or on its Rayon pool."""
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false" if threads == 1 else "true"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


def _with_threads(fn: Callable[[], Any], threads: int) -> Callable[[], Any]:
    def run() -> Any:
        with tokenizer_threads(threads):
            return fn()

    return run


def build_methods(
    texts: list[str],
    model_path: str,
    *,
    max_length: int,
    stride: int,
    processes: list[int],
    pool_threads: int,
) -> tuple[dict[str, Callable[[], Any]], dict[str, tuple[int, int]]]:
    """The timed callables and, for each, its ``(processes, threads)``."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    from longdoc.windows import WindowConfig, make_windows

    hf = AutoTokenizer.from_pretrained(model_path, use_fast=True)
    raw = Tokenizer.from_str(hf.backend_tokenizer.to_str())
    raw.no_truncation()
    raw.no_padding()
    config = WindowConfig(max_length=max_length, stride=stride)

    def longdoc(p: int) -> Callable[[], Any]:
        return lambda: make_windows(texts, hf, config, processes=p)

    def hf_overflow() -> Any:
        return hf(
            texts,
            truncation=True,
            max_length=max_length,
            stride=stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )

    def hf_plain() -> Any:
        return hf(texts, add_special_tokens=False, return_offsets_mapping=True)

    def raw_encode_batch() -> Any:
        return raw.encode_batch(texts, add_special_tokens=False)

    thread_counts = sorted({1, pool_threads})
    methods: dict[str, Callable[[], Any]] = {}
    shape: dict[str, tuple[int, int]] = {}
    for t in thread_counts:
        name = f"longdoc p1 t{t}"
        methods[name], shape[name] = _with_threads(longdoc(1), t), (1, t)
    for p in processes:
        if p > 1:
            name = f"longdoc p{p} t1"
            methods[name], shape[name] = longdoc(p), (p, 1)
    for t in thread_counts:
        for peer, fn in (
            ("hf_overflow", hf_overflow),
            ("hf_plain", hf_plain),
            ("raw_encode_batch", raw_encode_batch),
        ):
            name = f"{peer} p1 t{t}"
            methods[name], shape[name] = _with_threads(fn, t), (1, t)
    return methods, shape


def spawn_overhead(model_path: str, processes: int) -> float:
    """Seconds ``make_windows(processes=P)`` spends on a trivial input (spawning and importing the workers)."""
    from transformers import AutoTokenizer

    from longdoc.windows import make_windows

    hf = AutoTokenizer.from_pretrained(model_path, use_fast=True)
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        make_windows(["a b c"] * processes, hf, processes=processes, chunk_size=1)
        best = min(best, time.perf_counter() - t0)
    return best


def run_corpus(args: argparse.Namespace, corpus: str, model_path: str) -> None:
    docs = args.docs_man if corpus == "man" else args.docs_20news
    doc_ids, texts = load_corpus(corpus, docs=docs, seed=args.seed)
    n_chars = sum(len(t) for t in texts)
    logger.info("%s: %d documents, %d characters", corpus, len(texts), n_chars)
    methods, shape = build_methods(
        texts,
        model_path,
        max_length=args.max_length,
        stride=args.stride,
        processes=args.processes,
        pool_threads=args.threads,
    )
    # Counts from untimed calls; timed results are dropped at once (see interleaved_best's keep_results).
    windows = methods["longdoc p1 t1"]()
    tokens = int(windows.documents["n_tokens"].sum())
    floor_tokens = sum(len(e.ids) for e in methods["raw_encode_batch p1 t1"]())
    if floor_tokens != tokens:
        raise AssertionError(f"token counts differ: longdoc {tokens}, raw encode_batch {floor_tokens}")
    n_hf_windows = len(methods["hf_overflow p1 t1"]()["input_ids"])
    n_windows = len(windows)
    del windows
    timed = interleaved_best(methods, repeat=args.repeat, warmup=True, keep_results=False)

    speed = {name: tokens / rec["seconds"] for name, rec in timed.items()}
    cpu_speed = {name: tokens / rec["cpu_seconds"] for name, rec in timed.items()}
    for name, rec in timed.items():
        p, t = shape[name]
        method = name.split(" ")[0]
        record: dict[str, Any] = {
            "bench": "windows",
            "corpus": corpus,
            "method": method,
            "processes": p,
            "threads": t,
            "docs": len(texts),
            "chars": n_chars,
            "tokens": tokens,
            "windows": {"longdoc": n_windows, "hf_overflow": n_hf_windows}.get(method),
            "seconds": rec["seconds"],
            "all_seconds": rec["all_seconds"],
            "tokens_per_s": rate(tokens, rec["seconds"]),
            "cpu_seconds": rec["cpu_seconds"],
            "all_cpu_seconds": rec["all_cpu_seconds"],
            "tokens_per_cpu_s": rate(tokens, rec["cpu_seconds"]),
        }
        for peer in PEERS:
            # wall time: against the peer on as many cores; CPU time (work): against the peer on as many threads
            wall_peer, cpu_peer = f"{peer} p1 t{p * t}", f"{peer} p1 t{t}"
            if peer != method and wall_peer in speed:
                record[f"ratio_vs_{peer}"] = round(speed[name] / speed[wall_peer], 3)
            if peer != method and cpu_peer in cpu_speed:
                record[f"cpu_ratio_vs_{peer}"] = round(cpu_speed[name] / cpu_speed[cpu_peer], 3)
        if method == "longdoc" and p == 1:
            plain = timed[f"hf_plain p1 t{t}"]
            record["overhead_vs_hf_plain"] = round(rec["seconds"] / plain["seconds"] - 1, 3)
            record["cpu_overhead_vs_hf_plain"] = round(rec["cpu_seconds"] / plain["cpu_seconds"] - 1, 3)
        emit(record)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--corpus", choices=[*CORPORA, "both"], default="both")
    parser.add_argument("--docs-man", type=int, default=400, help="man pages to sample (default 400)")
    parser.add_argument(
        "--docs-20news", type=int, default=2500, help="20news posts, evenly spaced (default 2500)"
    )
    parser.add_argument(
        "--processes",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 2],
        help="make_windows worker processes, comma-separated (default 1,2)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="tokenizer threads for the multi-threaded runs (default: all cores)",
    )
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--stride", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=None, help="tokenizer path (default: the packaged MiniLM)")
    args = parser.parse_args(argv)
    # The Rayon pool is sized once, when the tokenizer first runs in parallel.
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    setup_logging()

    from longdoc.encoder import default_model_path

    model_path = args.model or default_model_path()
    emit({"bench": "windows", "machine": machine(), "args": vars(args)})
    for p in args.processes:
        if p > 1:
            emit(
                {
                    "bench": "windows",
                    "method": "longdoc_spawn_overhead",
                    "processes": p,
                    "seconds": round(spawn_overhead(model_path, p), 4),
                }
            )
    for corpus in CORPORA if args.corpus == "both" else (args.corpus,):
        run_corpus(args, corpus, model_path)


if __name__ == "__main__":
    main()
