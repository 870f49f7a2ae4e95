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
early stopping on validation macro-F1, optional class weights, seeds, and a checkpoint per epoch that a killed
run resumes from (weights, optimizer moments and the epoch counter, all as safetensors + JSON).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from indexer.storage import recover_stale, replace_directory
from longdoc.errors import ConfigError

logger = logging.getLogger(__name__)

MODES = ("frozen", "finetune")
RETRIEVAL_ENCODERS = ("pretrained", "finetuned")


@dataclass(frozen=True)
class TrainConfig:
    """How ``LongDocClassifier.fit`` trains. Mirrored by the ``longdoc train`` flags.

    Args:
        mode: ``"frozen"`` (cache window embeddings, train the head) or ``"finetune"`` (end to end).
        epochs: maximum passes over the training documents.
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
        patience: stop after this many epochs without a better validation macro-F1 (needs an eval set).
        calibrate: fit a temperature (and multi-label thresholds) on the eval set after training.
        seed: seeds Python, NumPy and torch for repeatable runs.
        checkpoint_dir: write a checkpoint after every epoch here and resume from it when it exists.
    """

    mode: str = "frozen"
    epochs: int = 20
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
    calibrate: bool = True
    seed: int = 0
    checkpoint_dir: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {self.mode!r}")
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
        if self.class_weights not in (None, "balanced"):
            raise ConfigError(f"class_weights must be None or 'balanced', got {self.class_weights!r}")

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


# ---------------------------------------------------------------------- checkpoints (no pickle)
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
) -> None:
    """Write a resumable checkpoint atomically (a temporary directory swapped into place)."""
    directory.mkdir(parents=True, exist_ok=True)
    recover_stale(directory / "checkpoint")
    tmp = Path(tempfile.mkdtemp(prefix=".checkpoint.tmp-", dir=directory))
    try:
        _write_checkpoint(tmp, epoch=epoch, best_score=best_score, bad_epochs=bad_epochs, head=head,
                          best_head=best_head, encoder=encoder, best_encoder=best_encoder, optimizer=optimizer,
                          step=step)
        replace_directory(tmp, directory / "checkpoint")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def _write_checkpoint(tmp: Path, *, epoch, best_score, bad_epochs, head, best_head, encoder, best_encoder,
                      optimizer, step) -> None:
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
        "epoch": epoch, "best_score": list(best_score), "bad_epochs": bad_epochs, "step": step,
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
) -> dict[str, Any] | None:
    """Restore a checkpoint written by ``save_checkpoint``; ``None`` when there is none."""
    path = directory / "checkpoint"
    recover_stale(path)
    if not (path / "state.json").exists():
        return None
    meta = json.loads((path / "state.json").read_text())
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
