"""``ShardedPassageIndex``: one logical passage index split over N ordinary ``PassageIndex`` shards.

For collections whose vectors outgrow one index (or one machine's memory). Every document lives in exactly one
shard, chosen by a stable hash of its ``doc_id`` (:func:`shard_of`: blake2b of the UTF-8 id, modulo the shard
count), so all windows of a document are together and a per-document limit (``per_doc``) holds inside a shard.
A search asks every shard for its own top-k (with the same filters) and merges them by score: for exact layouts
the merged list is exactly what one ``PassageIndex`` over the same vectors returns.

On disk::

    index/
      manifest.json      format_version, kind "sharded", shards, dim, normalize, count, encoder fingerprint,
                         per shard: count and the sha256 of the shard's own manifest.json
      shard-00000/       an ordinary PassageIndex directory (manifest.json, faiss.index, passages.parquet)
      shard-00001/
      ...

Saves are atomic like ``PassageIndex.save``: the whole directory is written into a temporary sibling, fsynced,
then swapped in. Load checks each shard's manifest against the checksum recorded at the top, then lets
``PassageIndex.load`` check the shard's own files, then checks counts, dimensions, normalisation, the encoder
fingerprint and that every document sits in the shard its id hashes to. A mismatch is ``IndexLoadError``.

:func:`export_vectors_parquet` writes the vectors with their passage keys as one Parquet file, for ingest by a
distributed vector database.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import itertools
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from indexer import storage
from indexer.backend import AUTO_IVF_THRESHOLD
from indexer.errors import IndexInputError, IndexLoadError, IndexUnsupportedError
from indexer.index import METRIC, Hit, PassageIndex
from indexer.inputs import (
    QueryEncoder,
    as_matrix,
    check_doc_score,
    check_encoder,
    check_fingerprint,
    check_known_labels,
    check_min_score,
    check_no_clash,
    check_positive_int,
    encode_queries,
    fingerprint_of,
    normalized,
    parse_query,
    str_list,
)
from indexer.passages import validate_passages

__all__ = [
    "SHARDED_FORMAT_VERSION",
    "ShardedPassageIndex",
    "export_vectors_parquet",
    "load_index",
    "shard_name",
    "shard_of",
    "write_sharded_directory",
]

logger = logging.getLogger(__name__)

SHARDED_FORMAT_VERSION = 1
KIND = "sharded"
HASH = "blake2b64(utf8(doc_id)) mod shards"
_MAX_SHARDS = 99_999


def shard_of(doc_id: str, shards: int) -> int:
    """The shard (0 .. shards-1) of a document: blake2b (8 bytes, big-endian) of its UTF-8 id, modulo ``shards``.

    Stable across processes, machines and Python versions (unlike ``hash()``), so any writer routes the same way.
    """
    digest = hashlib.blake2b(doc_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def _shards_of(doc_ids: Sequence[str], shards: int) -> np.ndarray:
    cache: dict[str, int] = {}
    out = np.empty(len(doc_ids), dtype=np.int64)
    for i, d in enumerate(doc_ids):
        s = cache.get(d)
        if s is None:
            s = cache[d] = shard_of(d, shards)
        out[i] = s
    return out


def shard_name(i: int) -> str:
    """Directory name of shard ``i`` inside a sharded index directory."""
    return f"shard-{i:05d}"


def _check_shards(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not 1 <= value <= _MAX_SHARDS:
        raise IndexInputError(f"shards must be an int in [1, {_MAX_SHARDS}], got {value!r}")
    return int(value)


def _pool_size(workers: int | None, shards: int) -> int:
    if workers is None:
        return max(1, min(shards, os.cpu_count() or 1))
    return check_positive_int(workers, name="workers")


# -- the directory ---------------------------------------------------------------------------------------------
def _read_json(path: Path, what: str, fail: Callable[[str], IndexLoadError]) -> tuple[dict[str, Any], bytes]:
    if path.is_symlink():  # as a plain index refuses its symlinked files (storage.open_snapshot, O_NOFOLLOW)
        raise fail(f"{what} is a symbolic link; refusing to follow it")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise fail(f"{what} is missing") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise fail(f"{what} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise fail(f"{what} must hold a JSON object, found {type(data).__name__}")
    return data, raw


def write_sharded_directory(
    directory: str | os.PathLike[str],
    shards: int,
    write_shards: Callable[[list[Path]], None],
) -> dict[str, Any]:
    """Write a sharded index directory atomically; the building block of ``ShardedPassageIndex.save`` and of
    distributed builders (``longdoc.distributed.index_with_ray``).

    ``write_shards(paths)`` must save one ``PassageIndex`` at each of the ``shards`` paths (``paths[i]`` is shard
    ``i``; every document of shard ``i`` must satisfy ``shard_of(doc_id, shards) == i``), in any way and in any
    process that sees the same file system. The paths lie in a temporary sibling of ``directory``; this function
    then reads the shards' manifests, checks they agree (dim, normalisation, encoder fingerprint), writes the
    top-level ``manifest.json`` and swaps the directory into place (a crash leaves the previous version). The
    caller holds the directory's lock (``indexer.storage.DirectoryLock``) if other writers may run.

    Returns the manifest written. Raises ``IndexInputError`` when ``directory`` is a non-index directory or the
    shards disagree.
    """
    shards = _check_shards(shards)
    target = Path(os.path.abspath(directory))
    with storage.index_directory(target) as tmp:
        paths = [tmp / shard_name(i) for i in range(shards)]
        write_shards(paths)
        for i in range(shards):  # writer locks that PassageIndex.save left beside each shard
            (tmp / f"{shard_name(i)}.lock").unlink(missing_ok=True)
        extra = sorted(p.name for p in tmp.iterdir() if p.name not in {shard_name(i) for i in range(shards)})
        if extra:
            raise IndexInputError(f"write_shards left unexpected entries {extra[:5]} in the index directory")

        def fail(what: str) -> IndexLoadError:
            return IndexLoadError(f"sharded index being written at {target}: {what}")

        entries, dims, normalize, fingerprints, total = [], set(), set(), set(), 0
        for i, path in enumerate(paths):
            m, raw = _read_json(path / storage.MANIFEST, f"{shard_name(i)}/{storage.MANIFEST}", fail)
            try:
                count, dim = int(m["count"]), int(m["dim"])
                dims.add(dim)
                normalize.add(bool(m["normalize"]))
                fingerprints.add(m.get("encoder_fingerprint"))
            except (KeyError, TypeError, ValueError) as exc:
                raise fail(f"{shard_name(i)}/{storage.MANIFEST} is not a PassageIndex manifest ({exc})") from None
            entries.append({"name": shard_name(i), "count": count,
                            "manifest_sha256": hashlib.sha256(raw).hexdigest()})
            total += count
        if len(dims) != 1 or len(normalize) != 1:
            raise IndexInputError(f"the shards disagree: dims {sorted(dims)}, normalize {sorted(normalize)}")
        known = {f for f in fingerprints if f is not None}
        if len(known) > 1:
            raise IndexInputError(f"the shards were built with different encoders (fingerprints {sorted(known)})")
        manifest = {
            "format_version": SHARDED_FORMAT_VERSION,
            "kind": KIND,
            "shards": shards,
            "hash": HASH,
            "dim": dims.pop(),
            "metric": METRIC,
            "normalize": normalize.pop(),
            "count": total,
            "encoder_fingerprint": known.pop() if known else None,
            "shard_entries": entries,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),  # noqa: UP017 (py3.10)
        }
        storage.write_manifest(tmp, manifest)
    return manifest


def _validate_manifest(m: dict[str, Any], fail: Callable[[str], IndexLoadError]) -> None:
    if m.get("kind") != KIND:
        if "checksums" in m and "kind" not in m:
            raise fail("this is a single PassageIndex directory, not a sharded one; load it with PassageIndex.load "
                       "(or indexer.sharded.load_index, which opens either)")
        raise fail(f"manifest.json kind {m.get('kind')!r} is not {KIND!r}")
    if m.get("format_version") != SHARDED_FORMAT_VERSION:
        raise fail(f"format_version {m.get('format_version')!r} is not readable by this version "
                   f"(reads {SHARDED_FORMAT_VERSION})")
    expected: dict[str, tuple[type, ...]] = {
        "shards": (int,), "dim": (int,), "metric": (str,), "normalize": (bool,), "count": (int,),
        "encoder_fingerprint": (str, type(None)), "shard_entries": (list,), "hash": (str,),
    }
    for key, types in expected.items():
        if key not in m:
            raise fail(f"manifest.json lacks {key!r}")
        value = m[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise fail(f"manifest.json {key}={value!r} has the wrong type")
    if m["hash"] != HASH:
        raise fail(f"documents were routed with {m['hash']!r}, this version routes with {HASH!r}")
    if m["metric"] != METRIC:
        raise fail(f"metric {m['metric']!r} is not {METRIC!r}")
    if not 1 <= m["shards"] <= _MAX_SHARDS or m["dim"] <= 0 or m["count"] < 0:
        raise fail(f"manifest.json has impossible sizes (shards={m['shards']}, dim={m['dim']}, count={m['count']})")
    if len(m["shard_entries"]) != m["shards"]:
        raise fail(f"manifest.json lists {len(m['shard_entries'])} shards but says shards={m['shards']}")
    for i, entry in enumerate(m["shard_entries"]):
        ok = (isinstance(entry, dict) and entry.get("name") == shard_name(i)
              and isinstance(entry.get("count"), int) and not isinstance(entry.get("count"), bool)
              and isinstance(entry.get("manifest_sha256"), str) and len(entry["manifest_sha256"]) == 64)
        if not ok:
            raise fail(f"manifest.json shard entry {i} is malformed: {entry!r}")
    if sum(e["count"] for e in m["shard_entries"]) != m["count"]:
        raise fail("manifest.json count differs from the sum of the shard counts")


# -- the index -------------------------------------------------------------------------------------------------
class ShardedPassageIndex:
    """A passage index split into ``shards`` ordinary ``PassageIndex`` shards by a stable hash of ``doc_id``.

    The API is ``PassageIndex``'s: ``build`` / ``add`` / ``upsert`` / ``remove`` / ``search`` / ``save`` /
    ``load`` / ``len``, with ``Hit`` results. Changes are validated in full (shapes, NaN, dimension, the passage
    table, duplicate windows) before any shard is touched, then routed to the shards that hold the documents;
    shards are built, saved, loaded and searched in parallel threads (faiss and polars release the GIL).

    Search is dense only (a text query is encoded once, here): each shard returns its top-k under the filters and
    the lists are merged by score, which for exact layouts equals one index's answer. ``mode="hybrid"`` is not
    offered because BM25 statistics and fused ranks are per shard and would not merge exactly.

    Args:
        dim: vector dimension.
        shards: number of shards (fixed for the life of the index: documents are routed by ``shard_of``).
        encoder: encodes text queries (``QueryEncoder``); its fingerprint is recorded in every shard.
        factory, normalize, fp16, nprobe, ivf_threshold, device: as ``PassageIndex``, applied to every shard
            (``ivf_threshold`` counts the vectors of one shard; every shard searches on ``device``).
        workers: threads for building, saving, loading and searching (default: min(shards, CPU count)).
    """

    def __init__(
        self,
        dim: int,
        *,
        shards: int = 4,
        encoder: QueryEncoder | None = None,
        factory: str | None = None,
        normalize: bool = True,
        fp16: bool = False,
        nprobe: int | None = None,
        ivf_threshold: int = AUTO_IVF_THRESHOLD,
        workers: int | None = None,
        device: str | None = None,
    ) -> None:
        shards = _check_shards(shards)
        parts = [PassageIndex(dim, encoder=encoder, factory=factory, normalize=normalize, fp16=fp16, nprobe=nprobe,
                              ivf_threshold=ivf_threshold, device=device) for _ in range(shards)]
        self._setup(parts, encoder=encoder, fingerprint=fingerprint_of(encoder) if encoder is not None else None,
                    workers=workers)

    @property
    def attributes(self) -> dict[str, Any]:
        """A JSON-ready dict saved with the index (kept in the first shard's manifest)."""
        return self._shards[0].attributes

    @attributes.setter
    def attributes(self, value: dict[str, Any]) -> None:
        self._shards[0].attributes = value

    def _setup(self, parts: list[PassageIndex], *, encoder: QueryEncoder | None, fingerprint: str | None,
               workers: int | None) -> None:
        self._shards = parts
        self._encoder = encoder
        self._fingerprint = fingerprint
        self._workers = _pool_size(workers, len(parts))
        self._mutex = threading.RLock()
        self._dir_locks: dict[Path, storage.DirectoryLock] = {}
        self._passages_cache: tuple[tuple[int, ...], pl.DataFrame] | None = None

    @classmethod
    def build(
        cls,
        embeddings: Any,
        passages: Any,
        *,
        shards: int = 4,
        encoder: QueryEncoder | None = None,
        factory: str | None = None,
        normalize: bool = True,
        fp16: bool = False,
        nprobe: int | None = None,
        ivf_threshold: int = AUTO_IVF_THRESHOLD,
        workers: int | None = None,
        device: str | None = None,
    ) -> ShardedPassageIndex:
        """A new sharded index over ``embeddings`` (float (n, dim)) and ``passages`` (n rows); the shards are
        filled in parallel."""
        arr, _ = as_matrix(embeddings, name="embeddings", dim=None)
        index = cls(arr.shape[1], shards=shards, encoder=encoder, factory=factory, normalize=normalize, fp16=fp16,
                    nprobe=nprobe, ivf_threshold=ivf_threshold, workers=workers, device=device)
        index.add(arr, passages)
        return index

    # -- properties --------------------------------------------------------------------------------------------
    @property
    def shards(self) -> tuple[PassageIndex, ...]:
        """The shard indexes, in shard order (shard ``i`` holds the documents with ``shard_of(doc_id, n) == i``)."""
        return tuple(self._shards)

    @property
    def n_shards(self) -> int:
        return len(self._shards)

    @property
    def dim(self) -> int:
        return self._shards[0].dim

    @property
    def normalize(self) -> bool:
        return self._shards[0].normalize

    @property
    def layout(self) -> str:
        """The shards' layout ('Flat', 'IVF894,Flat', ...); several, comma-separated, when they differ."""
        return ", ".join(sorted({s.layout for s in self._shards}))

    @property
    def nprobe(self) -> int | None:
        """IVF cells visited per query in every shard (None without cells). Settable."""
        return self._shards[0].nprobe

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        for s in self._shards:
            s.nprobe = value

    @property
    def device(self) -> str | None:
        """Where every shard searches (see ``PassageIndex.device``). Settable."""
        return self._shards[0].device

    @device.setter
    def device(self, value: str | None) -> None:
        for s in self._shards:
            s.device = value

    @property
    def encoder(self) -> QueryEncoder | None:
        return self._encoder

    @encoder.setter
    def encoder(self, encoder: QueryEncoder | None) -> None:
        check_encoder(encoder, self.dim)
        with self._mutex:
            if encoder is not None:
                self._fingerprint = check_fingerprint(self._fingerprint, encoder, dim=self.dim)
            for s in self._shards:
                s.encoder = encoder
            self._encoder = encoder

    @property
    def encoder_fingerprint(self) -> str | None:
        return self._fingerprint

    @property
    def passages(self) -> pl.DataFrame:
        """Every shard's passage table, concatenated in shard order. ``row_id`` is per shard (not unique here)."""
        with self._mutex:
            key = tuple(s.revision for s in self._shards)
            if self._passages_cache is None or self._passages_cache[0] != key:
                table = pl.concat([s.passages for s in self._shards], how="diagonal_relaxed")
                self._passages_cache = (key, table)
            return self._passages_cache[1]

    @property
    def doc_ids(self) -> list[str]:
        """Sorted ids of the documents in the index."""
        return sorted(d for s in self._shards for d in s.doc_ids)

    @property
    def labels(self) -> list[str]:
        """Sorted labels the ``labels=`` filter knows, over all shards."""
        return sorted({lab for s in self._shards for lab in s.labels})

    @property
    def ntotal(self) -> int:
        return sum(s.ntotal for s in self._shards)

    def __len__(self) -> int:
        return sum(len(s) for s in self._shards)

    def __repr__(self) -> str:
        return (f"ShardedPassageIndex(dim={self.dim}, shards={self.n_shards}, windows={len(self)}, "
                f"layout={self.layout!r}, normalize={self.normalize})")

    def _map(self, func: Callable[[int], Any], items: Iterable[int]) -> list[Any]:
        items = list(items)
        if self._workers == 1 or len(items) <= 1:
            return [func(i) for i in items]
        with ThreadPoolExecutor(max_workers=min(self._workers, len(items)), thread_name_prefix="shard") as pool:
            return list(pool.map(func, items))

    # -- changes ---------------------------------------------------------------------------------------------
    def _route(self, embeddings: Any, passages: Any) -> dict[int, tuple[np.ndarray, pl.DataFrame]]:
        """Validate the whole change (as one PassageIndex would) and split it by shard."""
        arr, _ = as_matrix(embeddings, name="embeddings", dim=self.dim)
        table = validate_passages(passages, n_rows=arr.shape[0])
        if self.normalize and len(arr):
            normalized(arr, name="embeddings")  # rejects all-zero rows before any shard changes
        if table.height == 0:
            return {}
        owner = _shards_of(table["doc_id"].to_list(), self.n_shards)
        out = {}
        for i in np.unique(owner).tolist():
            rows = np.flatnonzero(owner == i)
            out[int(i)] = (arr[rows], table[rows.tolist()])
        return out

    def add(self, embeddings: Any, passages: Any) -> None:
        """Add windows (``embeddings`` float (n, dim), ``passages`` n rows); each goes to its document's shard.

        Rejects NaN/Inf, a wrong dimension, misaligned rows and (doc_id, window_index) pairs already present,
        before any shard changes. To replace documents, use ``upsert``.
        """
        with self._mutex:
            routed = self._route(embeddings, passages)
            for i, (_, part) in routed.items():
                check_no_clash(self._shards[i].passages, part)
            self._map(lambda i: self._shards[i].add(*routed[i]), routed)

    def upsert(self, embeddings: Any, passages: Any) -> None:
        """Add windows, first removing ALL existing windows of every doc_id present in ``passages``."""
        with self._mutex:
            routed = self._route(embeddings, passages)
            for i, (_, part) in routed.items():
                shard = self._shards[i]
                if shard.passages["doc_id"].is_in(part["doc_id"].unique().implode()).any():
                    shard.check_can_remove()  # refuse before any shard changes
            self._map(lambda i: self._shards[i].upsert(*routed[i]), routed)

    def remove(self, *, doc_ids: str | Iterable[str]) -> int:
        """Remove every window of the given documents (each from its shard); returns the windows removed.

        Unknown document ids are ignored.
        """
        docs = str_list(doc_ids, name="doc_ids")
        by_shard: dict[int, list[str]] = {}
        for d in docs:
            by_shard.setdefault(shard_of(d, self.n_shards), []).append(d)
        with self._mutex:
            return int(sum(self._map(lambda i: self._shards[i].remove(doc_ids=by_shard[i]), by_shard)))

    # -- search ------------------------------------------------------------------------------------------------
    def search(
        self,
        query: str | Sequence[str] | np.ndarray,
        *,
        k: int = 5,
        labels: str | Iterable[str] | None = None,
        doc_ids: str | Iterable[str] | None = None,
        min_score: float | None = None,
        per_doc: int | None = 1,
        mode: Literal["dense"] = "dense",
        doc_score: Literal["top2_first", "max"] | None = None,
    ) -> list[Hit] | list[list[Hit]]:
        """Find the windows closest to ``query`` over all shards; arguments and result shape as
        ``PassageIndex.search`` (a str or 1-D vector gives ``list[Hit]``, a list or 2-D array a list of lists).

        Every shard answers with its top-k under the filters (a document's windows all live in one shard, so
        ``per_doc`` and the document scores of ``doc_score`` are exact per shard); the answers are merged by score
        and re-ranked. Only ``mode="dense"``.
        """
        k = check_positive_int(k, name="k")
        per_doc = check_positive_int(per_doc, name="per_doc", allow_none=True)
        doc_score = check_doc_score(doc_score, per_doc)
        check_min_score(min_score)
        if mode != "dense":
            raise IndexUnsupportedError(
                f"mode={mode!r}: a sharded index searches densely only (BM25 scores and fused ranks are per shard "
                "and do not merge exactly); search a single PassageIndex for hybrid mode"
            )
        single, vectors = self._query_vectors(query)
        wanted_labels = None if labels is None else str_list(labels, name="labels")
        wanted_docs = None if doc_ids is None else str_list(doc_ids, name="doc_ids")
        n_queries = len(vectors)
        with self._mutex:
            targets: dict[int, dict[str, Any]] = {i: {} for i in range(self.n_shards) if len(self._shards[i])}
            if wanted_labels is not None:
                known = {i: set(self._shards[i].labels) for i in targets}
                if len(self):
                    check_known_labels(wanted_labels, set().union(*known.values()))
                for i in list(targets):
                    mine = [lab for lab in wanted_labels if lab in known[i]]
                    if mine:
                        targets[i]["labels"] = mine
                    else:
                        del targets[i]
            if wanted_docs is not None:
                routed: dict[int, list[str]] = {}
                for d in wanted_docs:
                    routed.setdefault(shard_of(d, self.n_shards), []).append(d)
                for i in list(targets):
                    if i in routed:
                        targets[i]["doc_ids"] = routed[i]
                    else:
                        del targets[i]
            if n_queries == 0:
                return []

            def one(i: int) -> list[list[Hit]]:
                found = self._shards[i].search(vectors, k=k, min_score=min_score, per_doc=per_doc,
                                               doc_score=doc_score, **targets[i])
                return found  # type: ignore[return-value]

            answers = self._map(one, list(targets))
        merged = [self._merge([a[q] for a in answers], k) for q in range(n_queries)]
        return merged[0] if single else merged

    @staticmethod
    def _merge(lists: list[list[Hit]], k: int) -> list[Hit]:
        """The k best hits of several score-sorted lists (ties keep shard order), re-ranked from 1."""
        best = heapq.merge(*lists, key=lambda h: -h.score)
        return [dataclasses.replace(h, rank=r) for r, h in enumerate(itertools.islice(best, k), start=1)]

    def _query_vectors(self, query: Any) -> tuple[bool, np.ndarray]:
        single, texts, vectors = parse_query(query, dim=self.dim)
        if texts is None:
            return single, vectors
        if not texts:
            return False, np.empty((0, self.dim), dtype=np.float32)
        return single, encode_queries(self._encoder, texts, dim=self.dim, owner="ShardedPassageIndex")

    # -- persistence -----------------------------------------------------------------------------------------
    def lock(self, directory: str | os.PathLike[str]) -> None:
        """Take the writer lock of ``directory`` now (see ``PassageIndex.lock``); held until ``close()``."""
        target = Path(os.path.abspath(directory))
        lock = self._dir_locks.get(target)
        if lock is None or not lock.held:
            self._dir_locks[target] = storage.DirectoryLock(target)

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Save to ``directory`` atomically: every shard into a temporary sibling (in parallel), the top-level
        ``manifest.json`` last, then one swap. A crash at any moment leaves the previous save loadable.

        Like ``PassageIndex.save``, the first save takes the directory's writer lock and keeps it until
        ``close()``; a directory that exists, is not empty and is not an index is never replaced.
        """
        target = Path(os.path.abspath(directory))
        with self._mutex:
            self.lock(target)

            def write_shards(paths: list[Path]) -> None:
                def save_one(i: int) -> None:
                    shard = self._shards[i]
                    shard.save(paths[i])
                    shard.unlock(paths[i])  # the lock of a temporary path: drop it

                self._map(save_one, range(self.n_shards))

            write_sharded_directory(target, self.n_shards, write_shards)
            logger.info("saved %d windows in %d shards to %s", len(self), self.n_shards, target)

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str],
        *,
        mmap: bool = False,
        encoder: QueryEncoder | None = None,
        lock: bool = False,
        workers: int | None = None,
        device: str | None = None,
    ) -> ShardedPassageIndex:
        """Load a sharded index saved by ``save`` (or ``write_sharded_directory``); shards load in parallel.

        Options as ``PassageIndex.load``. Raises ``IndexLoadError`` naming what is missing, corrupt or
        mismatched: a shard whose manifest differs from the checksum at the top (a shard from another save), a
        count, dimension, normalisation or encoder fingerprint that disagrees, or a document in the wrong shard.
        """
        target = Path(os.path.abspath(directory))
        dir_lock = storage.DirectoryLock(target) if lock else None
        try:
            index = cls._load(target, mmap=mmap, encoder=encoder, workers=workers)
            index.device = device
        except BaseException:
            if dir_lock is not None:
                dir_lock.release()
            raise
        if dir_lock is not None:
            index._dir_locks[target] = dir_lock
        return index

    @classmethod
    def _load(cls, target: Path, *, mmap: bool, encoder: QueryEncoder | None,
              workers: int | None) -> ShardedPassageIndex:
        def fail(what: str) -> IndexLoadError:
            return IndexLoadError(f"sharded index at {target}: {what}")

        try:
            dir_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise IndexLoadError(f"no index at {target}: the directory does not exist") from None
        except NotADirectoryError:
            raise IndexLoadError(f"no index at {target}: not a directory") from None
        try:
            # Read everything through the directory handle: a concurrent save swaps the path, not this version.
            pinned = Path(f"/proc/self/fd/{dir_fd}")
            root = pinned if pinned.is_dir() else target
            m, _ = _read_json(root / storage.MANIFEST, storage.MANIFEST, fail)
            _validate_manifest(m, fail)
            n = m["shards"]

            def load_one(i: int) -> PassageIndex:
                name = shard_name(i)
                if (root / name).is_symlink():  # a shard is part of the directory, never a link out of it
                    raise fail(f"{name} is a symbolic link; refusing to follow it")
                _, raw = _read_json(root / name / storage.MANIFEST, f"{name}/{storage.MANIFEST}", fail)
                if hashlib.sha256(raw).hexdigest() != m["shard_entries"][i]["manifest_sha256"]:
                    raise fail(f"{name}/{storage.MANIFEST} does not match the checksum in {storage.MANIFEST}: the "
                               "shard is corrupt or comes from a different save")
                try:
                    return PassageIndex.load(root / name, mmap=mmap, encoder=encoder)
                except IndexLoadError as exc:
                    raise fail(f"{name}: {exc}") from None

            pool = _pool_size(workers, n)
            if pool == 1:
                parts = [load_one(i) for i in range(n)]
            else:
                with ThreadPoolExecutor(max_workers=pool, thread_name_prefix="shard-load") as ex:
                    parts = list(ex.map(load_one, range(n)))
        finally:
            os.close(dir_fd)
        for i, shard in enumerate(parts):
            name = shard_name(i)
            checks = [("count", m["shard_entries"][i]["count"], len(shard)), ("dim", m["dim"], shard.dim),
                      ("normalize", m["normalize"], shard.normalize)]
            for what, expected, found in checks:
                if expected != found:
                    raise fail(f"{name}: {what} mismatch: manifest.json says {expected!r}, found {found!r}")
            stored = m["encoder_fingerprint"]
            if stored is not None and shard.encoder_fingerprint not in (None, stored) and encoder is None:
                raise fail(f"{name} was built with encoder {shard.encoder_fingerprint!r}, the index with {stored!r}")
            docs = shard.doc_ids
            wrong = [d for d, s in zip(docs, _shards_of(docs, n), strict=True) if s != i]
            if wrong:
                raise fail(f"{name} holds documents that hash to other shards (e.g. {wrong[:3]}): it was built with "
                           "another shard count or routing")
        if encoder is not None:
            given = fingerprint_of(encoder)
            if m["encoder_fingerprint"] is not None and given is not None and given != m["encoder_fingerprint"]:
                raise fail(f"encoder fingerprint {given!r} differs from the one the index was built with "
                           f"({m['encoder_fingerprint']!r}): its query vectors would not match the stored ones")
        index = cls.__new__(cls)
        fingerprint = m["encoder_fingerprint"] if encoder is None or fingerprint_of(encoder) is None \
            else fingerprint_of(encoder)
        index._setup(parts, encoder=encoder, fingerprint=fingerprint, workers=workers)
        logger.info("loaded %d windows in %d shards from %s", len(index), n, target)
        return index

    def close(self) -> None:
        """Release the directory writer lock(s) this object and its shards hold; the index stays searchable."""
        with self._mutex:
            for lock in self._dir_locks.values():
                lock.release()
            self._dir_locks.clear()
            for s in self._shards:
                s.close()

    def __enter__(self) -> ShardedPassageIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_index(
    directory: str | os.PathLike[str], **options: Any
) -> PassageIndex | ShardedPassageIndex:
    """Open an index directory of either kind: a ``ShardedPassageIndex`` when its manifest says
    ``"kind": "sharded"``, else a ``PassageIndex``. ``options`` go to the class's ``load``."""
    path = Path(os.path.abspath(directory))
    storage.wait_for_swap(path)  # its manifest is read by path here: not while a save is between two renames
    try:
        kind = json.loads((path / storage.MANIFEST).read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        kind = None  # let PassageIndex.load explain what is wrong
    if kind == KIND:
        return ShardedPassageIndex.load(path, **options)
    options.pop("workers", None)
    return PassageIndex.load(path, **options)


# -- export ----------------------------------------------------------------------------------------------------
def export_vectors_parquet(
    index: PassageIndex | ShardedPassageIndex,
    path: str | os.PathLike[str],
    *,
    include_text: bool = False,
) -> int:
    """Write every window's vector with its passage keys to one Parquet file, for a distributed vector database.

    Columns: ``doc_id`` (str), ``window_index``, ``char_start``, ``char_end`` (int64), ``labels`` (list[str]: the
    gold labels, else the predicted ones: what the ``labels=`` filter matches), ``pred_labels`` (list[str]),
    ``text`` (with ``include_text=True``) and ``vector`` (list[float32], normalised when the index normalises).
    The file's key-value metadata records ``dim``, ``metric``, ``normalize`` and ``encoder_fingerprint``. Written
    shard by shard (memory holds one shard's vectors), into a temporary file renamed into place at the end.
    Flat layouts only (exact, or fp16 decoded to float32): IVF/PQ/HNSW layouts raise ``IndexUnsupportedError``.

    Returns the number of rows written.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    shards = index.shards if isinstance(index, ShardedPassageIndex) else (index,)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    columns = ["doc_id", "window_index", "char_start", "char_end", "labels", "pred_labels"]
    if include_text:
        columns.append("text")
    metadata = {"longdoc.dim": str(index.dim), "longdoc.metric": METRIC, "longdoc.normalize": str(index.normalize),
                "longdoc.encoder_fingerprint": str(index.encoder_fingerprint)}

    def write(tmp: Path) -> int:
        written = 0
        writer = None
        try:
            for shard in shards:
                table = shard.passages
                vectors = shard.vectors()
                frame = table.select(
                    pl.col("doc_id"), pl.col("window_index"), pl.col("char_start"), pl.col("char_end"),
                    pl.coalesce("labels", "pred_labels").alias("labels"), pl.col("pred_labels"),
                    *([pl.col("text")] if include_text else []),
                )
                arrow = frame.to_arrow()
                flat = pa.array(vectors.reshape(-1), type=pa.float32())
                offsets = pa.array(np.arange(0, (len(vectors) + 1) * index.dim, index.dim, dtype=np.int32))
                arrow = arrow.append_column("vector", pa.ListArray.from_arrays(offsets, flat))
                arrow = arrow.cast(_export_schema(arrow.schema, metadata))
                if writer is None:
                    writer = pq.ParquetWriter(tmp, arrow.schema)
                writer.write_table(arrow)
                written += arrow.num_rows
            if writer is None:  # an index without shards cannot happen; an empty table still gets a schema
                raise RuntimeError("no shard to export")
        finally:
            if writer is not None:
                writer.close()
        return written

    written = storage.write_file_atomically(target, write)
    logger.info("exported %d vectors (dim %d) to %s", written, index.dim, target)
    return written


def _export_schema(schema: Any, metadata: dict[str, str]) -> Any:
    """Plain (not large) string and list types, which every Parquet consumer reads, plus our metadata."""
    import pyarrow as pa

    fields = []
    for f in schema:
        t = f.type
        if pa.types.is_large_string(t):
            t = pa.string()
        elif pa.types.is_large_list(t) or pa.types.is_list(t):
            inner = t.value_type
            t = pa.list_(pa.string() if pa.types.is_large_string(inner) else inner)
        fields.append(pa.field(f.name, t, nullable=True))
    return pa.schema(fields, metadata=metadata)
