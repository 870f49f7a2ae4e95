"""Beyond one machine: the windowing, encoding and labelling stages as plain callables, and Ray Data pipelines.

The stages are ordinary Python callables over batches (a ``pyarrow.Table``, a pandas DataFrame, a polars
DataFrame or a dict of columns in; a ``pyarrow.Table`` out), so Ray Data's ``map_batches`` (or Spark's
``predict_batch_udf``, or a plain loop) can run them:

- :class:`WindowingStage` (CPU, stateless): documents ``{doc_id, text, ...}`` -> the same rows plus their
  windows (token ids as lists, token and character spans), or one row per window with ``explode=True``.
  The tokenizer is captured once; each worker process rebuilds it once.
- :class:`EncodingStage` (class-based, GPU): loads the encoder once per actor in ``__init__``; window rows with
  ``input_ids`` in, the same rows plus ``embedding`` (list[float32]) out.
- :class:`LabellingStage` (class-based, GPU): loads the ``LongDocClassifier`` once per actor; documents in
  (windowed by :class:`WindowingStage` upstream, or raw text), the rows ``longdoc.labeling.label_documents``
  writes out: ``doc_id``, ``label``/``labels``, ``probs``, ``top_passages``, ``warning``, ``error``, ``failed``.
- :class:`PassageStage` (class-based, GPU): the same pass, but out come the passage rows
  ``longdoc.indexing.passages_from_analysis`` makes, with ``embedding`` and the ``shard`` of each document.

:func:`label_with_ray` and :func:`index_with_ray` chain them with Ray Data (read Parquet or stream any other
source, CPU windowing tasks, a pool of model actors with ``num_gpus`` each, Parquet out) and produce the same
files as the single-machine paths: a labels directory :func:`longdoc.labeling.read_labels` reads, and a sharded
index directory :class:`indexer.ShardedPassageIndex` loads.

Ray is optional: ``pip install 'longdoc[ray]'``. It is imported inside the functions that need it, nowhere else.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
from transformers import AutoTokenizer

from indexer import PassageIndex
from indexer.sharded import shard_of, write_sharded_directory
from indexer.storage import DirectoryLock
from longdoc.classifier import Encoded, LongDocClassifier
from longdoc.data import iter_documents, load_documents
from longdoc.encoder import WindowEncoder, check_checkpoint_directory
from longdoc.errors import DataError, ModelLoadError
from longdoc.indexing import index_vectors, passages_from_analysis
from longdoc.label_core import (
    LabelRun,
    LabelSummary,
    check_options,
    check_top_passages,
    label_chunk,
    label_rows,
    positive_int,
)
from longdoc.label_store import conform_rows, label_schema
from longdoc.model_dir import ENCODER_SETTINGS, is_model_directory, read_encoder_settings, read_model_config
from longdoc.windows import (
    DOCUMENTS_SCHEMA,
    EMPTY_DOCUMENT,
    WINDOW_TABLE_SCHEMA,
    WindowConfig,
    Windows,
    make_windows,
)

if TYPE_CHECKING:
    import pyarrow as pa

logger = logging.getLogger(__name__)

__all__ = [
    "EncodingStage",
    "LabellingStage",
    "PassageStage",
    "WindowingStage",
    "index_with_ray",
    "label_with_ray",
]

#: Columns :class:`WindowingStage` adds to each document row (a document's windows travel together).
WINDOWS_COLUMN = "windows"
DOC_TOKENS_COLUMN = "doc_n_tokens"
_WINDOW_FIELDS = ("window_index", "token_start", "token_end", "char_start", "char_end", "n_tokens", "input_ids")
_STAGING_PREFIX = ".ray-staging-"
_CLOSING = ("labelled %(n_labelled)d documents with Ray (%(n_errors)d error rows, %(n_retried)d retried, "
            "%(n_skipped)d already done) into %(output)s")


def _require_ray() -> Any:
    try:  # here, not on top: Ray is an optional extra
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "the Ray engine needs Ray Data: pip install 'longdoc[ray]' (or pip install 'ray[data]>=2.40')"
        ) from exc
    return ray


# --------------------------------------------------------------------------------------------------- batches


def _to_polars(batch: Any) -> pl.DataFrame:
    """A batch as Ray or Spark hand it over (pyarrow, pandas, dict of columns, polars) as a polars DataFrame."""
    if isinstance(batch, pl.DataFrame):
        return batch
    module = type(batch).__module__.split(".")[0]
    if module == "pyarrow":
        return pl.from_arrow(batch)  # type: ignore[return-value]
    if module == "pandas":
        return pl.from_pandas(batch)
    if isinstance(batch, dict):
        return pl.DataFrame({k: (list(v) if isinstance(v, np.ndarray) and v.dtype == object else v)
                             for k, v in batch.items()})
    raise DataError(f"a batch must be a pyarrow Table, a pandas or polars DataFrame or a dict of columns, "
                    f"got {type(batch).__name__}")


def _to_arrow(frame: pl.DataFrame) -> pa.Table:
    return frame.to_arrow()


def _model_parts(model_dir: str | os.PathLike[str]) -> tuple[Path, WindowConfig, bool]:
    """(encoder checkpoint, window geometry, is a classifier directory) of a model path."""
    path = Path(model_dir)
    if not path.exists():
        raise ModelLoadError(f"model not found: {str(path)!r}")
    if is_model_directory(path):
        return path / "encoder", read_model_config(path).window, True
    settings = path / ENCODER_SETTINGS
    if settings.is_file():
        try:
            return path, WindowConfig.from_dict(read_encoder_settings(settings)["window"]), False
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(f"{settings} is not a longdoc encoder config: {exc}") from exc
    return path, WindowConfig(), False


def _load_classifier(model_dir: str | os.PathLike[str], device: str | None) -> LongDocClassifier:
    _, _, is_classifier = _model_parts(model_dir)
    if not is_classifier:
        raise ModelLoadError(f"{str(model_dir)!r} is not a longdoc model directory (config.json and encoder/); "
                             "labelling and indexing need a trained classifier (longdoc train)")
    return LongDocClassifier.load(model_dir, device=device)


def _windows_from_rows(docs: pl.DataFrame) -> Windows:
    """Rebuild ``Windows`` from document rows carrying :class:`WindowingStage` columns (no re-tokenization)."""
    per_doc = docs[WINDOWS_COLUMN].to_list()
    doc_ids = docs["doc_id"].to_list()
    table_rows: dict[str, list[Any]] = {k: [] for k in WINDOW_TABLE_SCHEMA}
    ids: list[np.ndarray] = []
    counts = []
    for doc_id, windows in zip(doc_ids, per_doc, strict=True):
        windows = windows or []
        counts.append(len(windows))
        for w in windows:
            table_rows["doc_id"].append(doc_id)
            for name in WINDOW_TABLE_SCHEMA:
                if name != "doc_id":
                    table_rows[name].append(w[name])
            ids.append(np.asarray(w["input_ids"], dtype=np.int32))
    table = pl.DataFrame(table_rows, schema=WINDOW_TABLE_SCHEMA)
    lengths = np.asarray([len(x) for x in ids], dtype=np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    documents = pl.DataFrame({
        "doc_id": doc_ids,
        "n_tokens": docs[DOC_TOKENS_COLUMN].to_list(),
        "n_windows": counts,
        "warning": [None if c else EMPTY_DOCUMENT for c in counts],
    }, schema=DOCUMENTS_SCHEMA)
    flat = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int32)
    return Windows(table=table, input_ids=flat, offsets=offsets, documents=documents)


# --------------------------------------------------------------------------------------------------- stages


class _DocumentsStage:
    """Raw rows (from ``ray.data.read_parquet`` or a user's dataset) -> the document table ``load_documents``
    makes, minus documents already done (``skip``)."""

    def __init__(self, reader_options: dict[str, Any], skip: frozenset[str] = frozenset()) -> None:
        self.reader_options = dict(reader_options)
        self.skip = skip

    def __call__(self, batch: Any) -> pa.Table:
        raw = _to_polars(batch)
        docs = load_documents(raw, **self.reader_options) if raw.height else _empty_documents()
        if self.skip:
            docs = docs.filter(~pl.col("doc_id").is_in(list(self.skip)))
        return _to_arrow(docs)


def _empty_documents() -> pl.DataFrame:
    return load_documents([], metadata_columns=[])


class WindowingStage:
    """CPU stage: tokenize each document once and cut its windows, as ``longdoc.windows.make_windows`` does.

    Args:
        model_dir: a longdoc model directory (its ``encoder/`` tokenizer and its window geometry) or an encoder
            checkpoint (window geometry from ``longdoc_encoder.json``, else the default).
        window: override the window geometry.
        explode: ``False`` (default): one output row per document, its input columns plus ``windows`` (a list of
            structs ``window_index, token_start, token_end, char_start, char_end, n_tokens, input_ids``) and
            ``doc_n_tokens``: a document's windows stay in one batch, as the document head needs. ``True``: one
            row per window (``doc_id`` plus those fields), for :class:`EncodingStage`; documents without tokens
            give no rows.

    The object is small and picklable (the tokenizer is captured as its JSON), so Ray runs it as stateless tasks.
    """

    def __init__(
        self, model_dir: str | os.PathLike[str], *, window: WindowConfig | None = None, explode: bool = False
    ) -> None:
        encoder_dir, default_window, _ = _model_parts(model_dir)
        self.window = window or default_window
        self.explode = bool(explode)
        check_checkpoint_directory(encoder_dir)  # no remote code, no weights outside (before transformers reads it)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(encoder_dir), use_fast=True, trust_remote_code=False)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"could not load a tokenizer from {str(encoder_dir)!r}: {exc}") from exc

    def __call__(self, batch: Any) -> pa.Table:
        docs = _to_polars(batch)
        clash = [c for c in (WINDOWS_COLUMN, DOC_TOKENS_COLUMN) if c in docs.columns]
        if clash:
            raise DataError(f"documents already have column(s) {clash}, which WindowingStage writes; rename them")
        windows = make_windows(docs, self.tokenizer, self.window)
        table = windows.table
        ids = [windows.ids(i).tolist() for i in range(len(windows))]
        if self.explode:
            return _to_arrow(table.with_columns(pl.Series("input_ids", ids, dtype=pl.List(pl.Int32))))
        counts = windows.documents["n_windows"].to_numpy().astype(np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        columns = {name: table[name].to_list() for name in _WINDOW_FIELDS if name != "input_ids"}
        per_doc = []
        for i in range(docs.height):
            rows = range(offsets[i], offsets[i + 1])
            per_doc.append([{**{name: columns[name][r] for name in columns}, "input_ids": ids[r]} for r in rows])
        struct = pl.Struct({"window_index": pl.Int32, "token_start": pl.Int64, "token_end": pl.Int64,
                            "char_start": pl.Int64, "char_end": pl.Int64, "n_tokens": pl.Int32,
                            "input_ids": pl.List(pl.Int32)})
        out = docs.with_columns(
            pl.Series(WINDOWS_COLUMN, per_doc, dtype=pl.List(struct)),
            pl.Series(DOC_TOKENS_COLUMN, windows.documents["n_tokens"].to_list(), dtype=pl.Int64),
        )
        return _to_arrow(out)


class EncodingStage:
    """GPU stage: window rows with ``input_ids`` (list of token ids, ``[CLS] ... [SEP]``) -> the same rows plus
    ``embedding`` (list[float32], L2-normalised as the encoder is configured).

    Loads the encoder once, in ``__init__`` (one per Ray actor): a longdoc model directory gives its encoder
    (with its pooling and normalisation), any other path a ``WindowEncoder`` checkpoint.

    Args:
        model_dir: a longdoc model directory or an encoder checkpoint.
        device: ``None`` picks CUDA when present.
    """

    def __init__(self, model_dir: str | os.PathLike[str], *, device: str | None = None) -> None:
        _, window, is_classifier = _model_parts(model_dir)
        if is_classifier:  # the encoder whose vectors go into passage indexes
            self.encoder: WindowEncoder = _load_classifier(model_dir, device).retrieval_encoder
        else:
            self.encoder = WindowEncoder(model_dir, device=device, window=window)

    def __call__(self, batch: Any) -> pa.Table:
        rows = _to_polars(batch)
        if "input_ids" not in rows.columns:
            raise DataError(f"EncodingStage needs window rows with an 'input_ids' column (WindowingStage with "
                            f"explode=True makes them); found {rows.columns}")
        sequences = [np.asarray(x, dtype=np.int32) for x in rows["input_ids"].to_list()]
        emb = self.encoder.encode_ids(sequences, show_progress_bar=False) if sequences else \
            np.zeros((0, self.encoder.dim), dtype=np.float32)
        return _to_arrow(rows.with_columns(pl.Series("embedding", list(emb), dtype=pl.List(pl.Float32))))


class _ModelStage:
    """Shared by the classifier stages: load the classifier once; analyse a batch of documents."""

    def __init__(self, model_dir: str | os.PathLike[str], *, device: str | None = None) -> None:
        self.clf = _load_classifier(model_dir, device)

    def _analysis(self, docs: pl.DataFrame) -> Any:
        """One encoder pass over the documents; windows from :class:`WindowingStage` are reused as they are."""
        if WINDOWS_COLUMN not in docs.columns:
            return self.clf.analyze(docs, show_progress_bar=False)
        windows = _windows_from_rows(docs)
        table = docs.drop(WINDOWS_COLUMN, DOC_TOKENS_COLUMN)
        emb = self.clf.encoder.encode_windows(windows, show_progress_bar=False)
        return self.clf.analyze(Encoded(table, windows, emb, self.clf.encoder.fingerprint), show_progress_bar=False)


class LabellingStage(_ModelStage):
    """GPU stage: documents in, the rows the single-machine ``label_documents`` writes out.

    Output columns, exactly as a part of a labels directory: ``doc_id``, ``label`` (single-label models) or
    ``labels`` (multi-label), ``probs``, ``top_passages``, ``warning``, ``error``, ``failed``. A document whose
    analysis raises is an error row with ``failed=True`` (a later run retries it), never a failed batch. Loads
    the ``LongDocClassifier`` once, in ``__init__`` (one per Ray actor).

    Args:
        model_dir: a longdoc model directory.
        top_passages: the most influential windows kept per document.
        device: ``None`` picks CUDA when present.

    Input rows carry ``doc_id`` and ``text`` (plus ``warning`` and metadata); with the columns
    :class:`WindowingStage` adds, the windows are encoded as they are (no second tokenization).
    """

    def __init__(self, model_dir: str | os.PathLike[str], *, top_passages: int = 3, device: str | None = None) -> None:
        self.top_passages = check_top_passages(top_passages)
        super().__init__(model_dir, device=device)

    def __call__(self, batch: Any) -> pa.Table:
        docs = _to_polars(batch)
        if docs.height == 0:
            return _to_arrow(pl.DataFrame(schema=label_schema(self.clf.multi_label)))
        plain = docs.drop([c for c in (WINDOWS_COLUMN, DOC_TOKENS_COLUMN) if c in docs.columns])
        try:
            rows = label_rows(self.clf, plain, self.top_passages, analysis=self._analysis(docs))
        except Exception as exc:  # noqa: BLE001 - isolate the bad document the single-machine way
            logger.warning("a batch of %d documents failed (%s): labelling them one by one", docs.height, exc)
            rows = label_chunk(self.clf, plain, self.top_passages)
        # the same column set and types as every part label_documents writes (error rows have only three columns)
        return _to_arrow(conform_rows(rows, self.clf.multi_label))


class PassageStage(_ModelStage):
    """GPU stage: documents in, one row per window out: the passage table ``passages_from_analysis`` makes
    (``doc_id``, ``window_index``, spans, ``text``, labels, predictions, ``weight``, ``content_hash``, metadata),
    plus ``embedding`` (list[float32]) and, with ``shards``, ``shard`` (``indexer.sharded.shard_of``).

    Args:
        model_dir: a longdoc model directory.
        shards: the shard count of the index being built (adds the ``shard`` column); ``None`` for none.
        device: ``None`` picks CUDA when present.
    """

    def __init__(self, model_dir: str | os.PathLike[str], *, shards: int | None = None,
                 device: str | None = None) -> None:
        super().__init__(model_dir, device=device)
        self.shards = shards

    def __call__(self, batch: Any) -> pa.Table:
        docs = _to_polars(batch)
        analysis = self._analysis(docs)
        passages = passages_from_analysis(analysis, self.clf)
        emb = index_vectors(self.clf, analysis, show_progress_bar=False)
        passages = passages.with_columns(pl.Series("embedding", list(emb), dtype=pl.List(pl.Float32)))
        if self.shards is not None:
            passages = passages.with_columns(
                pl.Series("shard", [shard_of(d, self.shards) for d in passages["doc_id"].to_list()], dtype=pl.Int64)
            )
        return _to_arrow(passages)


# --------------------------------------------------------------------------------------------------- pipelines


def _documents_dataset(source: Any, reader_options: dict[str, Any], skip: frozenset[str]) -> Any:
    """A Ray Dataset of document-table rows from ``source``.

    Parquet files and folders are read in parallel by Ray when the data has document ids (``id``/``doc_id`` or
    ``id_column``); a ``ray.data.Dataset`` is used as it is; anything else (and Parquet without ids, whose
    row-number ids need one reader) is streamed by ``longdoc.iter_documents`` on the driver into Ray.
    """
    ray = _require_ray()
    stage = _DocumentsStage(reader_options, skip)
    if isinstance(source, ray.data.Dataset):
        return source.map_batches(stage, batch_format="pyarrow")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise DataError(f"documents not found: {str(path)!r}")
        is_parquet = path.suffix.lower() in (".parquet", ".pq") or (
            path.is_dir() and any(path.glob("*.parquet")) and not any(path.glob("*.txt")))
        if is_parquet:
            ds = ray.data.read_parquet(str(path))
            names = ds.schema().names
            id_column = reader_options.get("id_column")
            if id_column is not None or "id" in names or "doc_id" in names:
                return ds.map_batches(stage, batch_format="pyarrow")
            logger.info("%s has no id column: reading it on the driver so that row-number ids are global", path)
    options = {"on_bad_line": "warn", **reader_options}
    tables = []
    for chunk in iter_documents(source, chunk_size=1000, **options):
        if skip:
            chunk = chunk.filter(~pl.col("doc_id").is_in(list(skip)))
        if chunk.height:
            tables.append(chunk.to_arrow())
    if not tables:
        return ray.data.from_arrow(_empty_documents().to_arrow())
    return ray.data.from_arrow(tables)


def _model_stage_options(concurrency: int, num_gpus: float, num_cpus: float | None) -> dict[str, Any]:
    ray = _require_ray()
    options: dict[str, Any] = {"compute": ray.data.ActorPoolStrategy(size=concurrency), "num_gpus": num_gpus}
    if num_cpus is not None:
        options["num_cpus"] = num_cpus
    return options


def _windowed(ds: Any, model_dir: str, batch_size: int, windowing_cpus: float) -> Any:
    """Blocks of about ``batch_size`` documents (so that every model actor gets work), then the windows."""
    if "target_num_rows_per_block" in inspect.signature(ds.repartition).parameters:  # Ray >= 2.44
        ds = ds.repartition(target_num_rows_per_block=batch_size)
    return ds.map_batches(WindowingStage(model_dir), batch_size=batch_size, batch_format="pyarrow",
                          num_cpus=windowing_cpus)


def label_with_ray(
    model_dir: str | os.PathLike[str],
    source: Any,
    output: str | os.PathLike[str],
    *,
    concurrency: int = 2,
    num_gpus: float = 0,
    num_cpus: float | None = None,
    batch_size: int = 64,
    top_passages: int = 3,
    windowing_cpus: float = 1,
    retry_failed: bool = True,
    **reader_options: Any,
) -> LabelSummary:
    """Label every document of ``source`` with Ray Data into the labels directory ``output``.

    The pipeline: read (Parquet in parallel, see below) -> :class:`WindowingStage` (CPU tasks, ``windowing_cpus``
    each) -> :class:`LabellingStage` (``concurrency`` actors, each loading the model once, ``num_gpus`` and
    ``num_cpus`` each) -> ``write_parquet``. The output is what ``label_documents`` writes (``_labels.json`` and
    ``part-NNNNN.parquet`` files with the same columns), so ``read_labels`` reads it; rows are in no particular
    order. Ray's files are written into a hidden staging folder inside ``output`` and renamed into parts when
    the whole run succeeded. A directory from an earlier run with the same model (from either engine) is resumed
    as ``label_documents`` resumes it: documents already in its parts are skipped, except those whose latest row
    is ``failed`` (their analysis raised), which are labelled again unless ``retry_failed`` is False (a run that
    dies loses only its own staging folder).

    Args:
        model_dir: a longdoc model directory (``longdoc train``); every actor loads it (shared storage on a
            cluster). The driver loads it on the CPU once, for the output's metadata.
        source: a Parquet file or folder (read by ``ray.data.read_parquet``; needs an ``id``/``doc_id`` column or
            ``id_column``, otherwise it is streamed), a ``ray.data.Dataset`` of raw rows, or anything
            ``longdoc.iter_documents`` streams (then read on the driver and handed to Ray).
        output: the labels directory; Ray's writers write into it, so on a cluster it must be on storage every
            worker sees (as must ``model_dir``).
        concurrency: model actors (one per GPU when ``num_gpus=1``).
        num_gpus: GPUs per actor (0 for CPU).
        num_cpus: CPUs per actor (Ray's default, 1, when None).
        batch_size: documents per batch.
        top_passages: windows kept per document.
        windowing_cpus: CPUs per windowing task.
        retry_failed: label again the documents whose latest row is ``failed``, as in ``label_documents``.
        reader_options: ``text_column``, ``label_column``, ``id_column``, ``metadata_columns`` as in
            ``load_documents``.

    Returns:
        A ``LabelSummary``: ``n_documents`` counts the documents labelled by this call plus those found done.
    """
    _require_ray()
    check_options(concurrency=concurrency, batch_size=batch_size, top_passages=top_passages,
                  retry_failed=retry_failed)
    started = time.perf_counter()
    model_dir = str(Path(model_dir).resolve())
    run = LabelRun(_load_classifier(model_dir, "cpu"), Path(output).resolve(), retry_failed=retry_failed,
                   log=logger, started=started, tidy=_remove_staging)
    out, done = run.output, frozenset(run.done)
    try:
        ds = _documents_dataset(source, reader_options, done)
        ds = _windowed(ds, model_dir, batch_size, windowing_cpus)
        ds = ds.map_batches(LabellingStage, fn_constructor_kwargs={"model_dir": model_dir,
                                                                    "top_passages": top_passages,
                                                                    "device": "cuda" if num_gpus else "cpu"},
                            batch_size=batch_size, batch_format="pyarrow",
                            **_model_stage_options(concurrency, num_gpus, num_cpus))
        staging = out / f"{_STAGING_PREFIX}{os.getpid()}-{time.time_ns()}"
        ds.write_parquet(str(staging))
        for f in sorted(staging.glob("*.parquet")) if staging.is_dir() else []:
            table = pl.read_parquet(f, columns=["doc_id", "error", "failed"])
            if table.height:
                run.write_part(table, lambda p, f=f: os.replace(f, p))
        shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        run.close()  # the labels directory's lock (finish releases it on success)
        raise
    return run.finish(n_documents=run.n_labelled + len(done), n_skipped=len(done), closing=_CLOSING)


def _remove_staging(out: Path) -> None:
    """Remove the staging folders that interrupted Ray runs left in the labels directory ``out``."""
    for stale in out.glob(f"{_STAGING_PREFIX}*"):
        logger.info("removing %s, left by an interrupted Ray run", stale.name)
        shutil.rmtree(stale, ignore_errors=True)


class _FingerprintOnly:
    """Records an encoder's fingerprint in a shard built where the encoder is not loaded; cannot encode."""

    def __init__(self, dim: int, fingerprint: str) -> None:
        self.dim = dim
        self.fingerprint = fingerprint

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        raise RuntimeError("this index was built without its encoder; load it with encoder=...")


def _build_shard(group: Any, *, paths: Sequence[str], dim: int, fingerprint: str,
                 index_options: dict[str, Any]) -> pa.Table:
    """Build and save one shard from all its passage rows (a Ray ``map_groups`` task)."""
    rows = _to_polars(group)
    shard = int(rows["shard"][0])
    emb = np.asarray(rows["embedding"].to_list(), dtype=np.float32).reshape(-1, dim)
    index = PassageIndex(dim, encoder=_FingerprintOnly(dim, fingerprint), **index_options)
    index.add(emb, rows.drop("shard", "embedding"))
    index.save(paths[shard])
    index.close()
    return _to_arrow(pl.DataFrame({"shard": [shard], "count": [len(index)]}))


def index_with_ray(
    model_dir: str | os.PathLike[str],
    source: Any,
    output_dir: str | os.PathLike[str],
    *,
    shards: int = 4,
    concurrency: int = 2,
    num_gpus: float = 0,
    num_cpus: float | None = None,
    batch_size: int = 64,
    windowing_cpus: float = 1,
    vectors_output: str | os.PathLike[str] | None = None,
    factory: str | None = None,
    fp16: bool = False,
    **reader_options: Any,
) -> dict[str, Any]:
    """Label and index every document of ``source`` with Ray Data into a sharded index at ``output_dir``.

    The pipeline: read -> :class:`WindowingStage` (CPU tasks) -> :class:`PassageStage` (``concurrency`` model
    actors with ``num_gpus`` each: windows encoded once, labelled, turned into passage rows with their vectors)
    -> grouped by shard (``indexer.sharded.shard_of`` of the ``doc_id``) -> one task per shard builds its
    ``PassageIndex`` and saves it -> the top-level manifest is written and the directory swapped in atomically
    (``indexer.sharded.write_sharded_directory``). ``ShardedPassageIndex.load(output_dir, encoder=clf.retrieval_encoder)``
    opens it; its searches equal those of the single-machine ``index_documents`` over the same documents.

    A new index is built each time (``output_dir`` is replaced atomically); to update one, load it as a
    ``ShardedPassageIndex`` and pass it to ``longdoc.indexing.index_documents``. Every shard must fit one worker's
    memory: pick ``shards`` from the collection size (see docs/scaling.md). The shard folders are written next to
    ``output_dir``, so on a cluster it must be on storage every worker sees.

    Args:
        model_dir, source, concurrency, num_gpus, num_cpus, batch_size, windowing_cpus, reader_options: as in
            :func:`label_with_ray`.
        shards: number of index shards.
        vectors_output: also write the passage rows with their vectors (``embedding``) as Parquet files into
            this folder (Ray ``write_parquet``), for a distributed vector database.
        factory, fp16: the shards' faiss layout (as ``PassageIndex``).

    Returns:
        ``{"index": path, "shards": n, "windows": count, "per_shard": [...], "seconds": s}``.
    """
    _require_ray()
    shards = positive_int(shards, "shards")
    concurrency = positive_int(concurrency, "concurrency")
    batch_size = positive_int(batch_size, "batch_size")
    started = time.perf_counter()
    model_dir = str(Path(model_dir).resolve())
    target = Path(output_dir).resolve()
    driver_clf = _load_classifier(model_dir, "cpu")
    dim, fingerprint = driver_clf.retrieval_encoder.dim, driver_clf.retrieval_encoder.fingerprint
    del driver_clf

    ds = _documents_dataset(source, reader_options, frozenset())
    ds = _windowed(ds, model_dir, batch_size, windowing_cpus)
    ds = ds.map_batches(PassageStage, fn_constructor_kwargs={"model_dir": model_dir, "shards": shards,
                                                              "device": "cuda" if num_gpus else "cpu"},
                        batch_size=batch_size, batch_format="pyarrow",
                        **_model_stage_options(concurrency, num_gpus, num_cpus))
    if vectors_output is not None:
        ds = ds.materialize()  # encoded once, used twice
        ds.drop_columns(["shard"]).write_parquet(str(Path(vectors_output).resolve()))
    index_options = {"factory": factory, "fp16": fp16}
    counts: dict[int, int] = {}

    def write_shards(paths: list[Path]) -> None:
        builder = functools.partial(_build_shard, paths=[str(p) for p in paths], dim=dim, fingerprint=fingerprint,
                                    index_options=index_options)
        grouping = {"num_partitions": shards} if "num_partitions" in inspect.signature(ds.groupby).parameters else {}
        built = ds.groupby("shard", **grouping).map_groups(builder, batch_format="pyarrow").take_all()
        counts.update({int(r["shard"]): int(r["count"]) for r in built})
        for i, path in enumerate(paths):
            if i not in counts:  # no document hashed here: an empty shard
                empty = PassageIndex(dim, encoder=_FingerprintOnly(dim, fingerprint), **index_options)
                empty.save(path)
                empty.close()
                counts[i] = 0

    lock = DirectoryLock(target)
    try:
        write_sharded_directory(target, shards, write_shards)
    finally:
        lock.release()
    result = {"index": str(target), "shards": shards, "windows": sum(counts.values()),
              "per_shard": [counts[i] for i in range(shards)], "seconds": round(time.perf_counter() - started, 2)}
    logger.info("indexed %d windows into %d shards at %s with Ray", result["windows"], shards, target)
    return result
