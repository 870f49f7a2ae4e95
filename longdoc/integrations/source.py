"""One search, over a local index or a running ``longdoc serve``, as the hit dicts of ``longdoc search --json``.

    source = SearchSource("index/")                                  # loaded read-only, its recorded encoder
    source = SearchSource(url="http://127.0.0.1:8000", token="s3cret")  # POST /search with httpx
    result = source.search("how do I change file permissions", SearchOptions(k=5, labels=["1"]))
    result.score_kind, result.hits[0]["doc_id"], result.hits[0]["text"]

Both framework retrievers (``longdoc.integrations.langchain``, ``longdoc.integrations.llamaindex``) are thin
adapters over this module: ``SearchSource`` searches, ``hit_id`` and ``hit_metadata`` give a hit's stable id and
its provenance. This module imports neither framework.

A local source searches exactly as ``longdoc search`` does (``PassageIndex.search`` with the index's recorded
query encoder, or ``model=``); a remote one gets the same hits from the server (``longdoc.cli.hit_to_dict``'s
fields). Errors are the library's: a bad argument is an ``IndexInputError`` naming it, a bad ``index=`` a
``ModelLoadError`` / ``IndexLoadError`` / ``ConfigError``, a bad ``url=`` or ``token=`` a ``ConfigError``; a
server's refusal is raised as the class it names (``IndexInputError``, ``DataError``, ...) with its message.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from indexer.errors import IndexInputError, IndexLoadError, IndexUnsupportedError
from indexer.index import describe_score
from indexer.inputs import check_positive_int, is_blank_text, str_list
from longdoc.errors import ConfigError, DataError, LongDocError, ModelLoadError

__all__ = ["SearchOptions", "SearchResult", "SearchSource", "hit_id", "hit_metadata"]

logger = logging.getLogger(__name__)

#: The server's error ``type`` names raised here as the same class (anything else: ``LongDocError``).
_SERVER_ERRORS: dict[str, type[Exception]] = {
    cls.__name__: cls
    for cls in (IndexInputError, IndexUnsupportedError, IndexLoadError, DataError, ConfigError, ModelLoadError)
}


@dataclass(frozen=True)
class SearchOptions:
    """The arguments of ``PassageIndex.search`` (and of ``POST /search``), checked when made.

    ``k``: hits per query; ``labels``: only documents with one of these labels (a str or a list; None: all);
    ``mode``: ``"dense"`` or ``"hybrid"``; ``per_doc``: windows per document (None: rank windows, not
    documents); ``doc_score``: ``"top2_first"`` (the default with ``per_doc``) or ``"max"``. A bad value is an
    ``IndexInputError`` naming the argument, the value and what is valid.
    """

    k: int = 5
    labels: tuple[str, ...] | None = None
    mode: str = "dense"
    per_doc: int | None = 1
    doc_score: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "k", check_positive_int(self.k, name="k"))
        if self.labels is not None:
            object.__setattr__(self, "labels", tuple(str_list(self.labels, name="labels")))
        describe_score(mode=self.mode, per_doc=self.per_doc, doc_score=self.doc_score)  # checks the other three

    def search_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``index.search`` (and the fields of a ``POST /search`` body)."""
        return {"k": self.k, "labels": None if self.labels is None else list(self.labels), "mode": self.mode,
                "per_doc": self.per_doc, "doc_score": self.doc_score}


@dataclass(frozen=True)
class SearchResult:
    """The hits of one query (each a ``longdoc.cli.hit_to_dict`` dict: rank, score, doc_id, window_index,
    window_score, char_start, char_end, labels, pred_labels, weight, text, metadata), what their score is
    (``indexer.describe_score``'s words) and where they came from."""

    query: str
    score_kind: str
    hits: list[dict[str, Any]]
    source: str  # the index directory, the server's URL, or the loaded index's class
    source_kind: Literal["index", "server"]
    options: SearchOptions = field(default_factory=SearchOptions)


def hit_id(hit: dict[str, Any]) -> str:
    """A hit's stable id: ``"<doc_id>:<char_start>-<char_end>"`` (the same window always gets the same id)."""
    return f"{hit['doc_id']}:{hit['char_start']}-{hit['char_end']}"


def hit_metadata(hit: dict[str, Any], result: SearchResult) -> dict[str, Any]:
    """A hit's provenance, for a framework's document metadata.

    ``doc_id``, ``char_start``/``char_end`` (the passage's span in the document's text), ``score`` and
    ``score_kind`` (what the score is), ``window_score`` (the query's similarity to this window), ``rank``,
    ``window_index``, ``labels`` (the document's gold labels, or its predicted ones where it has no gold),
    ``pred_labels``, ``weight`` (the window's attribution weight, when the index has one), ``passage_metadata``
    (the passage table's extra columns), ``source`` and ``source_kind`` (``"index"`` or ``"server"``), ``query``.
    """
    return {
        "doc_id": hit["doc_id"],
        "char_start": hit["char_start"],
        "char_end": hit["char_end"],
        "score": hit["score"],
        "score_kind": result.score_kind,
        "window_score": hit.get("window_score"),
        "rank": hit["rank"],
        "window_index": hit["window_index"],
        "labels": list(hit.get("labels") or []),
        "pred_labels": list(hit.get("pred_labels") or []),
        "weight": hit.get("weight"),
        "passage_metadata": dict(hit.get("metadata") or {}),
        "source": result.source,
        "source_kind": result.source_kind,
        "query": result.query,
    }


def check_query(query: Any) -> str:
    """``query`` when it is a str with words; else an ``IndexInputError`` saying what came in."""
    if not isinstance(query, str):
        raise IndexInputError(f"query must be a str, got {type(query).__name__} ({query!r:.80})")
    if is_blank_text(query):
        raise IndexInputError(f"query is {query!r:.80}, empty or only whitespace (or invisible characters): a text "
                              "query needs words to search for")
    if any("\ud800" <= ch <= "\udfff" for ch in query):
        raise IndexInputError(f"query {query!r:.80} holds a lone surrogate (\\ud800-\\udfff), which is not valid "
                              "Unicode text; decode the text properly or replace it with U+FFFD")
    return query


class _QuietQueryEncoder:
    """A ``WindowEncoder`` as a query encoder without its progress bar (a retriever encodes one short query)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.dim = inner.dim

    @property
    def fingerprint(self) -> str | None:
        return getattr(self.inner, "fingerprint", None)

    def encode(self, texts: list[str]) -> Any:
        return self.inner.encode(list(texts), show_progress_bar=False)


class SearchSource:
    """Where a retriever's hits come from: a local index or a running ``longdoc serve``.

    Exactly one of ``index`` and ``url``:

    * ``index``: an index directory (``longdoc index``'s output, flat or sharded), loaded now, read-only (no
      writer lock), with the query encoder it records (or the encoder of ``model``, a classifier or encoder
      directory), on ``device``; or an already loaded ``PassageIndex`` / ``ShardedPassageIndex`` with an
      encoder (used as it is, never closed here);
    * ``url``: the base URL of ``longdoc serve`` (``http://127.0.0.1:8000``); ``token`` its bearer token;
      ``timeout`` seconds per request. Nothing is sent until the first search.
    """

    def __init__(self, index: Any = None, *, url: str | None = None, token: str | None = None,
                 timeout: float = 30.0, model: str | os.PathLike[str] | None = None,
                 device: str | None = None) -> None:
        if (index is None) == (url is None):
            raise ConfigError("give exactly one of index= (an index directory or a loaded index) and url= (the base "
                              f"URL of a running `longdoc serve`), got index={index!r:.80} and url={url!r}")
        self._index: Any = None
        self._owns_index = False
        self._client: Any = None
        self._lock = threading.Lock()
        self.token = None
        self.timeout = None
        if url is not None:
            if model is not None or device is not None:
                raise ConfigError("model= and device= are for a local index; a server searches with its own encoder "
                                  f"(got url={url!r} with model={model!r}, device={device!r})")
            self.source_kind: Literal["index", "server"] = "server"
            self.location = self._check_url(url)
            self.token = self._check_token(token)
            self.timeout = self._check_timeout(timeout)
            self._httpx = _import_httpx()
        else:
            if token is not None:
                raise ConfigError("token= is the bearer token of a server (url=); a local index needs none")
            self.source_kind = "index"
            self._index, self.location, self._owns_index = _open_index(index, model, device)

    # -- checks ----------------------------------------------------------------------------------------------
    @staticmethod
    def _check_url(url: Any) -> str:
        why = "got"
        if isinstance(url, str):
            try:
                parts = urlsplit(url)
                host, _ = parts.hostname, parts.port  # the port is checked when read
            except ValueError as exc:
                parts, host, why = None, None, f"{exc}:"
            if parts is not None and parts.scheme.lower() in ("http", "https") and host:
                if parts.query or parts.fragment or any(ch.isspace() for ch in url):
                    why = "a base URL has no query, fragment or spaces; got"
                else:
                    return url.rstrip("/")
        raise ConfigError("url must be the http(s) base URL of a running `longdoc serve` (e.g. "
                          f"'http://127.0.0.1:8000'), {why} {url!r}")

    @staticmethod
    def _check_token(token: Any) -> str | None:
        if token is not None and (not isinstance(token, str) or not token.strip()):
            raise ConfigError(f"token must be a non-empty str (the server's bearer token) or None, got {token!r}")
        if token is not None and not all("!" <= ch <= "~" for ch in token):
            raise ConfigError("token must be printable ASCII without spaces or line breaks (it is sent in the "
                              f"'Authorization: Bearer' header), got {token!r}")
        return token

    @staticmethod
    def _check_timeout(timeout: Any) -> float:
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout < math.inf:
            raise ConfigError(f"timeout must be a positive (finite) number of seconds, got {timeout!r}")
        return float(timeout)

    # -- searching -------------------------------------------------------------------------------------------
    @property
    def index(self) -> Any:
        """The local index (None for a server)."""
        return self._index

    def search(self, query: str, options: SearchOptions | None = None) -> SearchResult:
        """The hits of ``query`` under ``options`` (default ``SearchOptions()``)."""
        query = check_query(query)
        options = options if options is not None else SearchOptions()
        if self._index is not None:
            return self._search_local(query, options)
        with self._lock:
            if self._client is None:
                self._client = self._httpx.Client(headers=self._headers(), timeout=self.timeout)
            client = self._client
        try:
            response = client.post(self.location + "/search", json=self._body(query, options))
        except self._httpx.HTTPError as exc:
            raise self._transport_error(exc) from exc
        return self._answer(response, query, options)

    async def asearch(self, query: str, options: SearchOptions | None = None) -> SearchResult:
        """``search`` for async code: an ``httpx.AsyncClient`` for a server, a worker thread for a local index."""
        query = check_query(query)
        options = options if options is not None else SearchOptions()
        if self._index is not None:
            return await asyncio.to_thread(self._search_local, query, options)
        async with self._httpx.AsyncClient(headers=self._headers(), timeout=self.timeout) as client:
            try:
                response = await client.post(self.location + "/search", json=self._body(query, options))
            except self._httpx.HTTPError as exc:
                raise self._transport_error(exc) from exc
        return self._answer(response, query, options)

    def close(self) -> None:
        """Close the HTTP client, and the index when this source loaded it (it stays searchable in memory)."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
        if self._owns_index and self._index is not None:
            self._index.close()

    def __repr__(self) -> str:
        return f"SearchSource({self.source_kind}={self.location!r})"

    def _search_local(self, query: str, options: SearchOptions) -> SearchResult:
        from longdoc.cli import hit_to_dict

        hits = self._index.search(query, **options.search_kwargs())
        score_kind = describe_score(mode=options.mode, per_doc=options.per_doc, doc_score=options.doc_score,
                                    normalize=self._index.normalize)
        return SearchResult(query, score_kind, [hit_to_dict(h) for h in hits], self.location, "index", options)

    # -- HTTP ------------------------------------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token is not None else {}

    @staticmethod
    def _body(query: str, options: SearchOptions) -> dict[str, Any]:
        return {"query": query, **options.search_kwargs()}

    def _transport_error(self, exc: Exception) -> LongDocError:
        if isinstance(exc, self._httpx.TimeoutException):
            return LongDocError(f"the longdoc server at {self.location} did not answer within timeout={self.timeout:g} "
                                f"seconds ({type(exc).__name__})")
        return ConfigError(f"cannot reach a longdoc server at url={self.location!r}: {type(exc).__name__}: {exc}; "
                           "is `longdoc serve` running there?")

    def _answer(self, response: Any, query: str, options: SearchOptions) -> SearchResult:
        try:
            data = response.json()
        except ValueError:
            data = None
        status = response.status_code
        if status == 200 and _is_search_answer(data):
            (result,) = data["results"]
            return SearchResult(query, data["score_kind"], list(result["hits"]), self.location, "server", options)
        if isinstance(data, dict) and isinstance(data.get("error"), str) and status != 404:
            raise self._refusal(status, data)
        what = f"HTTP {status} ({response.headers.get('content-type', 'no content type')})"
        if isinstance(data, dict) and "error" in data:
            what += f": {data['error']}"
        raise ConfigError(f"url={self.location!r} does not answer like a longdoc server: POST /search gave {what}; "
                          "give the base URL of a running `longdoc serve` (e.g. 'http://127.0.0.1:8000')")

    def _refusal(self, status: int, data: dict[str, Any]) -> Exception:
        message = data["error"]
        where = f"(the longdoc server at {self.location}, HTTP {status})"
        if status == 401:
            hint = "no token= was given" if self.token is None else "check token="
            return ConfigError(f"{message} {where}; {hint}")
        cls = _SERVER_ERRORS.get(str(data.get("type")))
        if cls is None:
            cls = IndexInputError if status in (400, 413, 422) else LongDocError
        return cls(f"{message} {where}")


def _is_search_answer(data: Any) -> bool:
    if not isinstance(data, dict) or not isinstance(data.get("score_kind"), str):
        return False
    results = data.get("results")
    if not (isinstance(results, list) and len(results) == 1 and isinstance(results[0], dict)
            and isinstance(results[0].get("hits"), list)):
        return False
    return all(isinstance(hit, dict) and _HIT_FIELDS <= hit.keys() and isinstance(hit["text"], str)
               for hit in results[0]["hits"])


#: The fields of a hit that ``hit_id``, ``hit_metadata`` and the retrievers read.
_HIT_FIELDS = frozenset({"rank", "score", "doc_id", "window_index", "char_start", "char_end", "text"})


def _import_httpx() -> Any:
    try:
        import httpx
    except ImportError as exc:  # pragma: no cover - httpx comes with both extras
        raise ImportError("a longdoc server URL needs httpx: pip install httpx (or 'longdoc[langchain]' / "
                          "'longdoc[llamaindex]')") from exc
    return httpx


def _open_index(index: Any, model: str | os.PathLike[str] | None, device: str | None) -> tuple[Any, str, bool]:
    """(index, its location, whether it was loaded here) for ``index=``."""
    if isinstance(index, str | os.PathLike):
        return (*_load_directory(os.fspath(index), model, device), True)
    if callable(getattr(index, "search", None)) and hasattr(index, "normalize"):
        if model is not None or device is not None:
            raise ConfigError("model= and device= are for an index directory; a loaded index searches with its own "
                              "encoder (set index.encoder)")
        if index.encoder is None:
            raise ConfigError(f"the loaded {type(index).__name__} has no query encoder: load it with encoder= (e.g. "
                              "longdoc.indexing.index_encoder(directory)) or pass the index directory instead")
        return index, f"<{type(index).__name__} in memory>", False
    raise ConfigError("index must be an index directory (a str or os.PathLike) or a loaded PassageIndex / "
                      f"ShardedPassageIndex, got {type(index).__name__}")


def _load_directory(path: str, model: str | os.PathLike[str] | None, device: str | None) -> tuple[Any, str]:
    """The index at ``path``, read-only, with its query encoder: what ``longdoc search`` loads."""
    from longdoc.cli import load_query_encoder
    from longdoc.encoder import WindowEncoder
    from longdoc.indexing import open_search_index, require_index_directory

    if path.startswith(("http://", "https://")):
        raise ConfigError(f"index={path!r} is a URL: pass a server as url=")
    require_index_directory(path)  # before loading an encoder
    encoder = load_query_encoder(None if model is None else os.fspath(model), index=path, device=device)
    if isinstance(encoder, WindowEncoder):
        encoder = _QuietQueryEncoder(encoder)
    index = open_search_index(path, encoder=encoder, device=device, mismatch_hint=None if model is not None
                              else "pass model= with the model directory the index was built with")
    logger.info("loaded the index %s (%d windows) for retrieval", path, len(index))
    return index, str(Path(path).resolve())
