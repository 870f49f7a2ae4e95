"""The one module that imports faiss.

``FaissBackend`` owns one faiss index whose ids are the passage table's ``row_id`` values. It knows the
layouts the indexer uses (an ``IndexIDMap2`` around a flat or scalar-quantised index, an IVF index fed with
``add_with_ids``, or any ``index_factory`` string), trains on the first add when needed, runs filtered searches
with an ``IDSelector`` inside faiss, reads and writes the CPU form, and moves a copy to the GPU for unfiltered
search when faiss sees one. Exact (flat) layouts are scanned with torch instead where torch is installed
(``indexer.torch_search``: faster than faiss-cpu's flat scan on the CPU, and on a CUDA device that faiss-cpu
cannot use); faiss stays the storage, the file format and the engine of every approximate layout.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import faiss
import numpy as np

from indexer.errors import IndexInputError, IndexLoadError, IndexUnsupportedError
from indexer.torch_search import TorchExactSearch, cuda_available, torch_available

__all__ = ["AUTO_IVF_THRESHOLD", "FaissBackend", "auto_nlist", "faiss_version", "write_index"]

logger = logging.getLogger(__name__)

#: Below this many vectors the automatic layout is exact (flat); at or above it, IVF.
AUTO_IVF_THRESHOLD = 50_000
#: faiss warns below 39 training points per IVF cell; the automatic layout never goes under it.
MIN_POINTS_PER_CELL = 39
#: faiss GPU indexes answer at most this many neighbours per query.
_GPU_MAX_K = 2048
#: Training sample per IVF cell for the automatic layout.
TRAIN_POINTS_PER_CELL = 64
#: A selector over at most this many ids is a hash set (IDSelectorBatch); above it, a bitmap over all row ids.
_BATCH_SELECTOR_MAX = 4096


def check_device(device: str | None) -> str | None:
    """``None`` (automatic), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; anything else is an ``IndexInputError``."""
    if device is None:
        return None
    text = str(device).strip().lower()
    if text in ("cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise IndexInputError(f"device must be None (automatic), 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def faiss_version() -> str:
    return str(getattr(faiss, "__version__", "unknown"))


def auto_nlist(n: int) -> int:
    """IVF cell count for ``n`` vectors: about 4*sqrt(n), with at least 39 points per cell."""
    return max(1, min(int(4 * math.sqrt(n)), n // MIN_POINTS_PER_CELL))


def default_nprobe(nlist: int) -> int:
    """Cells visited per query unless the user sets ``nprobe``: nlist/16, at least 16 (capped at nlist)."""
    return max(1, min(nlist, max(16, nlist // 16)))


def write_index(index: faiss.Index, path: str | Path) -> None:
    """Write the CPU form of ``index`` to ``path`` (a module function so tests can make it fail)."""
    faiss.write_index(index, str(path))


def describe(index: faiss.Index) -> str:
    """A short, stable description of an index's structure, recorded in the manifest and checked at load."""
    if isinstance(index, faiss.IndexIDMap2 | faiss.IndexIDMap):
        return f"{type(index).__name__}[{type(faiss.downcast_index(index.index)).__name__}]"
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        return f"{type(index).__name__}[nlist={ivf.nlist}]"
    return type(index).__name__


class FaissBackend:
    """One faiss index (inner-product metric) keyed by int64 row ids.

    ``factory=None`` is the automatic layout: exact flat search (``IndexFlatIP``, or ``SQfp16`` when
    ``fp16=True``) inside an ``IndexIDMap2`` until the collection reaches ``ivf_threshold`` vectors, then
    an IVF index with about 4*sqrt(n) cells rebuilt from the stored vectors. Any other ``factory`` is passed
    to ``faiss.index_factory``; layouts that cannot take ids directly are wrapped in ``IndexIDMap2``.

    ``device`` says where searches run. ``None``: on the GPU when faiss has one (unfiltered searches), else on
    a CUDA device through torch (exact layouts) when there is one, else on the CPU. ``"cpu"``: on the CPU.
    ``"cuda"`` / ``"cuda:N"``: faiss's GPUs when it has them, else torch on that device (exact layouts; the
    others stay on the CPU with a warning). On the CPU exact layouts are scanned by torch when it is installed,
    approximate ones by faiss.
    """

    def __init__(
        self,
        dim: int,
        *,
        factory: str | None = None,
        fp16: bool = False,
        ivf_threshold: int = AUTO_IVF_THRESHOLD,
        nprobe: int | None = None,
        index: faiss.Index | None = None,
        mmapped: bool = False,
        device: str | None = None,
    ) -> None:
        if factory is not None and fp16:
            raise IndexInputError(
                f"fp16=True applies to the automatic layout only, but factory={factory!r} was given; "
                "put the storage type in the factory string instead (e.g. 'IVF1024,SQfp16')"
            )
        self.dim = dim
        self.factory = factory
        self.fp16 = fp16
        self.ivf_threshold = ivf_threshold
        self.mmapped = mmapped
        self._version = 0
        self._gpu_cache: tuple[tuple[int, int | None], faiss.Index | None] | None = None
        self._torch_cache: tuple[tuple[int, str], TorchExactSearch | None] | None = None
        self._stored_cache: tuple[int, np.ndarray, np.ndarray, np.ndarray | None] | None = None
        self.device = check_device(device)
        self._warned: set[str] = set()
        self._nprobe_override: int | None = None
        if index is None:
            if factory is None:
                index = faiss.IndexIDMap2(self._flat(dim, fp16))
            else:
                index = self._from_factory(dim, factory)
        self.index = index
        if nprobe is not None:
            self.nprobe = nprobe

    # -- construction ---------------------------------------------------------------------------------
    @staticmethod
    def _flat(dim: int, fp16: bool) -> faiss.Index:
        if fp16:
            return faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
        return faiss.IndexFlatIP(dim)

    @staticmethod
    def _from_factory(dim: int, factory: str) -> faiss.Index:
        if not isinstance(factory, str) or not factory.strip():
            raise IndexInputError(f"factory must be a faiss index_factory string such as 'IVF256,Flat', got {factory!r}")
        if factory.replace(" ", "").upper().startswith("IDMAP"):
            raise IndexInputError(
                f"factory={factory!r}: leave out the IDMap prefix, the index adds its own id mapping"
            )
        try:
            index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise IndexInputError(
                f"factory={factory!r} is not a faiss index_factory string faiss accepts for dim={dim}: "
                f"{str(exc).strip().splitlines()[-1]}"
            ) from None
        # index_factory/read_index already return the concrete class and own the object; never rebind an
        # owned index to faiss.downcast_index(...), whose proxy does not own it (use-after-free).
        if isinstance(index, faiss.IndexIVF):
            ivf = faiss.try_extract_index_ivf(index)
            ivf.nprobe = default_nprobe(ivf.nlist)
            return index  # IVF takes add_with_ids directly
        return faiss.IndexIDMap2(index)

    # -- properties ------------------------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def version(self) -> int:
        return self._version

    @property
    def ivf(self) -> faiss.IndexIVF | None:
        return faiss.try_extract_index_ivf(self.index)

    @property
    def nprobe(self) -> int | None:
        ivf = self.ivf
        return None if ivf is None else int(ivf.nprobe)

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise IndexInputError(f"nprobe must be a positive int, got {value!r}")
        self._nprobe_override = int(value)
        ivf = self.ivf
        if ivf is None:
            logger.info("nprobe=%d kept for later: the index (%s) has no IVF cells yet", value, self.description)
            return
        ivf.nprobe = int(min(int(value), ivf.nlist))

    @property
    def description(self) -> str:
        return describe(self.index)

    @property
    def layout(self) -> str:
        """The factory-like layout in use: 'Flat', 'SQfp16', 'IVF894,Flat', or the user's factory."""
        if self.factory is not None:
            return self.factory
        ivf = self.ivf
        storage = "SQfp16" if self.fp16 else "Flat"
        return storage if ivf is None else f"IVF{ivf.nlist},{storage}"

    def _inner(self) -> faiss.Index:
        index = faiss.downcast_index(self.index)
        if isinstance(index, faiss.IndexIDMap2 | faiss.IndexIDMap):
            return faiss.downcast_index(index.index)
        return index

    @property
    def supports_remove(self) -> bool:
        inner = type(self._inner()).__name__
        return not any(name in inner for name in ("HNSW", "NSG", "NNDescent"))

    # -- mutation --------------------------------------------------------------------------------------
    def make_mutable(self) -> None:
        """An mmap-loaded index is a read-only view of the file: copy it into memory before changing it."""
        if self.mmapped:
            logger.info("copying the memory-mapped index (%d vectors) into memory before modifying it", self.ntotal)
            data = faiss.serialize_index(self.index)
            self.index = faiss.deserialize_index(data)
            self.mmapped = False

    def check_can_add(self, n: int) -> None:
        """Raise before any change when adding ``n`` vectors would need training that cannot succeed."""
        if self.index.is_trained or self.factory is None:
            return
        ivf = self.ivf
        if ivf is not None and n < ivf.nlist:
            raise IndexInputError(
                f"factory={self.factory!r} must be trained on the first add, which needs at least nlist="
                f"{ivf.nlist} vectors (faiss advises {MIN_POINTS_PER_CELL * ivf.nlist}); got {n}. "
                "Add more vectors at once or use a smaller nlist."
            )

    def check_can_remove(self) -> None:
        if not self.supports_remove:
            raise IndexUnsupportedError(
                f"the {self.layout!r} layout ({self.description}) cannot remove vectors, so remove() and upsert() "
                "are not available; rebuild with PassageIndex.build(...) or choose a Flat or IVF factory"
            )

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add float32 (n, dim) vectors under int64 ids, training first when the layout needs it."""
        if len(ids) == 0:
            return
        self.make_mutable()
        if self.factory is None and self.ivf is None and self.ntotal + len(ids) >= self.ivf_threshold:
            self._upgrade_to_ivf(vectors, ids)
        else:
            if not self.index.is_trained:
                self.check_can_add(len(ids))
                try:
                    self.index.train(vectors)
                except RuntimeError as exc:
                    raise IndexInputError(
                        f"training factory={self.factory!r} on {len(ids)} vectors failed: "
                        f"{str(exc).strip().splitlines()[-1]}"
                    ) from None
            self.index.add_with_ids(vectors, ids)
        self._version += 1

    def _upgrade_to_ivf(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        old_ids, old_vectors = self.ids_and_vectors()
        all_vectors = np.concatenate([old_vectors, vectors]) if len(old_ids) else vectors
        all_ids = np.concatenate([old_ids, ids]) if len(old_ids) else ids
        nlist = auto_nlist(len(all_ids))
        storage = "SQfp16" if self.fp16 else "Flat"
        logger.info("%d vectors reach ivf_threshold=%d: switching to IVF%d,%s", len(all_ids), self.ivf_threshold,
                    nlist, storage)
        index = faiss.index_factory(self.dim, f"IVF{nlist},{storage}", faiss.METRIC_INNER_PRODUCT)
        # k-means on a seeded sample of at most TRAIN_POINTS_PER_CELL points per cell (faiss: 256): a quarter
        # of the training time at 1M vectors for a negligible recall change
        faiss.try_extract_index_ivf(index).cp.max_points_per_centroid = TRAIN_POINTS_PER_CELL
        index.train(all_vectors)
        nprobe = self._nprobe_override or default_nprobe(nlist)
        faiss.try_extract_index_ivf(index).nprobe = min(nprobe, nlist)
        index.add_with_ids(np.ascontiguousarray(all_vectors), all_ids)
        self.index = index

    def ids_and_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """All ids and their stored vectors (flat ``IndexIDMap2`` layouts only)."""
        index = faiss.downcast_index(self.index)
        if not isinstance(index, faiss.IndexIDMap2):
            raise IndexUnsupportedError(f"cannot read vectors back from {self.description}")
        ids = faiss.vector_to_array(index.id_map).astype(np.int64)
        if len(ids) == 0:
            return ids, np.empty((0, self.dim), dtype=np.float32)
        return ids, index.index.reconstruct_n(0, len(ids))

    def remove(self, ids: np.ndarray) -> int:
        if len(ids) == 0:
            return 0
        self.check_can_remove()
        self.make_mutable()
        removed = int(self.index.remove_ids(np.ascontiguousarray(ids, dtype=np.int64)))
        self._version += 1
        return removed

    # -- search ----------------------------------------------------------------------------------------
    def _selector(self, allowed: np.ndarray, id_bound: int) -> faiss.IDSelector:
        if len(allowed) <= _BATCH_SELECTOR_MAX:
            return faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
        bitmap = np.zeros(id_bound // 8 + 1, dtype=np.uint8)
        np.bitwise_or.at(bitmap, allowed >> 3, (1 << (allowed & 7)).astype(np.uint8))
        return faiss.IDSelectorBitmap(bitmap)

    def _params(self, sel: faiss.IDSelector | None) -> faiss.SearchParameters | None:
        ivf = self.ivf
        if ivf is not None and isinstance(faiss.downcast_index(self.index), faiss.IndexIVF):
            return faiss.SearchParametersIVF(sel=sel, nprobe=int(ivf.nprobe)) if sel is not None else None
        if sel is None:
            return None
        if "HNSW" in type(self._inner()).__name__:
            return faiss.SearchParametersHNSW(sel=sel)
        return faiss.SearchParameters(sel=sel)

    def _gpu_index(self, k: int) -> faiss.Index | None:
        """A GPU copy of the index for unfiltered search, rebuilt after changes; None without a GPU.

        The copy is keyed by (version, nprobe), so it never serves stale vectors or settings. Filtered
        searches and k above the GPU's limit stay on the CPU.
        """
        if k > _GPU_MAX_K or faiss.get_num_gpus() <= 0:
            return None
        key = (self._version, self.nprobe)
        if self._gpu_cache is None or self._gpu_cache[0] != key:
            try:
                gpu: faiss.Index | None = faiss.index_cpu_to_all_gpus(self.index)
            except Exception as exc:  # a layout without a GPU version: search on the CPU
                logger.warning("cannot move %s to the GPU (%s); searching on the CPU", self.description, exc)
                gpu = None
            self._gpu_cache = (key, gpu)
        return self._gpu_cache[1]

    @property
    def is_exact(self) -> bool:
        """Whether the layout is a flat (exhaustive) one whose vectors can be read back."""
        index = faiss.downcast_index(self.index)
        return isinstance(index, faiss.IndexIDMap2) and isinstance(
            self._inner(), faiss.IndexFlat | faiss.IndexScalarQuantizer)

    def _torch_device(self) -> str | None:
        """The torch device that scans this index, or None (faiss searches it). Called on every search."""
        if self.device != "cpu" and faiss.get_num_gpus() > 0:  # faiss's own GPU path (unfiltered searches)
            return None
        if not self.is_exact:
            self._warn_once("only exact layouts are searched with torch, not {layout}; searching with faiss on "
                            "the CPU")
            return None
        if not torch_available():
            self._warn_once("torch is not installed; searching on the CPU")
            return None
        if self.device == "cpu":
            return "cpu"
        if not cuda_available():
            self._warn_once("torch sees no CUDA device; searching on the CPU")
            return "cpu"
        return self.device or "cuda"

    def _warn_once(self, reason: str) -> None:
        """Say once why an explicit ``device="cuda..."`` is not honoured (nothing for ``None`` or ``"cpu"``)."""
        if self.device is None or not self.device.startswith("cuda") or reason in self._warned:
            return
        self._warned.add(reason)
        logger.warning("device=%r: %s", self.device, reason.format(layout=self.layout))

    def _torch_search(self) -> TorchExactSearch | None:
        """The torch copy of the vectors for the current version, built on first use; None when not used."""
        device = self._torch_device()
        if device is None:
            self._torch_cache = None
            return None
        key = (self._version, device)
        if self._torch_cache is None or self._torch_cache[0] != key:
            self._torch_cache = None  # free the old copy before making the new one
            ids, vectors = self._vectors_in_place()
            try:
                copy: TorchExactSearch | None = TorchExactSearch(ids, vectors, device=device)
            except (RuntimeError, MemoryError) as exc:  # e.g. CUDA out of memory: faiss on the CPU answers
                logger.warning("cannot place %d vectors on %s (%s); searching on the CPU", len(ids), device, exc)
                copy = None
            else:
                logger.info("searching %d vectors on %s with torch (%.0f MiB on the device)", len(ids), device,
                            copy.nbytes / 2**20)
            self._torch_cache = (key, copy)
        return self._torch_cache[1]

    def _vectors_in_place(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of an exact layout; a float32 flat index gives a view of its own storage (no copy).

        The view is valid until the index changes; every change bumps ``version``, which rebuilds the torch
        search before its next use (changes and searches never overlap: ``PassageIndex`` serialises them).
        """
        inner = self._inner()
        if isinstance(inner, faiss.IndexFlat) and inner.ntotal:
            ids = faiss.vector_to_array(faiss.downcast_index(self.index).id_map).astype(np.int64)
            view = faiss.rev_swig_ptr(inner.get_xb(), inner.ntotal * inner.d).reshape(inner.ntotal, inner.d)
            return ids, view
        return self.ids_and_vectors()

    def vectors_of(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of ``ids`` (int64 ids present in the index), float32 ``(len(ids), dim)``: for
        scoring chosen windows exactly (document scores) without a search.

        Exact layouts read their storage (in place for float32, decoded once per version for fp16). Other
        layouts reconstruct through faiss: an IVF index gets a hash-table direct map the first time (kept, and
        saved with the index), so its vectors are the stored codes decoded. A layout that cannot reconstruct
        raises ``IndexUnsupportedError``.
        """
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        if self.is_exact:
            if self._stored_cache is None or self._stored_cache[0] != self._version:
                self._stored_cache = None
                all_ids, matrix = self._vectors_in_place()
                order = None if np.all(all_ids[1:] > all_ids[:-1]) else np.argsort(all_ids, kind="stable")
                self._stored_cache = (self._version, all_ids, matrix, order)
            _, all_ids, matrix, order = self._stored_cache
            if order is None:
                return matrix[np.searchsorted(all_ids, ids)]
            return matrix[order[np.searchsorted(all_ids[order], ids)]]
        ivf = self.ivf
        try:
            if ivf is not None and ivf.direct_map.type == faiss.DirectMap.NoMap:
                logger.info("adding a direct map to %s so that document scores can read stored vectors",
                            self.description)
                ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
            return np.ascontiguousarray(self.index.reconstruct_batch(ids), dtype=np.float32)
        except RuntimeError as exc:
            raise IndexUnsupportedError(
                f"the {self.layout!r} layout ({self.description}) cannot hand back stored vectors, which per-document "
                f"scores need (doc_score='top2_first', hybrid per_doc): {str(exc).strip().splitlines()[-1]}; "
                "use doc_score='max' or a Flat/IVF layout"
            ) from None

    def search(
        self, queries: np.ndarray, k: int, *, allowed: np.ndarray | None = None, id_bound: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, ids) per query; ``allowed`` (sorted int64 ids) filters inside faiss. -1 = none."""
        k = max(1, min(int(k), max(1, self.ntotal)))
        on_torch = self._torch_search()
        if on_torch is not None:
            return on_torch.search(queries, k, allowed=allowed)
        if allowed is None:
            gpu = self._gpu_index(k) if self.device != "cpu" else None
            if gpu is not None:
                return gpu.search(queries, k)
            params = self._params(None)
            return self.index.search(queries, k, params=params) if params else self.index.search(queries, k)
        sel = self._selector(allowed, id_bound)
        params = self._params(sel)
        try:
            return self.index.search(queries, k, params=params)
        except RuntimeError as exc:
            raise IndexUnsupportedError(
                f"the {self.layout!r} layout ({self.description}) cannot filter inside faiss "
                f"(labels=/doc_ids=): {str(exc).strip().splitlines()[-1]}"
            ) from None

    def ids(self) -> np.ndarray:
        """Every stored id (unordered), read from the id map or the IVF inverted lists."""
        index = faiss.downcast_index(self.index)
        if isinstance(index, faiss.IndexIDMap2 | faiss.IndexIDMap):
            return faiss.vector_to_array(index.id_map).astype(np.int64)
        ivf = self.ivf
        if ivf is None:
            raise IndexLoadError(f"cannot list the ids of {self.description}")
        parts = []
        invlists = ivf.invlists
        for cell in range(ivf.nlist):
            size = invlists.list_size(cell)
            if size:
                ptr = invlists.get_ids(cell)
                parts.append(faiss.rev_swig_ptr(ptr, size).astype(np.int64))
                invlists.release_ids(cell, ptr)
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

    # -- persistence -----------------------------------------------------------------------------------
    def write(self, path: str | Path) -> None:
        write_index(self.index, path)

    @classmethod
    def read(
        cls,
        path: str,
        *,
        mmap: bool,
        factory: str | None,
        fp16: bool,
        ivf_threshold: int,
        device: str | None = None,
    ) -> FaissBackend:
        """Read an index file (``path`` may be ``/proc/self/fd/N``); mmap where the layout allows it."""
        mmapped = False
        index = None
        if mmap:
            try:
                index = faiss.read_index(path, faiss.IO_FLAG_MMAP_IFC)
                mmapped = True
            except RuntimeError as exc:
                logger.info("this index layout cannot be memory-mapped (%s); reading it into memory", exc)
        if index is None:
            try:
                index = faiss.read_index(path)
            except RuntimeError as exc:
                raise IndexLoadError(f"faiss cannot read faiss.index: {str(exc).strip().splitlines()[-1]}") from None
        return cls(
            index.d,
            factory=factory,
            fp16=fp16,
            ivf_threshold=ivf_threshold,
            index=index,
            mmapped=mmapped,
            device=device,
        )

    @property
    def metric_is_inner_product(self) -> bool:
        return int(self.index.metric_type) == int(faiss.METRIC_INNER_PRODUCT)
