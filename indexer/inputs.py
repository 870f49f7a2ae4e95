"""Checks on the arguments of index methods, shared by ``PassageIndex`` and ``ShardedPassageIndex``.

One place for what both indexes accept: vectors and queries (``as_matrix``, ``parse_query``, ``encode_queries``),
search arguments (``check_positive_int``, ``check_min_score``, ``check_mode``, ``check_doc_score``,
``str_list``, ``check_known_labels``), encoders (``check_encoder``, ``check_fingerprint``) and new windows that are already in
the index (``check_no_clash``). Every failure is an ``IndexInputError`` whose message names the argument.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import polars as pl

from indexer.errors import IndexInputError

_SURROGATE = re.compile("[\ud800-\udfff]")

__all__ = [
    "DOC_SCORES",
    "SEARCH_MODES",
    "Query",
    "QueryEncoder",
    "as_matrix",
    "check_doc_score",
    "check_encoder",
    "check_fingerprint",
    "check_known_labels",
    "check_min_score",
    "check_mode",
    "check_no_clash",
    "check_positive_int",
    "encode_queries",
    "fingerprint_of",
    "normalized",
    "parse_query",
    "require_encoder",
    "str_list",
]

#: The search modes ``PassageIndex.search`` knows.
SEARCH_MODES = ("dense", "hybrid")
#: How ``PassageIndex.search`` turns window scores into a document's score when results are per document
#: (``per_doc`` set): ``"max"`` the best window; ``"top2_first"`` a blend of the two best windows and the first one
#: (``indexer.index.DOC_SCORE_TOP2_WEIGHT`` / ``DOC_SCORE_FIRST_WEIGHT``).
DOC_SCORES = ("top2_first", "max")

Query = str | Sequence[str] | np.ndarray


@runtime_checkable
class QueryEncoder(Protocol):
    """What a text query needs: ``encode(texts) -> float32 array (len(texts), dim)`` and ``dim``.

    An optional ``fingerprint: str`` attribute identifies the model; it is recorded in the index manifest and
    checked when the index is loaded with an encoder.
    """

    dim: int

    def encode(self, texts: list[str]) -> np.ndarray: ...


# -- vectors and queries -----------------------------------------------------------------------------------------
def as_matrix(x: Any, *, name: str, dim: int | None, allow_1d: bool = False) -> tuple[np.ndarray, bool]:
    """``x`` as a C-contiguous float32 (n, dim) array, and whether it came in 1-D.

    Accepts numpy arrays and torch tensors (without importing torch). ``dim=None`` accepts any width but 0.
    Raises ``IndexInputError`` (naming ``name``) for a non-float dtype, a wrong shape or width, NaN or Inf.
    """
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor, without importing torch
        x = x.detach().cpu().float().numpy()
    try:
        arr = np.asarray(x)
    except Exception as exc:
        raise IndexInputError(f"{name} must be a float array, got {type(x).__name__} ({exc})") from None
    if arr.dtype.kind != "f":
        raise IndexInputError(f"{name} must be a float array (float32 preferred), got dtype {arr.dtype}")
    was_1d = arr.ndim == 1
    if was_1d and allow_1d:
        arr = arr[None, :]
    if arr.ndim != 2:
        shape = "1-D or 2-D (n, dim)" if allow_1d else "2-D (n, dim)"
        raise IndexInputError(f"{name} must be {shape}, got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise IndexInputError(f"{name} has dimension {arr.shape[1]}, the index has dim={dim}")
    if arr.shape[1] == 0:
        raise IndexInputError(f"{name} has dimension 0")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise IndexInputError(
            f"{name} has NaN or Inf in {len(bad)} row(s) (first: row {int(bad[0])}); every value must be finite"
        )
    return arr, was_1d


def normalized(arr: np.ndarray, *, name: str) -> np.ndarray:
    """The rows of ``arr`` scaled to unit L2 norm (float32); an all-zero row is an ``IndexInputError``."""
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    zero = np.flatnonzero(norms[:, 0] == 0)
    if len(zero):
        raise IndexInputError(
            f"{name} row {int(zero[0])} is all zeros and cannot be L2-normalised ({len(zero)} such row(s)); "
            "drop it or build the index with normalize=False"
        )
    return np.ascontiguousarray(arr / norms, dtype=np.float32)


def parse_query(query: Any, *, dim: int) -> tuple[bool, list[str] | None, np.ndarray | None]:
    """``(single, texts, vectors)`` of a search query: a str or a list of str gives ``texts``, a 1-D or 2-D
    array (numpy or torch) of width ``dim`` gives float32 ``vectors``; ``single`` when one query came as a str
    or a 1-D vector. Anything else is an ``IndexInputError``."""
    if isinstance(query, str):
        _refuse_bad_text([query], single=True)
        return True, [query], None
    if isinstance(query, list | tuple) and all(isinstance(q, str) for q in query):
        _refuse_bad_text(query, single=False)
        return False, list(query), None
    if isinstance(query, np.ndarray) or (hasattr(query, "detach") and hasattr(query, "cpu")):
        vectors, was_1d = as_matrix(query, name="query", dim=dim, allow_1d=True)
        return was_1d, None, vectors
    raise IndexInputError(
        "query must be a str, a list of str, or a numpy array (1-D for one query, 2-D for a batch); "
        f"got {type(query).__name__}"
        + (" holding non-str items; pass vectors as np.asarray(...)" if isinstance(query, list | tuple) else "")
    )


def is_blank_text(text: str) -> bool:
    """True when ``text`` has nothing a tokenizer reads: empty, or only whitespace and invisible control or
    format characters (NUL, zero-width spaces and joiners, direction marks, a byte-order mark)."""
    return all(ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf") for ch in text)


def _refuse_bad_text(texts: Sequence[str], *, single: bool) -> None:
    """An empty or whitespace-only text query has nothing to match: its hits would be arbitrary. (Invisible
    control and format characters count as whitespace: a query of NUL bytes or zero-width spaces is blank.)
    A lone surrogate (``"\\ud800"``: a str that no UTF-8 text can hold) is refused here too, as a query error,
    before the encoder's tokenizer refuses it with a less direct one."""
    for i, text in enumerate(texts):
        where = "query" if single else f"query[{i}]"
        if is_blank_text(text):
            raise IndexInputError(f"{where} is {text!r}, empty or only whitespace (or invisible characters): a text "
                                  "query needs words to search for (its hits would be arbitrary); drop it or pass a "
                                  "query vector")
        if _SURROGATE.search(text):
            raise IndexInputError(f"{where} is {text[:60]!r}: it holds a lone surrogate (\\ud800-\\udfff), which is "
                                  "not valid Unicode text; decode the query properly or replace it with U+FFFD")


def require_encoder(encoder: QueryEncoder | None, owner: str) -> None:
    """``IndexInputError`` when there is no encoder for a text query; ``owner`` names the index class."""
    if encoder is None:
        raise IndexInputError(
            f"text queries need an encoder: pass encoder= to {owner}(...), build(...) or load(...), "
            "or search with a query vector"
        )


def encode_queries(encoder: QueryEncoder | None, texts: list[str], *, dim: int, owner: str) -> np.ndarray:
    """``encoder.encode(texts)`` checked: float32 ``(len(texts), dim)``, finite; ``owner`` names the index class
    in the error raised when there is no encoder."""
    require_encoder(encoder, owner)
    out = encoder.encode(list(texts))
    arr, _ = as_matrix(out, name="encoder.encode(...) output", dim=dim)
    if arr.shape[0] != len(texts):
        raise IndexInputError(f"encoder.encode returned {arr.shape[0]} rows for {len(texts)} texts")
    return arr


# -- search arguments ------------------------------------------------------------------------------------------
def str_list(value: Any, *, name: str) -> list[str]:
    """``value`` (a str or an iterable of str) as a list of str; anything else is an ``IndexInputError``."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, Iterable) and not isinstance(value, bytes | dict):
        items = list(value)
        bad = [v for v in items if not isinstance(v, str)]
        if not bad:
            return items
        raise IndexInputError(f"{name} must hold str values, found {bad[0]!r} ({type(bad[0]).__name__})")
    raise IndexInputError(f"{name} must be a str or a list of str, got {type(value).__name__}")


def check_positive_int(value: Any, *, name: str, allow_none: bool = False) -> int | None:
    """``value`` as an int > 0 (or None when ``allow_none``); bools and other types are an ``IndexInputError``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        valid = "a positive int or None" if allow_none else "a positive int"
        raise IndexInputError(f"{name} must be {valid}, got {value!r}")
    return int(value)


def check_min_score(value: Any) -> float | None:
    """The ``min_score=`` search argument as a float, or None; a non-number or NaN is an ``IndexInputError``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating) or math.isnan(value):
        raise IndexInputError(f"min_score must be a number or None, got {value!r}")
    return float(value)


def check_mode(mode: Any) -> str:
    """The ``mode=`` search argument, one of ``SEARCH_MODES``; anything else is an ``IndexInputError``."""
    if mode not in SEARCH_MODES:
        raise IndexInputError(f"mode must be 'dense' or 'hybrid', got {mode!r}")
    return mode


def check_doc_score(value: Any, per_doc: int | None) -> str | None:
    """The ``doc_score=`` search argument: one of ``DOC_SCORES``, or None for the default (``"top2_first"`` when
    ``per_doc`` is set). A document score needs per-document results, so a ``doc_score`` with ``per_doc=None``
    (window results) is an ``IndexInputError``, as is any other value."""
    if value is None:
        return None if per_doc is None else DOC_SCORES[0]
    if not isinstance(value, str) or value not in DOC_SCORES:
        raise IndexInputError(f"doc_score must be one of {list(DOC_SCORES)} or None (the default), got {value!r}")
    if per_doc is None:
        raise IndexInputError(
            f"doc_score={value!r} scores documents, but per_doc=None asks for windows; set per_doc (e.g. 1) or leave "
            "doc_score=None"
        )
    return value


def check_known_labels(wanted: list[str], known: Iterable[str]) -> None:
    """``IndexInputError`` listing the known labels when ``wanted`` (the ``labels=`` filter) names one that is
    not in ``known``. Callers skip the check on an empty index, where every filter matches nothing."""
    known = set(known)
    unknown = [lab for lab in wanted if lab not in known]
    if unknown:
        raise IndexInputError(f"labels={wanted!r}: unknown label(s) {unknown}; known labels: {sorted(known)}")


# -- changes ---------------------------------------------------------------------------------------------------
def check_no_clash(existing: pl.DataFrame, new: pl.DataFrame) -> None:
    """``IndexInputError`` when a ``(doc_id, window_index)`` pair of ``new`` is already in ``existing`` (both
    passage tables); ``add`` refuses such windows, ``upsert`` replaces their documents."""
    clash = existing.select("doc_id", "window_index").join(
        new.select("doc_id", "window_index"), on=["doc_id", "window_index"], how="inner"
    )
    if clash.height:
        pairs = [tuple(r) for r in clash.head(5).iter_rows()]
        raise IndexInputError(
            f"passages has {clash.height} (doc_id, window_index) pair(s) already in the index, e.g. "
            f"{pairs}; use upsert() to replace documents"
        )


# -- encoders --------------------------------------------------------------------------------------------------
def check_encoder(encoder: Any, dim: int) -> None:
    """``IndexInputError`` unless ``encoder`` is None or has ``encode(texts)`` and ``dim == dim``."""
    if encoder is None:
        return
    if not callable(getattr(encoder, "encode", None)) or not hasattr(encoder, "dim"):
        raise IndexInputError(
            f"encoder must have encode(texts) -> array and a dim attribute, got {type(encoder).__name__}"
        )
    if int(encoder.dim) != dim:
        raise IndexInputError(f"encoder.dim={encoder.dim} does not match the index dim={dim}")


def fingerprint_of(encoder: Any) -> str | None:
    """The encoder's ``fingerprint`` (an attribute or a method) as a str, or None when it has none."""
    value = getattr(encoder, "fingerprint", None)
    if callable(value):
        value = value()
    return None if value is None else str(value)


def check_fingerprint(recorded: str | None, encoder: Any, *, dim: int) -> str | None:
    """The fingerprint to record for ``encoder``; ``IndexInputError`` when the index already records another
    one (its vectors came from a different encoder, so text queries would be encoded wrongly)."""
    new = fingerprint_of(encoder)
    if recorded is not None and new is not None and new != recorded:
        raise IndexInputError(
            f"encoder fingerprint {new} differs from the index's {recorded}: the stored vectors come from "
            "another encoder; use that encoder, or rebuild the index"
        )
    return new if new is not None else recorded
