"""Training configuration and the loops behind ``LongDocClassifier.fit``.

Two modes:

* ``"frozen"``: every window is encoded once (no gradients), the embeddings are cached, only the head trains.
  Fast on a CPU.
* ``"finetune"``: end to end. Each step encodes the windows of a batch of documents with gradients, pools them
  with the head and puts the loss on the document label, so gradients reach every encoder layer through every
  window of the step. Documents with more than ``max_train_windows`` windows get a random (ordered) subset per
  step (with ``keep_first_window``, the first window plus a random subset of the rest); prediction always uses
  all windows. ``train_top_layers`` freezes all but the top N encoder layers.

Both use AdamW with separate learning rates for the encoder and the head, linear warmup then linear decay,
early stopping on validation macro-F1 (or loss; never before ``min_epochs``), optional class weights, seeds,
and a checkpoint per epoch that a killed run resumes from (weights, optimizer moments and the epoch counter, all
as safetensors + JSON).

``LongDocClassifier.fit`` reads the documents and their targets, then calls :func:`fit` here, which trains the
classifier's heads (and, fine-tuning, its encoder) in place. The loops only use the classifier's public parts:
``encoder``, ``head``, ``task_head``, ``retrieval_encoder``, ``history``, ``encode`` and ``analyze``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import random
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import torch
from safetensors.torch import load_file, save_file
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from indexer.storage import durable_directory, recover_stale
from longdoc.errors import ConfigError
from longdoc.heads import DocumentHead, predict_probs
from longdoc.windows import Windows, make_windows

if TYPE_CHECKING:  # the classifier imports this module; these names are only for type hints
    from longdoc.classifier import Analysis, Encoded, LongDocClassifier

logger = logging.getLogger(__name__)

MODES = ("frozen", "finetune")
DEFAULT_EPOCHS = {"frozen": 20, "finetune": 3}  # TrainConfig.epochs=None
RETRIEVAL_ENCODERS = ("pretrained", "finetuned")
SELECT_ON = ("macro_f1", "loss")


@dataclass(frozen=True)
class TrainConfig:
    """How ``LongDocClassifier.fit`` trains. Mirrored by the ``longdoc train`` flags.

    Args:
        mode: ``"frozen"`` (cache window embeddings, train the head) or ``"finetune"`` (end to end).
        epochs: maximum passes over the training documents. ``None`` (the default) depends on ``mode``: 20 frozen
            (a head trains in seconds per epoch and stops early on validation), 3 fine-tuning (the last is kept,
            see ``min_epochs``; BERT-style fine-tuning runs 2-4 epochs, and each is a full encoder pass).
        batch_size: documents per optimizer micro-step.
        grad_accum: micro-steps accumulated per optimizer step.
        encoder_lr: learning rate of the encoder (fine-tuning only).
        head_lr: learning rate of the head.
        weight_decay: AdamW weight decay (not applied to biases and LayerNorm weights).
        warmup_ratio: fraction of optimizer steps with a linear warmup.
        max_train_windows: windows per document per training step in fine-tuning (an ordered random subset; see
            ``keep_first_window``).
        keep_first_window: when a document has more than ``max_train_windows`` windows, always train on its first
            window and sample the others from the rest (with ``max_train_windows=1``: the first window only).
            Prediction reads every window, and the first one (title, NAME/SYNOPSIS, lead paragraph) is where most
            documents say what they are (the ``lead_attention`` head reads it on its own); a purely random sample
            leaves it out of many steps. Measured on man-page sections (benchmarks/RESULTS.md): +5.4 and +4.7
            points of macro-F1 on the two seeds run both ways.
            ``False``: a uniformly random subset (the only sampling before this option existed: seeded runs of
            older versions reproduce with ``False``).
        train_top_layers: fine-tune only the top N encoder layers (``None``: all layers and embeddings).
        gradient_checkpointing: trade compute for memory in fine-tuning.
        attention_dropout: dropout on the attention probabilities while fine-tuning. ``0.0`` (the default) keeps
            scaled-dot-product attention on its fused kernels: with dropout, PyTorch's CPU attention falls back
            to the unfused path and a MiniLM training step is 3.3x slower (benchmarks/RESULTS.md). ``None``
            keeps the checkpoint's own value (0.1 for BERT). The saved model is unchanged either way.
        retrieval_encoder: which encoder makes the vectors of a passage index after fine-tuning (see
            ``LongDocClassifier.retrieval_encoder``): ``"pretrained"`` (default) keeps a copy of the encoder as it
            was before fine-tuning, because classification fine-tuning measurably hurts retrieval
            (benchmarks/RESULTS.md); ``"finetuned"`` indexes with the fine-tuned encoder (one pass labels and
            indexes). Frozen training never changes the encoder, so both are the same there.
        class_weights: ``"balanced"`` weights classes by inverse frequency; ``None`` does not.
        patience: stop after this many epochs without a better validation score (needs an eval set; never before
            ``min_epochs``, so fine-tuning runs every epoch unless ``min_epochs`` is set).
        select_on: what picks the epoch that is kept (and drives ``patience``): ``"macro_f1"`` (validation
            macro-F1, the loss breaking ties) or ``"loss"`` (validation loss, macro-F1 breaking ties).
        min_epochs: no epoch before this one is kept and early stopping waits for it: the best validation epoch
            is chosen among epochs ``min_epochs`` .. ``epochs``. ``None`` (the default) depends on ``mode``:
            frozen, a quarter of ``epochs``, rounded up (5 of the default 20). On a validation split of a few
            dozen documents (10% of a few hundred) macro-F1 moves in steps of several points and an
            under-trained head of epoch 1 or 2 can top it by luck: on long binary news proxies
            (benchmarks/RESULTS.md, issue 18) the window head kept such an epoch in 14 of 60 runs and lost 3.7
            points of macro-F1 to first-512 on them. Fine-tuning, ``epochs``: the last epoch is kept and early
            stopping is off (the eval set still calibrates and re-weighs the fusion). A fine-tuning run is a
            few epochs whose learning rate decays linearly to zero, so the last epoch is the annealed one, and
            the validation differences between its epochs (1-4 points) are below the noise of a few dozen
            documents (about 5 points of accuracy on 50): picking the best of them picks noise. Cross-validated
            on the man pages (5 folds x 3 seeds, benchmarks/RESULTS.md), the mean validation macro-F1 of
            epochs 1, 2, 3 was 0.774, 0.830, 0.837, yet the best-of-three picked an earlier epoch in 8 of 15
            runs, which scored 0.9 points below the last on the test pages on average. Set
            ``min_epochs`` to stop a long fine-tuning run early.
            ``1`` keeps any epoch (the behaviour before this option).
        refit_fusion: with the lexical branch and validation documents, after training re-weigh the window head's
            logits and the lexical scores by two scalars fitted on the validation documents (their NLL, as a
            temperature is fitted; ``calibration.fit_fusion_weights``). The head trains on the training
            documents, where it can learn to override the lexical scores; on a few hundred documents that
            override hurt on unseen ones (man-page demo split: 0.826 -> 0.863 macro-F1, 3 seeds;
            benchmarks/RESULTS.md). ``False`` keeps the trained weights.
        calibrate: fit a temperature (and multi-label thresholds) on the eval set after training.
        eval_fraction: without an eval set, hold out this fraction of the training documents (stratified by
            label, seeded; only from 40 documents up) for early stopping and calibration; ``0`` trains on all
            of them for every epoch and skips calibration.
        seed: seeds Python, NumPy and torch for repeatable runs.
        checkpoint_dir: write a checkpoint after every epoch here and resume from it when it exists.
    """

    mode: str = "frozen"
    epochs: int | None = None
    batch_size: int = 16
    grad_accum: int = 1
    encoder_lr: float = 2e-5
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_train_windows: int = 8
    keep_first_window: bool = True
    train_top_layers: int | None = None
    gradient_checkpointing: bool = False
    attention_dropout: float | None = 0.0
    retrieval_encoder: str = "pretrained"
    class_weights: str | None = None
    patience: int = 4
    select_on: str = "macro_f1"
    min_epochs: int | None = None
    refit_fusion: bool = True
    calibrate: bool = True
    eval_fraction: float = 0.1
    seed: int = 0
    checkpoint_dir: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.epochs is None:  # frozen dataclass: the default is resolved once, here
            object.__setattr__(self, "epochs", DEFAULT_EPOCHS[self.mode])
        for name in ("epochs", "batch_size", "grad_accum", "max_train_windows", "patience"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an int >= 1, got {value!r}")
        for name in ("encoder_lr", "head_lr"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if self.attention_dropout is not None and not 0 <= self.attention_dropout < 1:
            raise ConfigError(f"attention_dropout must be None or in [0, 1), got {self.attention_dropout!r}")
        if self.train_top_layers is not None and self.train_top_layers < 0:
            raise ConfigError(f"train_top_layers must be None or >= 0, got {self.train_top_layers!r}")
        if self.retrieval_encoder not in RETRIEVAL_ENCODERS:
            raise ConfigError(f"retrieval_encoder must be one of {RETRIEVAL_ENCODERS}, got {self.retrieval_encoder!r}")
        if isinstance(self.eval_fraction, bool) or not isinstance(self.eval_fraction, int | float) \
                or not 0 <= self.eval_fraction < 1:
            raise ConfigError(f"eval_fraction must be in [0, 1), got {self.eval_fraction!r}")
        if not isinstance(self.refit_fusion, bool):
            raise ConfigError(f"refit_fusion must be True or False, got {self.refit_fusion!r}")
        if self.select_on not in SELECT_ON:
            raise ConfigError(f"select_on must be one of {SELECT_ON}, got {self.select_on!r}")
        if self.min_epochs is not None and (isinstance(self.min_epochs, bool) or not isinstance(self.min_epochs, int)
                                            or self.min_epochs < 1):
            raise ConfigError(f"min_epochs must be None or an int >= 1, got {self.min_epochs!r}")
        if self.class_weights not in (None, "balanced"):
            raise ConfigError(f"class_weights must be None or 'balanced', got {self.class_weights!r}")

    @property
    def first_kept_epoch(self) -> int:
        """The first epoch that may be kept (1-based): ``min_epochs``; when None, a quarter of ``epochs`` frozen and
        the last epoch fine-tuning; never past ``epochs``."""
        if self.min_epochs is not None:
            start = self.min_epochs
        else:
            start = self.epochs if self.mode == "finetune" else math.ceil(self.epochs / 4)
        return max(1, min(start, self.epochs))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown TrainConfig keys {unknown}; valid: {sorted(known)}")
        return cls(**data)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def linear_schedule(total_steps: int, warmup_ratio: float) -> Callable[[int], float]:
    """Multiplier of the learning rate: linear warmup to 1, then linear decay to 0."""
    warmup = max(1, int(math.ceil(total_steps * warmup_ratio))) if warmup_ratio > 0 else 0

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


def param_groups(
    head: torch.nn.Module, encoder: torch.nn.Module | None, config: TrainConfig
) -> list[dict[str, Any]]:
    """AdamW groups: head and encoder learning rates, no weight decay on biases and norms."""
    groups = []
    for module, lr in ((head, config.head_lr), (encoder, config.encoder_lr)):
        if module is None:
            continue
        decay, no_decay = [], []
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
        groups.append({"params": decay, "lr": lr, "weight_decay": config.weight_decay})
        groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def freeze_encoder_layers(model: torch.nn.Module, train_top_layers: int | None) -> None:
    """Freeze embeddings and all but the top ``train_top_layers`` transformer layers (None: train all)."""
    for p in model.parameters():
        p.requires_grad = True
    if train_top_layers is None:
        return
    layers = model.encoder.layer
    for p in model.embeddings.parameters():
        p.requires_grad = False
    for layer in layers[: max(0, len(layers) - train_top_layers)]:
        for p in layer.parameters():
            p.requires_grad = False


@contextmanager
def attention_dropout(model: torch.nn.Module, p: float | None) -> Iterator[int]:
    """Set the attention-probability dropout of every attention module to ``p`` inside the block, then restore.

    Attention modules are those whose class name contains ``Attention`` and that own a ``dropout`` layer (the
    Hugging Face BERT family). ``p=None`` changes nothing. Yields how many modules were changed.
    """
    changed: list[tuple[torch.nn.Dropout, float]] = []
    if p is not None:
        for module in model.modules():
            layer = getattr(module, "dropout", None)
            if "Attention" in type(module).__name__ and isinstance(layer, torch.nn.Dropout):
                changed.append((layer, layer.p))
                layer.p = float(p)
    try:
        yield len(changed)
    finally:
        for layer, old in changed:
            layer.p = old


# ---------------------------------------------------------------------- targets and batches
@dataclass(frozen=True)
class Targets:
    """What a document table trains on, one row per document: the main labels and each extra task's labels
    (class indices for single-label sets, multi-hot rows for multi-label ones), and the lexical branch's
    scores of the documents (n_docs, L) that the head adds to its logits, when it has one."""

    labels: torch.Tensor
    tasks: dict[str, torch.Tensor]
    lexical: torch.Tensor | None = None


def class_weights(y: torch.Tensor, num_labels: int, multi_label: bool) -> torch.Tensor:
    """``TrainConfig(class_weights="balanced")``: inverse class frequency (multi-label: negatives per positive)."""
    if multi_label:
        pos = y.sum(0).clamp(min=1.0)
        return (len(y) - pos) / pos
    counts = torch.bincount(y, minlength=num_labels).float().clamp(min=1.0)
    return len(y) / (num_labels * counts)


def doc_offsets(windows: Windows) -> np.ndarray:
    """Window row where each document starts (windows are contiguous per document, in document order)."""
    counts = windows.documents["n_windows"].to_numpy().astype(np.int64)
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets


def pad_windows(
    emb: torch.Tensor, offsets: np.ndarray, docs: Sequence[int], rows: list[np.ndarray] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, W, d) padded window embeddings and (B, W) mask for documents ``docs`` (or the given window rows):
    the input of a head, for training and prediction alike."""
    rows = rows if rows is not None else [np.arange(offsets[i], offsets[i + 1]) for i in docs]
    width = max(1, max(len(r) for r in rows))
    out = emb.new_zeros((len(rows), width, emb.shape[-1]))
    mask = torch.zeros((len(rows), width), dtype=torch.bool, device=emb.device)
    for b, r in enumerate(rows):
        if len(r):
            out[b, : len(r)] = emb[torch.as_tensor(r, device=emb.device)]
            mask[b, : len(r)] = True
    return out, mask


def sample_windows(rows: np.ndarray, size: int, keep_first: bool, rng: np.random.Generator) -> np.ndarray:
    """An ordered random subset of ``size`` of a document's window ``rows`` (its first window always in it when
    ``keep_first``): the windows one fine-tuning step trains on."""
    if keep_first:
        rest = rng.choice(rows[1:], size=size - 1, replace=False)
        return np.sort(np.concatenate([rows[:1], rest]))
    return np.sort(rng.choice(rows, size=size, replace=False))


def _pad_ids(windows: Windows, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) token ids and attention mask of window ``rows``, right-padded to the longest."""
    lengths = windows.lengths[rows] if len(rows) else np.zeros(1, np.int64)
    width = int(lengths.max()) if len(rows) else 1
    ids = np.zeros((len(rows), width), dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for b, r in enumerate(rows):
        seq = windows.ids(int(r))
        ids[b, : len(seq)] = seq
        mask[b, : len(seq)] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


# ---------------------------------------------------------------------- the loops behind LongDocClassifier.fit
def fit(
    clf: LongDocClassifier,
    train: Encoded | pl.DataFrame,
    y: Targets,
    val: Encoded | pl.DataFrame | None,
    y_val: Targets | None,
    args: TrainConfig,
    show: bool | None,
    *,
    lexical_scores: torch.Tensor | None = None,
) -> None:
    """Train ``clf`` in place on documents ``train`` (a document table, or ``Encoded`` for frozen training) with
    targets ``y``; ``val``/``y_val`` drive early stopping. ``lexical_scores`` (n_train, L): the lexical
    branch's cross-fitted scores of the training documents, added to the logits by a ``lexical_fusion`` head.
    Appends one record per epoch to ``clf.history``."""
    weights = class_weights(y.labels, len(clf.labels), clf.multi_label) if args.class_weights == "balanced" else None
    if lexical_scores is not None:
        y = dataclasses.replace(y, lexical=lexical_scores)
    # what a checkpoint must match to be resumed by this run (computed before fine-tuning changes the encoder)
    run = run_identity(clf, train, y, val, args) if args.checkpoint_dir else None
    if args.mode == "frozen":
        _fit_frozen(clf, train, y, val, y_val, args, weights, show, run)
    else:
        _fit_finetune(clf, train, y, val, y_val, args, weights, show, run)


def _data_fingerprint(data: Any, y: Targets | None) -> str | None:
    """A hash of documents (ids and texts) and their targets: another data set gives another hash."""
    if data is None:
        return None
    docs = data if isinstance(data, pl.DataFrame) else data.documents
    h = hashlib.blake2b(digest_size=16)
    for doc_id, text in zip(docs["doc_id"].to_list(), docs["text"].to_list(), strict=True):
        h.update(str(doc_id).encode("utf-8", "surrogatepass") + b"\0")
        h.update(("" if text is None else text).encode("utf-8", "surrogatepass") + b"\0")
    if y is not None:
        for name, target in [("", y.labels), *sorted(y.tasks.items())]:
            h.update(name.encode() + b"\0" + target.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def run_identity(clf: LongDocClassifier, train: Any, y: Targets, val: Any, args: TrainConfig) -> dict[str, Any]:
    """What a training run's checkpoint records and a resumed run must match: labels (and extra tasks), head,
    window geometry, mode, the encoder's weights when training starts, and fingerprints of the training and
    validation data."""
    return json.loads(json.dumps({  # as state.json gives it back (lists, not tuples)
        "labels": list(clf.labels),
        "tasks": {name: list(task.labels) for name, task in sorted(clf.tasks.items())},
        "head": clf.head.config.to_dict(),
        "window": clf.window.to_dict(),
        "mode": args.mode,
        "encoder": clf.encoder.fingerprint,
        "training data": _data_fingerprint(train, y),
        "validation data": _data_fingerprint(val, None),
        "lexical": None if clf.lexical is None else clf.lexical.config.to_dict(),
        "seed": args.seed,  # with the lexical branch, the seed also draws the cross-fitting folds
    }))


def _heads(clf: LongDocClassifier) -> torch.nn.ModuleList:
    """The main head and, multi-task, the extra tasks' heads: what trains besides the encoder (one module, so
    checkpoints keep one state dict for all of them)."""
    return torch.nn.ModuleList([clf.head] + ([clf.task_head] if clf.task_head is not None else []))


def _fit_input_scaling(clf: LongDocClassifier, window_embeddings: torch.Tensor) -> None:
    """Standardise every head's input with statistics of the training windows (before training)."""
    if len(window_embeddings) < 2:
        return
    clf.head.fit_input_scaling(window_embeddings)
    if clf.task_head is not None:
        for head in clf.task_head.heads.values():
            head.fit_input_scaling(window_embeddings)


def _loss(clf: LongDocClassifier, x: torch.Tensor, mask: torch.Tensor, y: Targets, idx: np.ndarray,
          weights: torch.Tensor | None) -> torch.Tensor:
    """Main-label loss plus the extra tasks' losses for documents ``idx`` of the batch."""
    device = x.device
    lexical = None if y.lexical is None else y.lexical[idx].to(device)
    loss = clf.head(x, mask, labels=y.labels[idx].to(device), class_weights=weights, lexical_scores=lexical).loss
    if clf.task_head is not None:
        loss = loss + clf.task_head(x, mask, labels={k: v[idx].to(device) for k, v in y.tasks.items()}).loss
    return loss


def _validation_score(clf: LongDocClassifier, analysis: Analysis, y: Targets) -> tuple[float, float]:
    """(macro-F1, -loss) on validation data, averaged over the main labels and every extra task: F1 decides,
    the loss breaks ties."""
    from sklearn.metrics import f1_score

    def score(head: DocumentHead, z: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
        z = torch.nan_to_num(z.float())
        loss = float(head.loss(z, target.to(z.device)))
        probs = predict_probs(z, head.config.multi_label).numpy()
        if head.config.multi_label:
            f1 = f1_score(target.numpy(), probs >= 0.5, average="macro", zero_division=0)
        else:
            f1 = f1_score(target.numpy(), probs.argmax(1), average="macro",
                          labels=range(head.config.num_labels), zero_division=0)
        return float(f1), -loss

    scores = [score(clf.head, analysis.logits, y.labels)]
    for name, z in analysis.task_logits.items():
        scores.append(score(clf.task_head.heads[name], z, y.tasks[name]))
    return float(np.mean([f for f, _ in scores])), float(np.sum([neg_loss for _, neg_loss in scores]))


def _fit_frozen(clf: LongDocClassifier, train: Encoded | pl.DataFrame, y: Targets,
                val: Encoded | pl.DataFrame | None, y_val: Targets | None, args: TrainConfig,
                weights: torch.Tensor | None, show: bool | None, run: dict[str, Any] | None = None) -> None:
    """Encode every window once without gradients, then train the heads on the cached embeddings."""
    logger.info("encoding the training documents once (frozen encoder)")
    train_enc = clf.encode(train, show_progress_bar=show)
    emb = torch.from_numpy(train_enc.embeddings).to(clf.encoder.device)
    offsets = doc_offsets(train_enc.windows)
    val_enc = clf.encode(val, show_progress_bar=show) if val is not None else None
    _fit_input_scaling(clf, emb)

    def step(idx: np.ndarray) -> torch.Tensor:
        x, mask = pad_windows(emb, offsets, idx)
        return _loss(clf, x, mask, y, idx, weights)

    def evaluate() -> tuple[float, float] | None:
        if val_enc is None:
            return None
        return _validation_score(clf, clf.analyze(val_enc, show_progress_bar=False), y_val)

    # The head is small: its matrix products gain nothing from threads, and torch's, numpy's and scikit-learn's
    # thread pools (three OpenMP/BLAS runtimes in one process) then spin against each other. One thread each
    # made this loop 20-40x faster on a 2-core CPU (0.8 s against 17-32 s for 20 epochs of 180 documents).
    with threadpool_limits(limits=1):
        _epoch_loop(clf, n_train=len(offsets) - 1, args=args, step_fn=step, evaluate_fn=evaluate,
                    encoder_trains=False, show=show, run=run)


def _fit_finetune(clf: LongDocClassifier, train_docs: pl.DataFrame, y: Targets, val_docs: pl.DataFrame | None,
                  y_val: Targets | None, args: TrainConfig, weights: torch.Tensor | None,
                  show: bool | None, run: dict[str, Any] | None = None) -> None:
    """End to end: each step encodes (a sample of) the windows of a batch of documents with gradients."""
    if args.retrieval_encoder == "finetuned":
        clf.retrieval_encoder = clf.encoder
    elif clf.retrieval_encoder is clf.encoder:  # keep the weights as they are now for the index
        clf.retrieval_encoder = clf.encoder.copy()
    encoder = clf.encoder
    model = encoder.model
    freeze_encoder_layers(model, args.train_top_layers)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    train_w = make_windows(train_docs, encoder.tokenizer, encoder.window)
    offsets = doc_offsets(train_w)
    rng = np.random.default_rng(args.seed + 1)
    device = encoder.device
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    # train in fp32 weights (bf16 autocast on CUDA); inference dtype is restored afterwards
    sample = np.sort(rng.choice(len(train_w), size=min(512, len(train_w)), replace=False))
    _fit_input_scaling(clf, torch.from_numpy(encoder.encode_windows(train_w.take(sample))).to(device))
    model.to(torch.float32)

    def step(idx: np.ndarray) -> torch.Tensor:
        rows = []
        for i in idx:
            r = np.arange(offsets[i], offsets[i + 1])
            if len(r) > args.max_train_windows:
                r = sample_windows(r, args.max_train_windows, args.keep_first_window, rng)
            rows.append(r)
        flat = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        ids, mask = _pad_ids(train_w, flat)
        with autocast:
            window_emb = torch.zeros((0, encoder.dim), device=device)
            if len(flat):
                window_emb = encoder.embed(ids.to(device), mask.to(device)).float()
            # rows of `window_emb` are in `flat` order: re-index per document
            local, pos = [], 0
            for r in rows:
                local.append(np.arange(pos, pos + len(r)))
                pos += len(r)
            x, m = pad_windows(window_emb, np.zeros(1, np.int64), idx, rows=local)
            return _loss(clf, x, m, y, idx, weights)

    def evaluate() -> tuple[float, float] | None:
        if val_docs is None:
            return None
        model.eval()
        analysis = clf.analyze(val_docs, show_progress_bar=False)
        model.train()
        return _validation_score(clf, analysis, y_val)

    try:
        with attention_dropout(model, args.attention_dropout):
            _epoch_loop(clf, n_train=train_docs.height, args=args, step_fn=step, evaluate_fn=evaluate,
                        encoder_trains=True, show=show, run=run)
    finally:
        if args.gradient_checkpointing:
            model.gradient_checkpointing_disable()
        for p in model.parameters():
            p.requires_grad = True
        model.to(encoder.dtype)


def _epoch_loop(
    clf: LongDocClassifier,
    *,
    n_train: int,
    args: TrainConfig,
    step_fn: Callable[[np.ndarray], torch.Tensor],
    evaluate_fn: Callable[[], tuple[float, float] | None],
    encoder_trains: bool,
    show: bool | None,
    run: dict[str, Any] | None = None,
) -> None:
    """Shared epoch logic: shuffling, accumulation, schedule, early stopping, checkpoints, resume.

    ``step_fn(idx)`` returns the loss of the documents ``idx``; ``evaluate_fn()`` the validation
    ``(macro-F1, -loss)`` or ``None`` without an eval set (then the training loss picks the best epoch).
    """
    heads = _heads(clf)
    encoder = clf.encoder.model
    optimizer = torch.optim.AdamW(param_groups(heads, encoder if encoder_trains else None, args), fused=False)
    steps_per_epoch = max(1, -(-n_train // (args.batch_size * args.grad_accum)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, linear_schedule(steps_per_epoch * args.epochs, args.warmup_ratio)
    )
    start_epoch, best, bad_epochs, step = 0, (-np.inf,), 0, 0
    best_head = {k: v.detach().clone() for k, v in heads.state_dict().items()}
    best_encoder = None
    history: list[dict[str, Any]] = []  # this run's epoch records, those a resumed checkpoint brings included
    ckpt_dir = Path(args.checkpoint_dir) if args.checkpoint_dir else None
    if ckpt_dir is not None:
        meta = load_checkpoint(ckpt_dir, head=heads, encoder=encoder if encoder_trains else None, optimizer=optimizer,
                               run=run)
        if meta is not None:
            start_epoch, bad_epochs, step = meta["epoch"] + 1, meta["bad_epochs"], meta["step"]
            best = tuple(meta["best_score"])
            best_head = meta["best_head"]
            best_encoder = meta["best_encoder"]
            history = list(meta.get("history") or [])
            if history and clf.history[-len(history):] != history:  # a new process: the epochs before the kill
                clf.history.extend(history)
            with warnings.catch_warnings():  # fast-forwarding the schedule, not skipping an optimizer step
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler")
                for _ in range(step):
                    scheduler.step()
            if bad_epochs >= args.patience:
                start_epoch = args.epochs
    rng = np.random.default_rng(args.seed)
    for _ in range(start_epoch):
        rng.permutation(n_train)  # keep the shuffles of a resumed run identical to an uninterrupted one
    for epoch in range(start_epoch, args.epochs):
        heads.train()
        if encoder_trains:
            encoder.train()
        order = rng.permutation(n_train)
        total, batches = 0.0, 0
        bar = tqdm(total=n_train, desc=f"epoch {epoch + 1}/{args.epochs}", unit="doc",
                   disable=not (logger.isEnabledFor(logging.INFO) if show is None else show))
        optimizer.zero_grad(set_to_none=True)
        for b, start in enumerate(range(0, n_train, args.batch_size)):
            idx = order[start : start + args.batch_size]
            loss = step_fn(idx)
            (loss / args.grad_accum).backward()
            total += float(loss.detach())
            batches += 1
            if (b + 1) % args.grad_accum == 0 or start + args.batch_size >= n_train:
                torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
            bar.update(len(idx))
        bar.close()
        heads.eval()
        encoder.eval()
        record = {"epoch": epoch + 1, "train_loss": total / max(1, batches)}
        score = evaluate_fn()
        if score is not None:
            record["eval_macro_f1"], record["eval_loss"] = score[0], -score[1]
        clf.history.append(record)
        history.append(record)
        logger.info("epoch %d: %s", epoch + 1, record)
        current = score if score is not None else (-record["train_loss"],)
        if score is not None and args.select_on == "loss":
            current = (score[1], score[0])
        if epoch + 1 <= args.first_kept_epoch or current > best:
            best, bad_epochs = current, 0
            best_head = {k: v.detach().clone() for k, v in heads.state_dict().items()}
            if encoder_trains:  # the head and the encoder of the best epoch always travel together
                best_encoder = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
        else:
            bad_epochs += 1
        if ckpt_dir is not None:
            save_checkpoint(ckpt_dir, epoch=epoch, best_score=best, bad_epochs=bad_epochs, head=heads,
                            best_head=best_head, encoder=encoder if encoder_trains else None,
                            best_encoder=best_encoder, optimizer=optimizer, step=step, run=run, history=history)
        if score is not None and bad_epochs >= args.patience:
            f1, neg_loss = (best[1], best[0]) if args.select_on == "loss" else best
            logger.info("early stop after epoch %d (best eval macro-F1 %.4f, loss %.4f)", epoch + 1, f1, -neg_loss)
            break
    heads.load_state_dict(best_head)
    if best_encoder is not None:
        encoder.load_state_dict(best_encoder)
    heads.eval()
    encoder.eval()
    if encoder_trains:
        clf.encoder.invalidate_fingerprint()


# ---------------------------------------------------------------------- checkpoints (no pickle)
def _check_same_run(path: Path, saved: Any, run: dict[str, Any]) -> None:
    where = f"checkpoint_dir={str(path.parent)!r}"
    advice = f"pass another checkpoint_dir (--checkpoint-dir), or delete {path} to start this run afresh"
    if not isinstance(saved, dict):
        raise ConfigError(f"{where} holds a checkpoint that does not record which run wrote it (an older "
                          f"longdoc): it cannot be checked against this run; {advice}")
    differs = [key for key in run if saved.get(key) != run[key]]
    if differs:
        details = "; ".join(f"{key}: checkpoint {_short(saved.get(key))}, this run {_short(run[key])}"
                            for key in differs)
        raise ConfigError(f"{where} holds a checkpoint of another run ({', '.join(differs)} differ: {details}); "
                          f"{advice}")


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 120 else text[:117] + "..."


def save_checkpoint(
    directory: Path,
    *,
    epoch: int,
    best_score: tuple[float, ...],
    bad_epochs: int,
    head: torch.nn.Module,
    best_head: dict[str, torch.Tensor],
    encoder: torch.nn.Module | None,
    optimizer: torch.optim.Optimizer,
    step: int,
    best_encoder: dict[str, torch.Tensor] | None = None,
    run: dict[str, Any] | None = None,
    history: list[dict[str, Any]] | None = None,
) -> None:
    """Write a resumable checkpoint atomically (``indexer.storage.durable_directory``: a temporary directory
    swapped into place). ``run`` (``run_identity``) is recorded; ``load_checkpoint`` compares it."""
    directory.mkdir(parents=True, exist_ok=True)
    with durable_directory(directory / "checkpoint") as tmp:  # the mode the umask gives
        _write_checkpoint(tmp, epoch=epoch, best_score=best_score, bad_epochs=bad_epochs, head=head,
                          best_head=best_head, encoder=encoder, best_encoder=best_encoder, optimizer=optimizer,
                          step=step, run=run, history=history)


def _tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def _write_checkpoint(tmp: Path, *, epoch, best_score, bad_epochs, head, best_head, encoder, best_encoder,
                      optimizer, step, run=None, history=None) -> None:
    save_file(_tensors(head.state_dict()), tmp / "head.safetensors")
    save_file(_tensors(best_head), tmp / "best_head.safetensors")
    if encoder is not None:
        save_file(_tensors(encoder.state_dict()), tmp / "encoder.safetensors")
    if best_encoder is not None:
        save_file(_tensors(best_encoder), tmp / "best_encoder.safetensors")
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, slots in state["state"].items():
        for key, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    save_file(tensors or {"_empty": torch.zeros(1)}, tmp / "optimizer.safetensors")
    meta = {
        "epoch": epoch, "best_score": list(best_score), "bad_epochs": bad_epochs, "step": step, "run": run,
        "history": history or [],
        "optimizer_scalars": scalars,
        "param_groups": [{k: v for k, v in g.items() if k != "params"} for g in state["param_groups"]],
    }
    (tmp / "state.json").write_text(json.dumps(meta))


def load_checkpoint(
    directory: Path,
    *,
    head: torch.nn.Module,
    encoder: torch.nn.Module | None,
    optimizer: torch.optim.Optimizer,
    run: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Restore a checkpoint written by ``save_checkpoint``; ``None`` when there is none.

    With ``run`` (``run_identity`` of the run resuming), a checkpoint written by another run (other labels,
    head, window, mode, encoder, training or validation data), or one that does not record its run, is refused
    with a ``ConfigError`` naming what differs, before anything is loaded."""
    path = directory / "checkpoint"
    recover_stale(path)
    if not (path / "state.json").exists():
        return None
    try:
        meta = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"checkpoint_dir={str(directory)!r}: {path / 'state.json'} is unreadable ({exc}); delete "
                          f"{path} to start afresh") from exc
    if not isinstance(meta, dict):
        raise ConfigError(f"checkpoint_dir={str(directory)!r}: {path / 'state.json'} must hold a JSON object, got "
                          f"{type(meta).__name__}; delete {path} to start afresh")
    if run is not None:
        _check_same_run(path, meta.get("run"), run)
    head.load_state_dict(load_file(path / "head.safetensors"))
    if encoder is not None and (path / "encoder.safetensors").exists():
        encoder.load_state_dict(load_file(path / "encoder.safetensors"))
    tensors = load_file(path / "optimizer.safetensors")
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key == "_empty":
            continue
        idx, slot = key.split(".", 1)
        state.setdefault(int(idx), {})[slot] = value
    for key, value in meta["optimizer_scalars"].items():
        idx, slot = key.split(".", 1)
        state.setdefault(int(idx), {})[slot] = value
    current = optimizer.state_dict()
    groups = [{**saved, "params": g["params"]} for saved, g in zip(meta["param_groups"], current["param_groups"], strict=True)]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    meta["best_head"] = load_file(path / "best_head.safetensors")
    best_encoder = path / "best_encoder.safetensors"
    meta["best_encoder"] = load_file(best_encoder) if best_encoder.exists() else None
    logger.info("resumed from %s after epoch %d", path, meta["epoch"])
    return meta
