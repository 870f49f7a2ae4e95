"""indexer: a FAISS passage index for document windows, with hybrid search, RAG contexts and evaluation.

Takes window embeddings plus a passage table (never imports ``longdoc``); text queries go through any object
with ``encode(texts) -> float32 array`` and ``dim`` (``QueryEncoder``).
"""

from indexer.errors import (
    IndexerError,
    IndexInputError,
    IndexLoadError,
    IndexLockedError,
    IndexUnsupportedError,
)
from indexer.evaluation import evaluate_retrieval, mrr, ndcg_at_k, recall_at_k
from indexer.index import FORMAT_VERSION, Hit, PassageIndex, QueryEncoder, describe_score
from indexer.rag import Context, build_contexts, format_contexts
from indexer.sharded import ShardedPassageIndex, export_vectors_parquet

__all__ = [
    "FORMAT_VERSION",
    "Context",
    "Hit",
    "IndexInputError",
    "IndexLoadError",
    "IndexLockedError",
    "IndexUnsupportedError",
    "IndexerError",
    "PassageIndex",
    "QueryEncoder",
    "ShardedPassageIndex",
    "build_contexts",
    "describe_score",
    "evaluate_retrieval",
    "export_vectors_parquet",
    "format_contexts",
    "mrr",
    "ndcg_at_k",
    "recall_at_k",
]
