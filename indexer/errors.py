"""Named exceptions of the indexer; callers catch these."""

from __future__ import annotations

__all__ = [
    "IndexerError",
    "IndexInputError",
    "IndexLoadError",
    "IndexLockedError",
    "IndexUnsupportedError",
]


class IndexerError(Exception):
    """Base class of every error the indexer raises on purpose."""


class IndexInputError(IndexerError, ValueError):
    """An argument is invalid: wrong shape, dtype, dimension, NaN/Inf, duplicate window, unknown label..."""


class IndexLoadError(IndexerError, RuntimeError):
    """A saved index directory is missing, corrupt, inconsistent, or does not match the given encoder."""


class IndexLockedError(IndexerError, RuntimeError):
    """Another writer (a live process or another ``PassageIndex`` object) holds the directory's lock."""


class IndexUnsupportedError(IndexerError, NotImplementedError):
    """The faiss layout chosen with ``factory=`` cannot do this operation (e.g. HNSW cannot remove)."""
