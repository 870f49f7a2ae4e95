"""Sliding BERT windows over long documents, with exact token and character spans.

Each document is tokenized once with the model's fast tokenizer (with character offsets). Windows are then cut
as integer arrays: no per-window re-tokenization and no decode-then-encode.

Window geometry (``WindowConfig``):

* ``max_length`` counts every token of a window, ``[CLS]`` and ``[SEP]`` included (default 512), so a window
  holds ``max_length - 2`` document tokens.
* ``stride`` is the number of document tokens two consecutive windows share (the *overlap*), the same meaning
  as Hugging Face's ``stride`` with ``return_overflowing_tokens=True``. Consecutive windows start
  ``max_length - 2 - stride`` tokens apart (the *step*).
* The last window is right-aligned to the document's end, so there is no short tail window; it may overlap the
  window before it by more than ``stride``. A document shorter than one window gives one (shorter) window.
* A document with no tokens (empty or whitespace only) gives zero windows and a recorded reason.
* Nothing is dropped unless ``max_windows`` is set: then a document with more windows keeps the first
  ``ceil(max_windows / 2)`` and the last ``floor(max_windows / 2)`` windows (head + tail).

``text[char_start:char_end]`` is exactly the window's text. Re-tokenizing that span gives back the window's
tokens, except where a window starts inside a word: that first word fragment (``##ing``) is re-segmented,
every token from the next word on is the same.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import polars as pl

from longdoc.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

EMPTY_DOCUMENT = "no tokens (empty or whitespace-only document): zero windows"


@dataclass(frozen=True)
class WindowConfig:
    """How documents are cut into windows.

    Args:
        max_length: tokens per window including ``[CLS]`` and ``[SEP]`` (at most the model's positions).
        stride: document tokens shared by two consecutive windows (overlap, as Hugging Face's ``stride``).
        max_windows: keep at most this many windows per document (head + tail); ``None`` keeps all.
    """

    max_length: int = 512
    stride: int = 128
    max_windows: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.max_length, int) or self.max_length < 3:
            raise ConfigError(f"max_length must be an int >= 3 (room for [CLS], [SEP] and one token), got {self.max_length!r}")
        if not isinstance(self.stride, int) or not 0 <= self.stride < self.content_length:
            raise ConfigError(
                f"stride is the overlap in tokens and must be in [0, max_length - 2) = [0, {self.content_length}), "
                f"got {self.stride!r}"
            )
        if self.max_windows is not None and (not isinstance(self.max_windows, int) or self.max_windows < 1):
            raise ConfigError(f"max_windows must be None or an int >= 1, got {self.max_windows!r}")

    @property
    def content_length(self) -> int:
        """Document tokens per full window (``max_length - 2``)."""
        return self.max_length - 2

    @property
    def step(self) -> int:
        """Tokens between the starts of two consecutive windows (``content_length - stride``)."""
        return self.content_length - self.stride

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WindowConfig:
        unknown = set(data) - {"max_length", "stride", "max_windows"}
        if unknown:
            raise ConfigError(f"unknown WindowConfig keys {sorted(unknown)}; valid: max_length, stride, max_windows")
        return cls(**data)


def window_starts(n_tokens: int, config: WindowConfig) -> np.ndarray:
    """Token start of every window of a document with ``n_tokens`` tokens (see the module docstring)."""
    content = config.content_length
    if n_tokens <= 0:
        return np.zeros(0, dtype=np.int64)
    if n_tokens <= content:
        return np.zeros(1, dtype=np.int64)
    last = n_tokens - content
    starts = np.arange(0, last, config.step, dtype=np.int64)
    starts = np.append(starts, last)
    if config.max_windows is not None and len(starts) > config.max_windows:
        head = math.ceil(config.max_windows / 2)
        tail = config.max_windows - head
        starts = np.concatenate([starts[:head], starts[len(starts) - tail :]]) if tail else starts[:head]
    return starts


@dataclass
class Windows:
    """The windows of a batch of documents, ready for the encoder.

    Attributes:
        table: one row per window: ``doc_id``, ``window_index``, ``token_start``/``token_end`` (document token
            span, end exclusive), ``char_start``/``char_end`` (``text[char_start:char_end]`` is the window's
            text), ``n_tokens`` (window length with special tokens).
        input_ids: every window's token ids (``[CLS] ... [SEP]``), concatenated, int32.
        offsets: ``input_ids[offsets[i]:offsets[i + 1]]`` are window ``i``'s ids; int64, ``len(table) + 1``.
        documents: one row per input document: ``doc_id``, ``n_tokens``, ``n_windows``, ``warning``
            (why a document has zero windows, else null). Documents keep their input order.
    """

    table: pl.DataFrame
    input_ids: np.ndarray
    offsets: np.ndarray
    documents: pl.DataFrame = field(repr=False)

    def __len__(self) -> int:
        return self.table.height

    def ids(self, i: int) -> np.ndarray:
        """Token ids of window ``i`` (with special tokens)."""
        return self.input_ids[self.offsets[i] : self.offsets[i + 1]]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def texts(self, documents: pl.DataFrame | Sequence[str]) -> list[str]:
        """Each window's text, sliced from the documents it was cut from."""
        by_id = _texts_by_id(documents)
        return [
            by_id[d][s:e]
            for d, s, e in zip(self.table["doc_id"], self.table["char_start"], self.table["char_end"], strict=True)
        ]

    def take(self, rows: np.ndarray) -> Windows:
        """The windows at ``rows`` (window order kept as given); every document stays, with its new count."""
        rows = np.asarray(rows, dtype=np.int64)
        lengths = self.lengths[rows]
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ids = (np.concatenate([self.ids(int(r)) for r in rows]) if len(rows) else np.zeros(0, np.int32))
        table = self.table[rows.tolist()] if len(rows) else self.table.clear()
        counts = table.group_by("doc_id").len()
        documents = (
            self.documents.drop("n_windows")
            .join(counts, on="doc_id", how="left", maintain_order="left")
            .with_columns(pl.col("len").fill_null(0).cast(pl.Int32).alias("n_windows"))
            .select(self.documents.columns)
        )
        return Windows(table=table, input_ids=ids.astype(np.int32, copy=False), offsets=offsets, documents=documents)

    @staticmethod
    def concat(parts: Sequence[Windows]) -> Windows:
        """Join window batches (in order) into one."""
        if not parts:
            return _empty_windows()
        lengths = [np.diff(p.offsets) for p in parts]
        offsets = np.zeros(sum(len(x) for x in lengths) + 1, dtype=np.int64)
        np.cumsum(np.concatenate(lengths), out=offsets[1:])
        return Windows(
            table=pl.concat([p.table for p in parts], how="vertical"),
            input_ids=np.concatenate([p.input_ids for p in parts]).astype(np.int32, copy=False),
            offsets=offsets,
            documents=pl.concat([p.documents for p in parts], how="vertical"),
        )


# Column types of ``Windows.table`` (one row per window) and ``Windows.documents`` (one row per document).
WINDOW_TABLE_SCHEMA = {
    "doc_id": pl.Utf8,
    "window_index": pl.Int32,
    "token_start": pl.Int64,
    "token_end": pl.Int64,
    "char_start": pl.Int64,
    "char_end": pl.Int64,
    "n_tokens": pl.Int32,
}
DOCUMENTS_SCHEMA = {"doc_id": pl.Utf8, "n_tokens": pl.Int64, "n_windows": pl.Int32, "warning": pl.Utf8}


def _empty_windows() -> Windows:
    return Windows(
        table=pl.DataFrame(schema=WINDOW_TABLE_SCHEMA),
        input_ids=np.zeros(0, dtype=np.int32),
        offsets=np.zeros(1, dtype=np.int64),
        documents=pl.DataFrame(schema=DOCUMENTS_SCHEMA),
    )


def _texts_by_id(documents: pl.DataFrame | Sequence[str]) -> dict[str, str]:
    if isinstance(documents, pl.DataFrame):
        return dict(zip(documents["doc_id"].to_list(), documents["text"].to_list(), strict=True))
    return {str(i): t for i, t in enumerate(documents)}


@dataclass(frozen=True)
class _TokenizerSpec:
    """What a worker process needs to rebuild the tokenizer: its JSON and the special-token ids."""

    tokenizer_json: str
    cls_id: int
    sep_id: int


def tokenizer_spec(tokenizer: Any) -> _TokenizerSpec:
    """Capture a Hugging Face fast tokenizer so windows can be cut in any process."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not getattr(tokenizer, "is_fast", False):
        raise ConfigError(
            f"tokenizer must be a Hugging Face *fast* tokenizer (with character offsets), got {type(tokenizer).__name__}"
        )
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    if cls_id is None or sep_id is None:
        raise ConfigError(f"tokenizer {type(tokenizer).__name__} has no [CLS]/[SEP] tokens; a BERT-family tokenizer is needed")
    return _TokenizerSpec(backend.to_str(), int(cls_id), int(sep_id))


_WORKER_CACHE: dict[str, Any] = {}


def _backend(spec: _TokenizerSpec):
    tok = _WORKER_CACHE.get(spec.tokenizer_json)
    if tok is None:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_str(spec.tokenizer_json)
        # Checkpoints often ship a tokenizer.json that truncates and pads (to 128 for MiniLM): we need every token.
        tok.no_truncation()
        tok.no_padding()
        _WORKER_CACHE.clear()
        _WORKER_CACHE[spec.tokenizer_json] = tok
    return tok


def _cut(doc_ids: list[str], texts: list[str], spec: _TokenizerSpec, config: WindowConfig) -> Windows:
    """Tokenize a chunk of documents once and cut their windows (runs in the caller or in a worker)."""
    encodings = _backend(spec).encode_batch(texts, add_special_tokens=False)
    table_cols: dict[str, list[np.ndarray]] = {k: [] for k in WINDOW_TABLE_SCHEMA if k != "doc_id"}
    table_doc: list[str] = []
    id_parts: list[np.ndarray] = []
    doc_rows = {"doc_id": [], "n_tokens": [], "n_windows": [], "warning": []}
    for doc_id, enc in zip(doc_ids, encodings, strict=True):
        ids = np.asarray(enc.ids, dtype=np.int32)
        n = len(ids)
        starts = window_starts(n, config)
        doc_rows["doc_id"].append(doc_id)
        doc_rows["n_tokens"].append(n)
        doc_rows["n_windows"].append(len(starts))
        doc_rows["warning"].append(None if n else EMPTY_DOCUMENT)
        if not n:
            continue
        width = min(config.content_length, n)
        ends = starts + width
        grid = starts[:, None] + np.arange(width)[None, :]  # (n_windows, width) token positions
        windows = np.empty((len(starts), width + 2), dtype=np.int32)
        windows[:, 0] = spec.cls_id
        windows[:, 1:-1] = ids[grid]
        windows[:, -1] = spec.sep_id
        id_parts.append(windows.ravel())
        table_doc.extend([doc_id] * len(starts))
        table_cols["window_index"].append(np.arange(len(starts), dtype=np.int32))
        table_cols["token_start"].append(starts)
        table_cols["token_end"].append(ends)
        # only the window boundaries need character offsets: no per-token Python tuples
        table_cols["char_start"].append(np.array([enc.token_to_chars(int(t))[0] for t in starts], dtype=np.int64))
        table_cols["char_end"].append(np.array([enc.token_to_chars(int(t) - 1)[1] for t in ends], dtype=np.int64))
        table_cols["n_tokens"].append(np.full(len(starts), width + 2, dtype=np.int32))
    if not table_doc:
        empty = _empty_windows()
        empty.documents = pl.DataFrame(doc_rows, schema=DOCUMENTS_SCHEMA)
        return empty
    table = pl.DataFrame(
        {"doc_id": table_doc, **{k: np.concatenate(v) for k, v in table_cols.items()}}, schema=WINDOW_TABLE_SCHEMA
    )
    lengths = table["n_tokens"].to_numpy().astype(np.int64)
    offsets_out = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets_out[1:])
    return Windows(
        table=table,
        input_ids=np.concatenate(id_parts),
        offsets=offsets_out,
        documents=pl.DataFrame(doc_rows, schema=DOCUMENTS_SCHEMA),
    )


_WORKER_SPEC: list[_TokenizerSpec] = []


def _init_worker(spec: _TokenizerSpec) -> None:
    _WORKER_SPEC[:] = [spec]


def _cut_in_worker(doc_ids: list[str], texts: list[str], config: WindowConfig) -> Windows:
    return _cut(doc_ids, texts, _WORKER_SPEC[0], config)


def _as_ids_and_texts(documents: pl.DataFrame | Sequence[str]) -> tuple[list[str], list[str]]:
    if isinstance(documents, pl.DataFrame):
        missing = [c for c in ("doc_id", "text") if c not in documents.columns]
        if missing:
            raise DataError(
                f"documents must be a document table with columns 'doc_id' and 'text'; missing {missing}, "
                f"found {documents.columns}. Build one with longdoc.load_documents(...)"
            )
        texts = documents["text"].fill_null("").to_list()
        return documents["doc_id"].cast(pl.Utf8).to_list(), texts
    if isinstance(documents, str):
        raise DataError("documents must be a sequence of texts or a document table, got a single str; wrap it in a list")
    texts = list(documents)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise DataError(
            f"documents must all be str; items {bad[:5]} are {[type(texts[i]).__name__ for i in bad[:5]]}"
        )
    return [str(i) for i in range(len(texts))], texts


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def make_windows(
    documents: pl.DataFrame | Sequence[str],
    tokenizer: Any,
    config: WindowConfig | None = None,
    *,
    processes: int = 1,
    chunk_size: int = 256,
) -> Windows:
    """Tokenize every document once and cut it into overlapping windows.

    Args:
        documents: a document table (``doc_id``, ``text``; see ``longdoc.load_documents``) or a list of texts
            (ids are then ``"0"``, ``"1"``, ...).
        tokenizer: a Hugging Face fast tokenizer of the encoder (needs character offsets).
        config: window geometry; defaults to ``WindowConfig()`` (512 tokens, overlap 128).
        processes: worker processes for large collections (1 = in this process; the tokenizer itself already
            uses several threads per chunk).
        chunk_size: documents per tokenizer call / worker task.

    Returns:
        ``Windows`` with the window table, token ids and per-document counts, in document order.
    """
    config = config or WindowConfig()
    if not isinstance(processes, int) or processes < 1:
        raise ConfigError(f"processes must be an int >= 1, got {processes!r}")
    doc_ids, texts = _as_ids_and_texts(documents)
    spec = tokenizer_spec(tokenizer)
    slices = list(_chunks(len(texts), chunk_size))
    if processes == 1 or len(slices) <= 1:
        parts = [_cut(doc_ids[s], texts[s], spec, config) for s in slices]
    else:
        # spawn, not fork: the tokenizer's thread pool does not survive a fork.
        ctx = multiprocessing.get_context("spawn")
        env_before = os.environ.get("TOKENIZERS_PARALLELISM")
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        try:
            # the tokenizer (hundreds of KB of JSON) travels once per worker, not once per task
            with ProcessPoolExecutor(max_workers=processes, mp_context=ctx, initializer=_init_worker,
                                     initargs=(spec,)) as pool:
                futures = [pool.submit(_cut_in_worker, doc_ids[s], texts[s], config) for s in slices]
                parts = [f.result() for f in futures]
        finally:
            if env_before is None:
                os.environ.pop("TOKENIZERS_PARALLELISM", None)
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = env_before
    windows = Windows.concat(parts)
    if windows.documents.height:
        empty = windows.documents.filter(pl.col("n_windows") == 0).height
        if empty:
            logger.info("%d of %d documents have no tokens and get zero windows", empty, windows.documents.height)
    return windows
