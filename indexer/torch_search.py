"""Exact inner-product search with torch: the scan behind every exact (flat) layout.

For exact layouts the index keeps a copy of its vectors as a torch tensor and answers with matrix products:
one product per block of queries against all vectors, the best ``k`` taken with ``topk``. On the CPU this is
float32 throughout, and measured faster than faiss-cpu's flat scan (6x batched, 1.9x one query per call at
1M x 384, benchmarks/RESULTS.md). On a CUDA device, which ``pip install faiss-cpu`` cannot use, the scan runs in
half precision and the best ``k + margin`` candidates are re-scored in float32, so the scores (and, but for
near-ties inside the margin, the ranking) are those of exact float32 search. Filters become a mask over the
rows, applied before ``topk``, or, for a small allowed set, a search over just those rows.

Results follow faiss's conventions: (scores, ids) of shape (n_queries, k), best first, id ``-1`` where fewer
than ``k`` vectors pass the filter.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

#: Elements of one (queries x vectors) score block on a GPU / on the CPU: bounds a batched search's temporary memory.
BLOCK_ELEMENTS = 1 << 28
CPU_BLOCK_ELEMENTS = 1 << 25
#: Extra candidates re-scored in float32 beyond k (absorbs half-precision rounding at the cut-off).
RESCORE_MARGIN = 16
#: An allowed set at most this fraction of the rows is searched directly instead of masking all rows.
SUBSET_FRACTION = 1 / 16


@functools.cache
def torch_available() -> bool:
    """Whether torch can be imported (it is imported only in this module, lazily; asked once)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def cuda_available() -> bool:
    """Whether torch is installed and sees a CUDA device (torch is imported only here, lazily; asked once)."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


class TorchExactSearch:
    """An index's vectors as a torch tensor, searched exactly: used in place on the CPU (float32), copied to a
    GPU.

    Args:
        ids: int64 ids of the vectors (unique).
        vectors: float32 (n, dim) vectors, row i under ``ids[i]``.
        device: a torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        dtype: ``"float16"``, ``"bfloat16"`` or ``"float32"`` for the scanning copy (default: float16 on a GPU,
            float32 on the CPU); with a half precision the candidates are re-scored against a float32 copy on
            the same device.
    """

    def __init__(self, ids: np.ndarray, vectors: np.ndarray, *, device: str, dtype: str | None = None) -> None:
        import torch

        dtype = dtype or ("float32" if torch.device(device).type == "cpu" else "float16")
        if dtype not in ("float16", "bfloat16", "float32"):
            raise ValueError(f"dtype must be 'float16', 'bfloat16' or 'float32', got {dtype!r}")
        self.ids = np.ascontiguousarray(ids, dtype=np.int64)
        self._order = np.argsort(self.ids, kind="stable")  # to find the rows of filter ids
        self._sorted_ids = self.ids[self._order]
        self.device = torch.device(device)
        self.dtype = getattr(torch, dtype)
        # float32 vectors on the CPU are used in place (no copy): the caller keeps them alive and unchanged
        exact = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)).to(self.device)
        self._exact = exact
        self._scan = exact if self.dtype == torch.float32 else exact.to(self.dtype)
        self._ids_t = torch.from_numpy(self.ids).to(self.device)
        self._filter: tuple[np.ndarray, tuple[Any, Any, Any, Any, int]] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def nbytes(self) -> int:
        """Memory held by the vector tensors (on the CPU in float32: shared with the caller's array)."""
        size = self._exact.element_size() * self._exact.nelement()
        if self._scan is not self._exact:
            size += self._scan.element_size() * self._scan.nelement()
        return int(size)

    def _restricted(self, allowed: np.ndarray | None) -> tuple[Any, Any, Any, Any, int]:
        """(scan, exact, row ids, exclusion mask or None, rows available) for a filter: a small allowed set as its
        own rows (a gathered copy), a large one as a mask over all rows. The last filter's answer is kept and
        reused while the caller passes the same ``allowed`` object (``PassageIndex`` keeps one per filter), so
        repeated searches under one filter do not resolve it again."""
        import torch

        if allowed is None:
            return self._scan, self._exact, self._ids_t, None, len(self)
        cached = self._filter
        if cached is not None and cached[0] is allowed:
            return cached[1]
        ids = np.asarray(allowed, dtype=np.int64)
        pos = np.searchsorted(self._sorted_ids, ids)
        found = (pos < len(self.ids)) & (self._sorted_ids[np.minimum(pos, len(self.ids) - 1)] == ids)
        rows_np = np.unique(self._order[pos[found]])
        rows = torch.from_numpy(rows_np).to(self.device)
        if len(rows_np) == 0:
            answer = (self._scan, self._exact, self._ids_t, None, 0)
        elif len(rows_np) <= max(1, int(len(self) * SUBSET_FRACTION)):  # a small allowed set: its rows only
            scan = self._scan[rows]
            answer = (scan, scan if self._scan is self._exact else self._exact[rows], self._ids_t[rows], None,
                      len(rows_np))
        else:  # a large one: mask out the rest before topk
            mask = torch.ones(len(self), dtype=torch.bool, device=self.device)
            mask[rows] = False
            answer = (self._scan, self._exact, self._ids_t, mask, len(rows_np))
        self._filter = (allowed, answer)
        return answer

    def search(
        self, queries: np.ndarray, k: int, *, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (float32 scores, int64 ids) per query; ``allowed`` (int64 ids) restricts the rows searched."""
        import torch

        n_queries = len(queries)
        scores_out = np.full((n_queries, k), -np.inf, dtype=np.float32)
        ids_out = np.full((n_queries, k), -1, dtype=np.int64)
        if n_queries == 0 or len(self) == 0:
            return scores_out, ids_out
        scan, exact, row_ids, mask, available = self._restricted(allowed)
        if available == 0:
            return scores_out, ids_out
        n = len(row_ids)
        want = min(k, available)
        fetch = min(n, want + (RESCORE_MARGIN if scan is not exact else 0))
        elements = CPU_BLOCK_ELEMENTS if self.device.type == "cpu" else BLOCK_ELEMENTS
        block = max(1, elements // max(1, n))
        q_all = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
        with torch.inference_mode():
            for start in range(0, n_queries, block):
                q = q_all[start:start + block].to(self.device, non_blocking=True)
                scores = q.to(scan.dtype) @ scan.T  # (b, n)
                if mask is not None:
                    scores.masked_fill_(mask, float("-inf"))
                cand = scores.topk(fetch, dim=1).indices  # (b, fetch)
                if scan is not exact:  # re-score the candidates in float32, then keep the best `want`
                    exact_scores = torch.einsum("bd,bcd->bc", q, exact[cand])
                    if mask is not None:
                        exact_scores.masked_fill_(mask[cand], float("-inf"))
                    best, order = exact_scores.topk(want, dim=1)
                    cand = torch.gather(cand, 1, order)
                else:
                    best = torch.gather(scores, 1, cand[:, :want])
                    cand = cand[:, :want]
                stop = start + len(q)
                scores_out[start:stop, :want] = best.float().cpu().numpy()
                ids_out[start:stop, :want] = row_ids[cand].cpu().numpy()
        ids_out[~np.isfinite(scores_out)] = -1
        return scores_out, ids_out
