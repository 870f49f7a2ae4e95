"""``longdoc``: the command line.

    longdoc train docs.jsonl --out model/ [--eval val.jsonl | --eval-fraction 0.1] [--mode frozen|finetune] ...
    longdoc label model/ docs.jsonl --out labels/         # resumable: run it again after a crash
    longdoc index docs.jsonl --out index/                 # no classifier: packaged MiniLM (or --encoder), 256/64 windows
    longdoc index model/ docs.jsonl --out index/          # a classifier labels and indexes in one encoder pass
                                                          # both update index/ when it exists (--prune drops gone docs)
    longdoc search index/ "change file permissions" --k 5 --label 2 [--mode hybrid] [--model model/]
    longdoc serve index/ [--model model/] [--host 127.0.0.1] [--port 8000] [--token T]   # the `serve` extra
    longdoc eval model/ test.jsonl [--baselines --train train.jsonl [--seeds 3]] [--confusion-png cm.png]
    longdoc demo                                          # man pages end to end, in minutes on a CPU

Every subcommand takes ``--json`` (machine-readable output on stdout), ``--quiet`` (no progress, warnings only)
and ``--debug`` (tracebacks). Exit codes: 0 ok, 2 bad input (unreadable or malformed documents, bad option
values), 3 a model or index that cannot be loaded, 1 any other failure; the reason is one line on stderr.
Passage text printed for a terminal is escaped with :func:`longdoc.terminal.safe_text` (control characters,
ANSI escapes and bidi controls are shown as ``\\x1b``-style escapes), so a document cannot drive the terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import longdoc
from indexer import PassageIndex
from indexer.errors import IndexInputError, IndexLoadError
from indexer.index import describe_score
from indexer.inputs import DOC_SCORES
from indexer.sharded import load_index
from indexer.storage import DirectoryLock
from longdoc import demo
from longdoc.classifier import LongDocClassifier
from longdoc.data import load_documents
from longdoc.encoder import WindowEncoder
from longdoc.errors import ConfigError, DataError, ModelLoadError
from longdoc.heads import POOLINGS
from longdoc.indexing import (
    INDEX_WINDOW,
    build_index,
    encoder_layout,
    index_documents,
    index_encoder,
    index_window,
    load_encoder,
    open_search_index,
    require_index_directory,
)
from longdoc.labeling import label_documents
from longdoc.metrics import check_png_path, format_report
from longdoc.model_dir import check_save_target, is_model_directory, read_model_config
from longdoc.terminal import format_hit, safe_text
from longdoc.training import DEFAULT_EPOCHS, MODES, RETRIEVAL_ENCODERS, SELECT_ON, TrainConfig
from longdoc.windows import WindowConfig

logger = logging.getLogger("longdoc.cli")

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_LOAD = 0, 1, 2, 3


# --------------------------------------------------------------------------------------------------- output helpers


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False, default=_json_default))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def hit_to_dict(hit: Any) -> dict[str, Any]:
    """A search hit as plain JSON-ready data."""
    return {
        "rank": hit.rank, "score": float(hit.score), "doc_id": hit.doc_id, "window_index": hit.window_index,
        "window_score": None if hit.window_score is None else float(hit.window_score),
        "char_start": hit.char_start, "char_end": hit.char_end, "labels": list(hit.labels),
        "pred_labels": list(hit.pred_labels), "weight": hit.weight, "text": hit.text,
        "metadata": {k: v for k, v in hit.metadata.items() if k != "content_hash"},
    }


# --------------------------------------------------------------------------------------------------- setup


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit code 2
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def _positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return n


def _seconds(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {value!r}") from None
    if not 0 <= x <= 86_400:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"expected a number of seconds in [0, 86400], got {value!r}")
    return x


def _fraction(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {value!r}") from None
    if not 0 <= x < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {value!r}")
    return x


def _setup_logging(quiet: bool, debug: bool) -> list[tuple[logging.Logger | None, int, bool, logging.Handler]]:
    """Log the ``longdoc`` and ``indexer`` loggers to stderr (INFO, or WARNING with --quiet); progress bars
    follow. Returns what to restore, so that ``main`` leaves the logging of its host process as it found it."""
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    saved = []
    for name in ("longdoc", "indexer"):
        log = logging.getLogger(name)
        saved.append((log, log.level, log.propagate, handler))
        log.setLevel(level)
        log.addHandler(handler)
        log.propagate = False
    if quiet and not debug:
        try:  # transformers' own bars ("Loading weights", "Writing model shards")
            from transformers.utils import logging as hf_logging  # here, not on top: keeps start-up fast

            if hf_logging.is_progress_bar_enabled():
                hf_logging.disable_progress_bar()
                saved.append((None, 0, True, handler))  # marker: enable them again afterwards
        except ImportError:
            pass
    return saved


def _restore_logging(saved: list[tuple[logging.Logger | None, int, bool, logging.Handler]]) -> None:
    for log, level, propagate, handler in saved:
        if log is None:
            from transformers.utils import logging as hf_logging  # here, not on top: keeps start-up fast

            hf_logging.enable_progress_bar()
            continue
        log.removeHandler(handler)
        log.setLevel(level)
        log.propagate = propagate


def _common(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("output")
    g.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    g.add_argument("--quiet", action="store_true", help="no progress bars or info logs, warnings only")
    g.add_argument("--debug", action="store_true", help="debug logs and full tracebacks")


def _device_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: CUDA when present)")
    parser.add_argument("--bf16", action="store_true", help="run the encoder in bfloat16 (fast on GPUs and CPUs "
                        "with avx512_bf16/amx; embeddings stay float32)")


def _reader_options(parser: argparse.ArgumentParser, *, labels: bool = True) -> None:
    g = parser.add_argument_group("document columns")
    g.add_argument("--text-column", default="text", help="column holding the text (default: text)")
    if labels:
        g.add_argument("--label-column", default=None, help="column holding the label(s) (default: label or labels)")
    g.add_argument("--id-column", default=None, help="column holding unique ids (default: id, doc_id or row numbers)")
    g.add_argument("--on-bad-line", default=None, choices=["error", "warn"],
                   help="an unreadable line (not JSON, a broken CSV row): 'error' stops, 'warn' keeps it as an empty "
                        "document with the reason recorded (default: warn for label, error otherwise)")


def _reader_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kw: dict[str, Any] = {"text_column": args.text_column}
    if getattr(args, "label_column", None) is not None:
        kw["label_column"] = args.label_column
    if args.id_column is not None:
        kw["id_column"] = args.id_column
    if getattr(args, "on_bad_line", None) is not None:
        kw["on_bad_line"] = args.on_bad_line
    return kw


def _load_documents(path: str, args: argparse.Namespace) -> Any:
    if not Path(path).exists():
        raise DataError(f"documents not found: {path!r}")
    docs = load_documents(path, **_reader_kwargs(args))
    if docs.height == 0:
        raise DataError(f"{path!r} holds no documents (the input is empty)")
    return docs


def _dtype(bf16: bool) -> Any:
    return torch.bfloat16 if bf16 else None


def load_classifier(path: str, *, device: str | None = None, bf16: bool = False) -> Any:
    """``LongDocClassifier.load`` with every load failure reported as ``ModelLoadError`` (exit code 3)."""
    try:
        clf = LongDocClassifier.load(path, device=device, dtype=_dtype(bf16))
    except (ModelLoadError, ConfigError):
        raise
    except Exception as exc:  # a damaged directory: safetensors, JSON or tokenizer errors
        raise ModelLoadError(f"cannot load the model at {path!r}: {type(exc).__name__}: {exc}") from exc
    return clf


@contextlib.contextmanager
def quiet_weight_loading() -> Iterator[None]:
    """No transformers progress bar ("Loading weights") while an encoder loads; its warnings still go through
    logging."""
    from transformers.utils import logging as hf_logging  # here, not on top: keeps start-up fast

    enabled = hf_logging.is_progress_bar_enabled()
    if enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def load_query_encoder(path: str | None, *, index: str | None = None, device: str | None = None,
                       bf16: bool = False) -> Any:
    """The encoder of a saved classifier's passage index (``retrieval_encoder/`` after fine-tuning, else
    ``encoder/``), or any encoder checkpoint; with ``path=None``, the encoder the index directory ``index``
    records (``longdoc.indexing.index_encoder``), else the packaged MiniLM. No "Loading weights" bar."""
    if path is None and index is not None:
        try:
            with quiet_weight_loading():
                recorded = index_encoder(index, device=device, dtype=_dtype(bf16))
        except (ModelLoadError, ConfigError):
            raise
        except Exception as exc:
            raise ModelLoadError(f"cannot load the encoder the index {index!r} records: {type(exc).__name__}: "
                                 f"{exc}; pass --model") from exc
        if recorded is not None:
            return recorded
    settings: dict[str, Any] = {}
    if path is not None and is_model_directory(path):
        # a classifier directory: only the encoder of its index is needed (the head's weights are never read)
        config = read_model_config(path)
        settings = config.encoder_settings
        path = str(Path(path) / config.retrieval_encoder)
    elif path is not None and not Path(path).exists():
        raise ModelLoadError(f"model not found: {path!r}")
    try:
        with quiet_weight_loading():
            encoder = WindowEncoder(path, device=device, dtype=_dtype(bf16), **settings)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"cannot load an encoder from {path!r}: {type(exc).__name__}: {exc}") from exc
    return encoder


# --------------------------------------------------------------------------------------------------- train


def _train_config(args: argparse.Namespace) -> Any:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if f.name != "eval_fraction"}
    if args.eval_fraction is not None:
        values["eval_fraction"] = args.eval_fraction
    return TrainConfig(**values)


_TRAIN_HELP = {
    "mode": "frozen: cache window embeddings, train the head (fast on CPU); finetune: train end to end",
    "epochs": "maximum passes over the training documents",
    "batch_size": "documents per optimizer micro-step",
    "grad_accum": "micro-steps accumulated per optimizer step",
    "encoder_lr": "learning rate of the encoder (finetune)",
    "head_lr": "learning rate of the head",
    "weight_decay": "AdamW weight decay (not on biases and norms)",
    "warmup_ratio": "fraction of the steps with a linear warmup",
    "max_train_windows": "windows per document per training step in finetune (an ordered random subset, the "
                         "first window always in it unless --no-keep-first-window)",
    "keep_first_window": "always train on a document's first window, sample the rest (finetune)",
    "train_top_layers": "finetune only the top N encoder layers (default: all)",
    "gradient_checkpointing": "trade compute for memory in finetune",
    "attention_dropout": "attention-probability dropout while fine-tuning (0 keeps the fused attention kernels)",
    "retrieval_encoder": "encoder of the passage index after finetune: 'pretrained' (a kept copy, retrieves "
                         "better) or 'finetuned'",
    "class_weights": "'balanced' weights classes by inverse frequency",
    "patience": "stop after this many epochs without a better validation score",
    "select_on": "what picks the epoch kept: validation macro_f1 (loss breaks ties) or loss",
    "min_epochs": "keep no epoch before this one; early stopping waits for it; None: a quarter of --epochs "
                  "frozen, the last epoch finetune (no early stopping)",
    "refit_fusion": "after training, re-weigh the window head and the lexical branch by two scalars fitted on "
                    "the eval set",
    "calibrate": "fit the temperature (and multi-label thresholds) on the eval set",
    "seed": "seed for repeatable runs",
    "checkpoint_dir": "checkpoint every epoch here and resume from it",
}


def _train_config_options(p: argparse.ArgumentParser) -> None:
    """One flag per ``TrainConfig`` field (the CLI mirrors the config; defaults come from it)."""
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        if f.name == "eval_fraction":  # beside --eval, in their mutually exclusive group
            continue
        flag, default = "--" + f.name.replace("_", "-"), getattr(defaults, f.name)
        help_text = _TRAIN_HELP.get(f.name, "") + f" (default: {default})"
        if isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif f.name == "mode":
            p.add_argument(flag, default=default, choices=list(MODES), help=help_text)
        elif f.name == "class_weights":
            p.add_argument(flag, default=default, choices=["balanced"], help=help_text)
        elif f.name == "retrieval_encoder":
            p.add_argument(flag, default=default, choices=list(RETRIEVAL_ENCODERS), help=help_text)
        elif f.name == "select_on":
            p.add_argument(flag, default=default, choices=list(SELECT_ON), help=help_text)
        elif f.name == "epochs":  # None: TrainConfig picks by --mode
            p.add_argument(flag, type=_positive_int, default=None, help=_TRAIN_HELP[f.name] + " (default: "
                           + ", ".join(f"{n} {mode}" for mode, n in DEFAULT_EPOCHS.items()) + ")")
        elif f.name in ("seed", "train_top_layers", "min_epochs"):
            p.add_argument(flag, type=int, default=default, help=help_text)
        elif isinstance(default, int):
            p.add_argument(flag, type=_positive_int, default=default, help=help_text)
        elif isinstance(default, float):
            p.add_argument(flag, type=float, default=default, help=help_text)
        else:
            p.add_argument(flag, default=default, help=help_text)


def _window_config(args: argparse.Namespace) -> Any:
    return WindowConfig(max_length=args.max_length, stride=args.stride, max_windows=args.max_windows)


def _labels_of(docs: Any) -> list[str]:
    return sorted({label for row in docs["labels"].to_list() for label in row})


def cmd_train(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    check_save_target(args.out, argument="--out")  # before the training, not after it
    if args.checkpoint_dir is not None:
        out, checkpoints = Path(os.path.realpath(args.out)), Path(os.path.realpath(args.checkpoint_dir))
        if checkpoints == out or out in checkpoints.parents:
            raise ConfigError(f"--checkpoint-dir={args.checkpoint_dir!r} is inside --out={args.out!r}: saving "
                              "replaces the whole --out directory; keep checkpoints outside it")
    config = _train_config(args)
    window = _window_config(args)
    docs = _load_documents(args.documents, args)
    val = None
    if args.eval is not None:  # else fit holds out --eval-fraction of the documents (TrainConfig.eval_fraction)
        val = _load_documents(args.eval, args)
    labels = _labels_of(docs)
    if not labels:
        raise DataError(f"no labels found in {args.documents!r}; pass --label-column")
    if not args.multi_label and len(labels) < 2:
        raise ConfigError(f"training needs at least two labels, found {labels}")
    clf = LongDocClassifier.from_encoder(
        args.model, labels=labels, window=window, pooling=args.pooling, multi_label=args.multi_label,
        device=args.device, dtype=torch.bfloat16 if args.bf16 else None, lexical=args.lexical,
    )
    logger.info("training on %d documents (%d labels: %s), %s mode", docs.height, len(labels), labels, config.mode)
    clf.fit(docs, eval_dataset=val, args=config, show_progress_bar=None if not args.quiet else False)
    out = clf.save(args.out)
    # the validation documents fit really used: the --eval file, or the stratified split it carved (how many)
    evaluation = dict(clf.validation or {})
    if evaluation.get("source") == "eval_dataset":
        evaluation = {"source": "--eval", "file": args.eval, "documents": evaluation["documents"]}
    result = {"model": str(out), "labels": labels, "n_documents": docs.height, "eval": evaluation,
              "history": clf.history, "temperature": clf.temperature, "seconds": round(time.perf_counter() - started, 2)}
    if args.json:
        _print_json(result)
    else:
        last = clf.history[-1] if clf.history else {}
        print(f"trained on {docs.height} documents, {len(labels)} labels, {len(clf.history)} epochs "
              f"(last: {json.dumps(last)}); saved to {out}")
    return EXIT_OK


# --------------------------------------------------------------------------------------------------- label


def cmd_label(args: argparse.Namespace) -> int:
    if args.engine == "ray":
        return cmd_label_ray(args)
    if not Path(args.documents).exists():
        raise DataError(f"documents not found: {args.documents!r}")
    clf = load_classifier(args.model, device=args.device, bf16=args.bf16)
    summary = label_documents(clf, args.documents, args.out, chunk_size=args.chunk_size,
                              top_passages=args.top_passages, show_progress_bar=False if args.quiet else None,
                              retry_failed=args.retry_failed, **_reader_kwargs(args))
    if args.json:
        _print_json(summary.to_dict())
    else:
        print(f"labelled {summary.n_labelled} documents ({summary.n_skipped} already done, {summary.n_retried} "
              f"retried, {summary.n_errors} error rows) into {summary.output} in {summary.seconds:.1f}s")
    return EXIT_OK


# --------------------------------------------------------------------------------------------------- index


_PLAIN_OPTIONS = (("encoder", "--encoder"), ("max_length", "--max-length"), ("stride", "--stride"),
                  ("max_windows", "--max-windows"))


def _index_inputs(inputs: list[str]) -> tuple[str | None, str]:
    """``(model, documents)`` of ``longdoc index``'s positional arguments: ``MODEL DOCUMENTS`` (the classifier
    route) or ``DOCUMENTS`` alone (no classifier)."""
    if len(inputs) == 2:
        if not is_model_directory(inputs[0]):
            raise ModelLoadError(f"MODEL {inputs[0]!r} is not a model directory (from `longdoc train`: config.json and "
                                 "encoder/); to index without a classifier give only the documents: longdoc index "
                                 "DOCUMENTS -o OUT")
        return inputs[0], inputs[1]
    if len(inputs) != 1:
        raise ConfigError(f"index takes DOCUMENTS or MODEL DOCUMENTS, got {len(inputs)} arguments: {inputs}")
    (only,) = inputs
    path = Path(only)
    if is_model_directory(path):
        raise ConfigError(f"{only!r} is a model directory but no DOCUMENTS were given: longdoc index MODEL DOCUMENTS "
                          "-o OUT (or longdoc index DOCUMENTS -o OUT without a classifier)")
    if encoder_layout(path) in ("sentence-transformers", "checkpoint"):
        raise ConfigError(f"{only!r} is an encoder checkpoint, not documents: longdoc index DOCUMENTS -o OUT "
                          f"--encoder {only}")
    if not path.exists():
        raise DataError(f"documents not found: {only!r} (expected a documents file: .jsonl, .json, .parquet, .csv, "
                        ".txt, or a folder of .txt/.md files; or MODEL DOCUMENTS)")
    return None, only


def cmd_index(args: argparse.Namespace) -> int:
    args.model, args.documents = _index_inputs(args.inputs)
    plain = [flag for name, flag in _PLAIN_OPTIONS if getattr(args, name) is not None]
    if args.model is not None and plain:
        raise ConfigError(f"{', '.join(plain)} choose the encoder and windows of an index built without a "
                          f"classifier; with MODEL {args.model!r} the classifier's own are used (drop {', '.join(plain)})")
    if args.engine == "ray":
        if args.model is None:
            raise ConfigError("--engine ray indexes with a classifier (longdoc index MODEL DOCUMENTS); without one, "
                              "drop --engine ray")
        return cmd_index_ray(args)
    if args.model is None:
        return _cmd_index_plain(args)
    started = time.perf_counter()
    with quiet_weight_loading():
        clf = load_classifier(args.model, device=args.device, bf16=args.bf16)
    docs = _load_documents(args.documents, args)
    out = Path(args.out)
    with _index_target(out, encoder=clf.retrieval_encoder) as target:
        index = target.index or target.create(clf.retrieval_encoder)
        result = index_documents(clf, docs, index=index, prune=args.prune, progress=not args.quiet)
    return _report_index(args, out, result, index, target.updating, started)


class _IndexTarget:
    """The index directory ``longdoc index`` writes: ``index`` (the existing one, loaded with the writer lock
    held, or ``None``), ``updating``, and :meth:`create` for a new one."""

    def __init__(self, out: Path) -> None:
        self.out, self.index, self.updating = out, None, False

    def create(self, encoder: Any) -> Any:
        """A new empty index for ``encoder``, the directory's writer lock taken now (a second writer fails now,
        not after its encoding)."""
        self.index = PassageIndex(encoder.dim, encoder=encoder)
        self.index.lock(self.out)
        return self.index


@contextlib.contextmanager
def _index_target(out: Path, *, encoder: Any = None) -> Iterator[_IndexTarget]:
    """The lock and save steps of ``longdoc index`` (both routes): an interrupted swap of ``out`` is recovered;
    an existing index is loaded with the writer lock (``lock=True``: a second ``longdoc index`` on the same
    directory fails now, not after its encoding; ``encoder``: the query encoder to attach, else the recorded one is
    attached later); the block fills the index (``target.create`` makes a new one); it is saved when the block
    succeeds and closed (lock released) either way."""
    DirectoryLock(out).release()  # taking the lock restores a version that a writer killed mid-swap left beside out
    target = _IndexTarget(out)
    if (out / "manifest.json").is_file():
        target.index = load_index(out, encoder=encoder, lock=True)  # plain or sharded
        target.updating = True
        logger.info("updating the index at %s (%d windows)", out, len(target.index))
    try:
        yield target
        if target.index is None:
            raise RuntimeError("longdoc index made no index to save")  # a bug: the block must create one
        target.index.save(out)
    finally:
        if target.index is not None:
            target.index.close()


def _cmd_index_plain(args: argparse.Namespace) -> int:
    """``longdoc index DOCUMENTS -o OUT``: no classifier (``longdoc.indexing.build_index``)."""
    started = time.perf_counter()
    docs = _load_documents(args.documents, args)
    out = Path(args.out)
    given = {name: getattr(args, name) for name in ("max_length", "stride", "max_windows")
             if getattr(args, name) is not None}
    with _index_target(out) as target:  # build_index attaches the encoder the index records (or --encoder)
        index = target.index
        window = dataclasses.replace(_plain_window(index, given), **given)
        with quiet_weight_loading():
            recorded = index_encoder(index, device=args.device, dtype=_dtype(args.bf16)) if (
                index is not None and args.encoder is None) else None
            encoder = recorded or load_encoder(args.encoder, window=window, device=args.device,
                                               dtype=_dtype(args.bf16))
        index = index or target.create(encoder)
        result = build_index(docs, encoder=encoder, window=window, index=index, prune=args.prune,
                             progress=not args.quiet, device=args.device, dtype=_dtype(args.bf16))
    return _report_index(args, out, result, index, target.updating, started)


def _plain_window(index: Any, given: dict[str, Any]) -> WindowConfig:
    """The window geometry a classifier-free ``longdoc index`` starts from (the options ``given`` replace its
    fields): the one the index records, else (a new index) the default. An existing index that records none
    (built before indexes recorded it) is updated only when --max-length and --stride say which it was built
    with: never a guess."""
    recorded = index_window(index)
    if recorded is not None or index is None:
        return recorded or INDEX_WINDOW
    if "max_length" not in given or "stride" not in given:
        raise ConfigError(
            "the index records no window geometry (it was built before indexes recorded it): pass --max-length "
            "and --stride with the windows it was built with (new windows must match the indexed ones), or build "
            "a new index")
    return INDEX_WINDOW


def _report_index(args: argparse.Namespace, out: Path, result: Any, index: Any, updating: bool,
                  started: float) -> int:
    data = {"index": str(out), **result.counts.to_dict(), "windows": len(index), "documents": len(index.doc_ids),
            "window": index.attributes.get("window"), "seconds": round(time.perf_counter() - started, 2)}
    if args.json:
        _print_json(data)
    else:
        c = result.counts
        print(f"{'updated' if updating else 'built'} {out}: {c.added} added, {c.updated} updated, "
              f"{c.unchanged} unchanged, {c.removed} removed, {c.empty} empty (no text, not indexed) "
              f"({c.encoded} documents encoded); "
              f"{len(index)} windows of {len(index.doc_ids)} documents")
    return EXIT_OK


# --------------------------------------------------------------------------------------------------- --engine ray
# `longdoc label/index --engine ray`: the same outputs through Ray Data (longdoc.distributed; pip install
# 'longdoc[ray]'). Kept apart from the single-machine commands above, which only branch here.


def _engine_options(parser: argparse.ArgumentParser, *, index: bool = False) -> None:
    g = parser.add_argument_group("engine (--engine ray: Ray Data, pip install 'longdoc[ray]')")
    g.add_argument("--engine", default="local", choices=["local", "ray"],
                   help="local: this process (default); ray: Ray Data on the cluster `ray.init()` finds, or a local one")
    g.add_argument("--concurrency", type=_positive_int, default=2, help="ray: model actors (default 2)")
    g.add_argument("--num-gpus", type=float, default=0, help="ray: GPUs per model actor (default 0: CPU)")
    g.add_argument("--batch-size", type=_positive_int, default=64, help="ray: documents per batch (default 64)")
    if index:
        g.add_argument("--shards", type=_positive_int, default=4,
                       help="ray: index shards (default 4); the index is built anew, not updated")


def cmd_label_ray(args: argparse.Namespace) -> int:
    from longdoc.distributed import label_with_ray  # here, not on top: the optional Ray engine

    summary = label_with_ray(args.model, args.documents, args.out, concurrency=args.concurrency,
                             num_gpus=args.num_gpus, batch_size=args.batch_size, top_passages=args.top_passages,
                             retry_failed=args.retry_failed, **_reader_kwargs(args))
    if args.json:
        _print_json(summary.to_dict())
    else:
        print(f"labelled {summary.n_labelled} documents with Ray ({summary.n_skipped} already done, "
              f"{summary.n_retried} retried, {summary.n_errors} error rows) into {summary.output} in "
              f"{summary.seconds:.1f}s")
    return EXIT_OK


def cmd_index_ray(args: argparse.Namespace) -> int:
    from longdoc.distributed import index_with_ray  # here, not on top: the optional Ray engine

    if args.prune:
        raise ConfigError("--prune updates an existing index; --engine ray builds a new one (drop --prune)")
    result = index_with_ray(args.model, args.documents, args.out, shards=args.shards, concurrency=args.concurrency,
                            num_gpus=args.num_gpus, batch_size=args.batch_size, **_reader_kwargs(args))
    if args.json:
        _print_json(result)
    else:
        print(f"built {result['index']} with Ray: {result['windows']} windows in {result['shards']} shards "
              f"in {result['seconds']:.1f}s")
    return EXIT_OK


# --------------------------------------------------------------------------------------------------- search


def _check_queries(queries: list[str], name: str = "QUERY") -> None:
    """A QUERY (or ``--label``) whose bytes are not UTF-8 reaches Python with lone surrogates (surrogateescape):
    refuse it here, with the byte, rather than as the tokenizer's type error."""
    for q in queries:
        try:
            raw = os.fsencode(q)
        except UnicodeEncodeError:  # a lone surrogate that no byte gave (main() called with such a str)
            raise DataError(f"{name} {q!r} is not valid Unicode text (a lone surrogate)") from None
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{name} {raw!r} is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at position "
                            f"{exc.start}): pass it as UTF-8 text") from None


def cmd_search(args: argparse.Namespace) -> int:
    _check_queries(args.queries)
    _check_queries(args.label, "--label")
    if args.windows:  # windows are ranked alone: options about documents would be silently ignored
        given = [flag for flag, value in (("--doc-score", args.doc_score), ("--per-doc", args.per_doc))
                 if value is not None]
        if given:
            raise ConfigError(f"{' and '.join(given)} {'shape' if len(given) > 1 else 'shapes'} document hits; "
                              "--windows ranks windows, not documents: drop "
                              f"{' and '.join(given)} or --windows")
    per_doc = None if args.windows else args.per_doc or 1
    doc_score = None if args.windows else args.doc_score or "top2_first"
    require_index_directory(args.index)  # before loading an encoder
    encoder = load_query_encoder(args.model, index=args.index, device=args.device, bf16=args.bf16)
    index = open_search_index(args.index, encoder=encoder, device=args.device, mismatch_hint=None if args.model
                              else "pass --model with the model directory the index was built with")
    quiet_encoder = logging.getLogger("longdoc.encoder")
    level = quiet_encoder.level
    quiet_encoder.setLevel(logging.WARNING)  # no progress bar for a few short queries
    try:
        results = index.search(list(args.queries), k=args.k, labels=args.label or None, mode=args.mode,
                               per_doc=per_doc, doc_score=doc_score)
    finally:
        quiet_encoder.setLevel(level)
    score_kind = describe_score(mode=args.mode, per_doc=per_doc, doc_score=doc_score, normalize=index.normalize)
    if args.json:
        _print_json([{"query": q, "score_kind": score_kind, "hits": [hit_to_dict(h) for h in hits]}
                     for q, hits in zip(args.queries, results, strict=True)])
    else:
        print(f"score: {score_kind}")
        for q, hits in zip(args.queries, results, strict=True):
            print(f"query: {safe_text(q)}" + (f"  (labels: {', '.join(args.label)})" if args.label else ""))
            if not hits:
                print("  (no hits)")
            for h in hits:
                print(format_hit(h))
    return EXIT_OK


# --------------------------------------------------------------------------------------------------- serve


def cmd_serve(args: argparse.Namespace) -> int:
    """``longdoc serve``: the index (and, with --model, the classifier) over HTTP until interrupted."""
    try:
        from longdoc import serve  # here, not on top: FastAPI is an optional extra
    except ImportError as exc:
        raise ConfigError(f"{exc}") from None
    token = args.token if args.token is not None else os.environ.get(serve.TOKEN_ENV) or None
    if args.threads is not None:  # torch's intra-op pool, and OpenMP / BLAS (numpy, faiss) through threadpoolctl
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)
    serve.run(args.index, args.model, host=args.host, port=args.port, token=token,
              log_level="warning" if args.quiet else "debug" if args.debug else "info",
              batching=args.batching, batch_wait_ms=args.batch_wait_ms, max_batch=args.max_batch, max_k=args.max_k,
              max_body_bytes=args.max_body_bytes, reload_interval_s=args.reload_interval,
              drain_timeout_s=args.drain_timeout, device=args.device, bf16=args.bf16)
    return EXIT_OK


# --------------------------------------------------------------------------------------------------- eval


def cmd_eval(args: argparse.Namespace) -> int:
    """``longdoc eval``: the saved model's report; with ``--baselines``, a table headed by the saved model's own
    scores, then the baselines trained on ``--train`` (frozen encoder: the saved model's) and scored on the same
    documents, with the paired difference of the model to the best baseline (over ``--seeds`` baseline runs)."""
    if args.confusion_png is not None:
        check_png_path(args.confusion_png, argument="--confusion-png")
    clf = load_classifier(args.model, device=args.device, bf16=args.bf16)
    docs = _load_documents(args.documents, args)
    baselines = args.baselines is not None
    if baselines and args.train is None:
        raise ConfigError("--baselines needs --train FILE (the baselines are trained on it)")
    # encoded once: the model's report and the comparison share the test embeddings
    test = clf.encode(docs, show_progress_bar=False if args.quiet else None) if baselines else docs
    report = clf.evaluate(test, confusion_png=args.confusion_png)
    data: dict[str, Any] = {"model": args.model, "report": report}
    comparison = None
    if baselines:
        from longdoc.evaluation import compare_with_baselines  # here, not on top: scikit-learn slows start-up

        if clf.retrieval_encoder is not clf.encoder:
            logger.warning("the saved model's encoder was fine-tuned: the frozen baselines are trained on its "
                           "fine-tuned embeddings, not on the pretrained encoder's")
        train = _load_documents(args.train, args)
        comparison = compare_with_baselines(clf, train, test, baselines=tuple(args.baselines),
                                            seeds=list(range(args.seeds)), model_name="model", fit_model=False,
                                            show_progress_bar=False if args.quiet else None)
        data["comparison"] = comparison.table.to_dicts()
        data["runs"] = comparison.runs.to_dicts()
        data["difference"] = comparison.difference
        data["notes"] = comparison.notes  # which rows are fixed scores (one run per split, no interval), and why
    if args.json:
        _print_json(data)
    else:
        from longdoc.evaluation import format_comparison

        print(format_report(report))
        if args.confusion_png:
            print(f"confusion matrix: {args.confusion_png}")
        if comparison is not None:
            print(f"\nthe saved model ({safe_text(args.model)}) beside baselines trained on --train "
                  f"({args.seeds} seed{'s' if args.seeds > 1 else ''}), same test documents:")
            print(format_comparison(comparison))
    return EXIT_OK


# --------------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="longdoc", description="Long-document classification and retrieval over BERT windows.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("train", help="train a classifier: documents in, model directory out")
    p.add_argument("documents", help="labelled documents (.jsonl, .parquet, .csv, folder of .txt...)")
    p.add_argument("-o", "--out", required=True, help="model directory to write")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--eval", default=None, help="validation documents (early stopping, calibration)")
    g.add_argument("--eval-fraction", type=_fraction, default=None,
                   help="without --eval, hold out this fraction of the documents (stratified, from 40 documents "
                        f"up) for early stopping and calibration; 0: none (default: {TrainConfig().eval_fraction})")
    p.add_argument("--model", default=None, help="encoder checkpoint (default: the packaged MiniLM)")
    p.add_argument("--lexical", action=argparse.BooleanOptionalAction, default=True,
                   help="the lexical branch: TF-IDF of the whole text and a linear model whose label scores are "
                        "added to the window head's (default: on; --no-lexical classifies from the windows alone)")
    p.add_argument("--multi-label", action="store_true", help="documents carry any number of labels")
    p.add_argument("--pooling", default="lead_attention",
                   choices=list(POOLINGS),
                   help="how window embeddings pool into the document (default: lead_attention, the first window "
                        "beside attention over all windows)")
    p.add_argument("--max-length", type=_positive_int, default=512, help="tokens per window (default 512)")
    p.add_argument("--stride", type=int, default=128, help="tokens shared by consecutive windows (default 128)")
    p.add_argument("--max-windows", type=_positive_int, default=None, help="cap windows per document (head+tail)")
    _train_config_options(p)
    _reader_options(p)
    _device_options(p)
    _common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("label", help="label documents into a Parquet directory (resumable)")
    p.add_argument("model", help="model directory (from `longdoc train`)")
    p.add_argument("documents", help="documents to label")
    p.add_argument("-o", "--out", required=True, help="output directory of part-NNNNN.parquet files")
    p.add_argument("--chunk-size", type=_positive_int, default=256, help="documents per part file")
    p.add_argument("--top-passages", type=int, default=3, help="most influential windows kept per document")
    p.add_argument("--retry-failed", action=argparse.BooleanOptionalAction, default=True,
                   help="on resume, label again the documents whose analysis raised last time (failed=true rows, "
                        "e.g. a CUDA out-of-memory); --no-retry-failed keeps them as they are (default: retry)")
    _reader_options(p)
    _device_options(p)
    _engine_options(p)
    _common(p)
    p.set_defaults(func=cmd_label)

    p = sub.add_parser("index", help="index the windows of documents for search, with or without a classifier "
                       "(updates an existing index)",
                       usage="longdoc index [MODEL] DOCUMENTS -o OUT [options]")
    p.add_argument("inputs", nargs="+", metavar="[MODEL] DOCUMENTS",
                   help="documents to index (.jsonl, .json, .parquet, .csv, .txt, folder of .txt/.md; a label column "
                        "is kept as gold labels for --label at search), optionally after a model directory from "
                        "`longdoc train`, which then labels them in the same encoder pass")
    p.add_argument("-o", "--out", required=True, help="index directory (created, or updated when it exists)")
    p.add_argument("--prune", action="store_true", help="remove indexed documents that are not in DOCUMENTS")
    g = p.add_argument_group("encoder and windows (without MODEL; an update keeps the index's own by default)")
    g.add_argument("--encoder", default=None, help="encoder checkpoint, sentence-transformers or model directory "
                   "(default: the packaged MiniLM)")
    g.add_argument("--max-length", type=_positive_int, default=None,
                   help=f"tokens per window (default {INDEX_WINDOW.max_length})")
    g.add_argument("--stride", type=int, default=None,
                   help=f"tokens shared by consecutive windows (default {INDEX_WINDOW.stride})")
    g.add_argument("--max-windows", type=_positive_int, default=None, help="cap windows per document (head+tail; "
                   "default: every window)")
    _reader_options(p)
    _device_options(p)
    _engine_options(p, index=True)
    _common(p)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="search an index with text queries")
    p.add_argument("index", help="index directory (from `longdoc index`)")
    p.add_argument("queries", nargs="+", metavar="QUERY")
    p.add_argument("--model", default=None, help="model directory or encoder checkpoint that encodes the queries "
                   "(default: the encoder the index records, else the packaged MiniLM)")
    p.add_argument("-k", "--k", type=_positive_int, default=5, help="hits per query")
    p.add_argument("--label", action="append", default=[], help="only documents with this label (repeatable)")
    p.add_argument("--mode", default="dense", choices=["dense", "hybrid"])
    p.add_argument("--per-doc", type=_positive_int, default=None, help="hits per document (default 1)")
    p.add_argument("--doc-score", default=None, choices=list(DOC_SCORES),
                   help="how a document's windows make its score: top2_first (default: 0.7 x mean of its 2 best "
                   "windows + 0.3 x its first window) or max (its best window)")
    p.add_argument("--windows", action="store_true",
                   help="rank windows, not documents (no per-document grouping; scores are window scores; "
                   "not with --doc-score or --per-doc)")
    _device_options(p)
    _common(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("serve", help="serve an index (and a classifier) over HTTP: /search, /contexts, /label, "
                       "/info (needs the `serve` extra)")
    p.add_argument("index", help="index directory (from `longdoc index`); read only, never written")
    p.add_argument("--model", default=None, help="model directory (from `longdoc train`) for /label; its encoder "
                   "also encodes the queries when the index was built with it")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--token", default=None, help="require 'Authorization: Bearer TOKEN' on every endpoint but "
                   "/healthz (default: the LONGDOC_SERVE_TOKEN environment variable, which other users cannot "
                   "read from the process list; unset: no token)")
    p.add_argument("--batching", action=argparse.BooleanOptionalAction, default=True,
                   help="encode the queries of concurrent searches in one forward (default: on)")
    p.add_argument("--batch-wait-ms", type=float, default=5.0,
                   help="with --batching, how long the batch worker waits for more queries after the first "
                        "(default 5; 0: take only what is already queued, no added latency for a lone client)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="threads of the encoder and the search (torch, OpenMP, BLAS); default: every core. 1 keeps "
                        "a core for the HTTP loop and avoids oversubscription on a small or shared machine "
                        "(benchmarks/RESULTS.md, 'longdoc serve under load')")
    p.add_argument("--max-batch", type=_positive_int, default=64,
                   help="queries per /search or /contexts request, documents per /label request (default 64)")
    p.add_argument("--max-k", type=_positive_int, default=100, help="most hits per query (default 100)")
    p.add_argument("--max-body-bytes", type=_positive_int, default=1_000_000,
                   help="largest request body; larger ones get 413 (default 1000000)")
    p.add_argument("--reload-interval", type=_seconds, default=2.0, metavar="SECONDS",
                   help="look this often for a new version of the index (a `longdoc index` update) and switch to "
                   "it without a restart or a failed request (default 2; 0: never)")
    p.add_argument("--drain-timeout", type=_seconds, default=30.0, metavar="SECONDS",
                   help="on SIGTERM or Ctrl-C, wait at most this long for requests in flight (default 30)")
    _device_options(p)
    _common(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("eval", help="evaluate a model on labelled documents")
    p.add_argument("model", help="model directory")
    p.add_argument("documents", help="labelled test documents")
    p.add_argument("--confusion-png", default=None, help="write the confusion matrix here (a .png path)")
    p.add_argument("--baselines", nargs="*", default=None, choices=["first512", "head_tail", "tfidf"],
                   help="also train these baselines on --train (no value: all three) and compare")
    p.add_argument("--train", default=None, help="training documents for --baselines")
    p.add_argument("--seeds", type=_positive_int, default=1,
                   help="train each baseline with this many seeds (0, 1, ...): mean +- 95%% CI per baseline and a "
                        "paired interval for the model's difference to the best one (default 1: no interval); the "
                        "saved model and tfidf are fixed scores that no seed changes: one run each, no interval")
    _reader_options(p)
    _device_options(p)
    _common(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("demo", help="man pages end to end: train, compare with baselines, index, search")
    demo.add_arguments(p)
    _common(p)
    p.set_defaults(func=demo.cmd_demo)
    return parser


def _version() -> str:
    return f"longdoc {longdoc.__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see the module docstring)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error (code 2)
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_BAD_INPUT
    if args.command == "eval" and args.baselines is not None and not args.baselines:
        args.baselines = ["first512", "head_tail", "tfidf"]
    saved = _setup_logging(args.quiet, args.debug)
    try:
        return _run(args)
    finally:
        _restore_logging(saved)


# The library's errors name its API (``text_column=...``); on the command line the same advice names the flags.
_CLI_SPELLINGS = (
    ("pass labels=... or label_column=...", "pass --label-column"),
    ("(or label_column=None for unlabelled documents)", "(or leave --label-column out for unlabelled documents)"),
    ("(or id_column=None to number the rows)", "(or leave --id-column out to number the rows)"),
    ("text_column=...", "--text-column"),
    ("label_column=...", "--label-column"),
    ("id_column=...", "--id-column"),
    ("pass on_bad_line='warn' to keep going", "pass --on-bad-line warn to keep going"),
    ("multi_label=True", "--multi-label"),
    ("close() the other PassageIndex or wait for that process, or load without lock=True to read only",
     "wait for that process (another `longdoc index`, or a program writing the index) to finish"),
)


def _cli_spelling(message: str) -> str:
    """``message`` with the API spellings of its advice replaced by the command line's flags."""
    for api, cli in _CLI_SPELLINGS:
        message = message.replace(api, cli)
    return message


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args) or 0)
    except (DataError, ConfigError, IndexInputError) as exc:
        code, error = EXIT_BAD_INPUT, exc
    except (ModelLoadError, IndexLoadError) as exc:
        code, error = EXIT_LOAD, exc
    except KeyboardInterrupt:
        print("longdoc: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # anything else: exit code 1, one line (a traceback with --debug)
        code, error = EXIT_FAILURE, exc
    if args.debug:
        traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
    message = _cli_spelling(" ".join(str(error).split()) or type(error).__name__)
    print(f"longdoc {args.command}: error: {safe_text(message)}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
