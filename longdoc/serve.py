"""``longdoc serve``: an index (and optionally a classifier) over HTTP, with micro-batched query encoding.

    app = create_app("index/", "model/", token="secret")     # a FastAPI app; uvicorn.run(app, port=8000)

Endpoints (JSON in, JSON out; OpenAPI docs at ``/docs``):

* ``GET /healthz``: ``{"status": "ok"}`` (never needs the token);
* ``GET /info``: the index manifest's facts (windows, documents, labels, window geometry, encoder and its
  fingerprint), the classifier's labels when there is one, the limits and the batching counters;
* ``POST /search``: ``{query | queries, k, labels, mode, per_doc, doc_score}`` -> per query, the hits of
  ``index.search`` (``longdoc search --json``'s hit fields) and, once, ``score_kind`` (``indexer.describe_score``);
* ``POST /contexts``: the same search, then ``indexer.rag.build_contexts`` within ``max_tokens``;
* ``POST /label``: ``{documents: [{id, text}], top_windows}`` -> label(s), probabilities and the most
  influential windows (the rows ``longdoc label`` writes); 404 when the server has no classifier.

Every error is ``{"error": message, ...}``: bad input (the library's ``DataError``, ``ConfigError``,
``IndexInputError``, the messages ``longdoc search`` prints) is 400, a body that fails validation 422 (the
message names the field), a body over ``max_body_bytes`` 413, a missing or wrong bearer token 401. Nothing is
written to disk: the index is loaded read-only (no writer lock) and the classifier only reads.

Micro-batching (``batching=True``, the default): each search's queries go onto an asyncio queue; one worker
takes what arrives within ``batch_wait_ms`` (up to ``max_forward`` queries), encodes all of it in one call of
the encoder (one forward when the queries fit its token budget) and then searches with the vectors ready: the
requests of the round that share the index version and the options (k, labels, mode, per_doc, doc_score) in one
``index.search`` call (one scoring pass for all their queries; should it fail, request by request, so that a bad
request fails alone). The searches are exactly ``index.search`` (the same code, filters and scores); the
vectors differ from encoding a request's queries alone only by float rounding (a batch pads to its longest
query). ``batching=False`` calls ``index.search`` per request.

Reload (``reload_interval_s``, default 2 s; 0 turns it off): a watcher looks at the index directory that often
(its inode and manifest, a ``stat`` each) and, when ``longdoc index`` has swapped a new version into place, loads
it beside the old one and switches new requests to it; requests already running finish on the version they
started with, which is closed when the last of them is done. No request fails for a reload. A new version must
record the encoder the server has loaded (the same fingerprint); one that does not is refused (logged, reported
by ``/info``, the old version kept) until it does. ``run`` drains on SIGTERM / Ctrl-C: the listening socket
closes, requests in flight finish (up to ``drain_timeout_s``), then the index is closed.
"""

import asyncio
import contextlib
import hmac
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from indexer.errors import IndexerError, IndexInputError, IndexLoadError, IndexUnsupportedError
from indexer.index import describe_score
from indexer.rag import build_contexts
from indexer.sharded import ShardedPassageIndex
from indexer.storage import swap_in_progress
from longdoc.errors import ConfigError, DataError, LongDocError, ModelLoadError
from longdoc.indexing import open_search_index, require_index_directory

try:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import Response
    from pydantic import BaseModel, ConfigDict, Field, model_validator
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise ImportError(
        "longdoc serve needs FastAPI and uvicorn: pip install 'longdoc[serve]' (or fastapi uvicorn)"
    ) from exc

__all__ = ["DEFAULTS", "ServeLimits", "create_app", "run"]

logger = logging.getLogger(__name__)

#: The environment variable ``longdoc serve`` reads the bearer token from when ``--token`` is not given.
TOKEN_ENV = "LONGDOC_SERVE_TOKEN"


@dataclass(frozen=True)
class ServeLimits:
    """The bounds a server enforces (each is a request error past it, never a silent cut)."""

    max_k: int = 100  # hits per query (and per_doc)
    max_batch: int = 64  # queries in one /search or /contexts request, documents in one /label request
    max_body_bytes: int = 1_000_000  # request body (413 past it)
    max_tokens: int = 8192  # /contexts token budget
    max_forward: int = 64  # queries encoded in one micro-batched forward
    batch_wait_ms: float = 5.0  # how long the batch worker waits for more queries after the first


DEFAULTS = ServeLimits()


# --------------------------------------------------------------------------------------------------- encoding


class _ServedEncoder:
    """The index's query encoder as the server uses it: every forward under one lock (with the classifier's),
    counted; inside :meth:`ready`, texts whose vectors the batch worker already has are not encoded again."""

    def __init__(self, encoder: Any, model_lock: threading.Lock) -> None:
        self.inner = encoder
        self.dim = encoder.dim
        self._lock = model_lock
        self._local = threading.local()
        self._count_lock = threading.Lock()
        self.forwards = 0  # calls of the inner encoder
        self.texts_encoded = 0

    @property
    def fingerprint(self) -> str | None:
        return getattr(self.inner, "fingerprint", None)

    def encode(self, texts: list[str]) -> np.ndarray:
        ready: dict[str, np.ndarray] | None = getattr(self._local, "ready", None)
        if ready is not None and all(t in ready for t in texts):
            return np.stack([ready[t] for t in texts]) if texts else np.zeros((0, self.dim), np.float32)
        return self.forward(texts)

    def forward(self, texts: list[str]) -> np.ndarray:
        from longdoc.encoder import WindowEncoder

        with self._lock:
            if isinstance(self.inner, WindowEncoder):
                out = self.inner.encode(list(texts), show_progress_bar=False)
            else:  # any indexer.QueryEncoder
                out = self.inner.encode(list(texts))
        with self._count_lock:
            self.forwards += 1
            self.texts_encoded += len(texts)
        return np.asarray(out, dtype=np.float32)

    @contextlib.contextmanager
    def ready(self, vectors: dict[str, np.ndarray]) -> Iterator[None]:
        self._local.ready = vectors
        try:
            yield
        finally:
            self._local.ready = None


async def _cancel(task: asyncio.Task | None) -> None:
    """Cancel a background task and wait until it has stopped."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@dataclass
class _Pending:
    """One request's queries; ``search(texts)`` searches any queries with the request's options on its index
    version, and requests with equal ``key`` (same version, same options) are searched in one call."""

    texts: list[str]
    search: Callable[[list[str]], list[Any]]
    key: Any
    future: asyncio.Future = field(repr=False)


class QueryBatcher:
    """One asyncio queue and one worker: the queries of concurrent searches are encoded in one call."""

    def __init__(self, encoder: _ServedEncoder, *, max_forward: int, wait_s: float) -> None:
        self.encoder = encoder
        self.max_forward = max_forward
        self.wait_s = wait_s
        self.batches = 0  # worker rounds
        self.requests = 0
        self.merged_searches = 0  # requests whose search ran inside another request's index.search call
        self._queue: asyncio.Queue[_Pending] | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._worker(), name="longdoc-query-batcher")

    async def stop(self) -> None:
        await _cancel(self._task)
        self._task = None
        while self._queue is not None and not self._queue.empty():  # nothing waits for ever
            item = self._queue.get_nowait()
            if not item.future.done():
                item.future.set_exception(RuntimeError("the server is shutting down"))

    async def submit(self, texts: list[str], search: Callable[[list[str]], list[Any]], key: Any) -> Any:
        if self._queue is None:
            raise RuntimeError("the query batcher is not running")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(list(texts), search, key, future))
        return await future

    async def _worker(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            n = len(batch[0].texts)
            deadline = loop.time() + self.wait_s
            while n < self.max_forward:
                try:
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self._queue.get(), left)
                    except (asyncio.TimeoutError, TimeoutError):
                        break
                batch.append(item)
                n += len(item.texts)
            try:
                outcomes = await asyncio.to_thread(self._process, batch)
            except Exception as exc:  # noqa: BLE001 - reported to every waiting request
                outcomes = [(False, exc)] * len(batch)
            for item, (ok, value) in zip(batch, outcomes, strict=True):
                if item.future.done():  # the client went away
                    continue
                if ok:
                    item.future.set_result(value)
                else:
                    item.future.set_exception(value)

    def _process(self, batch: list[_Pending]) -> list[tuple[bool, Any]]:
        self.batches += 1
        self.requests += len(batch)
        texts = list(dict.fromkeys(t for item in batch for t in item.texts if t.strip()))
        ready: dict[str, np.ndarray] = {}
        if texts:
            try:
                vectors = self.encoder.forward(texts)
                ready = dict(zip(texts, vectors, strict=True))
            except Exception as exc:  # noqa: BLE001 - each search then encodes its own queries and meets its error
                logger.debug("batched encoding failed (%s): encoding request by request", exc)
        outcomes: dict[int, tuple[bool, Any]] = {}
        groups: dict[Any, list[int]] = {}
        for i, item in enumerate(batch):
            groups.setdefault(item.key, []).append(i)
        with self.encoder.ready(ready):
            for members in groups.values():
                self._search_group([batch[i] for i in members], members, outcomes)
        return [outcomes[i] for i in range(len(batch))]

    def _search_group(self, items: list[_Pending], positions: list[int],
                      outcomes: dict[int, tuple[bool, Any]]) -> None:
        """The searches of requests with the same index version and options in one ``index.search`` call (one
        scoring pass over the vectors for all their queries); when that call fails, request by request, so a
        bad request fails alone."""
        if len(items) > 1:
            try:
                results = items[0].search([t for item in items for t in item.texts])
            except Exception:  # noqa: BLE001 - retried one by one below, where each request meets its own error
                pass
            else:
                start = 0
                for position, item in zip(positions, items, strict=True):
                    outcomes[position] = (True, results[start:start + len(item.texts)])
                    start += len(item.texts)
                self.merged_searches += len(items) - 1
                return
        for position, item in zip(positions, items, strict=True):
            try:
                outcomes[position] = (True, item.search(item.texts))
            except Exception as exc:  # noqa: BLE001 - goes to its request
                outcomes[position] = (False, exc)


# --------------------------------------------------------------------------------------------------- loading


def _load(index_dir: str | os.PathLike[str], model_dir: str | os.PathLike[str] | None, device: str | None,
          model_lock: threading.Lock, bf16: bool = False) -> tuple[Any, Any, _ServedEncoder]:
    """The index (read-only), the classifier or None, and the query encoder (the index's recorded one; the
    classifier's index encoder when its fingerprint is the index's)."""
    from longdoc.cli import load_classifier, load_query_encoder  # the CLI's loaders, errors and words

    index_dir = require_index_directory(index_dir)
    clf = load_classifier(str(model_dir), device=device, bf16=bf16) if model_dir is not None else None
    index = open_search_index(index_dir, device=device)
    try:
        fingerprint = index.encoder_fingerprint
        if clf is not None and fingerprint is not None and clf.retrieval_encoder.fingerprint == fingerprint:
            encoder = clf.retrieval_encoder  # loaded once for both
        else:
            encoder = load_query_encoder(None, index=index_dir, device=device, bf16=bf16)
        served = _ServedEncoder(encoder, model_lock)
        _attach(index, served, "pass --model with the model directory the index was built with")
    except BaseException:
        index.close()
        raise
    return index, clf, served


def _attach(index: Any, encoder: _ServedEncoder, hint: str) -> None:
    """Give ``index`` the served query encoder (the index refuses one whose fingerprint it does not record)."""
    try:
        index.encoder = encoder
    except IndexerError as exc:
        raise IndexLoadError(f"{exc}; {hint}") from exc


# --------------------------------------------------------------------------------------------------- reload


def _signature(index_dir: str) -> tuple[int, ...] | None:
    """What changes when a save swaps a new version of the index into place: the directory's inode (a swap is
    a rename) and the manifest's; None while there is no manifest to read (mid-swap, or removed)."""
    path = Path(index_dir).resolve()  # a symbolic link is swapped at its target
    try:
        d, m = os.stat(path), os.stat(path / "manifest.json")
    except OSError:
        return None
    return (d.st_dev, d.st_ino, m.st_ino, m.st_size, m.st_mtime_ns)


@dataclass(eq=False)
class _Version:
    """One loaded version of the index and how many requests are using it."""

    index: Any
    facts: dict[str, Any]
    signature: tuple[int, ...] | None
    users: int = 0
    retired: bool = False


class _IndexSlot:
    """The version new requests get; a replaced version is closed once its last request is done."""

    def __init__(self, version: _Version) -> None:
        self._lock = threading.Lock()
        self._current = version
        self.reloads = 0
        self.loaded_at = time.time()

    @property
    def current(self) -> _Version:
        return self._current

    @contextlib.contextmanager
    def use(self) -> Iterator[_Version]:
        with self._lock:
            version = self._current
            version.users += 1
        try:
            yield version
        finally:
            with self._lock:
                version.users -= 1
                done = version.retired and version.users == 0
            if done:
                version.index.close()

    def replace(self, version: _Version) -> None:
        with self._lock:
            old, self._current = self._current, version
            old.retired = True
            done = old.users == 0
            self.reloads += 1
            self.loaded_at = time.time()
        if done:
            old.index.close()

    def close(self) -> None:
        with self._lock:
            version = self._current
            version.retired = True
            done = version.users == 0
        if done:
            version.index.close()


class _Reloader:
    """Polls the index directory; loads a version that a save swapped in and hands it to the slot."""

    def __init__(self, slot: _IndexSlot, index_dir: str, encoder: _ServedEncoder, device: str | None,
                 interval_s: float) -> None:
        self.slot, self.index_dir, self.encoder, self.device = slot, index_dir, encoder, device
        self.interval_s = interval_s
        self.error: str | None = None  # why the last new version was refused
        self._refused: tuple[int, ...] | None = None  # the signature of that version (not retried)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="longdoc-index-reloader")

    async def stop(self) -> None:
        await _cancel(self._task)
        self._task = None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await asyncio.to_thread(self.check)
            except Exception:  # noqa: BLE001 - a failed poll is logged; the server goes on with what it has
                logger.exception("checking %s for a new version failed", self.index_dir)

    def check(self) -> bool:
        """Load and switch to a new version when there is one; True when it switched."""
        signature = _signature(self.index_dir)  # before loading: a save during the load is seen next time
        if signature is None or signature in (self.slot.current.signature, self._refused):
            return False
        if swap_in_progress(self.index_dir):
            return False
        try:
            index = open_search_index(self.index_dir, device=self.device)
        except (IndexerError, LongDocError, OSError) as exc:
            return self._refuse(signature, f"the new version could not be loaded: {_message(exc)}")
        try:
            _attach(index, self.encoder, "restart the server to serve an index built with another encoder")
        except IndexLoadError as exc:
            index.close()
            return self._refuse(signature, _message(exc))
        self.slot.replace(_Version(index, _index_facts(index, self.index_dir), signature))
        self.error = self._refused = None
        logger.info("reloaded %s: %d documents, %d windows", self.index_dir, len(index.doc_ids), len(index))
        return True

    def _refuse(self, signature: tuple[int, ...], why: str) -> bool:
        self.error, self._refused = why, signature
        logger.error("not reloading %s (still serving the version loaded before): %s", self.index_dir, why)
        return False


def _index_facts(index: Any, index_dir: str) -> dict[str, Any]:
    attributes = index.attributes
    documents = index.doc_ids
    return {
        "path": str(Path(index_dir).resolve()),
        "kind": "sharded" if isinstance(index, ShardedPassageIndex) else "flat",
        "windows": len(index),
        "documents": len(documents),
        "labels": list(index.labels),
        "dim": index.dim,
        "normalize": bool(index.normalize),
        "window": attributes.get("window"),
        "encoder": attributes.get("encoder"),
        "encoder_fingerprint": index.encoder_fingerprint,
    }


def _model_facts(clf: Any, model_dir: str) -> dict[str, Any]:
    return {
        "path": str(Path(model_dir).resolve()),
        "labels": list(clf.labels),
        "multi_label": bool(clf.multi_label),
        "window": clf.window.to_dict(),
        "tasks": sorted(clf.tasks),
        "encoder_fingerprint": clf.encoder.fingerprint,
    }


# --------------------------------------------------------------------------------------------------- HTTP plumbing


def _json_bytes(data: Any) -> bytes:
    from longdoc.cli import _json_default

    try:
        return json.dumps(data, ensure_ascii=False, default=_json_default).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (valid in JSON input, not in UTF-8): \\uXXXX escapes
        return json.dumps(data, ensure_ascii=True, default=_json_default).encode("ascii")


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_json_bytes(data), status_code=status, media_type="application/json", headers=headers)


def _message(exc: BaseException) -> str:
    """What ``longdoc`` prints after ``error:`` (whitespace folded to single spaces)."""
    return " ".join(str(exc).split()) or type(exc).__name__


async def _send_json(send: Callable, status: int, data: Any, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = _json_bytes(data)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


class _Guard:
    """ASGI middleware, before any routing or parsing: the bearer token (401; ``/healthz`` is open) and the
    body bound (413, from Content-Length or while reading a chunked body; the body is then replayed)."""

    def __init__(self, app: Any, *, token: str | None, max_body_bytes: int) -> None:
        self.app = app
        self.token = token.encode("utf-8") if token else None
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        if self.token is not None and scope.get("path") != "/healthz":
            auth = headers.get(b"authorization", b"")
            scheme, _, given = auth.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self.token):
                await _send_json(send, 401, {"error": "missing or wrong bearer token: send the header "
                                                      "'Authorization: Bearer <token>'"},
                                 [(b"www-authenticate", b"Bearer")])
                return
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await _send_json(send, 400, {"error": f"invalid Content-Length header {declared.decode('latin-1')!r}"})
                return
            if size > self.max_body_bytes:
                await self._too_large(send, size)
                return
        if scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self._too_large(send, size)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False
        if scope.get("path") in _JSON_PATHS and body:
            problem = _body_problem(headers.get(b"content-type", b""), body)
            if problem is not None:
                await _send_json(send, *problem)
                return

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Callable, size: int) -> None:
        await _send_json(send, 413, {"error": f"request body of {size} bytes or more is over this server's limit "
                                              f"of {self.max_body_bytes} bytes (max_body_bytes)"})


#: The endpoints whose body is a JSON object (checked by ``_Guard`` before FastAPI parses it).
_JSON_PATHS = frozenset({"/search", "/contexts", "/label"})


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _body_problem(content_type: bytes, body: bytes) -> tuple[int, dict[str, Any]] | None:
    """(status, error) for a body FastAPI would not read as JSON, or would read in a way the client did not mean:
    another Content-Type (415), bytes that are not UTF-8, nesting Python cannot parse, an integer of thousands
    of digits, a key given twice (``json.loads`` would keep the last silently); None when it is fine (malformed
    JSON is left to FastAPI's 422, which says where)."""
    kind = content_type.split(b";", 1)[0].strip().lower()
    if not (kind == b"application/json" or (kind.startswith(b"application/") and kind.endswith(b"+json"))):
        shown = content_type.decode("latin-1") if content_type else "none"
        return 415, {"error": f"the request body must be JSON sent with 'Content-Type: application/json' (got "
                              f"Content-Type: {shown})"}
    try:
        json.loads(body, object_pairs_hook=_no_duplicate_keys)
    except _DuplicateKey as exc:
        return 422, {"error": f"body: the key {exc.args[0]!r} is given more than once in one JSON object"}
    except UnicodeDecodeError as exc:
        return 422, {"error": f"body: not UTF-8 ({exc.reason} at byte {exc.start}); encode the JSON body as UTF-8"}
    except RecursionError:
        return 422, {"error": "body: JSON nested too deeply to parse"}
    except json.JSONDecodeError:
        return None
    except ValueError as exc:  # e.g. an integer past Python's digit limit
        return 422, {"error": f"body: not valid JSON ({_message(exc)})"}
    return None


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        parts.append(f"{'.'.join(loc) or 'body'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request body"


def _errors_of(exc: BaseException) -> tuple[int, str]:
    if isinstance(exc, (DataError, ConfigError, IndexInputError)):
        return 400, "bad_input"
    if isinstance(exc, IndexUnsupportedError):  # e.g. mode="hybrid" on a sharded index
        return 400, "unsupported"
    if isinstance(exc, (ModelLoadError, IndexLoadError)):
        return 503, "load_error"
    return 500, "internal"


# --------------------------------------------------------------------------------------------------- the app


def create_app(
    index_dir: str | os.PathLike[str],
    model_dir: str | os.PathLike[str] | None = None,
    *,
    token: str | None = None,
    max_batch: int = DEFAULTS.max_batch,
    max_body_bytes: int = DEFAULTS.max_body_bytes,
    max_k: int = DEFAULTS.max_k,
    max_tokens: int = DEFAULTS.max_tokens,
    batching: bool = True,
    max_forward: int = DEFAULTS.max_forward,
    batch_wait_ms: float = DEFAULTS.batch_wait_ms,
    reload_interval_s: float = 2.0,
    device: str | None = None,
    bf16: bool = False,
) -> FastAPI:
    """A FastAPI app serving the index at ``index_dir`` (and the classifier at ``model_dir``, for ``/label``).

    Loads everything now, so that a bad directory fails here (``ModelLoadError`` / ``IndexLoadError`` with the
    words of ``longdoc search``), not at the first request. ``token``: every endpoint but ``/healthz`` needs
    ``Authorization: Bearer <token>``. ``max_batch``: queries per /search or /contexts request and documents
    per /label request; ``max_body_bytes``: request body size; ``max_k``: hits per query; ``max_tokens``:
    the /contexts budget. ``batching``: micro-batch the query encoding of concurrent searches (``max_forward``
    queries at most, waiting ``batch_wait_ms`` after the first). ``reload_interval_s``: how often to look for
    a new version of the index that a save swapped in (0: never; see the module's docstring). ``bf16``: the
    query encoder (and the classifier) in bfloat16, as ``longdoc search --bf16``: faster on CPUs with bf16
    units, vectors within float rounding of float32 ones. The index is closed when the app shuts down.
    """
    limits = ServeLimits(max_k=max_k, max_batch=max_batch, max_body_bytes=max_body_bytes, max_tokens=max_tokens,
                         max_forward=max_forward, batch_wait_ms=batch_wait_ms)
    for name in ("max_k", "max_batch", "max_body_bytes", "max_tokens", "max_forward"):
        value = getattr(limits, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive int, got {value!r}")
    if not isinstance(batch_wait_ms, (int, float)) or not 0 <= batch_wait_ms <= 1000:
        raise ConfigError(f"batch_wait_ms must be a number in [0, 1000], got {batch_wait_ms!r}")
    if isinstance(reload_interval_s, bool) or not isinstance(reload_interval_s, (int, float)) \
            or not 0 <= reload_interval_s <= 86_400:
        raise ConfigError(f"reload_interval_s must be a number of seconds in [0, 86400] (0: no reload), got "
                          f"{reload_interval_s!r}")
    if token is not None and (not isinstance(token, str) or not token.strip()):
        raise ConfigError("token must be a non-empty str (or None for no token)")
    if token is not None and not all("!" <= ch <= "~" for ch in token):  # what a client can send after "Bearer "
        raise ConfigError("token must be printable ASCII without spaces or line breaks (clients send it in the "
                          "'Authorization: Bearer' header); check for a trailing newline")

    model_lock = threading.Lock()
    index, clf, encoder = _load(index_dir, model_dir, device, model_lock, bf16=bf16)
    slot = _IndexSlot(_Version(index, _index_facts(index, str(index_dir)), _signature(str(index_dir))))
    reloader = _Reloader(slot, str(index_dir), encoder, device, reload_interval_s)
    model_facts = _model_facts(clf, str(model_dir)) if clf is not None else None
    batcher = QueryBatcher(encoder, max_forward=max_forward, wait_s=batch_wait_ms / 1000) if batching else None

    # -- request models (built here: their bounds are this server's limits) ----------------------------------
    class _Strict(BaseModel):
        model_config = ConfigDict(extra="forbid")

    class SearchRequest(_Strict):
        query: str | None = Field(None, description="one query (or give `queries`)")
        queries: list[str] | None = Field(None, min_length=1, max_length=max_batch,
                                          description=f"up to {max_batch} queries")
        k: int = Field(5, ge=1, le=max_k, strict=True, description="hits per query")
        labels: list[str] | str | None = Field(None, description="only documents with one of these labels")
        mode: Literal["dense", "hybrid"] = "dense"
        per_doc: int | None = Field(1, ge=1, le=max_k, strict=True,
                                    description="hits per document; null: rank windows")
        doc_score: Literal["top2_first", "max"] | None = Field(
            None, description="how a document's windows make its score (default top2_first; per-document only)")

        @model_validator(mode="after")
        def _one_of(self) -> Any:
            if (self.query is None) == (self.queries is None):
                raise ValueError("give exactly one of `query` (a str) and `queries` (a list of str)")
            return self

        def texts(self) -> list[str]:
            return [self.query] if self.query is not None else list(self.queries or [])

    class ContextsRequest(SearchRequest):
        max_tokens: int = Field(1024, ge=1, le=limits.max_tokens, strict=True,
                                description="token budget of each query's contexts")
        merge_gap: int = Field(0, ge=0, le=100_000, strict=True,
                               description="join windows of a document at most this many characters apart")

    class Document(_Strict):
        id: str = Field(min_length=1)
        text: str

    class LabelRequest(_Strict):
        documents: list[Document] = Field(min_length=1, max_length=max_batch)
        top_windows: int = Field(3, ge=0, le=max_k, strict=True, description="most influential windows per document")

    # -- the app -----------------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if batcher is not None:
            batcher.start()
        if reload_interval_s > 0:
            reloader.start()
        try:
            yield
        finally:
            await reloader.stop()
            if batcher is not None:
                await batcher.stop()
            slot.close()

    app = FastAPI(title="longdoc", version=_version(), lifespan=lifespan,
                  description="Passages (and labels) of a longdoc index over HTTP.")
    app.state.slot, app.state.reloader = slot, reloader
    app.state.classifier, app.state.encoder, app.state.batcher = clf, encoder, batcher
    app.state.limits = limits
    app.add_middleware(_Guard, token=token, max_body_bytes=max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        return _json({"error": _validation_message(exc), "detail": json.loads(_json_bytes(exc.errors()))}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        return _json({"error": str(exc.detail)}, exc.status_code, getattr(exc, "headers", None))

    async def _library_error(request: Request, exc: Exception) -> Response:
        status, kind = _errors_of(exc)
        return _json({"error": _message(exc), "kind": kind, "type": type(exc).__name__}, status)

    # the library's own errors are answers (400 bad input, as `longdoc` exits 2); anything else is a 500 that
    # uvicorn logs with its traceback, answered without the exception's text
    app.add_exception_handler(LongDocError, _library_error)
    app.add_exception_handler(IndexerError, _library_error)

    @app.exception_handler(Exception)
    async def _failure(request: Request, exc: Exception) -> Response:
        return _json({"error": f"internal error ({type(exc).__name__}); see the server's log", "kind": "internal",
                      "type": type(exc).__name__}, 500)

    async def run_search(texts: list[str], search: Callable[[list[str]], list[Any]], key: Any) -> Any:
        if batcher is not None:
            return await batcher.submit(texts, search, key)
        return await asyncio.to_thread(search, texts)

    async def searched(body: SearchRequest) -> tuple[list[str], list[list[Any]], str]:
        """The queries, their hits and the kind of score, from the version of the index current at the start
        (the hits carry their passage text, so nothing reads the index after this)."""
        texts, per_doc, doc_score = body.texts(), body.per_doc, body.doc_score
        with slot.use() as version:
            index = version.index
            score_kind = describe_score(mode=body.mode, per_doc=per_doc, doc_score=doc_score,
                                        normalize=index.normalize)  # also checks doc_score against per_doc

            def search(queries: list[str]) -> list[list[Any]]:
                return index.search(queries, k=body.k, labels=body.labels, mode=body.mode, per_doc=per_doc,
                                    doc_score=doc_score)

            labels = body.labels if body.labels is None or isinstance(body.labels, str) else tuple(body.labels)
            key = (version, body.k, labels, body.mode, per_doc, doc_score)
            return texts, await run_search(texts, search, key), score_kind

    @app.get("/healthz", summary="liveness: 200 while the server runs")
    async def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/info", summary="the index (and model) this server answers from, its limits and batching counters")
    async def info() -> Response:
        data = {"index": {**slot.current.facts, "loaded_at": slot.loaded_at, "reloads": slot.reloads,
                          "reload_interval_s": reload_interval_s, "reload_error": reloader.error},
                "model": model_facts,
                "limits": {k: getattr(limits, k) for k in ("max_k", "max_batch", "max_body_bytes", "max_tokens")},
                "batching": {"enabled": batcher is not None, "max_forward": max_forward,
                             "wait_ms": batch_wait_ms, "forwards": encoder.forwards,
                             "queries_encoded": encoder.texts_encoded,
                             "rounds": batcher.batches if batcher is not None else None,
                             "merged_searches": batcher.merged_searches if batcher is not None else None}}
        return _json(data)

    @app.post("/search", summary="the hits of index.search for one query or a batch")
    async def search(body: SearchRequest) -> Response:
        from longdoc.cli import hit_to_dict

        texts, results, score_kind = await searched(body)
        return _json({"score_kind": score_kind,
                      "results": [{"query": q, "hits": [hit_to_dict(h) for h in hits]}
                                  for q, hits in zip(texts, results, strict=True)]})

    @app.post("/contexts", summary="RAG contexts (indexer.rag.build_contexts) of each query's hits, within a "
                                   "token budget")
    async def contexts(body: ContextsRequest) -> Response:
        texts, results, score_kind = await searched(body)
        out = []
        for q, hits in zip(texts, results, strict=True):
            built = build_contexts(hits, max_tokens=body.max_tokens, merge_gap=body.merge_gap)
            out.append({"query": q, "contexts": [_context_dict(c, n) for n, c in enumerate(built, start=1)]})
        return _json({"score_kind": score_kind, "max_tokens": body.max_tokens, "results": out})

    @app.post("/label", summary="label documents with the server's classifier (needs --model)")
    async def label(body: LabelRequest) -> Response:
        if clf is None:
            return _json({"error": "this server has no classifier: start it with --model MODEL_DIR "
                                   "(`longdoc serve INDEX_DIR --model MODEL_DIR`) to label documents",
                          "kind": "no_model"}, 404)
        rows = await asyncio.to_thread(_label, clf, body.documents, body.top_windows, model_lock)
        return _json({"labels": list(clf.labels), "multi_label": bool(clf.multi_label), "results": rows})

    return app


def _context_dict(ctx: Any, source: int) -> dict[str, Any]:
    return {"source": source, "doc_id": ctx.doc_id, "char_start": ctx.char_start, "char_end": ctx.char_end,
            "labels": list(ctx.labels), "score": float(ctx.score), "sources": list(ctx.sources),
            "spans": [list(s) for s in ctx.spans], "truncated": ctx.truncated, "text": ctx.text}


def _label(clf: Any, documents: list[Any], top_windows: int, model_lock: threading.Lock) -> list[dict[str, Any]]:
    """The rows ``longdoc label`` writes (one encoder pass), as JSON: label(s), probabilities by label, the most
    influential windows with their text, and the warning or error of a document that got no label."""
    from longdoc.data import documents_from_texts
    from longdoc.label_core import label_rows

    docs = documents_from_texts([d.text for d in documents], ids=[d.id for d in documents])
    with model_lock:
        rows = label_rows(clf, docs, top_windows)
    texts = docs["text"].to_list()
    label_col = "labels" if clf.multi_label else "label"
    out = []
    for text, row in zip(texts, rows.to_dicts(), strict=True):
        probs = row["probs"]
        out.append({
            "id": row["doc_id"],
            label_col: row[label_col],
            "probabilities": None if probs is None else dict(zip(clf.labels, probs, strict=True)),
            "top_windows": None if row["top_passages"] is None else [
                {**p, "text": text[p["char_start"]:p["char_end"]]} for p in row["top_passages"]],
            "warning": row["warning"],
            "error": row["error"],
        })
    return out


def _version() -> str:
    import longdoc

    return longdoc.__version__


def run(index_dir: str, model_dir: str | None = None, *, host: str = "127.0.0.1", port: int = 8000,
        token: str | None = None, log_level: str = "info", drain_timeout_s: float = 30.0, **options: Any) -> None:
    """Load, then serve with uvicorn until SIGTERM or Ctrl-C (what ``longdoc serve`` runs); then drain: stop
    accepting, let the requests in flight finish (at most ``drain_timeout_s`` seconds), close the index."""
    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1") and token is None:
        logger.warning("serving on %s without a token: anyone who can reach it can search the index (pass --token "
                       "or set %s)", host, TOKEN_ENV)
    started = time.perf_counter()
    app = create_app(index_dir, model_dir, token=token, **options)
    logger.info("loaded in %.1fs; serving on http://%s:%d (docs at /docs)", time.perf_counter() - started,
                host, port)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=drain_timeout_s)
