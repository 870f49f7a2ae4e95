"""Shared helpers for the benchmarks: corpora, interleaved best-of-N timing, JSON-line output.

Every benchmark prints one JSON object per figure to stdout and nothing else; progress goes to stderr through
``logging``. Peers are timed in the same process, interleaved round-robin, and the best of ``repeat`` runs is
kept, so ratios hold on a shared, noisy machine.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger("benchmarks")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
NEWS_PATH = SHARED_DATA / "20news_bydate.jsonl"
MAN_ROOT = Path("/usr/share/man")
CORPORA = ("man", "20news")


def setup_logging(verbose: bool = False) -> None:
    """Log progress to stderr (stdout carries only JSON lines)."""
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("transformers", "sentence_transformers", "longdoc", "torch", "httpx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def emit(record: dict[str, Any]) -> None:
    """Print one figure as a JSON line on stdout."""
    print(json.dumps(record, sort_keys=False), flush=True)


def machine() -> dict[str, Any]:
    """A short description of the machine the figures come from."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:  # pragma: no cover
        pass
    return info


# --------------------------------------------------------------------------------------------------- corpora


def load_corpus(name: str, *, docs: int | None = None, seed: int = 0) -> tuple[list[str], list[str]]:
    """``(doc_ids, texts)`` of a benchmark corpus, deterministic for a given ``docs`` and ``seed``.

    * ``man``: the machine's man pages, rendered at 80 columns (``longdoc.manpages.load_man_pages``, sampled
      per section and per source; cached outside the repository), or ``man -l`` where that module is missing.
    * ``20news``: 20 Newsgroups bodies (``text[header_end:]``) from ``../shared/data``, every k-th post in file
      order so that all groups and both splits are represented.
    """
    if name == "man":
        return _man_pages(docs or 400, seed)
    if name == "20news":
        return _news_bodies(docs)
    raise ValueError(f"corpus must be one of {CORPORA}, got {name!r}")


def _news_bodies(docs: int | None) -> tuple[list[str], list[str]]:
    if not NEWS_PATH.is_file():
        raise FileNotFoundError(f"20news corpus not found at {NEWS_PATH}")
    rows = [json.loads(line) for line in NEWS_PATH.read_text(encoding="utf-8").splitlines() if line.strip()]
    if docs is not None and docs < len(rows):
        step = len(rows) / docs
        rows = [rows[int(i * step)] for i in range(docs)]
    return [r["id"] for r in rows], [r["text"][r["header_end"] :] for r in rows]


def _man_pages(docs: int, seed: int) -> tuple[list[str], list[str]]:
    try:
        from longdoc.manpages import load_man_pages
    except ImportError:
        load_man_pages = None
    if load_man_pages is not None:
        sections = ("1", "2", "3", "4", "5", "7", "8")
        per_section = max(1, -(-docs // len(sections)))
        table = load_man_pages(sections=sections, max_per_section=per_section, seed=seed)
        table = table.filter(table["text"].str.strip_chars().str.len_chars() > 0)
        if table.height > docs:
            table = table.sample(n=docs, seed=seed).sort("doc_id")
        return table["doc_id"].to_list(), table["text"].to_list()
    return _man_pages_fallback(docs)


def _man_pages_fallback(docs: int) -> tuple[list[str], list[str]]:
    """Render an evenly spaced sample of ``/usr/share/man/man[1-8]`` with ``man -l`` at 80 columns."""
    files = sorted(
        p
        for sec in "1234578"
        for p in (MAN_ROOT / f"man{sec}").glob("*")
        if p.is_file() and not p.is_symlink()
    )
    step = max(1, len(files) // docs)
    env = {**os.environ, "MANWIDTH": "80", "MAN_KEEP_FORMATTING": "", "LC_ALL": "C.UTF-8"}
    ids: list[str] = []
    texts: list[str] = []
    for path in files[::step][:docs]:
        out = subprocess.run(["man", "-l", str(path)], env=env, capture_output=True, timeout=60, check=False)
        text = out.stdout.decode("utf-8", "replace")
        if text.strip():
            ids.append(str(path.relative_to(MAN_ROOT)))
            texts.append(text)
    return ids, texts


# --------------------------------------------------------------------------------------------------- timing


def interleaved_best(
    methods: dict[str, Callable[[], Any]],
    *,
    repeat: int = 3,
    warmup: bool = True,
    sync: Callable[[], None] | None = None,
    keep_results: bool = True,
) -> dict[str, dict[str, Any]]:
    """Time every method ``repeat`` times, round-robin (A B C A B C ...), and keep the best.

    Returns ``{name: {"seconds": best, "all_seconds": [...], "cpu_seconds": best, "all_cpu_seconds": [...],
    "result": last result}}``; CPU seconds count every thread of this process and its reaped children, and
    are far less sensitive than wall time to other jobs on a shared machine. ``warmup`` runs each
    method once untimed first (model caches, lazy initialisation). ``sync`` is called before reading the clock
    (``torch.cuda.synchronize`` on a GPU). ``keep_results=False`` drops every result as soon as it is timed:
    results made of millions of Python objects (token lists, offset tuples) would otherwise stay alive and make
    the garbage collector's full passes during *other* methods' runs slower, a bias against whichever methods
    allocate many objects.
    """
    out: dict[str, dict[str, Any]] = {name: {"all_seconds": [], "result": None} for name in methods}
    if warmup:
        for name, fn in methods.items():
            logger.info("warm-up: %s", name)
            out[name]["result"] = fn() if keep_results else (fn(), None)[1]
            if sync:
                sync()
    for rec in out.values():
        rec["all_cpu_seconds"] = []
    for r in range(repeat):
        for name, fn in methods.items():
            gc.collect()
            if sync:
                sync()
            c0, t0 = cpu_seconds(), time.perf_counter()
            result = fn()
            if sync:
                sync()
            dt, dc = time.perf_counter() - t0, cpu_seconds() - c0
            out[name]["all_seconds"].append(round(dt, 4))
            out[name]["all_cpu_seconds"].append(round(dc, 4))
            out[name]["result"] = result if keep_results else None
            del result
            logger.info("run %d/%d %-40s %.3f s wall, %.3f s cpu", r + 1, repeat, name, dt, dc)
    for rec in out.values():
        rec["seconds"] = min(rec["all_seconds"])
        rec["cpu_seconds"] = min(rec["all_cpu_seconds"])
    return out


def cpu_seconds() -> float:
    """CPU time of this process (all threads) plus its finished, reaped child processes."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def rate(count: float, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else float("nan")
