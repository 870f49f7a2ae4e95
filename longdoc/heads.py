"""Hierarchical document heads: pool a document's window embeddings into document logits.

A long document is cut into windows; the encoder turns each window into one vector. A head takes the padded
batch of those vectors, ``windows`` of shape (B, W, d) with a boolean ``mask`` (B, W) that is True on real
windows, and returns document logits (B, L) plus a per-window attribution (B, W) that says how much each window
drove the result (rows sum to 1 over real windows, 0 on padding).

Poolings (``HeadConfig.pooling``):

- ``"mean"``: masked mean of the windows. Attribution: uniform over real windows.
- ``"max"``: masked element-wise max. Attribution: the fraction of the d dimensions in which a window holds the
  maximum.
- ``"attention"``: a learned scorer ``v . tanh(W h_i)`` gives one score per window, a masked softmax turns the
  scores into weights, the pooled vector is ``sum_i w_i h_i``. The weights are the attribution.
- ``"lead_attention"``: the first ("lead") window's vector concatenated with the attention pooling above, so
  the classifier sees where most documents say what they are (title, lead paragraph, NAME/SYNOPSIS) on its
  own, plus everything else weighted by attention; a superset of classifying the first window alone.
  Attribution: the two halves share it by how much each moves the logits (the norm of its part of the
  classifier's output); the first window gets the lead half's share, the attention half's share is spread by
  the attention weights.
- ``"transformer"`` (ToBERT-style): learned window-position embeddings are added, a small pre-norm
  ``nn.TransformerEncoder`` lets windows see each other, then attention pooling as above.

A document with no window at all (its mask row all False) pools to the zero vector, so its logits are the
classifier bias and its attribution row is all zeros: never NaN.

Padding windows never change the output: they are zeroed before pooling and masked out of every softmax.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longdoc.errors import ConfigError

logger = logging.getLogger(__name__)

# How a document's window vectors become the document vector (not the encoder's TOKEN_POOLINGS).
POOLINGS = ("mean", "max", "attention", "lead_attention", "transformer")


@dataclass(frozen=True)
class HeadConfig:
    """Configuration of one :class:`DocumentHead`; saved as JSON through :meth:`to_dict` / :meth:`from_dict`.

    Args:
        pooling: how windows are combined: ``"mean"``, ``"max"``, ``"attention"``, ``"lead_attention"`` or
            ``"transformer"``.
        hidden_size: window-embedding dimension d (the encoder's hidden size).
        num_labels: number of labels L (at least 2 for single-label, at least 1 for multi-label).
        multi_label: False: one label per document (softmax, cross-entropy); True: any subset (sigmoid, BCE).
        dropout: dropout on the pooled vector (and inside the transformer head), in [0, 1).
        transformer_layers: encoder layers of the ``"transformer"`` head.
        transformer_heads: attention heads of the ``"transformer"`` head; must divide ``hidden_size``.
        max_windows: learned window positions of the ``"transformer"`` head; windows past it share the last.
        lexical_fusion: the head takes a second model's label scores (the classifier's lexical branch) and adds
            them, times a learned weight ``lexical_weight``, to its logits.
    """

    pooling: str = "lead_attention"
    hidden_size: int = 384
    num_labels: int = 2
    multi_label: bool = False
    dropout: float = 0.1
    transformer_layers: int = 1
    transformer_heads: int = 4
    max_windows: int = 512
    lexical_fusion: bool = False

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling={self.pooling!r} is not supported; valid: {list(POOLINGS)}")
        for name in ("hidden_size", "transformer_layers", "transformer_heads", "max_windows"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}={value!r} is not valid; expected an integer >= 1")
        if not isinstance(self.multi_label, bool):
            raise ConfigError(f"multi_label={self.multi_label!r} is not valid; expected True or False")
        min_labels = 1 if self.multi_label else 2
        if (
            isinstance(self.num_labels, bool)
            or not isinstance(self.num_labels, int)
            or self.num_labels < min_labels
        ):
            kind = "multi-label" if self.multi_label else "single-label"
            raise ConfigError(
                f"num_labels={self.num_labels!r} is not valid; a {kind} head needs an integer >= {min_labels}"
            )
        if (
            isinstance(self.dropout, bool)
            or not isinstance(self.dropout, (int, float))
            or not 0.0 <= self.dropout < 1.0
        ):
            raise ConfigError(f"dropout={self.dropout!r} is not valid; expected a float in [0, 1)")
        if self.pooling == "transformer" and self.hidden_size % self.transformer_heads != 0:
            raise ConfigError(
                f"transformer_heads={self.transformer_heads} does not divide hidden_size={self.hidden_size}; "
                f"valid: a divisor of {self.hidden_size}"
            )

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> HeadConfig:
        """Build a config from a dict (e.g. loaded JSON); unknown keys are an error, missing keys take defaults."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"HeadConfig.from_dict expects a mapping, got {type(d).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ConfigError(f"unknown HeadConfig keys {unknown}; valid keys: {known}")
        return cls(**dict(d))


@dataclass
class HeadOutput:
    """What a head returns.

    Attributes:
        logits: (B, L) document logits.
        window_weights: (B, W) per-window attribution; rows sum to 1 over real windows, 0 on padding (and
            all zeros for a document without windows).
        loss: scalar training loss, only when labels were given.
    """

    logits: Tensor
    window_weights: Tensor
    loss: Tensor | None = None


@dataclass
class MultiTaskOutput:
    """What :class:`MultiTaskHead` returns: one :class:`HeadOutput` per task and the summed loss.

    ``out["topic"]`` is a shortcut for ``out.tasks["topic"]``.
    """

    tasks: dict[str, HeadOutput]
    loss: Tensor | None = None

    def __getitem__(self, task: str) -> HeadOutput:
        return self.tasks[task]


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """Softmax over the last dim restricted to ``mask``; rows with no True entry come out all zeros (no NaN)."""
    # Fill with the dtype's minimum rather than -inf: an all-masked row then stays finite.
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1) * mask
    return weights / weights.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(scores.dtype).tiny)


class AttentionPooling(nn.Module):
    """Additive attention pooling: ``w = masked_softmax(v . tanh(W h_i))``, ``pooled = sum_i w_i h_i``."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.score = nn.Linear(hidden_size, 1, bias=False)

    def forward(self, h: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        # h: (B, W, d), mask: (B, W) bool
        scores = self.score(torch.tanh(self.proj(h))).squeeze(-1)  # (B, W)
        weights = masked_softmax(scores, mask)  # (B, W)
        pooled = torch.einsum("bw,bwd->bd", weights, h)  # (B, d)
        return pooled, weights


class DocumentHead(nn.Module):
    """Pool window embeddings into document logits; see the module docstring for the poolings.

    Example::

        head = DocumentHead(HeadConfig(pooling="attention", hidden_size=384, num_labels=5))
        out = head(windows, mask, labels=labels)     # windows (B, W, 384), mask (B, W) bool, labels (B,)
        out.loss.backward(); out.logits  # (B, 5); out.window_weights  # (B, W)
    """

    def __init__(self, config: HeadConfig):
        super().__init__()
        if not isinstance(config, HeadConfig):
            raise ConfigError(f"config must be a HeadConfig, got {type(config).__name__}")
        self.config = config
        d = config.hidden_size
        if config.pooling == "transformer":
            self.position = nn.Embedding(config.max_windows, d)
            nn.init.normal_(self.position.weight, std=0.02)
            layer = nn.TransformerEncoderLayer(
                d_model=d,
                nhead=config.transformer_heads,
                dim_feedforward=4 * d,
                dropout=config.dropout,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            # enable_nested_tensor does nothing with norm_first and only warns; padding is handled by the mask.
            self.encoder = nn.TransformerEncoder(
                layer, config.transformer_layers, norm=nn.LayerNorm(d), enable_nested_tensor=False
            )
        if config.pooling in ("attention", "lead_attention", "transformer"):
            self.attention = AttentionPooling(d)
        self.dropout = nn.Dropout(config.dropout)
        pooled_size = 2 * d if config.pooling == "lead_attention" else d
        self.classifier = nn.Linear(pooled_size, config.num_labels)
        if config.lexical_fusion:  # logits += lexical_weight * lexical scores (see forward)
            self.lexical_weight = nn.Parameter(torch.ones(()))
        # Per-dimension standardisation of the input window embeddings (identity until fitted). Sentence
        # encoders put every window in a narrow cone; centring and scaling it makes the head train fast.
        self.register_buffer("input_shift", torch.zeros(d))
        self.register_buffer("input_scale", torch.ones(d))

    @torch.no_grad()
    def fit_input_scaling(self, embeddings: Tensor) -> None:
        """Set the input standardisation from (n, d) training window embeddings (mean 0, unit variance)."""
        if embeddings.dim() != 2 or embeddings.shape[1] != self.config.hidden_size or len(embeddings) < 2:
            raise ValueError(
                f"embeddings must have shape (n >= 2, {self.config.hidden_size}), got {tuple(embeddings.shape)}"
            )
        x = embeddings.detach().float()
        self.input_shift.copy_(x.mean(0))
        self.input_scale.copy_(1.0 / x.std(0).clamp_min(1e-6))

    def pool(self, windows: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Pool (B, W, d) windows under a (B, W) bool mask into ((B, d) pooled, (B, W) window weights); the
        pooled vector is (B, 2d) for ``"lead_attention"``."""
        pooling = self.config.pooling
        m = mask.unsqueeze(-1)  # (B, W, 1)
        # Standardise, then zero the padding so garbage there (even NaN) can never leak into a sum.
        h = ((windows - self.input_shift) * self.input_scale).masked_fill(~m, 0.0)  # (B, W, d)
        count = mask.sum(dim=1, keepdim=True)  # (B, 1)
        has_any = count > 0  # (B, 1)

        if pooling == "mean":
            weights = mask.to(h.dtype) / count.clamp_min(1).to(h.dtype)  # (B, W)
            pooled = torch.einsum("bw,bwd->bd", weights, h)  # (B, d)
        elif pooling == "max":
            filled = h.masked_fill(~m, float("-inf"))  # (B, W, d)
            values, argmax = filled.max(dim=1)  # (B, d), (B, d)
            pooled = torch.where(has_any, values, torch.zeros_like(values))  # (B, d)
            # Attribution: share of the d dimensions whose max comes from window i.
            hits = F.one_hot(argmax, num_classes=h.shape[1]).to(h.dtype)  # (B, d, W)
            weights = hits.mean(dim=1) * has_any.to(h.dtype)  # (B, W)
        elif pooling == "attention":
            pooled, weights = self.attention(h, mask)
        elif pooling == "lead_attention":
            attended, attention = self.attention(h, mask)  # (B, d), (B, W)
            lead = torch.zeros_like(attention)
            lead[:, :1] = has_any.to(h.dtype)  # one-hot on the first window (none for an empty document or batch)
            first = torch.einsum("bw,bwd->bd", lead, h)  # (B, d): the first window, zero without windows
            pooled = torch.cat([first, attended], dim=-1)  # (B, 2d)
            share = self._lead_share(first, attended)  # (B, 1)
            weights = share * lead + (1 - share) * attention  # (B, W)
        else:  # transformer
            W = h.shape[1]
            positions = torch.arange(W, device=h.device).clamp(max=self.config.max_windows - 1)  # (W,)
            x = h + self.position(positions).unsqueeze(0)  # (B, W, d)
            # A row with every key masked would give NaN inside attention; let such a row attend to its
            # (zeroed) padding instead. Its pooling below still uses the real, empty mask -> zero vector.
            key_padding_mask = ~mask & has_any  # (B, W), True = ignore
            x = self.encoder(x, src_key_padding_mask=key_padding_mask)  # (B, W, d)
            x = x.masked_fill(~m, 0.0)
            pooled, weights = self.attention(x, mask)
        return pooled, weights

    @torch.no_grad()
    def _lead_share(self, first: Tensor, attended: Tensor) -> Tensor:
        """(B, 1): the lead window's share of the logits' magnitude, ``|W_lead f| / (|W_lead f| + |W_att a|)``."""
        d = self.config.hidden_size
        weight = self.classifier.weight  # (L, 2d)
        lead = (first @ weight[:, :d].T).norm(dim=-1, keepdim=True)  # (B, 1)
        rest = (attended @ weight[:, d:].T).norm(dim=-1, keepdim=True)  # (B, 1)
        return lead / (lead + rest).clamp_min(torch.finfo(lead.dtype).tiny)

    def forward(
        self,
        windows: Tensor,
        mask: Tensor,
        labels: Tensor | None = None,
        class_weights: Tensor | None = None,
        lexical_scores: Tensor | None = None,
    ) -> HeadOutput:
        """Document logits and window attribution; the loss too when ``labels`` are given.

        Args:
            windows: (B, W, d) window embeddings, padded.
            mask: (B, W) bool, True on real windows.
            labels: single-label: (B,) class indices (long); multi-label: (B, L) 0/1 targets (float).
            class_weights: (L,) optional. Single-label: per-class weights of the cross-entropy. Multi-label:
                ``pos_weight`` of the BCE (weight of the positive term per label, e.g. n_neg / n_pos).
            lexical_scores: (B, L) label scores of the lexical branch (``lexical_fusion`` heads only; a zero row
                leaves a document to the windows alone); added to the logits times ``lexical_weight``.
        """
        if windows.dim() != 3 or windows.shape[-1] != self.config.hidden_size:
            raise ValueError(
                f"windows must have shape (B, W, {self.config.hidden_size}), got {tuple(windows.shape)}"
            )
        if mask.shape != windows.shape[:2]:
            raise ValueError(f"mask must have shape {tuple(windows.shape[:2])}, got {tuple(mask.shape)}")
        mask = mask.to(torch.bool)

        pooled, weights = self.pool(windows, mask)  # (B, d) or (B, 2d), (B, W)
        logits = self.classifier(self.dropout(pooled))  # (B, L)
        if lexical_scores is not None:
            if not self.config.lexical_fusion:
                raise ValueError("lexical_scores were given to a head built without lexical_fusion")
            if lexical_scores.shape != logits.shape:
                raise ValueError(f"lexical_scores must have shape {tuple(logits.shape)}, "
                                 f"got {tuple(lexical_scores.shape)}")
            logits = logits + self.lexical_weight * lexical_scores.to(logits.dtype)  # (B, L)

        loss = None
        if labels is not None:
            loss = self.loss(logits, labels, class_weights)
        return HeadOutput(logits=logits, window_weights=weights, loss=loss)

    def loss(self, logits: Tensor, labels: Tensor, class_weights: Tensor | None = None) -> Tensor:
        """Cross-entropy (single-label) or BCE-with-logits (multi-label) of (B, L) logits against labels."""
        B, L = logits.shape
        if class_weights is not None:
            class_weights = class_weights.to(device=logits.device, dtype=logits.dtype)
            if class_weights.shape != (L,):
                raise ValueError(f"class_weights must have shape ({L},), got {tuple(class_weights.shape)}")
        if self.config.multi_label:
            if labels.shape != (B, L):
                raise ValueError(f"multi-label labels must have shape ({B}, {L}), got {tuple(labels.shape)}")
            return F.binary_cross_entropy_with_logits(
                logits, labels.to(logits.dtype), pos_weight=class_weights
            )
        if labels.shape != (B,):
            raise ValueError(
                f"single-label labels must have shape ({B},) of class indices, got {tuple(labels.shape)}"
            )
        return F.cross_entropy(logits, labels.long(), weight=class_weights)


class MultiTaskHead(nn.Module):
    """Several :class:`DocumentHead` s over the same window embeddings, one per task (label set).

    One encoder pass feeds every task; the training loss is the sum of the task losses for the tasks whose
    labels are given (so a batch may carry labels for only some tasks).

    Example::

        head = MultiTaskHead({"topic": HeadConfig(num_labels=5), "tags": HeadConfig(num_labels=12, multi_label=True)})
        out = head(windows, mask, labels={"topic": topic_ids, "tags": tag_matrix})
        out.loss.backward(); out["topic"].logits  # (B, 5)
    """

    def __init__(self, configs: Mapping[str, HeadConfig]):
        super().__init__()
        if not isinstance(configs, Mapping) or not configs:
            raise ConfigError("configs must be a non-empty mapping of task name -> HeadConfig")
        sizes = {name: cfg.hidden_size for name, cfg in configs.items()}
        if len(set(sizes.values())) != 1:
            raise ConfigError(f"every task head must share the encoder's hidden_size, got {sizes}")
        for name in configs:
            if not isinstance(name, str) or not name or "." in name:
                raise ConfigError(f"task name {name!r} is not valid; expected a non-empty string without '.'")
        self.heads = nn.ModuleDict({name: DocumentHead(cfg) for name, cfg in configs.items()})

    @property
    def configs(self) -> dict[str, HeadConfig]:
        """Task name -> HeadConfig."""
        return {name: head.config for name, head in self.heads.items()}

    def forward(
        self,
        windows: Tensor,
        mask: Tensor,
        labels: Mapping[str, Tensor] | None = None,
        class_weights: Mapping[str, Tensor] | None = None,
    ) -> MultiTaskOutput:
        """Run every task head; ``labels`` / ``class_weights`` are dicts keyed by task name (a subset is fine)."""
        labels = dict(labels or {})
        class_weights = dict(class_weights or {})
        unknown = sorted((set(labels) | set(class_weights)) - set(self.heads))
        if unknown:
            raise ValueError(f"unknown tasks {unknown}; this head has tasks {list(self.heads)}")
        tasks: dict[str, HeadOutput] = {}
        losses = []
        for name, head in self.heads.items():
            out = head(windows, mask, labels=labels.get(name), class_weights=class_weights.get(name))
            tasks[name] = out
            if out.loss is not None:
                losses.append(out.loss)
        loss = torch.stack(losses).sum() if losses else None
        return MultiTaskOutput(tasks=tasks, loss=loss)


def predict_probs(logits: Tensor, multi_label: bool, temperature: float = 1.0) -> Tensor:
    """Probabilities from (B, L) logits: softmax (single-label) or sigmoid (multi-label) of ``logits / T``."""
    if not temperature > 0:
        raise ConfigError(f"temperature={temperature!r} is not valid; expected a float > 0")
    scaled = logits / temperature
    return torch.sigmoid(scaled) if multi_label else torch.softmax(scaled, dim=-1)
