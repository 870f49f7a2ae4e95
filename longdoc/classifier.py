"""``LongDocClassifier``: the user's facade over windows, encoder and a hierarchical head.

    clf = LongDocClassifier.from_encoder(labels=["1", "2", "3"], pooling="attention")
    clf.fit(train_docs, eval_dataset=val_docs, args=TrainConfig(mode="frozen"))
    clf.predict("one long document")            # -> "2"
    clf.predict_proba(list_of_docs)             # -> (n_docs, n_labels)
    clf.explain("one long document")            # -> windows ranked by how much they drove the label
    clf.save("model/");  LongDocClassifier.load("model/")
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, SupportsIndex, overload

import numpy as np
import polars as pl
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from indexer.storage import durable_directory
from longdoc import calibration, training
from longdoc.data import document_table, label_list, resolve_documents
from longdoc.encoder import WindowEncoder
from longdoc.errors import ConfigError, DataError, ModelLoadError
from longdoc.heads import DocumentHead, HeadConfig, MultiTaskHead, predict_probs
from longdoc.lexical import LexicalConfig, LexicalModel, TermExplanation
from longdoc.metrics import check_png_path, classification_report, save_confusion_matrix_png
from longdoc.model_card import (
    CardFacts,
    base_encoder_facts,
    evaluation_facts,
    library_versions,
    render_model_card,
    training_facts,
)
from longdoc.model_dir import (
    CONFIG,
    FORMAT_VERSION,
    MODEL_CARD,
    check_save_target,
    read_model_config,
    write_model_config,
)
from longdoc.splits import stratified_holdout
from longdoc.training import Targets, TrainConfig, doc_offsets, pad_windows, seed_everything
from longdoc.windows import WindowConfig, Windows

logger = logging.getLogger(__name__)

NO_WINDOWS = "document has no tokens: no prediction"
MIN_DOCS_TO_HOLD_OUT = 40  # below this, a validation split would starve training: none is carved
NO_LEXICAL_TERMS = "no word of the lexical vocabulary: labelled by the windows alone"


@dataclass(frozen=True)
class WindowExplanation:
    """One window of a document and how much it drove the document's label (weights sum to 1)."""

    window_index: int
    weight: float
    char_start: int
    char_end: int
    text: str


@dataclass(frozen=True)
class Task:
    """An extra label set trained beside the main labels on the same encoder pass (multi-task).

    Args:
        labels: the task's label names.
        column: the document-table column holding each document's label(s) for this task (str or list).
        multi_label: documents may carry any subset of the task's labels.
    """

    labels: tuple[str, ...]
    column: str
    multi_label: bool = False


@dataclass
class Analysis:
    """Everything one encoder pass over documents gives: reusable for labelling and indexing at once.

    Attributes:
        documents: the document table that was analysed.
        windows: the windows (table, token ids, per-document counts).
        embeddings: (n_windows, d) float32 window embeddings, rows aligned with ``windows.table``.
        probs: (n_docs, n_labels) calibrated probabilities; NaN rows for documents without windows.
        window_weights: (n_windows,) each window's attribution within its document (sums to 1 per document).
        logits: (n_docs, n_labels) raw head logits (before temperature).
        task_probs: probabilities of each extra task (multi-task), same layout as ``probs``.
        task_logits: raw logits of each extra task (before temperature), same layout as ``logits``.
        lexical_scores: (n_docs, n_labels) the lexical branch's label scores that went into ``logits`` (zero
            rows where it found no term), or None for a model without a lexical branch.
        notes: per document, why its label is less informed than usual (``NO_LEXICAL_TERMS``), else None.
        window: the window geometry that cut ``windows`` (None: encodings cut elsewhere, not checked).
    """

    documents: pl.DataFrame
    windows: Windows
    embeddings: np.ndarray
    probs: np.ndarray
    window_weights: np.ndarray
    logits: torch.Tensor
    task_probs: dict[str, np.ndarray] = field(default_factory=dict)
    task_logits: dict[str, torch.Tensor] = field(default_factory=dict)
    lexical_scores: np.ndarray | None = None
    notes: list[str | None] = field(default_factory=list)
    window: WindowConfig | None = None


class Explanation(list):
    """What :meth:`LongDocClassifier.explain` returns: a list of :class:`WindowExplanation` (the windows, most
    influential first) with ``.terms``, the words of the lexical branch that pushed towards the predicted label
    (:class:`longdoc.lexical.TermExplanation`, with their character spans; empty without a lexical branch)."""

    terms: list[TermExplanation]

    def __init__(self, windows: Sequence[WindowExplanation], terms: Sequence[TermExplanation] = ()) -> None:
        super().__init__(windows)
        self.terms = list(terms)

    @overload
    def __getitem__(self, index: SupportsIndex) -> WindowExplanation: ...

    @overload
    def __getitem__(self, index: slice) -> Explanation: ...

    def __getitem__(self, index: SupportsIndex | slice) -> WindowExplanation | Explanation:
        """One window, or a slice (``explanation[:3]``) that is an ``Explanation`` with the same ``.terms``."""
        if isinstance(index, slice):
            return Explanation(super().__getitem__(index), self.terms)
        return super().__getitem__(index)

    def copy(self) -> Explanation:
        return Explanation(self, self.terms)


@dataclass
class Encoded:
    """Documents cut into windows and encoded once: pass it to ``fit``/``analyze``/``evaluate`` instead of the
    documents to reuse the embeddings (valid while the encoder's weights are unchanged)."""

    documents: pl.DataFrame
    windows: Windows
    embeddings: np.ndarray
    fingerprint: str
    window: WindowConfig | None = None  # the geometry that cut ``windows`` (None: cut elsewhere, not checked)

    def select(self, doc_indices: Sequence[int] | np.ndarray) -> Encoded:
        """The documents at ``doc_indices`` (in that order) with their windows and embeddings."""
        idx = np.asarray(doc_indices, dtype=np.int64)
        offsets = doc_offsets(self.windows)
        rows = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in idx]) if len(idx) else np.zeros(0, np.int64)
        windows = self.windows.take(rows)
        windows.documents = self.windows.documents[idx.tolist()]
        return Encoded(self.documents[idx.tolist()], windows, self.embeddings[rows], self.fingerprint, self.window)


class LongDocClassifier:
    """Hierarchical long-document classifier: BERT over sliding windows, pooled by a learned head.

    Build one with :meth:`from_encoder` or :meth:`load`.

    ``encoder`` makes the window embeddings the heads classify. ``retrieval_encoder`` makes the vectors of a
    passage index (``longdoc.indexing.index_documents``) and encodes its queries: the same object as ``encoder``
    until fine-tuning changes the encoder; then, with ``TrainConfig(retrieval_encoder="pretrained")`` (the
    default), a copy of the encoder as it was before fine-tuning, saved with the model in ``retrieval_encoder/``,
    because classification fine-tuning measurably hurts retrieval (benchmarks/RESULTS.md).

    The model card's facts (``longdoc.model_card``), saved in ``config.json`` and rendered into ``README.md`` by
    :meth:`save`: ``base_encoder`` (what :meth:`from_encoder` started from), ``training_facts`` (what the last
    :meth:`fit` did) and ``evaluation_facts`` (the figures of the last :meth:`evaluate`; :meth:`fit` and
    :meth:`calibrate` drop them, as they change the predictions measured). None when unknown.
    """

    def __init__(
        self,
        encoder: WindowEncoder,
        head: DocumentHead,
        labels: Sequence[str],
        *,
        temperature: float = 1.0,
        thresholds: np.ndarray | None = None,
        tasks: dict[str, Task] | None = None,
        task_head: MultiTaskHead | None = None,
        retrieval_encoder: WindowEncoder | None = None,
        lexical: LexicalModel | None = None,
    ) -> None:
        self.encoder = encoder
        self.retrieval_encoder = retrieval_encoder if retrieval_encoder is not None else encoder
        self.head = head.to(encoder.device)
        self.labels = list(labels)
        self.temperature = float(temperature)
        self.thresholds = thresholds
        self.tasks: dict[str, Task] = dict(tasks or {})
        if self.tasks and task_head is None:
            raise ConfigError("tasks were given without their heads; build multi-task models with from_encoder")
        self.task_head = task_head.to(encoder.device) if task_head is not None else None
        self.task_temperature: dict[str, float] = {name: 1.0 for name in self.tasks}
        self.task_thresholds: dict[str, np.ndarray | None] = {name: None for name in self.tasks}
        self.history: list[dict[str, Any]] = []
        self.base_encoder: dict[str, str] | None = None
        self.training_facts: dict[str, Any] | None = None
        self.evaluation_facts: dict[str, Any] | None = None
        #: the validation documents of the last ``fit`` (``None`` before one; not saved with the model):
        #: ``{"source": "eval_dataset" | "held_out" | "none", "documents": n}``, plus ``"eval_fraction"`` for
        #: a split carved here and ``"reason"`` for none
        self.validation: dict[str, Any] | None = None
        if (lexical is not None) != head.config.lexical_fusion:
            raise ConfigError("a lexical branch needs a head built with lexical_fusion=True, and the other way round")
        self.lexical = lexical

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_encoder(
        cls,
        path_or_name: str | Path | None = None,
        *,
        labels: Sequence[str],
        window: WindowConfig | None = None,
        pooling: str = "lead_attention",
        multi_label: bool = False,
        device: str | None = None,
        dtype: torch.dtype | None = None,
        head: dict[str, Any] | None = None,
        tasks: dict[str, Task] | None = None,
        lexical: bool | LexicalConfig = True,
    ) -> LongDocClassifier:
        """A new classifier over a pretrained encoder (default: the packaged MiniLM).

        Args:
            path_or_name: a BERT-family checkpoint directory or hub name.
            labels: the label names, in the order of ``predict_proba``'s columns.
            window: window geometry (default 512 tokens, overlap 128).
            pooling: ``"lead_attention"`` (default: the first window beside attention over all windows),
                ``"attention"``, ``"mean"``, ``"max"`` or ``"transformer"``; see ``longdoc.heads``.
            multi_label: documents may carry any subset of the labels.
            device: ``None`` picks CUDA when present.
            dtype: encoder compute dtype (default bf16 on CUDA, fp32 on CPU).
            head: more ``HeadConfig`` fields (dropout, transformer_layers, ...).
            tasks: extra label sets trained together on the same encoder, each with its own head, e.g.
                ``{"sensitivity": Task(labels=("public", "internal"), column="sensitivity")}``; see
                :meth:`predict_tasks`.
            lexical: the lexical branch (default on): TF-IDF of the whole document and a linear model whose
                label scores are added to the window head's logits (see ``longdoc.lexical``); a
                ``LexicalConfig`` sets its options, ``False`` classifies from the windows alone.
        """
        labels = [str(x) for x in labels]
        if not isinstance(lexical, bool | LexicalConfig):
            raise ConfigError(f"lexical must be True, False or a LexicalConfig, got {lexical!r}")
        if len(set(labels)) != len(labels):
            raise ConfigError(f"labels must be unique, got {labels}")
        encoder = WindowEncoder(path_or_name, device=device, window=window, dtype=dtype)
        lexical_model = None
        if lexical is not False:
            lexical_model = LexicalModel(labels, multi_label=multi_label,
                                         config=lexical if isinstance(lexical, LexicalConfig) else None)
        config = HeadConfig(
            pooling=pooling, hidden_size=encoder.dim, num_labels=len(labels), multi_label=multi_label,
            **{"lexical_fusion": lexical_model is not None, **(head or {})},
        )
        task_head = None
        if tasks:
            task_head = MultiTaskHead({
                name: HeadConfig(pooling=pooling, hidden_size=encoder.dim, num_labels=len(task.labels),
                                 multi_label=task.multi_label, **(head or {}))
                for name, task in tasks.items()
            })
        clf = cls(encoder, DocumentHead(config), labels, tasks=tasks, task_head=task_head, lexical=lexical_model)
        clf.base_encoder = base_encoder_facts(path_or_name)
        return clf

    @property
    def multi_label(self) -> bool:
        return self.head.config.multi_label

    @property
    def window(self) -> WindowConfig:
        return self.encoder.window

    # ------------------------------------------------------------------ inputs
    def document_table(
        self, data: Any, labels: Sequence[Any] | None = None, *, text_column: str = "text",
        label_column: str | None = None, id_column: str | None = None, require_labels: bool = False,
    ) -> pl.DataFrame:
        """The document table (``doc_id``, ``text``, ``labels``, ...) of any input ``fit`` and ``analyze`` take:
        a str, a list of texts (with ``labels``), a document table, ``Encoded``, or what ``load_documents``
        reads (column names default to its own). ``require_labels`` refuses documents without a label.

        A str is one document's text, except where documents are read for training or evaluation
        (``require_labels``): there a str naming a file or folder is read like a ``Path``. Elsewhere a str that
        names an existing file is refused with a hint rather than classified as text.
        """
        if isinstance(data, Encoded):
            data = data.documents
        if isinstance(data, str):
            data = _path_or_text(data, read=require_labels)
        named = {k: v for k, v in (("label_column", label_column), ("id_column", id_column)) if v is not None}
        docs = document_table(data, labels, text_column=text_column, **named)
        if require_labels:
            missing = docs.filter(pl.col("labels").list.len() == 0)
            if missing.height:
                why = [w for w in missing["warning"].to_list() if w] if "warning" in missing.columns else []
                raise DataError(
                    f"{missing.height} documents have no label (e.g. {missing['doc_id'].head(3).to_list()}"
                    + (f"; {why[0]}" if why else "") + "); pass labels=... or label_column=..."
                )
        return docs

    def _targets(self, docs: pl.DataFrame) -> torch.Tensor:
        """Targets of the main labels: class indices (n_docs,), or multi-hot rows (n_docs, n_labels)."""
        index = {label: i for i, label in enumerate(self.labels)}
        unknown = sorted({x for row in docs["labels"].to_list() for x in row if x not in index})
        if unknown:
            raise DataError(f"labels {unknown[:10]} are not among the classifier's labels {self.labels}")
        rows = docs["labels"].to_list()
        if self.multi_label:
            y = torch.zeros((len(rows), len(self.labels)))
            for i, row in enumerate(rows):
                y[i, [index[x] for x in row]] = 1.0
            return y
        many = [r for r in rows if len(r) != 1]
        if many:
            raise DataError(f"a single-label classifier needs exactly one label per document, found {many[:3]}; "
                            "use multi_label=True for label sets")
        return torch.tensor([index[r[0]] for r in rows], dtype=torch.long)

    def _task_targets(self, docs: pl.DataFrame) -> dict[str, torch.Tensor]:
        """Targets of every extra task from its column (a str or a list of str per document)."""
        out = {}
        for name, task in self.tasks.items():
            if task.column not in docs.columns:
                raise DataError(f"task {name!r} reads its labels from column {task.column!r}, which is missing; "
                                f"found {docs.columns}")
            index = {label: i for i, label in enumerate(task.labels)}
            rows = _label_lists(docs[task.column].to_list())
            unknown = sorted({x for r in rows for x in r if x not in index})
            if unknown:
                raise DataError(f"task {name!r}: labels {unknown[:10]} are not among {list(task.labels)}")
            if task.multi_label:
                y = torch.zeros((len(rows), len(task.labels)))
                for i, r in enumerate(rows):
                    y[i, [index[x] for x in r]] = 1.0
            else:
                bad = [r for r in rows if len(r) != 1]
                if bad:
                    raise DataError(f"task {name!r} is single-label: every document needs exactly one label in "
                                    f"column {task.column!r}, found {bad[:3]}")
                y = torch.tensor([index[r[0]] for r in rows], dtype=torch.long)
            out[name] = y
        return out

    # ------------------------------------------------------------------ encoding
    def encode(self, documents: Any, *, show_progress_bar: bool | None = None, **columns: Any) -> Encoded:
        """Cut documents into windows and encode them once, for reuse by ``fit``, ``analyze`` and indexing."""
        if isinstance(documents, Encoded):
            return self._encoded(documents, show_progress_bar)
        docs = self.document_table(documents, **columns)
        windows, emb = self.encoder.encode_documents(docs, show_progress_bar=show_progress_bar)
        return Encoded(docs, windows, emb, self.encoder.fingerprint, self.window)

    def _encoded(self, data: Encoded | pl.DataFrame, show_progress_bar: bool | None) -> Encoded:
        """``data`` encoded with the current weights (re-encoded when the encoder changed since).

        Raises:
            ConfigError: ``data`` was cut with another window geometry than this classifier's.
        """
        if isinstance(data, Encoded) and data.window is not None and data.window != self.window:
            raise ConfigError(
                f"these encodings were cut with windows {data.window.to_dict()}, this classifier uses "
                f"{self.window.to_dict()}: encode the documents with this classifier (clf.encode(docs))")
        if isinstance(data, Encoded) and data.fingerprint == self.encoder.fingerprint:
            return data
        docs = data.documents if isinstance(data, Encoded) else data
        windows, emb = self.encoder.encode_documents(docs, show_progress_bar=show_progress_bar)
        return Encoded(docs, windows, emb, self.encoder.fingerprint, self.window)

    # ------------------------------------------------------------------ training
    def fit(
        self,
        train: Any,
        labels: Sequence[Any] | None = None,
        *,
        eval_dataset: Any = None,
        eval_labels: Sequence[Any] | None = None,
        args: TrainConfig | None = None,
        text_column: str = "text",
        label_column: str | None = None,
        id_column: str | None = None,
        show_progress_bar: bool | None = None,
    ) -> LongDocClassifier:
        """Train on labelled documents.

        Args:
            train: a document table, a polars/pandas DataFrame, a ``datasets.Dataset``, a file path, or a list
                of texts (then pass ``labels``).
            labels: labels of a list of texts (a str each, or a list of str for multi-label).
            eval_dataset: validation documents (same forms) for early stopping and calibration. Without one,
                ``args.eval_fraction`` of the training documents is held out for both (stratified, seeded).
            args: a ``TrainConfig`` (default: frozen encoder).
            text_column, label_column, id_column: column names of tabular inputs (defaults: ``text``,
                ``label``, ``id`` or row numbers; see ``longdoc.load_documents``).

        Every call starts from fresh head weights drawn from ``args.seed``: the same seed, data and machine
        give the same model. With the lexical branch, its TF-IDF model is fitted on the training documents
        and the head trains on cross-fitted lexical scores (see ``longdoc.lexical``); when the validation split
        was held out here (no ``eval_dataset``), the lexical model is refitted on every training document once
        early stopping and calibration are done.
        """
        args = args or TrainConfig()
        seed_everything(args.seed)
        self._reset_heads()
        cols = {"text_column": text_column, "label_column": label_column, "id_column": id_column}
        train_docs = self.document_table(train, labels, require_labels=True, **cols)
        if train_docs.height == 0:
            raise DataError("fit got no training documents")
        n_documents = train_docs.height
        label_counts = train_docs["labels"].explode().drop_nulls().value_counts()
        train_input: Encoded | pl.DataFrame = train if isinstance(train, Encoded) else train_docs
        val_input: Encoded | pl.DataFrame | None = None
        if eval_dataset is not None:
            val_docs = self.document_table(eval_dataset, eval_labels, require_labels=True, **cols)
            val_input = eval_dataset if isinstance(eval_dataset, Encoded) else val_docs
            self.validation = {"source": "eval_dataset", "documents": val_docs.height}
        else:
            n_given = train_docs.height
            train_input, val_input = self._hold_out(train_input, train_docs, args)
            train_docs = train_input.documents if isinstance(train_input, Encoded) else train_input
            if val_input is not None:
                self.validation = {"source": "held_out", "documents": n_given - train_docs.height,
                                   "eval_fraction": args.eval_fraction}
            else:
                self.validation = {"source": "none", "documents": 0, "reason": "eval_fraction=0" if not
                                   args.eval_fraction else f"fewer than {MIN_DOCS_TO_HOLD_OUT} training documents"}
        val_docs = None if val_input is None else (
            val_input.documents if isinstance(val_input, Encoded) else val_input)
        y_train = Targets(self._targets(train_docs), self._task_targets(train_docs))
        y_val = None if val_docs is None else Targets(self._targets(val_docs), self._task_targets(val_docs))
        if args.mode != "frozen":  # fine-tuning encodes with changing weights: only the documents are needed
            train_input, val_input = train_docs, val_docs
        elif val_input is not None and not isinstance(val_input, Encoded):
            val_input = self.encode(val_input, show_progress_bar=show_progress_bar)  # once, for stopping and calibration
        lexical_scores = None
        if self.lexical is not None:
            lexical_scores = torch.from_numpy(self._fit_lexical(train_docs, y_train.labels, seed=args.seed))
        # the loops (epochs, early stopping, checkpoints) are in longdoc.training
        training.fit(self, train_input, y_train, val_input, y_val, args, show_progress_bar,
                     lexical_scores=lexical_scores)
        if self.lexical is not None and args.refit_fusion and y_val is not None:
            self._refit_fusion(val_input, y_val.labels)
        if args.calibrate and val_input is not None:
            self.calibrate(val_input)
        elif args.calibrate:
            logger.info("no validation documents: probabilities are not calibrated (temperature 1)")
        if self.lexical is not None and eval_dataset is None and val_docs is not None:
            # the split held out above has done its work (early stopping, calibration): the words of those
            # documents now count too, as a TF-IDF baseline trained on every document would count them
            every = self.document_table(train, labels, require_labels=True, **cols)
            self.lexical.fit(every["text"].to_list(), self._targets(every).numpy())
        self.training_facts = training_facts(
            args, documents=n_documents, train_documents=train_docs.height,
            validation_documents=self.validation["documents"], validation=self.validation["source"],
            label_counts={str(k): int(n) for k, n in label_counts.iter_rows()}, epochs_run=len(self.history),
            calibrated=bool(args.calibrate and val_input is not None))
        return self

    def _refit_fusion(self, val_input: Encoded | pl.DataFrame, y_val: torch.Tensor) -> None:
        """Re-weigh the window head's logits and the lexical scores by two scalars fitted on the validation
        documents (``calibration.fit_fusion_weights``): the head's output layer is scaled by one, the lexical
        weight set to the other. The predictions then mix the halves as held-out documents say they should."""
        a = self._analyze(val_input, show_progress_bar=False)
        keep = ~np.isnan(a.probs).any(1)
        logits = np.asarray(a.logits, dtype=np.float64)[keep]
        lexical = np.asarray(a.lexical_scores, dtype=np.float64)[keep]
        weight = float(self.head.lexical_weight.detach())
        weights = calibration.fit_fusion_weights(logits - weight * lexical, lexical,
                                                 y_val.numpy()[keep], multi_label=self.multi_label)
        if weights is None:
            return
        dense_scale, lexical_weight = weights
        with torch.no_grad():
            self.head.classifier.weight.mul_(dense_scale)
            self.head.classifier.bias.mul_(dense_scale)
            self.head.lexical_weight.fill_(lexical_weight)
        logger.info("fusion refitted on %d validation documents: window head x %.3f, lexical weight %.3f -> %.3f",
                    int(keep.sum()), dense_scale, weight, lexical_weight)

    def _reset_heads(self) -> None:
        """New head weights from the current (seeded) random state; the configuration is kept."""
        device = self.encoder.device
        self.head = DocumentHead(self.head.config).to(device)
        if self.task_head is not None:
            self.task_head = MultiTaskHead({name: h.config for name, h in self.task_head.heads.items()}).to(device)
        self.temperature, self.thresholds = 1.0, None
        self.task_temperature = {name: 1.0 for name in self.tasks}
        self.task_thresholds = {name: None for name in self.tasks}
        self.history = []
        self.training_facts = self.evaluation_facts = None  # the model they described is gone

    def _hold_out(self, train: Encoded | pl.DataFrame, docs: pl.DataFrame, args: TrainConfig
                  ) -> tuple[Encoded | pl.DataFrame, Encoded | pl.DataFrame | None]:
        """(train, validation) carved from the training documents by ``args.eval_fraction`` (see TrainConfig)."""
        fraction = args.eval_fraction
        if not fraction:
            logger.info("no validation documents (eval_fraction=0): every epoch runs, no early stopping, "
                        "no calibration")
            return train, None
        if docs.height < MIN_DOCS_TO_HOLD_OUT:
            logger.info("only %d training documents (fewer than %d): no validation split is held out, so every "
                        "epoch runs and probabilities are not calibrated", docs.height, MIN_DOCS_TO_HOLD_OUT)
            return train, None
        val_rows = _validation_rows(docs, fraction, seed=args.seed, stratify=not self.multi_label)
        keep = np.ones(docs.height, dtype=bool)
        keep[val_rows] = False
        train_rows = np.flatnonzero(keep)
        logger.info("held out %d of %d training documents for early stopping and calibration (eval_fraction=%g)",
                    len(val_rows), docs.height, fraction)
        if isinstance(train, Encoded):
            return train.select(train_rows), train.select(val_rows)
        return docs[train_rows.tolist()], docs[val_rows.tolist()]

    def _fit_lexical(self, docs: pl.DataFrame, y: torch.Tensor, *, seed: int) -> np.ndarray:
        """Fit the lexical branch on the training texts; returns their cross-fitted scores (n_docs, L), zero
        rows for documents without any vocabulary term (as at prediction time)."""
        texts = docs["text"].to_list()
        lexical = LexicalModel(self.labels, multi_label=self.multi_label, config=self.lexical.config)
        scores = lexical.cross_fit_scores(texts, y.numpy(), seed=seed)
        scores[~lexical.has_terms(texts)] = 0.0
        self.lexical = lexical
        return scores

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def _head_logits(
        self, emb: torch.Tensor, offsets: np.ndarray, batch: int = 64, lexical_scores: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, np.ndarray, dict[str, torch.Tensor]]:
        """Logits (n_docs, L) from window embeddings (plus the lexical scores (n_docs, L) when given), each
        window's attribution (n_windows,) and the extra tasks' logits."""
        n_docs = len(offsets) - 1
        logits, weights = [], np.zeros(len(emb), dtype=np.float32)
        task_logits: dict[str, list[torch.Tensor]] = {name: [] for name in self.tasks}
        self.head.eval()
        if self.task_head is not None:
            self.task_head.eval()
        for start in range(0, n_docs, batch):
            idx = list(range(start, min(n_docs, start + batch)))
            x, mask = pad_windows(emb, offsets, idx)
            lexical = None if lexical_scores is None else lexical_scores[idx].to(x.device)
            out = self.head(x, mask, lexical_scores=lexical)
            logits.append(out.logits.float().cpu())
            if self.task_head is not None:
                for name, task_out in self.task_head(x, mask).tasks.items():
                    task_logits[name].append(task_out.logits.float().cpu())
            w = out.window_weights.float().cpu().numpy()
            for b, i in enumerate(idx):
                k = offsets[i + 1] - offsets[i]
                weights[offsets[i] : offsets[i + 1]] = w[b, :k]
        tasks = {name: torch.cat(parts) if parts else torch.zeros((0, len(self.tasks[name].labels)))
                 for name, parts in task_logits.items()}
        return torch.cat(logits) if logits else torch.zeros((0, len(self.labels))), weights, tasks

    def _analyze(self, data: pl.DataFrame | Encoded, *, show_progress_bar: bool | None = None) -> Analysis:
        enc = self._encoded(data, show_progress_bar)
        docs, windows, emb = enc.documents, enc.windows, enc.embeddings
        offsets = doc_offsets(windows)
        lexical_scores, notes = self._lexical_scores(docs)
        logits, weights, task_logits = self._head_logits(
            torch.from_numpy(emb).to(self.encoder.device), offsets,
            lexical_scores=None if lexical_scores is None else torch.from_numpy(lexical_scores))
        probs = predict_probs(logits, self.multi_label, self.temperature).numpy().astype(np.float32)
        empty = np.diff(offsets) == 0
        probs[empty] = np.nan
        task_probs = {}
        for name, z in task_logits.items():
            p = predict_probs(z, self.tasks[name].multi_label, self.task_temperature[name]).numpy()
            p = p.astype(np.float32)
            p[empty] = np.nan
            task_probs[name] = p
        return Analysis(docs, windows, emb, probs, weights, logits, task_probs, task_logits, lexical_scores, notes,
                        enc.window)

    def _lexical_scores(self, docs: pl.DataFrame) -> tuple[np.ndarray | None, list[str | None]]:
        """The lexical branch's scores of ``docs`` (zero rows where it knows no word) and the per-document
        notes saying which documents the windows label alone."""
        if self.lexical is None:
            return None, [None] * docs.height
        if not self.lexical.fitted:  # an untrained classifier: its head is untrained too, no word counts yet
            logger.warning("the classifier is not trained (call fit, or load a saved model): its labels mean nothing")
            return np.zeros((docs.height, len(self.labels)), dtype=np.float32), [None] * docs.height
        scores, present = self.lexical.scores_and_presence(docs["text"].to_list())
        missing = ~present
        scores[missing] = 0.0
        if missing.any():
            logger.info("%d of %d documents have no word of the lexical vocabulary: the windows label them alone",
                        int(missing.sum()), docs.height)
        return scores, [NO_LEXICAL_TERMS if m else None for m in missing]

    def analyze(self, documents: Any, *, show_progress_bar: bool | None = None, **columns: Any) -> Analysis:
        """One encoder pass: window embeddings, label probabilities and attributions (label + index at once)."""
        if isinstance(documents, Encoded):
            return self._analyze(documents, show_progress_bar=show_progress_bar)
        return self._analyze(self.document_table(documents, **columns), show_progress_bar=show_progress_bar)

    def decide(self, probs: np.ndarray, task: str | None = None) -> list[Any]:
        """Label decisions from probabilities (rows as ``predict_proba`` gives them), for the main labels or an
        extra ``task``: the top label, or multi-label the labels at or above their thresholds (0.5 until
        calibrated); ``None`` for a row of NaN (a document without tokens)."""
        labels = self.labels if task is None else list(self.tasks[task].labels)
        multi = self.multi_label if task is None else self.tasks[task].multi_label
        thresholds = self.thresholds if task is None else self.task_thresholds[task]
        if thresholds is None:
            thresholds = np.full(len(labels), 0.5)
        out: list[Any] = []
        for row in probs:
            if np.isnan(row).any():
                out.append(None)
            elif multi:
                out.append([labels[j] for j in np.flatnonzero(row >= thresholds)])
            else:
                out.append(labels[int(row.argmax())])
        return out

    def predict(self, documents: str | Sequence[str] | Any, **columns: Any) -> Any:
        """Labels: a str gives one label (a list of labels if multi-label), a list gives a list.

        A document without tokens (empty or whitespace only) gets ``None``.
        """
        labels = self.decide(self.analyze(documents, **columns).probs)
        return labels[0] if isinstance(documents, str) else labels

    def predict_proba(self, documents: str | Sequence[str] | Any, **columns: Any) -> np.ndarray:
        """Calibrated probabilities, columns in ``self.labels`` order: a str gives (n_labels,), a list
        (n_docs, n_labels). A document without tokens gets a row of NaN."""
        probs = self.analyze(documents, **columns).probs
        return probs[0] if isinstance(documents, str) else probs

    def predict_tasks(self, documents: str | Sequence[str] | Any, **columns: Any) -> Any:
        """Every label set from one encoder pass: ``{"label": ..., "<task>": ...}`` per document (a str gives one
        dict, a list gives a list of dicts). The main labels are under ``"label"``."""
        single = isinstance(documents, str)
        a = self.analyze(documents, **columns)
        decided = {"label": self.decide(a.probs)}
        decided.update({name: self.decide(p, name) for name, p in a.task_probs.items()})
        rows = [dict(zip(decided, values, strict=True)) for values in zip(*decided.values(), strict=True)]
        return rows[0] if single else rows

    def explain(self, document: str, *, top_k: int | None = 5) -> Explanation:
        """The windows of one document ranked by how much they drove its label (attention weights for the
        attention and transformer heads; see ``longdoc.heads`` for mean and max), as a list; its ``.terms`` are
        the lexical branch's words that pushed hardest towards the predicted label, with their character spans
        (``document[start:end]``)."""
        if not isinstance(document, str):
            raise DataError(f"explain takes one document as a str, got {type(document).__name__}")
        if top_k is not None:
            try:
                count = -1 if isinstance(top_k, bool) else operator.index(top_k)  # numpy ints too; never a bool
            except TypeError:
                count = -1
            if count < 1:
                raise ConfigError(f"top_k must be None (all) or an int >= 1, got {top_k!r}")
            top_k = count
        a = self.analyze([document], show_progress_bar=False)
        order = np.argsort(-a.window_weights, kind="stable")[: top_k or None]
        out = []
        for i in order:
            row = a.windows.table.row(int(i), named=True)
            out.append(WindowExplanation(
                window_index=row["window_index"], weight=float(a.window_weights[i]), char_start=row["char_start"],
                char_end=row["char_end"], text=document[row["char_start"] : row["char_end"]],
            ))
        terms: list[TermExplanation] = []
        if self.lexical is not None and not np.isnan(a.probs[0]).any() and a.notes[0] is None:
            predicted = np.flatnonzero(a.probs[0] >= (self.thresholds if self.thresholds is not None else 0.5)) \
                if self.multi_label else [int(a.probs[0].argmax())]
            for label in predicted:
                terms.extend(self.lexical.top_terms(document, int(label), top_k=top_k))
            terms.sort(key=lambda t: -t.weight)
            terms = terms[: top_k or None]
        return Explanation(out, terms)

    def calibrate(self, eval_dataset: Any, labels: Sequence[Any] | None = None, **columns: Any) -> None:
        """Fit the temperature (and, multi-label, the per-label thresholds) on validation documents."""
        docs = self.document_table(eval_dataset, labels, require_labels=True, **columns)
        y = self._targets(docs)
        a = self._analyze(eval_dataset if isinstance(eval_dataset, Encoded) else docs, show_progress_bar=False)
        keep = torch.from_numpy(~np.isnan(a.probs).any(1))
        logits = a.logits[keep]
        self.temperature = calibration.fit_temperature(logits, y[keep], multi_label=self.multi_label)
        if self.multi_label:
            probs = predict_probs(logits, True, self.temperature).numpy()
            self.thresholds = calibration.tune_thresholds(probs, y[keep].numpy())
        if self.tasks:
            y_tasks = self._task_targets(docs)
            for name, task_logits in a.task_logits.items():
                task = self.tasks[name]
                self.task_temperature[name] = calibration.fit_temperature(
                    task_logits[keep], y_tasks[name][keep], multi_label=task.multi_label)
                if task.multi_label:
                    p = predict_probs(task_logits[keep], True, self.task_temperature[name]).numpy()
                    self.task_thresholds[name] = calibration.tune_thresholds(p, y_tasks[name][keep].numpy())
        self.evaluation_facts = None  # measured with the old temperature and thresholds
        logger.info("calibrated on %d documents: temperature %.3f", int(keep.sum()), self.temperature)

    def evaluate(
        self, documents: Any, labels: Sequence[Any] | None = None, *, confusion_png: str | Path | None = None,
        **columns: Any,
    ) -> dict[str, Any]:
        """Accuracy, macro/micro-F1, per-label report, expected calibration error, optional confusion PNG.

        The figures are also kept as ``evaluation_facts``: the model card of the next :meth:`save` shows them.
        Documents without a token are left out of the figures (``n_without_tokens`` counts them); with no
        document to score, or ``confusion_png`` not a ``.png`` path, it raises before any work."""
        if confusion_png is not None:
            check_png_path(confusion_png, argument="confusion_png")
        docs = self.document_table(documents, labels, require_labels=True, **columns)
        if docs.height == 0:
            raise DataError("evaluate got no documents: there is nothing to score")
        self._targets(docs)  # validates the label names
        a = self.analyze(documents if isinstance(documents, Encoded) else docs)
        probs = a.probs
        keep = ~np.isnan(probs).any(1)
        if not keep.any():
            raise DataError(f"none of the {docs.height} documents has a token to read (all empty or whitespace): "
                            "there is nothing to score")
        y_true = docs["labels"].to_list()
        y_pred = self.decide(probs)
        if not self.multi_label:
            y_true = [r[0] for r in y_true]
        y_true = [t for t, k in zip(y_true, keep, strict=True) if k]
        y_pred = [p for p, k in zip(y_pred, keep, strict=True) if k]
        report = classification_report(y_true, y_pred, self.labels, y_prob=probs[keep], multi_label=self.multi_label)
        report["n_documents"] = docs.height
        report["n_without_tokens"] = int((~keep).sum())
        if self.tasks:
            report["tasks"] = {}
            for name, task in self.tasks.items():
                if task.column not in docs.columns:
                    continue
                truth = _label_lists(docs[task.column].to_list())
                t_true = truth if task.multi_label else [r[0] if r else None for r in truth]
                t_pred = self.decide(a.task_probs[name], name)
                pairs = [(t, p) for t, p, k in zip(t_true, t_pred, keep, strict=True) if k]
                report["tasks"][name] = classification_report(
                    [t for t, _ in pairs], [p for _, p in pairs], list(task.labels),
                    y_prob=a.task_probs[name][keep], multi_label=task.multi_label)
        if confusion_png is not None and not self.multi_label:
            save_confusion_matrix_png(report["confusion_matrix"], self.labels, confusion_png)
        self.evaluation_facts = evaluation_facts(report)
        return report

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> Path:
        """Write ``config.json``, ``encoder/`` (safetensors), ``head.safetensors``, ``README.md`` (the model card,
        ``longdoc.model_card``) and, after fine-tuning with a separate retrieval encoder, ``retrieval_encoder/``;
        atomic (``indexer.storage.durable_directory``: a temporary sibling, fsynced and swapped into place).

        The whole directory is replaced, never merged: whatever a model's ``directory`` held before (a README.md of
        your own included) is gone, so keep notes about a model outside its directory. :meth:`load` never reads the
        card. So ``directory`` must be new, empty or an earlier saved model: an existing file, or a non-empty
        directory that is not a model, is refused (``ConfigError``) before anything is written.
        """
        directory = Path(directory)
        separate = self.retrieval_encoder is not self.encoder
        # the mode the umask gives, as any new directory
        with durable_directory(directory, check=check_save_target) as tmp:
            self.encoder.save(tmp / "encoder", window=False)  # the geometry is stored once, in config.json
            if separate:
                self.retrieval_encoder.save(tmp / "retrieval_encoder", window=False)
            save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()},
                      tmp / "head.safetensors")
            if self.task_head is not None:
                save_file({k: v.detach().cpu().contiguous() for k, v in self.task_head.state_dict().items()},
                          tmp / "task_heads.safetensors")
            if self.lexical is not None:
                if not self.lexical.fitted:
                    raise ConfigError("the classifier is not trained (its lexical branch is not fitted): call fit "
                                      "before save")
                self.lexical.save(tmp)
            config = self._config(separate)
            write_model_config(tmp, config)
            (tmp / MODEL_CARD).write_text(render_model_card(self._card_facts(config, separate)), encoding="utf-8")
        return directory

    def _card_facts(self, config: dict[str, Any], separate: bool) -> CardFacts:
        """What the model card is rendered from: the config being saved and facts of the live model."""
        lexical = self.lexical
        return CardFacts(
            config=config, encoder_fingerprint=self.encoder.fingerprint,
            retrieval_encoder_fingerprint=self.retrieval_encoder.fingerprint if separate else None,
            lexical_terms=None if lexical is None else len(lexical.vocabulary),
            lexical_config=None if lexical is None else lexical.config.to_dict(),
            lexical_weight=float(self.head.lexical_weight.detach()) if lexical is not None else None)

    def _config(self, separate: bool) -> dict[str, Any]:
        """The ``config.json`` of ``save`` (read back by ``longdoc.model_dir.read_model_config``)."""
        return {
            "format_version": FORMAT_VERSION,
            "labels": self.labels,
            "head": self.head.config.to_dict(),
            "window": self.window.to_dict(),
            "encoder": {"pooling": self.encoder.pooling, "normalize": self.encoder.normalize, "dim": self.encoder.dim},
            "retrieval_encoder": "retrieval_encoder" if separate else "encoder",
            "temperature": self.temperature,
            "thresholds": None if self.thresholds is None else [float(t) for t in self.thresholds],
            "tasks": {
                name: {"labels": list(task.labels), "column": task.column, "multi_label": task.multi_label,
                       "head": self.task_head.heads[name].config.to_dict(),
                       "temperature": self.task_temperature[name],
                       "thresholds": None if self.task_thresholds[name] is None
                       else [float(t) for t in self.task_thresholds[name]]}
                for name, task in self.tasks.items()
            },
            "history": self.history,
            "versions": library_versions(),
            "base_encoder": self.base_encoder,
            "training": self.training_facts,
            "evaluation": self.evaluation_facts,
        }

    @classmethod
    def load(
        cls, directory: str | Path, *, device: str | None = None, dtype: torch.dtype | None = None
    ) -> LongDocClassifier:
        """Load a saved classifier. Only JSON and safetensors are read; mismatching parts are refused.

        ``device=None`` picks CUDA when present; ``dtype`` is the encoder's compute dtype (default bf16 on CUDA,
        fp32 on CPU; ``torch.bfloat16`` is also fast on CPUs with avx512_bf16/AMX).
        """
        directory = Path(directory)
        if not (directory / CONFIG).is_file():
            raise ModelLoadError(f"{directory} is not a longdoc model directory: {CONFIG} is missing")
        _refuse_links_out_of(directory)
        config = read_model_config(directory)
        head_config = config.head
        encoder = WindowEncoder(directory / "encoder", device=device, window=config.window, dtype=dtype,
                                **config.encoder_settings)
        if encoder.dim != head_config.hidden_size:
            raise ModelLoadError(f"encoder dim {encoder.dim} does not match the head's hidden_size {head_config.hidden_size}")
        retrieval_encoder = None
        if config.retrieval_encoder == "retrieval_encoder":
            if not (directory / "retrieval_encoder").is_dir():
                raise ModelLoadError(f"{directory / 'retrieval_encoder'} is missing (config.json names it as the "
                                     "encoder of the passage index)")
            retrieval_encoder = WindowEncoder(directory / "retrieval_encoder", device=device, window=config.window,
                                              dtype=dtype, **config.encoder_settings)
            if retrieval_encoder.dim != encoder.dim:
                raise ModelLoadError(f"retrieval_encoder dim {retrieval_encoder.dim} differs from the encoder's "
                                     f"{encoder.dim}")
        head = _load_weights(DocumentHead(head_config), directory / "head.safetensors", "the head")
        tasks, task_head = {}, None
        if config.tasks:
            tasks = {name: Task(t.labels, t.column, t.multi_label) for name, t in config.tasks.items()}
            task_head = MultiTaskHead({name: t.head for name, t in config.tasks.items()})
            task_head = _load_weights(task_head, directory / "task_heads.safetensors", f"the tasks {sorted(tasks)}")
        lexical = (LexicalModel.load(directory, labels=config.labels, multi_label=head_config.multi_label)
                   if head_config.lexical_fusion else None)
        thresholds = config.thresholds
        clf = cls(encoder, head.eval(), config.labels, temperature=config.temperature,
                  thresholds=None if thresholds is None else np.asarray(thresholds, dtype=np.float32),
                  tasks=tasks, task_head=task_head, retrieval_encoder=retrieval_encoder, lexical=lexical)
        for name, t in config.tasks.items():
            clf.task_temperature[name] = t.temperature
            if t.thresholds is not None:
                clf.task_thresholds[name] = np.asarray(t.thresholds, dtype=np.float32)
        clf.history = config.history
        clf.base_encoder = config.base_encoder
        clf.training_facts, clf.evaluation_facts = config.training, config.evaluation
        return clf


def _validation_rows(docs: pl.DataFrame, fraction: float, *, seed: int, stratify: bool) -> np.ndarray:
    """Sorted row numbers of a seeded validation split: ``fraction`` of each label (its first label; at least one
    row of a label with two or more: ``longdoc.splits.holdout_size``), or of all rows when not stratified."""
    rng = np.random.default_rng(seed)  # one source, drawn from label after label

    def pick(_key: Any, rows: list[int], size: int) -> np.ndarray:
        return rng.permutation(rows)[:size]

    keys = [r[0] if r else "" for r in docs["labels"].to_list()] if stratify else [""] * docs.height
    return stratified_holdout(keys, fraction, pick)


def _names_existing_file(value: str) -> bool:
    if "\n" in value or len(value) > 4096:
        return False
    try:
        return Path(value).expanduser().is_file()
    except (OSError, ValueError):  # a name too long, an embedded NUL: not a path
        return False


def _path_or_text(value: str, *, read: bool) -> Path | list[str]:
    """A str argument as a path to read (``read``: ``longdoc.data.resolve_documents``) or as one document's text;
    never a path used as text."""
    if read:
        resolved = resolve_documents(value)
        return resolved if isinstance(resolved, Path) else [value]
    if _names_existing_file(value):  # only an existing file is refused: "TCP/IP" or "notes.txt" stay texts
        raise DataError(
            f"{value!r} names an existing file, not a document text: pass load_documents({value!r}) (or a "
            f"pathlib.Path) to read the documents in it, or [{value!r}] to classify the string itself")
    return [value]


def _label_lists(values: list[Any]) -> list[list[str]]:
    """A task column's labels per document, read as the main labels are (``longdoc.data.label_list``)."""
    return [label_list(v) for v in values]


def _load_weights(module: torch.nn.Module, path: Path, what: str) -> Any:
    """Load a safetensors file into ``module``; a missing, truncated or mismatching file is a ModelLoadError."""
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing ({what} in config.json need it)")
    try:
        module.load_state_dict(load_file(path))
    except (RuntimeError, OSError, SafetensorError) as exc:
        raise ModelLoadError(f"{path} does not match {what} in config.json: {exc}") from exc
    return module


def _refuse_links_out_of(directory: Path) -> None:
    """A model directory made by someone else must not make us read files outside it (symlinks)."""
    root = directory.resolve()
    for path in directory.rglob("*"):
        if path.is_symlink():
            target = path.resolve()
            if root != target and root not in target.parents:
                raise ModelLoadError(f"{path} is a symlink pointing outside the model directory ({target}); refused")

