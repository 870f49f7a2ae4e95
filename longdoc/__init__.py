"""longdoc: long-document classification and retrieval over sliding BERT windows."""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# Public names, imported lazily so `import longdoc` stays fast (torch and transformers load on first use).
_EXPORTS = {
    "WindowConfig": "longdoc.windows",
    "Windows": "longdoc.windows",
    "make_windows": "longdoc.windows",
    "WindowEncoder": "longdoc.encoder",
    "LongDocClassifier": "longdoc.classifier",
    "Encoded": "longdoc.classifier",
    "Analysis": "longdoc.classifier",
    "TrainConfig": "longdoc.training",
    "HeadConfig": "longdoc.heads",
    "compare_with_baselines": "longdoc.evaluation",
    "documents_from_texts": "longdoc.data",
    "load_bbc": "longdoc.corpora",
    "load_20news": "longdoc.corpora",
    "stratified_split": "longdoc.corpora",
    "load_documents": "longdoc.data",
    "iter_documents": "longdoc.data",
    "load_man_pages": "longdoc.manpages",
    "LongDocError": "longdoc.errors",
    "DataError": "longdoc.errors",
    "ConfigError": "longdoc.errors",
    "ModelLoadError": "longdoc.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'longdoc' has no attribute {name!r}")
    return getattr(import_module(module), name)
