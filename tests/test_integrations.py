"""The LangChain and LlamaIndex retrievers against the real ``langchain-core`` and ``llama-index-core``, over a real
index on disk (tiny BERT) and a real uvicorn ``longdoc serve``; every answer is compared with the in-process
``PassageIndex.search``. Each framework's tests skip when its package is absent."""

from __future__ import annotations

import asyncio
import http.server
import importlib
import re
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest

from indexer import PassageIndex
from indexer.errors import IndexInputError
from indexer.index import describe_score
from longdoc.errors import ConfigError, ModelLoadError
from longdoc.indexing import build_index, index_encoder
from longdoc.integrations.source import SearchOptions, SearchSource
from longdoc.windows import WindowConfig

WINDOW = WindowConfig(max_length=32, stride=8)
TOPICS = {"sport": "team player goal win", "tech": "device system library model", "news": "vote bank market report"}
WORDS = ("file mode bits change user group read write run command option system call library function device "
         "format page manual music film game data text window token label document index search query").split()
TOKEN = "integration-token"
QUERY = "team player goal"

OPTIONS = [
    {},
    {"k": 7, "labels": ["sport", "news"]},
    {"k": 4, "labels": "tech", "doc_score": "max", "per_doc": 2},
    {"k": 6, "per_doc": None},
    {"k": 4, "mode": "hybrid"},
]


def _rows() -> list[dict]:
    rng = np.random.default_rng(7)
    rows = []
    for i in range(24):
        label = list(TOPICS)[i % 3]
        before = " ".join(rng.choice(WORDS, size=int(rng.integers(8, 40))))
        after = " ".join(rng.choice(WORDS, size=int(rng.integers(8, 40))))
        rows.append({"id": f"d{i}", "text": f"{before} {TOPICS[label]} {after}", "label": label})
    return rows


GOLD = {r["id"]: r["label"] for r in _rows()}


@pytest.fixture(scope="module")
def index_dir(tiny_model_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("integrations") / "index"
    index, _ = build_index(_rows(), encoder=str(tiny_model_dir), window=WINDOW)
    index.save(path)
    index.close()
    return path


@pytest.fixture(scope="module")
def reference(index_dir):
    """The in-process index with the encoder it records: what every retriever answer is compared with."""
    index = PassageIndex.load(index_dir, encoder=index_encoder(index_dir, device="cpu"))
    yield index
    index.close()


@pytest.fixture(scope="module")
def server(index_dir):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    from live_server import LiveServer

    from longdoc.serve import create_app

    live = LiveServer(create_app(index_dir, token=TOKEN, max_k=20))
    yield live
    live.stop()


@pytest.fixture(scope="module")
def lc():
    pytest.importorskip("langchain_core")
    return importlib.import_module("longdoc.integrations.langchain")


@pytest.fixture(scope="module")
def li():
    pytest.importorskip("llama_index.core")
    return importlib.import_module("longdoc.integrations.llamaindex")


@pytest.fixture(params=["directory", "loaded", "server"])
def where(request, index_dir, reference):
    """The three ways to point a retriever at the index (as constructor keyword arguments)."""
    if request.param == "directory":
        return {"index": index_dir}
    if request.param == "loaded":
        return {"index": reference}
    return {"url": request.getfixturevalue("server").url, "token": TOKEN}


def _want(reference, query: str, options: dict) -> list[tuple]:
    return [(h.doc_id, h.char_start, h.char_end, h.text, h.score) for h in reference.search(query, **options)]


def _same(got: list[tuple], want: list[tuple]) -> None:
    assert [g[:4] for g in got] == [w[:4] for w in want]
    assert [g[4] for g in got] == pytest.approx([w[4] for w in want], abs=1e-5)


# --------------------------------------------------------------------------------------------------- results


@pytest.mark.parametrize("options", OPTIONS)
def test_langchain_equals_the_in_process_search(lc, reference, where, options):
    retriever = lc.LongdocRetriever(**where, **options)
    try:
        docs = retriever.invoke(QUERY)
    finally:
        retriever.close()
    _same([(d.metadata["doc_id"], d.metadata["char_start"], d.metadata["char_end"], d.page_content,
            d.metadata["score"]) for d in docs], _want(reference, QUERY, options))
    assert all(type(d).__name__ == "Document" for d in docs)


@pytest.mark.parametrize("options", OPTIONS)
def test_llamaindex_equals_the_in_process_search(li, reference, where, options):
    from llama_index.core.schema import NodeWithScore, TextNode

    retriever = li.LongdocRetriever(**where, **options)
    try:
        nodes = retriever.retrieve(QUERY)
    finally:
        retriever.close()
    assert all(isinstance(n, NodeWithScore) and isinstance(n.node, TextNode) for n in nodes)
    _same([(n.node.metadata["doc_id"], n.node.start_char_idx, n.node.end_char_idx, n.node.text, n.score)
           for n in nodes], _want(reference, QUERY, options))


def test_the_label_filter_is_honoured(lc, li, server, index_dir):
    for where in ({"index": index_dir}, {"url": server.url, "token": TOKEN}):
        docs = lc.LongdocRetriever(**where, k=20, labels=["tech"]).invoke("device system")
        assert docs and all(d.metadata["labels"] == ["tech"] == [GOLD[d.metadata["doc_id"]]] for d in docs)
        nodes = li.LongdocRetriever(**where, k=20, labels="news").retrieve("vote bank")
        assert nodes and all(GOLD[n.node.metadata["doc_id"]] == "news" for n in nodes)
        assert len(docs) == len(nodes) == 8  # 24 documents, 8 per label, one hit each


def test_provenance_in_the_metadata(lc, li, server, index_dir, reference):
    kind = describe_score(mode="dense", per_doc=1, doc_score=None)
    for where, source, source_kind in (({"index": index_dir}, str(index_dir.resolve()), "index"),
                                       ({"url": server.url + "/", "token": TOKEN}, server.url, "server")):
        (doc,) = lc.LongdocRetriever(**where, k=1).invoke(QUERY)
        (node,) = li.LongdocRetriever(**where, k=1).retrieve(QUERY)
        (hit,) = reference.search(QUERY, k=1)
        for meta in (doc.metadata, node.node.metadata):
            assert meta["doc_id"] == hit.doc_id and (meta["char_start"], meta["char_end"]) == (hit.char_start,
                                                                                           hit.char_end)
            assert meta["score"] == pytest.approx(hit.score, abs=1e-5) and meta["score_kind"] == kind
            assert meta["window_score"] == pytest.approx(hit.window_score, abs=1e-5)
            assert meta["rank"] == 1 and meta["window_index"] == hit.window_index
            assert meta["labels"] == [GOLD[hit.doc_id]] and meta["pred_labels"] == list(hit.pred_labels)
            assert (meta["source"], meta["source_kind"], meta["query"]) == (source, source_kind, QUERY)
        stable = f"{hit.doc_id}:{hit.char_start}-{hit.char_end}"
        assert doc.id == node.node.node_id == stable
        assert node.node.ref_doc_id == hit.doc_id
        # the LLM sees the passage and its document id, not the score bookkeeping
        from llama_index.core.schema import MetadataMode

        content = node.node.get_content(metadata_mode=MetadataMode.LLM)
        assert hit.text in content and hit.doc_id in content and "score_kind" not in content


def test_window_results_keep_distinct_ids(li, index_dir):
    nodes = li.LongdocRetriever(index_dir, k=10, per_doc=None).retrieve(QUERY)
    assert len(nodes) == 10 == len({n.node.node_id for n in nodes})  # LlamaIndex drops repeated node ids


def test_async_equals_sync(lc, li, server, index_dir):
    for where in ({"index": index_dir}, {"url": server.url, "token": TOKEN}):
        retriever = lc.LongdocRetriever(**where, k=4, mode="hybrid")
        sync = [(d.id, d.metadata["score"]) for d in retriever.invoke(QUERY)]
        got = asyncio.run(retriever.ainvoke(QUERY))
        assert [d.id for d in got] == [s[0] for s in sync]
        assert [d.metadata["score"] for d in got] == pytest.approx([s[1] for s in sync], abs=1e-5)
        retriever = li.LongdocRetriever(**where, k=4, per_doc=None)
        sync_nodes = retriever.retrieve(QUERY)
        got_nodes = asyncio.run(retriever.aretrieve(QUERY))
        assert [n.node.node_id for n in got_nodes] == [n.node.node_id for n in sync_nodes]


def test_fields_changed_between_calls(lc, index_dir):
    retriever = lc.LongdocRetriever(index_dir, k=2)
    assert len(retriever.invoke(QUERY)) == 2
    retriever.k = 5
    assert len(retriever.invoke(QUERY)) == 5
    retriever.k = 0
    with pytest.raises(IndexInputError, match="k must be a positive int, got 0"):
        retriever.invoke(QUERY)


# --------------------------------------------------------------------------------------------------- errors


def test_the_token_refusal_is_clear(lc, li, server):
    with pytest.raises(ConfigError, match=r"bearer token.*HTTP 401.*no token= was given"):
        lc.LongdocRetriever(url=server.url).invoke(QUERY)
    with pytest.raises(ConfigError, match=r"bearer token.*HTTP 401.*check token="):
        li.LongdocRetriever(url=server.url, token="wrong").retrieve(QUERY)


@pytest.mark.parametrize(("kwargs", "error", "words"), [
    ({"k": 0}, IndexInputError, "k must be a positive int, got 0"),
    ({"mode": "sparse"}, IndexInputError, "mode must be 'dense' or 'hybrid', got 'sparse'"),
    ({"doc_score": "mean"}, IndexInputError, "doc_score must be one of ['top2_first', 'max']"),
    ({"per_doc": None, "doc_score": "max"}, IndexInputError, "per_doc=None asks for windows"),
    ({"per_doc": 0}, IndexInputError, "per_doc must be a positive int or None, got 0"),
    ({"index": None}, ConfigError, "give exactly one of index="),
    ({"url": "http://127.0.0.1:1"}, ConfigError, "give exactly one of index="),
    ({"index": "http://127.0.0.1:8000"}, ConfigError, "is a URL: pass a server as url="),
    ({"index": 3.5}, ConfigError, "index must be an index directory"),
    ({"token": "t"}, ConfigError, "token= is the bearer token of a server"),
])
def test_bad_arguments_name_themselves(lc, li, index_dir, kwargs, error, words):
    kwargs = {"index": index_dir, **kwargs}
    for make in (lc.LongdocRetriever, li.LongdocRetriever):
        with pytest.raises(error) as info:
            make(**kwargs)
        assert words in str(info.value)


def test_field_types_of_the_langchain_retriever(lc, li, index_dir):
    # a pydantic model: a value of the wrong type is pydantic's ValidationError (a ValueError naming the field)
    with pytest.raises(ValueError, match="labels"):
        lc.LongdocRetriever(index_dir, labels=["tech", 3])
    with pytest.raises(IndexInputError, match="labels must hold str values, found 3"):
        li.LongdocRetriever(index_dir, labels=["tech", 3])


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"url": "localhost:8000"}, "url must be the http(s) base URL"),
    ({"url": "http://127.0.0.1:8000", "timeout": 0}, "timeout must be a positive (finite) number of seconds, got 0"),
    ({"url": "http://127.0.0.1:8000", "token": ""}, "token must be a non-empty str"),
    ({"url": "http://127.0.0.1:8000", "model": "m/"}, "model= and device= are for a local index"),
])
def test_bad_server_arguments(kwargs, words):
    with pytest.raises(ConfigError) as info:
        SearchSource(**kwargs)
    assert words in str(info.value)


def test_not_an_index_directory(li, tmp_path):
    with pytest.raises(ModelLoadError, match="is not an index directory"):
        li.LongdocRetriever(tmp_path)


def test_a_loaded_index_needs_an_encoder(index_dir):
    bare = PassageIndex.load(index_dir)
    with pytest.raises(ConfigError, match="has no query encoder"):
        SearchSource(bare)


def test_empty_queries(lc, li, index_dir, server):
    for where in ({"index": index_dir}, {"url": server.url, "token": TOKEN}):
        with pytest.raises(IndexInputError, match="query is '   ', empty or only whitespace"):
            lc.LongdocRetriever(**where).invoke("   ")
        with pytest.raises(IndexInputError, match="query is '', empty or only whitespace"):
            li.LongdocRetriever(**where).retrieve("")
    with pytest.raises(IndexInputError, match="query must be a str, got int"):
        SearchSource(index_dir).search(3)


def test_server_refusals_keep_the_library_words(lc, reference, index_dir, server):
    with pytest.raises(IndexInputError) as local:
        reference.search(QUERY, labels=["cooking"])
    with pytest.raises(IndexInputError) as remote:
        lc.LongdocRetriever(url=server.url, token=TOKEN, labels=["cooking"]).invoke(QUERY)
    assert " ".join(str(local.value).split()) in str(remote.value) and server.url in str(remote.value)
    with pytest.raises(IndexInputError, match=r"k: .*less than or equal to 20.*HTTP 422"):  # over the server's max_k
        lc.LongdocRetriever(url=server.url, token=TOKEN, k=21).invoke(QUERY)


class _NotLongdoc(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        body = b"<html>hello</html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_a_url_that_is_not_a_longdoc_server(lc, li, server):
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotLongdoc)
    thread = threading.Thread(target=other.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{other.server_address[1]}"
        with pytest.raises(ConfigError, match=r"does not answer like a longdoc server: POST /search gave HTTP 200 "
                                              r"\(text/html\)"):
            lc.LongdocRetriever(url=url).invoke(QUERY)
    finally:
        other.shutdown()
        other.server_close()
    with pytest.raises(ConfigError, match="HTTP 404"):  # a longdoc server, but not its base URL
        li.LongdocRetriever(url=server.url + "/search", token=TOKEN).retrieve(QUERY)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with pytest.raises(ConfigError, match="cannot reach a longdoc server"):
        asyncio.run(lc.LongdocRetriever(url=f"http://127.0.0.1:{closed}").ainvoke(QUERY))


class _OddServer(http.server.BaseHTTPRequestHandler):
    """Answers POST /search with ``self.server.answer`` (status, content type, body)."""

    def do_POST(self):  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("content-length", 0)))
        status, content_type, body = self.server.answer
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("answer", [
    (500, "text/html", b"<html>oops</html>"),
    (200, "application/json", b'{"score_kind": "x", "results": [{"hits": [{"doc_id": 1}]}]}'),  # hits lack fields
    (200, "application/json", b'{"score_kind": "x", "results": [{"hits": [3]}]}'),
    (200, "text/plain", b"hello"),
])
def test_a_server_answering_nonsense_is_a_clear_error(lc, li, answer):
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OddServer)
    other.answer = answer
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{other.server_address[1]}"
        for retrieve in (lc.LongdocRetriever(url=url).invoke, li.LongdocRetriever(url=url).retrieve):
            with pytest.raises(ConfigError, match=f"does not answer like a longdoc server: POST /search gave "
                                                  f"HTTP {answer[0]}"):
                retrieve(QUERY)
    finally:
        other.shutdown()
        other.server_close()


@pytest.mark.parametrize("url", ["http://", "http:///", "http://:8000", "http://exa mple.com", "http://h:8000?x=1",
                                 "http://h:99999"])
def test_a_url_without_a_host_or_with_a_query_is_refused_when_given(url):
    with pytest.raises(ConfigError, match="url must be the http\\(s\\) base URL"):
        SearchSource(url=url)


@pytest.mark.parametrize("token", ["tok\nX-Injected: 1", "tok\r", " tok", "tøk"])
def test_a_token_that_would_break_the_header_is_refused_when_given(lc, li, server, token):
    for make in (SearchSource, lc.LongdocRetriever, li.LongdocRetriever):
        with pytest.raises(ConfigError, match="printable ASCII without spaces or line breaks"):
            make(url=server.url, token=token)


def test_odd_queries_to_the_retrievers(lc, li, server, index_dir):
    for kwargs in ({"index": index_dir}, {"url": server.url, "token": TOKEN}):
        retrievers = (lc.LongdocRetriever(**kwargs).invoke, li.LongdocRetriever(**kwargs).retrieve)
        for retrieve in retrievers:
            for query, words in ((None, "query must be a str, got NoneType"), (b"team", "got bytes"),
                                 ("\x00\u200b", "empty or only whitespace"), ("team \ud800", "lone surrogate")):
                with pytest.raises(IndexInputError, match=words):
                    retrieve(query)
    with pytest.raises(IndexInputError, match="got NoneType"):
        asyncio.run(li.LongdocRetriever(index_dir).aretrieve(None))
    with pytest.raises(IndexInputError, match="request body of .* over this server's limit"):  # 413, named
        lc.LongdocRetriever(url=server.url, token=TOKEN).invoke("team " * 250_000)


def test_numbers_are_not_coerced_by_the_retrievers(lc, li, index_dir):
    for k in (True, 2.0, "5"):
        with pytest.raises(ValueError, match="k"):  # pydantic's ValidationError naming the field
            lc.LongdocRetriever(index_dir, k=k)
        with pytest.raises(IndexInputError, match="k must be a positive int"):
            li.LongdocRetriever(index_dir, k=k)
    with pytest.raises(ConfigError, match="timeout must be"):
        SearchSource(url="http://127.0.0.1:8000", timeout=float("inf"))


def test_search_options_are_the_search_arguments():
    assert SearchOptions(labels="tech").search_kwargs() == {"k": 5, "labels": ["tech"], "mode": "dense",
                                                            "per_doc": 1, "doc_score": None}


# --------------------------------------------------------------------------------------------------- imports


def test_importing_longdoc_imports_no_framework():
    code = ("import sys, longdoc, longdoc.integrations, longdoc.integrations.source; "
            "bad = [m for m in sys.modules if m.startswith(('langchain', 'llama_index'))]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(("module", "blocked", "extra"), [
    ("longdoc.integrations.langchain", "langchain_core", "longdoc[langchain]"),
    ("longdoc.integrations.llamaindex", "llama_index", "longdoc[llamaindex]"),
])
def test_a_missing_framework_says_which_extra(monkeypatch, module, blocked, extra):
    for name in [m for m in sys.modules if m == blocked or m.startswith(blocked + ".")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, blocked, None)
    monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(ImportError, match=re.escape(f"pip install '{extra}'")):
        importlib.import_module(module)
