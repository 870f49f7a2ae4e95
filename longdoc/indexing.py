"""Windows into a passage index: with a classifier (one encoder pass labels and indexes) or without one.

    from longdoc.indexing import build_index, index_documents
    index, encoded = build_index("docs.jsonl")                # no classifier: packaged MiniLM, 256/64 windows
    index.save("index/")
    result = build_index("more.jsonl", index=PassageIndex.load("index/"))   # its recorded encoder and windows
    index, analysis = index_documents(clf, docs)              # a classifier: analysis.probs are the labels
    result = index_documents(clf, edited_docs, index=PassageIndex.load("index/", encoder=clf.retrieval_encoder),
                             prune=True)                       # re-encodes only new or changed documents
    result.counts                                             # IndexCounts(added=1, updated=1, unchanged=..., removed=1)

**Documents.** Anything ``load_documents`` reads (a path, a document table, a list of texts or dicts). A ``str``
naming an existing file or folder is read like a ``Path``; a ``str`` that looks like a path (one line ending in
``.jsonl``/``.json``/``.parquet``/``.csv``/``.txt``..., or with a path separator and no whitespace) but names
nothing raises :class:`DataError`; any other ``str`` is the text of one document. Gold labels (a ``label`` or
``labels`` column) are stored in the passages and are what ``search(..., labels=...)`` filters on.

**Without a classifier** (:func:`build_index`) the vectors are the window embeddings of a :class:`WindowEncoder`
(default: the packaged MiniLM; or a local checkpoint, a sentence-transformers directory or a model directory,
see :func:`load_encoder`) with windows of :data:`INDEX_WINDOW` (256 tokens, 64 shared) unless told otherwise.

**With a classifier** (:func:`index_documents`) the vectors are the window embeddings of the classifier's
``retrieval_encoder``, mean-pooled and L2-normalised; that encoder also encodes the queries. With the frozen
encoder it is the classifier's own encoder (the pretrained MiniLM by default), so one encoder pass gives the
labels and the vectors. After fine-tuning it is, by default, the encoder as it was before fine-tuning
(``TrainConfig(retrieval_encoder="pretrained")``): fine-tuning for classification lowered the man-page retrieval
MRR (benchmarks/RESULTS.md), so the index keeps the pretrained embeddings and the windows are encoded a second
time for it. ``retrieval_encoder="finetuned"`` indexes with the fine-tuned encoder (one pass).

**What the index records.** The encoder's fingerprint (the index refuses another encoder at load), and in its
``attributes``: ``"encoder"`` (where the encoder was loaded from, its token pooling and normalisation: what
:func:`index_encoder` and ``longdoc search`` load to encode queries), ``"window"`` (the window geometry; an
update with another geometry is refused) and, with a classifier, ``"label_map"``.

**Updates.** Every passage row carries ``content_hash``, the sha256 of its document's text (UTF-8). Given an
existing index, a document whose id is absent is *added*, one whose hash differs is *updated* (its old windows
are replaced), one whose hash matches is *unchanged* and is not encoded again; with ``prune=True`` documents in
the index but not in the collection are *removed*.

**Progress.** ``progress=True`` draws one bar over the whole collection, in windows (windows/s, ETA); off by
default here, on by default in ``longdoc index``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from longdoc.data import document_table, resolve_documents
from longdoc.errors import ConfigError, ModelLoadError
from longdoc.model_dir import ENCODER_SETTINGS, is_model_directory, read_encoder_settings, read_model_config
from longdoc.windows import WindowConfig

if TYPE_CHECKING:
    import torch

    from indexer import PassageIndex, ShardedPassageIndex
    from longdoc.classifier import Analysis, Encoded, LongDocClassifier
    from longdoc.encoder import WindowEncoder

logger = logging.getLogger(__name__)

__all__ = ["INDEX_WINDOW", "IndexCounts", "Indexed", "build_index", "content_hash", "encoder_layout",
           "index_documents", "index_encoder", "index_vectors", "index_window", "load_encoder", "open_search_index",
           "passages_from_analysis", "require_index_directory"]

#: Window geometry of an index built without a classifier: the packaged MiniLM was trained on at most 256 tokens,
#: and 256/64 windows retrieve better than 512/128 and encode faster (README, benchmarks/RESULTS.md).
INDEX_WINDOW = WindowConfig(max_length=256, stride=64)

# A str ending in one of these (one line, no longer than a path can be) is taken for a path, never for a text.

# Columns of the passage table this module writes; document metadata with one of these names is renamed.
_PASSAGE_COLUMNS = (
    "row_id", "doc_id", "window_index", "char_start", "char_end", "text", "labels", "pred_labels", "pred_probs",
    "weight", "content_hash",
)


def content_hash(text: str) -> str:
    """sha256 hex digest of a document's text (UTF-8): what tells an edited document from an unchanged one."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def passages_from_analysis(analysis: Analysis, clf: LongDocClassifier | None = None) -> pl.DataFrame:
    """The passage table of an analysis, one row per window, aligned with ``analysis.embeddings``.

    Columns: ``doc_id``, ``window_index``, ``char_start``, ``char_end``, ``text`` (exactly
    ``document[char_start:char_end]``), ``labels`` (the document's gold labels; null when it has none, so the
    index's label filter falls back to the prediction), ``pred_labels`` (the classifier's decision; needs
    ``clf``, else null), ``pred_probs`` (the document's probabilities in ``clf.labels`` order), ``weight`` (the
    window's attribution within its document), ``content_hash`` (see :func:`content_hash`), then the
    document's metadata columns (a metadata column whose name clashes with these is renamed ``meta_<name>``).
    """
    n_docs = analysis.documents.height
    probs = np.asarray(analysis.probs, dtype=np.float64)
    decided: list[Any] = clf.decide(analysis.probs) if clf is not None else [None] * n_docs
    pred_labels = [None if d is None else ([d] if isinstance(d, str) else list(d)) for d in decided]
    return _passage_table(
        analysis.documents, analysis.windows.table,
        pred_labels=pl.Series(pred_labels, dtype=pl.List(pl.String)),
        pred_probs=pl.Series([None if np.isnan(row).any() else row.tolist() for row in probs],
                             dtype=pl.List(pl.Float64)),
        weights=np.asarray(analysis.window_weights, dtype=np.float64),
    )


def _passage_table(docs: pl.DataFrame, table: pl.DataFrame, *, pred_labels: pl.Series | None = None,
                   pred_probs: pl.Series | None = None, weights: np.ndarray | None = None) -> pl.DataFrame:
    """One row per window of ``table`` (the windows of ``docs``), columns as :func:`passages_from_analysis`
    says; the prediction columns and ``weight`` are null where not given (an index built without a classifier)."""
    n_docs = docs.height
    no_lists = pl.Series([None] * n_docs, dtype=pl.List(pl.String))
    doc_rows = pl.DataFrame(
        {
            "doc_id": docs["doc_id"],
            "__doc_row": np.arange(n_docs, dtype=np.int64),
            "labels": docs["labels"].map_elements(lambda x: x if len(x) else None, return_dtype=pl.List(pl.String))
            if "labels" in docs.columns else no_lists,
            "pred_labels": no_lists if pred_labels is None else pred_labels,
            "pred_probs": pl.Series([None] * n_docs, dtype=pl.List(pl.Float64)) if pred_probs is None else pred_probs,
            "content_hash": [content_hash(t) for t in docs["text"].to_list()],
        }
    )
    meta = [c for c in docs.columns if c not in ("doc_id", "text", "labels", "warning")]
    renamed = {c: (f"meta_{c}" if c in _PASSAGE_COLUMNS else c) for c in meta}
    doc_rows = pl.concat([doc_rows, docs.select(meta).rename(renamed)], how="horizontal")

    weight = (pl.Series("weight", [None] * table.height, dtype=pl.Float64) if weights is None
              else pl.Series("weight", weights, dtype=pl.Float64))
    windows = table.select("doc_id", "window_index", "char_start", "char_end").with_columns(weight)
    joined = windows.join(doc_rows, on="doc_id", how="left", maintain_order="left")
    texts = docs["text"].to_list()
    slices = [
        texts[r][s:e]
        for r, s, e in zip(joined["__doc_row"].to_list(), joined["char_start"].to_list(), joined["char_end"].to_list(),
                           strict=True)
    ]
    joined = joined.with_columns(pl.Series("text", slices, dtype=pl.String)).drop("__doc_row")
    front = ["doc_id", "window_index", "char_start", "char_end", "text", "labels", "pred_labels", "pred_probs",
             "weight", "content_hash"]
    return joined.select([*front, *renamed.values()]).with_columns(
        pl.col("window_index", "char_start", "char_end").cast(pl.Int64)
    )


@dataclass(frozen=True)
class IndexCounts:
    """What an :func:`index_documents` call did, in documents (``windows_added`` counts windows)."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    encoded: int = 0
    windows_added: int = 0
    empty: int = 0  # new documents without windows (empty or whitespace-only text): not indexed

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class Indexed(tuple):
    """``(index, analysis)``, unpackable as a pair, with ``.counts`` (:class:`IndexCounts`) attached.

    ``analysis`` covers the documents that were encoded in this call (all of them for a new index; only the new
    and changed ones for an update): an ``Analysis`` from :func:`index_documents` (labels, attributions), an
    ``Encoded`` (documents, windows, embeddings) from :func:`build_index`.
    """

    counts: IndexCounts

    def __new__(cls, index: PassageIndex, analysis: Analysis | Encoded, counts: IndexCounts) -> Indexed:
        obj = super().__new__(cls, (index, analysis))
        obj.counts = counts
        return obj

    @property
    def index(self) -> PassageIndex:
        return self[0]

    @property
    def analysis(self) -> Analysis | Encoded:
        return self[1]


def index_vectors(clf: LongDocClassifier, analysis: Analysis, rows: np.ndarray | None = None,
                  show_progress_bar: bool | None = None) -> np.ndarray:
    """float32 vectors of ``analysis``'s windows (or its window ``rows``) for a passage index.

    The analysis' own embeddings when the classifier indexes with its classification encoder, else the windows
    encoded again by ``clf.retrieval_encoder``.
    """
    if clf.retrieval_encoder is clf.encoder:
        emb = np.asarray(analysis.embeddings, dtype=np.float32)
        return emb if rows is None else emb[rows]
    windows = analysis.windows if rows is None else analysis.windows.take(rows)
    if len(windows) == 0:
        return np.zeros((0, clf.retrieval_encoder.dim), dtype=np.float32)
    return clf.retrieval_encoder.encode_windows(windows, show_progress_bar=show_progress_bar)


# --------------------------------------------------------------------------------------------------- encoders


def _packaged_path() -> str | None:
    from longdoc.encoder import default_model_path

    try:
        return os.path.realpath(default_model_path())
    except ModelLoadError:  # pragma: no cover - a hard dependency
        return None


def _sentence_transformers_layout(path: Path) -> tuple[Path, dict[str, Any]]:
    """``(transformer directory, WindowEncoder settings)`` of a sentence-transformers directory."""
    modules_file = path / "modules.json"
    try:
        modules = json.loads(modules_file.read_text())
        kinds = {str(m["type"]).rsplit(".", 1)[-1]: str(m.get("path", "")) for m in modules}
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ModelLoadError(f"{modules_file} is not a sentence-transformers modules file: {exc}") from exc
    if "Transformer" not in kinds:
        raise ModelLoadError(f"{modules_file} lists no Transformer module (found {sorted(kinds)})")
    settings: dict[str, Any] = {"normalize": "Normalize" in kinds}
    if "Pooling" in kinds:
        pooling_file = path / kinds["Pooling"] / "config.json"
        try:
            pooling = json.loads(pooling_file.read_text())
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot read the pooling config {pooling_file}: {exc}") from exc
        modes = sorted(k[len("pooling_mode_"):] for k, v in pooling.items() if k.startswith("pooling_mode_") and v)
        if modes == ["mean_tokens"]:
            settings["pooling"] = "mean"
        elif modes == ["cls_token"]:
            settings["pooling"] = "cls"
        else:
            raise ConfigError(f"{pooling_file}: pooling modes {modes} are not supported; longdoc pools windows "
                              "by 'mean_tokens' or 'cls_token'")
    return path / kinds["Transformer"], settings


def encoder_layout(path: str | os.PathLike[str]) -> str | None:
    """Which encoder directory ``path`` is, as :func:`load_encoder` reads it: ``"model"`` (a model directory from
    ``longdoc train``), ``"sentence-transformers"`` (a ``modules.json``), ``"checkpoint"`` (a Hugging Face
    checkpoint: ``config.json`` and ``*.safetensors`` weights), or ``None`` (a missing path, a file, a folder of
    documents)."""
    p = Path(path)
    if not p.is_dir():
        return None
    if is_model_directory(p):
        return "model"
    if (p / "modules.json").is_file():
        return "sentence-transformers"
    if (p / "config.json").is_file() and any(p.glob("*.safetensors")):
        return "checkpoint"
    return None


def _encoder_location(source: str | os.PathLike[str] | None) -> tuple[str | None, dict[str, Any]]:
    """Where the weights of ``source`` are and the ``WindowEncoder`` settings (pooling, normalize) it records."""
    if source is None:
        return None, {}
    path = Path(source)
    if not path.exists():
        name = str(source)
        hub_name = not path.is_absolute() and not name.startswith((".", "~")) and name.count("/") <= 1 and (
            "\\" not in name and not name.endswith("/"))
        if not hub_name:
            raise ModelLoadError(f"encoder={name!r} does not exist: expected an encoder checkpoint directory, a "
                                 "sentence-transformers directory, a model directory from `longdoc train` or a hub name")
        return name, {}  # a hub name ("org/name"): WindowEncoder says whether it can be reached
    layout = encoder_layout(path)
    if layout == "model":  # a classifier: the encoder of its passage index
        config = read_model_config(path)
        return str(path / config.retrieval_encoder), config.encoder_settings
    if layout == "sentence-transformers":
        transformer, settings = _sentence_transformers_layout(path)
        return str(transformer), settings
    settings_file = path / ENCODER_SETTINGS
    if settings_file.is_file():
        try:
            saved = read_encoder_settings(settings_file)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{settings_file} is not a longdoc encoder config: {exc}") from exc
        return str(path), {k: saved[k] for k in ("pooling", "normalize") if k in saved}
    return str(path), {}


def load_encoder(
    source: str | os.PathLike[str] | None = None,
    *,
    window: WindowConfig | None = None,
    device: str | None = None,
    dtype: torch.dtype | None = None,
    **settings: Any,
) -> WindowEncoder:
    """A :class:`WindowEncoder` for a passage index.

    Args:
        source: ``None`` (the packaged MiniLM); a Hugging Face checkpoint directory (a ``longdoc_encoder.json``
            beside it gives the token pooling and normalisation); a sentence-transformers directory (its
            ``modules.json``, pooling and ``Normalize`` modules are read); a model directory from ``longdoc train``
            (its index encoder: ``retrieval_encoder/`` after fine-tuning, else ``encoder/``); or a hub name.
        window: the encoder's window geometry (queries are cut to ``window.max_length`` tokens); default
            :data:`INDEX_WINDOW`.
        device, dtype: as ``WindowEncoder`` takes them.
        settings: ``pooling`` / ``normalize``, overriding what the directory says.

    Raises:
        ModelLoadError: ``source`` does not exist or cannot be loaded.
    """
    from longdoc.encoder import WindowEncoder

    path, found = _encoder_location(source)
    try:
        return WindowEncoder(path, window=window or INDEX_WINDOW, device=device, dtype=dtype,
                             **{**found, **settings})
    except (ModelLoadError, ConfigError):
        raise
    except Exception as exc:  # a damaged directory: safetensors, JSON or tokenizer errors
        raise ModelLoadError(f"cannot load an encoder from {str(source)!r}: {type(exc).__name__}: {exc}") from exc


def _encoder_record(encoder: Any) -> dict[str, Any] | None:
    """What an index records of its encoder, so that a search can load it again (``None`` for a foreign one)."""
    name = getattr(encoder, "model_name_or_path", None)
    if name is None:
        return None
    record: dict[str, Any] = {"pooling": getattr(encoder, "pooling", "mean"),
                              "normalize": bool(getattr(encoder, "normalize", True))}
    local = Path(name)
    if local.exists():
        real = os.path.realpath(local)
        if real == _packaged_path():
            return {"source": "packaged", **record}
        return {"source": "path", "path": real, **record}
    return {"source": "hub", "path": str(name), **record}


def _recorded_attributes(index_or_directory: Any) -> dict[str, Any]:
    if not isinstance(index_or_directory, (str, os.PathLike)):
        return dict(getattr(index_or_directory, "attributes", {}) or {})
    from indexer.storage import wait_for_swap

    directory = Path(index_or_directory)
    wait_for_swap(directory)  # a save between its two renames: wait for it, as loading the index does
    try:
        manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{str(directory)!r} is not an index directory: cannot read manifest.json ({exc})") from exc
    if not isinstance(manifest, dict):
        raise ModelLoadError(f"{directory}/manifest.json does not hold a JSON object")
    if manifest.get("kind") == "sharded":  # the attributes live in the first shard: open it the public way
        from indexer.sharded import load_index

        with load_index(directory, mmap=True) as index:
            return dict(index.attributes)
    attributes = manifest.get("attributes") or {}
    return dict(attributes) if isinstance(attributes, dict) else {}


def require_index_directory(directory: str | os.PathLike[str]) -> str:
    """``directory`` as a str when it holds an index (or a save is swapping one in); else a ``ModelLoadError``.
    Cheap: the commands call it before loading an encoder they would not need."""
    from indexer.storage import swap_in_progress

    directory = os.fspath(directory)
    if not (Path(directory) / "manifest.json").is_file() and not swap_in_progress(directory):
        raise ModelLoadError(f"{directory!r} is not an index directory (manifest.json is missing)")
    return directory


def open_search_index(directory: str | os.PathLike[str], *, encoder: Any = None, device: str | None = None,
                      mismatch_hint: str | None = None) -> Any:
    """The index at ``directory`` loaded read-only for searching (``longdoc search``, ``longdoc serve``, the
    framework retrievers): flat or sharded, no writer lock, waiting out a save's swap.

    ``encoder``: its query encoder (``None``: set one later, ``index.encoder = ...``). The search runs on the
    CPU unless ``device`` names a GPU: for a few queries, copying the vectors there costs more than searching
    them. A directory without a manifest is a ``ModelLoadError``; an encoder whose fingerprint the index does
    not record is the index's ``IndexLoadError``, with ``mismatch_hint`` (what to pass instead) appended.
    """
    from indexer.errors import IndexLoadError
    from indexer.sharded import load_index

    directory = require_index_directory(directory)
    on_gpu = device is not None and str(device).startswith("cuda")
    try:
        return load_index(directory, encoder=encoder, device=device if on_gpu else "cpu")
    except IndexLoadError as exc:
        if mismatch_hint and "fingerprint" in str(exc):
            raise IndexLoadError(f"{exc}; {mismatch_hint}") from exc
        raise


def index_encoder(
    index_or_directory: PassageIndex | ShardedPassageIndex | str | os.PathLike[str],
    *,
    device: str | None = None,
    dtype: torch.dtype | None = None,
) -> WindowEncoder | None:
    """The encoder an index records (its ``attributes["encoder"]``), loaded with the index's window geometry, or
    ``None`` when the index records none (built by an older version, or from vectors).

    When the recorded directory no longer exists (the model was moved), the packaged MiniLM is tried with a
    warning; the index's fingerprint check says whether it is the same encoder.
    """
    attributes = _recorded_attributes(index_or_directory)
    record = attributes.get("encoder")
    if not isinstance(record, dict):
        return None
    window = None
    if isinstance(attributes.get("window"), dict):
        try:
            window = WindowConfig.from_dict(attributes["window"])
        except (ConfigError, TypeError) as exc:
            raise ModelLoadError(f"the index records an invalid window geometry {attributes['window']!r}: {exc}") from exc
    settings = {k: record[k] for k in ("pooling", "normalize") if k in record}
    source = record.get("path") if record.get("source") in ("path", "hub") else None
    if record.get("source") == "path" and source is not None and not Path(source).exists():
        logger.warning("the index was built with the encoder at %s, which no longer exists; trying the packaged "
                       "MiniLM (pass the encoder or model directory explicitly if it is another one)", source)
        source = None
    return load_encoder(source, window=window, device=device, dtype=dtype, **settings)


# --------------------------------------------------------------------------------------------------- updates


def _is_analysis(obj: Any) -> bool:
    return all(hasattr(obj, a) for a in ("documents", "windows", "embeddings", "probs", "window_weights"))


def _is_encoded(obj: Any) -> bool:
    return not _is_analysis(obj) and all(hasattr(obj, a) for a in ("documents", "windows", "embeddings"))


def _stored_hashes(index: PassageIndex) -> dict[str, str | None]:
    table = index.passages
    if table.height == 0:
        return {}
    if "content_hash" not in table.columns:
        return dict.fromkeys(table["doc_id"].unique().to_list())
    first = table.group_by("doc_id", maintain_order=True).agg(pl.col("content_hash").first())
    return dict(zip(first["doc_id"].to_list(), first["content_hash"].to_list(), strict=True))


def _attach_encoder(index: PassageIndex, encoder: WindowEncoder, whose: str) -> None:
    """Check that ``index`` was built with ``encoder`` (dim, fingerprint) and make it the query encoder."""
    if index.dim != encoder.dim:
        raise ConfigError(f"index dim {index.dim} differs from {whose} dim {encoder.dim}")
    stored = index.encoder_fingerprint
    if stored is not None and stored != encoder.fingerprint:
        raise ConfigError(
            "the index was built with another encoder (fingerprint "
            f"{stored[:12]}..., {whose} has {encoder.fingerprint[:12]}...); build a new index"
        )
    if index.encoder is not encoder:
        index.encoder = encoder


def index_window(index: PassageIndex | ShardedPassageIndex | None) -> WindowConfig | None:
    """The window geometry ``index`` records (``None`` for no index, or one that records none)."""
    raw = None if index is None else index.attributes.get("window")
    if raw is None:
        return None
    try:
        return WindowConfig.from_dict(raw)
    except (ConfigError, TypeError) as exc:
        raise ConfigError(f"the index records an invalid window geometry {raw!r}: {exc}") from exc


def _check_window(index: PassageIndex | None, window: WindowConfig, what: str) -> None:
    recorded = index_window(index)
    if recorded is not None and recorded != window:
        raise ConfigError(
            f"the index was built with windows {recorded.to_dict()}; {what} {window.to_dict()}: one index holds one "
            "window geometry (update it with the same windows, or build a new index)"
        )


def _plan(docs: pl.DataFrame, index: PassageIndex | None) -> tuple[list[str], np.ndarray, dict[str, str | None]]:
    """Each document's status (added / updated / unchanged), the mask of those to encode, the stored hashes."""
    hashes = [content_hash(t) for t in docs["text"].to_list()]
    old = _stored_hashes(index) if index is not None else {}
    status = ["added" if d not in old else "unchanged" if old[d] == h else "updated"
              for d, h in zip(docs["doc_id"].to_list(), hashes, strict=True)]
    return status, np.asarray([s != "unchanged" for s in status], dtype=bool), old


def _apply(index: PassageIndex, emb: np.ndarray, passages: pl.DataFrame, todo_ids: list[str],
           old: dict[str, str | None], docs: pl.DataFrame, prune: bool) -> int:
    """Upsert the new windows, drop changed documents that lost every window and, with ``prune``, the documents
    that are gone; returns how many documents were pruned."""
    # changed documents that now have no windows would keep their old windows through upsert: remove them
    emptied = sorted(set(todo_ids) & set(old) - set(passages["doc_id"].unique().to_list()))
    if emptied:
        index.remove(doc_ids=emptied)
    if passages.height:
        index.upsert(emb, passages)
    if not prune:
        return 0
    gone = sorted(set(old) - set(docs["doc_id"].to_list()))
    if gone:
        index.remove(doc_ids=gone)
    return len(gone)


def _counts(status: list[str], docs: pl.DataFrame, passages: pl.DataFrame, removed: int, encoded: int
            ) -> IndexCounts:
    # a new document without windows (empty text) is not in the index: "empty", not "added" (on every run)
    windowed = set(passages["doc_id"].unique().to_list())
    status = ["empty" if s == "added" and d not in windowed else s
              for d, s in zip(docs["doc_id"].to_list(), status, strict=True)]
    counts = IndexCounts(
        added=status.count("added"), empty=status.count("empty"), updated=status.count("updated"),
        unchanged=status.count("unchanged"), removed=removed, encoded=encoded, windows_added=passages.height,
    )
    logger.info("indexed: %d added, %d updated, %d unchanged, %d removed, %d empty (%d documents encoded, %d "
                "windows)", counts.added, counts.updated, counts.unchanged, counts.removed, counts.empty,
                counts.encoded, counts.windows_added)
    return counts


def _record(index: PassageIndex, encoder: Any, window: WindowConfig) -> None:
    record = _encoder_record(encoder)
    extra: dict[str, Any] = {"window": window.to_dict()}
    if record is not None:
        extra["encoder"] = record
    index.attributes = {**index.attributes, **extra}


# --------------------------------------------------------------------------------------------------- entry points


def build_index(
    documents: Any,
    *,
    encoder: WindowEncoder | str | os.PathLike[str] | None = None,
    window: WindowConfig | None = None,
    index: PassageIndex | None = None,
    prune: bool = False,
    progress: bool = False,
    device: str | None = None,
    dtype: torch.dtype | None = None,
    **columns: Any,
) -> Indexed:
    """Index the windows of documents without a classifier; returns ``(index, encoded)``.

    Args:
        documents: a path (``str`` or ``Path``: JSON lines, JSON, Parquet, CSV, text files, a folder), a document
            table, a list of texts or of dicts (see :func:`longdoc.data.resolve_documents` for ``str``). A label column, when
            present, is stored as the passages' gold labels: what ``search(..., labels=...)`` filters on.
        encoder: a loaded ``WindowEncoder``, or what :func:`load_encoder` takes (a checkpoint, sentence-transformers
            or model directory); ``None``: the encoder ``index`` records, else the packaged MiniLM.
        window: the window geometry; ``None``: the one ``index`` records, else :data:`INDEX_WINDOW` (256/64) for
            a new index (an ``index`` that records none needs ``window``: its geometry is never guessed).
        index: an existing index to update (documents matched by ``doc_id`` and ``content_hash``); ``None`` builds
            a new one.
        prune: remove the documents of ``index`` that are not in ``documents``.
        progress: one progress bar over the whole collection (windows, windows/s, ETA).
        device, dtype: for an encoder loaded here.
        columns: ``text_column`` / ``label_column`` / ``id_column`` for tabular inputs.

    Returns:
        :class:`Indexed`: unpacks as ``(index, encoded)``, ``encoded`` an ``Encoded`` of the documents encoded in
        this call; ``.counts`` says how many documents were added, updated, unchanged, removed and encoded.

    Raises:
        DataError: ``documents`` cannot be read (or is a ``str`` that looks like a missing path).
        ConfigError: ``index`` holds another encoder's vectors or another window geometry, or records no window
            geometry and ``window`` is ``None``.
        ModelLoadError: the encoder cannot be loaded.
    """
    from indexer import PassageIndex
    from longdoc.classifier import Encoded

    if not isinstance(prune, bool) or not isinstance(progress, bool):
        raise ConfigError(f"prune and progress must be bools, got prune={prune!r}, progress={progress!r}")
    if window is not None and not isinstance(window, WindowConfig):
        raise ConfigError(f"window must be a WindowConfig or None, got {type(window).__name__}")
    recorded = index_window(index)
    if window is None and index is not None and recorded is None:
        raise ConfigError("the index records no window geometry (it was built before indexes recorded it): pass "
                          "window=WindowConfig(...) with the windows it was built with, or build a new index")
    geometry = window or recorded or INDEX_WINDOW
    _check_window(index, geometry, "window=")
    docs = document_table(resolve_documents(documents), **columns)  # before loading an encoder: a bad path fails fast

    if encoder is None or isinstance(encoder, (str, os.PathLike)):
        loaded = None
        if encoder is None and index is not None:
            loaded = index.encoder if hasattr(index.encoder, "encode_documents") else index_encoder(
                index, device=device, dtype=dtype)
        enc = loaded or load_encoder(encoder, window=geometry, device=device, dtype=dtype)
    elif hasattr(encoder, "encode_documents") and hasattr(encoder, "fingerprint"):
        enc = encoder
    else:
        raise ConfigError(f"encoder must be a WindowEncoder, a path or None, got {type(encoder).__name__}")
    if index is not None:
        _attach_encoder(index, enc, "the encoder")

    status, todo, old = _plan(docs, index)
    todo_docs = docs.filter(pl.Series(todo))
    windows, emb = enc.encode_documents(todo_docs, window=geometry, show_progress_bar=progress)
    passages = _passage_table(todo_docs, windows.table)
    if index is None:
        index = PassageIndex(dim=enc.dim, encoder=enc)
    removed = _apply(index, emb, passages, todo_docs["doc_id"].to_list(), old, docs, prune)
    _record(index, enc, geometry)
    counts = _counts(status, docs, passages, removed, int(todo.sum()))
    return Indexed(index, Encoded(todo_docs, windows, emb, enc.fingerprint), counts)


def index_documents(
    clf: LongDocClassifier,
    documents: Any,
    *,
    index: PassageIndex | None = None,
    prune: bool = False,
    progress: bool = False,
    show_progress_bar: bool | None = None,
    **columns: Any,
) -> Indexed:
    """Label documents and index their windows with one encoder pass; returns ``(index, analysis)``.

    Without a classifier, use :func:`build_index`.

    Args:
        clf: the classifier; its ``retrieval_encoder`` makes the vectors and becomes the index's query encoder
            (see the module docstring).
        documents: any input ``clf.analyze`` takes (document table, file path, list of texts...; a ``str`` as
            :func:`longdoc.data.resolve_documents` says), or an ``Analysis`` / ``Encoded`` from an earlier pass over the same
            documents (nothing is encoded again).
        index: an existing index to update (documents are matched by ``doc_id`` and ``content_hash``); ``None``
            builds a new one (``encoder=clf.retrieval_encoder``).
        prune: remove the documents of ``index`` that are not in ``documents``.
        progress: one progress bar over the whole collection (windows, windows/s, ETA).
        show_progress_bar: the older name of ``progress``, kept for existing callers: when not ``None`` it wins.
        columns: ``text_column`` / ``label_column`` / ``id_column`` for tabular inputs.

    Returns:
        :class:`Indexed`: unpacks as ``(index, analysis)``; ``.counts`` says how many documents were added,
        updated, unchanged, removed and encoded. Documents without tokens are labelled (NaN probabilities) but
        have no windows to index.

    Raises:
        ConfigError: ``index`` was built with a different encoder (its fingerprint differs from
            ``clf.retrieval_encoder``'s), has a different dimension, window geometry or label map; or an
            ``Analysis`` / ``Encoded`` was cut with another window geometry than ``clf.window``.
        DataError: ``documents`` is a ``str`` that looks like a path but names nothing.
    """
    from indexer import PassageIndex

    bars = progress if show_progress_bar is None else show_progress_bar
    encoder = clf.retrieval_encoder
    if index is not None:
        _attach_encoder(index, encoder, "the classifier's encoder")
        _check_window(index, clf.window, "this classifier cuts")
        recorded = index.attributes.get("label_map")
        if recorded is not None and list(recorded) != list(clf.labels):
            raise ConfigError(
                f"the index holds predictions of a classifier with labels {recorded}; this classifier's labels are "
                f"{list(clf.labels)} (pred_probs are stored in label order): use that classifier or a new index"
            )

    precomputed = None
    if _is_analysis(documents):
        cut = getattr(documents, "window", None)
        if cut is not None and cut != clf.window:
            raise ConfigError(
                f"this analysis was cut with windows {cut.to_dict()}, this classifier uses {clf.window.to_dict()}: "
                "analyze the documents with this classifier (clf.analyze(docs)) or pass the documents")
        precomputed, docs = documents, documents.documents
    elif _is_encoded(documents):
        precomputed, docs = clf.analyze(documents, show_progress_bar=bars), documents.documents
    else:
        docs = document_table(resolve_documents(documents), **columns)

    status, todo, old = _plan(docs, index)
    todo_ids = docs.filter(pl.Series(todo))["doc_id"]

    if precomputed is not None:
        analysis = precomputed
        n_encoded = 0
    else:
        analysis = clf.analyze(docs.filter(pl.Series(todo)), show_progress_bar=bars)
        n_encoded = int(todo.sum())

    passages = passages_from_analysis(analysis, clf)
    rows = None
    if precomputed is not None and not todo.all():  # skip the unchanged documents of a precomputed pass
        keep = passages["doc_id"].is_in(todo_ids.implode()).to_numpy()
        passages, rows = passages.filter(pl.Series(keep)), np.flatnonzero(keep)
    emb = index_vectors(clf, analysis, rows, show_progress_bar=bars)

    if index is None:
        index = PassageIndex(dim=encoder.dim, encoder=encoder)
    index.attributes = {**index.attributes, "label_map": list(clf.labels)}
    removed = _apply(index, emb, passages, todo_ids.to_list(), old, docs, prune)
    _record(index, encoder, clf.window)
    counts = _counts(status, docs, passages, removed, n_encoded)
    return Indexed(index, analysis, counts)
