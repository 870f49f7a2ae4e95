"""``longdoc serve``: a real uvicorn server on an ephemeral port, over a real index (tiny BERT) and a real small
classifier, queried with httpx. No mocks: results are compared with the in-process ``PassageIndex.search``."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from live_server import LiveServer as _Server  # noqa: E402

from indexer import PassageIndex  # noqa: E402
from indexer.errors import IndexInputError  # noqa: E402
from indexer.index import describe_score  # noqa: E402
from indexer.rag import approx_tokens, build_contexts  # noqa: E402
from longdoc.classifier import LongDocClassifier  # noqa: E402
from longdoc.errors import ConfigError, ModelLoadError  # noqa: E402
from longdoc.indexing import build_index, index_encoder  # noqa: E402
from longdoc.serve import create_app  # noqa: E402
from longdoc.training import TrainConfig  # noqa: E402
from longdoc.windows import WindowConfig  # noqa: E402

WINDOW = WindowConfig(max_length=32, stride=8)
TOPICS = {"sport": "team player goal win", "tech": "device system library model",
          "news": "vote bank market report"}
WORDS = ("file files mode bits change user group read write run command option system call library function device "
         "format page manual music film game data text window token label document index search query contract").split()
TOKEN = "s3cret-token"
QUERIES = ["team player goal", "device system library", "vote bank market", "change file mode bits",
           "read write command", "music film game", "search query index", "contract report data",
           "user group option", "manual page format", "token window label", "win lost goal team"]


def _docs(n: int, seed: int) -> list[dict]:
    """Distinct texts (random words around a topic marker), so that no two documents tie on a score."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = list(TOPICS)[i % 3]
        before = " ".join(rng.choice(WORDS, size=int(rng.integers(8, 40))))
        after = " ".join(rng.choice(WORDS, size=int(rng.integers(8, 40))))
        rows.append({"id": f"d{i}", "text": f"{before} {TOPICS[label]} {after}", "label": label})
    return rows


@pytest.fixture(scope="module")
def dirs(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    index, _ = build_index(_docs(30, 0), encoder=str(tiny_model_dir), window=WINDOW)
    index.save(root / "index")
    index.close()
    clf = LongDocClassifier.from_encoder(tiny_model_dir, labels=list(TOPICS), window=WINDOW, device="cpu")
    train = _docs(30, 1)
    clf.fit([r["text"] for r in train], [r["label"] for r in train],
            args=TrainConfig(mode="frozen", epochs=3, batch_size=8, eval_fraction=0, calibrate=False))
    clf.save(root / "model")
    return root / "index", root / "model"


@pytest.fixture(scope="module")
def reference(dirs):
    """The in-process index with the encoder it records: what every server answer is compared with."""
    index_dir, _ = dirs
    index = PassageIndex.load(index_dir, encoder=index_encoder(index_dir, device="cpu"))
    yield index
    index.close()


@pytest.fixture(scope="module")
def served(dirs):
    """Batching on (a wide 50 ms window, so concurrent test requests surely meet), a token and a classifier."""
    index_dir, model_dir = dirs
    server = _Server(create_app(index_dir, model_dir, token=TOKEN, batch_wait_ms=50, max_batch=16, max_k=20))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def plain(dirs):
    """Batching off, no token, no classifier, a small body limit."""
    index_dir, _ = dirs
    server = _Server(create_app(index_dir, batching=False, max_body_bytes=2000))
    yield server
    server.stop()


@pytest.fixture
def client(served):
    with httpx.Client(base_url=served.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as c:
        yield c


def _same_hits(got: list[dict], want: list, tol: float = 1e-5) -> None:
    """Server hits (JSON) equal to in-process ``Hit``s: same windows and spans, scores equal to float rounding
    (a micro-batch pads queries to its longest one); two hits may swap only where their scores tie."""
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g["score"] == pytest.approx(w.score, abs=tol)
        assert g["rank"] == w.rank
        if (g["doc_id"], g["window_index"]) != (w.doc_id, w.window_index):
            tied = [h for h in want if abs(h.score - w.score) <= tol and (h.doc_id, h.window_index)
                    == (g["doc_id"], g["window_index"])]
            assert tied, f"hit {i}: {g['doc_id']} vs {w.doc_id}"
            continue
        assert (g["char_start"], g["char_end"], g["text"]) == (w.char_start, w.char_end, w.text)
        assert g["labels"] == list(w.labels) and g["pred_labels"] == list(w.pred_labels)
        assert g["window_score"] == pytest.approx(w.window_score, abs=tol)


# --------------------------------------------------------------------------------------------------- endpoints


def test_healthz_needs_no_token(served):
    r = httpx.get(served.url + "/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_info_gives_the_manifest_and_the_model(client, reference):
    r = client.get("/info")
    assert r.status_code == 200
    info = r.json()
    idx = info["index"]
    assert idx["windows"] == len(reference) and idx["documents"] == len(reference.doc_ids) == 30
    assert idx["labels"] == sorted(TOPICS) == sorted(reference.labels)
    assert idx["window"] == WINDOW.to_dict()
    assert idx["encoder_fingerprint"] == reference.encoder_fingerprint and idx["encoder"]["source"] == "path"
    assert info["model"]["labels"] == list(TOPICS) and info["model"]["multi_label"] is False
    assert info["limits"]["max_k"] == 20 and info["limits"]["max_batch"] == 16
    assert info["batching"]["enabled"] is True


@pytest.mark.parametrize("options", [
    {},
    {"k": 7, "labels": ["sport", "news"]},
    {"k": 5, "labels": "tech", "doc_score": "max", "per_doc": 2},
    {"k": 6, "per_doc": None},
    {"k": 4, "mode": "hybrid"},
    {"k": 8, "mode": "hybrid", "per_doc": None},
])
def test_search_equals_the_in_process_search(client, reference, options):
    r = client.post("/search", json={"queries": QUERIES[:3], **options})
    assert r.status_code == 200, r.text
    data = r.json()
    kwargs = {"k": 5, "mode": "dense", "per_doc": 1, "doc_score": None, "labels": None, **options}
    assert data["score_kind"] == describe_score(mode=kwargs["mode"], per_doc=kwargs["per_doc"],
                                                doc_score=kwargs["doc_score"])
    want = reference.search(QUERIES[:3], **kwargs)
    assert [res["query"] for res in data["results"]] == QUERIES[:3]
    for res, hits in zip(data["results"], want, strict=True):
        _same_hits(res["hits"], hits)


def test_one_query_as_query(client, reference):
    r = client.post("/search", json={"query": "team player goal", "k": 3})
    assert r.status_code == 200
    (res,) = r.json()["results"]
    assert res["query"] == "team player goal"
    _same_hits(res["hits"], reference.search("team player goal", k=3))
    assert set(res["hits"][0]) >= {"doc_id", "score", "char_start", "char_end", "text", "labels", "window_index"}


@pytest.mark.parametrize(("body", "field"), [
    ({}, "query"),                                             # neither query nor queries
    ({"query": "a", "queries": ["b"]}, "query"),              # both
    ({"query": "team", "k": 0}, "k"),
    ({"query": "team", "k": 21}, "k"),                        # over this server's max_k
    ({"query": "team", "k": "many"}, "k"),
    ({"query": "team", "mode": "sparse"}, "mode"),
    ({"query": "team", "doc_score": "mean"}, "doc_score"),
    ({"query": "team", "per_doc": 0}, "per_doc"),
    ({"query": 3}, "query"),
    ({"queries": []}, "queries"),
    ({"queries": ["q"] * 17}, "queries"),                      # over max_batch
    ({"query": "team", "lables": ["sport"]}, "lables"),       # a misspelt field is not ignored
])
def test_bad_search_bodies_get_422_naming_the_field(client, body, field):
    r = client.post("/search", json=body)
    assert r.status_code == 422, r.text
    data = r.json()
    assert field in data["error"] and isinstance(data["detail"], list)


def test_malformed_json_gets_422(client):
    r = client.post("/search", content=b'{"query": "team"', headers={"content-type": "application/json"})
    assert r.status_code == 422 and "error" in r.json()


def test_library_refusals_are_400_with_the_library_words(client, reference):
    r = client.post("/search", json={"query": "team", "labels": ["cooking"]})
    assert r.status_code == 400
    with pytest.raises(IndexInputError) as info:
        reference.search("team", labels=["cooking"])
    assert r.json()["error"] == " ".join(str(info.value).split()) and r.json()["type"] == "IndexInputError"
    r = client.post("/search", json={"queries": ["team", "   "]})
    assert r.status_code == 400 and "empty or only whitespace" in r.json()["error"]
    r = client.post("/search", json={"query": "team", "per_doc": None, "doc_score": "max"})
    assert r.status_code == 400 and "per_doc=None asks for windows" in r.json()["error"]
    r = client.post("/nowhere", json={})
    assert r.status_code == 404 and "error" in r.json()


def test_oversize_bodies_get_413(plain):
    big = {"query": "team " * 1000}
    r = httpx.post(plain.url + "/search", json=big)
    assert r.status_code == 413 and "2000 bytes" in r.json()["error"]

    def chunks():  # no Content-Length: the limit holds while the body streams in
        for _ in range(10):
            yield b" " * 500

    r = httpx.post(plain.url + "/search", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    r = httpx.post(plain.url + "/search", json={"query": "team"})  # under the limit
    assert r.status_code == 200


def test_the_token(served):
    url = served.url + "/search"
    body = {"query": "team"}
    assert httpx.post(url, json=body).status_code == 401
    r = httpx.post(url, json=body, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and "bearer token" in r.json()["error"] and r.headers["www-authenticate"] == "Bearer"
    assert httpx.post(url, json=body, headers={"Authorization": TOKEN}).status_code == 401  # no scheme
    assert httpx.get(served.url + "/info").status_code == 401
    assert httpx.post(url, json=body, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    # the token is checked before the body is read: an unauthenticated oversize body is a 401, not a 413
    assert httpx.post(url, content=b"x" * 2_000_000).status_code == 401


def test_contexts_are_build_contexts_of_the_hits(client, reference):
    r = client.post("/contexts", json={"query": "team player goal", "k": 6, "per_doc": 3, "max_tokens": 60})
    assert r.status_code == 200, r.text
    (res,) = r.json()["results"]
    want = build_contexts(reference.search("team player goal", k=6, per_doc=3), max_tokens=60)
    got = res["contexts"]
    assert [(c["doc_id"], c["char_start"], c["char_end"], c["text"], c["truncated"]) for c in got] == \
           [(c.doc_id, c.char_start, c.char_end, c.text, c.truncated) for c in want]
    assert sum(approx_tokens(c["text"]) for c in got) <= 60
    assert [c["source"] for c in got] == list(range(1, len(got) + 1))
    r = client.post("/contexts", json={"query": "team", "max_tokens": 10**6})
    assert r.status_code == 422 and "max_tokens" in r.json()["error"]


def test_label(client, dirs):
    _, model_dir = dirs
    clf = LongDocClassifier.load(model_dir, device="cpu")
    docs = [{"id": "a", "text": _docs(3, 5)[0]["text"]}, {"id": "b", "text": _docs(3, 6)[1]["text"]},
            {"id": "empty", "text": "   "}]
    r = client.post("/label", json={"documents": docs, "top_windows": 2})
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["labels"] == list(TOPICS) and data["multi_label"] is False
    a, b, empty = data["results"]
    expected = clf.predict([docs[0]["text"], docs[1]["text"]])
    for row, doc, label in ((a, docs[0], expected[0]), (b, docs[1], expected[1])):
        assert row["id"] == doc["id"] and row["label"] == label and row["error"] is None
        assert sum(row["probabilities"].values()) == pytest.approx(1, abs=1e-5)
        assert 1 <= len(row["top_windows"]) <= 2
        for w in row["top_windows"]:
            assert w["text"] == doc["text"][w["char_start"]:w["char_end"]] and 0 <= w["weight"] <= 1
    assert empty["label"] is None and empty["probabilities"] is None and "whitespace-only" in empty["error"]

    r = client.post("/label", json={"documents": [{"id": "x", "text": "a"}, {"id": "x", "text": "b"}]})
    assert r.status_code == 400 and "x" in r.json()["error"]
    r = client.post("/label", json={"documents": [{"text": "no id"}]})
    assert r.status_code == 422 and "documents.0.id" in r.json()["error"]
    r = client.post("/label", json={"documents": [{"id": str(i), "text": "t"} for i in range(17)]})
    assert r.status_code == 422 and "documents" in r.json()["error"]


def test_label_without_a_model_is_404(plain):
    r = httpx.post(plain.url + "/label", json={"documents": [{"id": "a", "text": "team player"}]})
    assert r.status_code == 404 and "--model" in r.json()["error"]


# --------------------------------------------------------------------------------------------------- micro-batching


async def _concurrently(url: str, bodies: list[dict], headers: dict | None = None) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as c:
        return list(await asyncio.gather(*(c.post("/search", json=b) for b in bodies)))


def _forwards(url: str, headers: dict | None = None) -> int:
    return httpx.get(url + "/info", headers=headers).json()["batching"]["forwards"]


@pytest.mark.parametrize("server_name", ["served", "plain"])
def test_concurrent_searches_equal_in_process_search(request, reference, server_name):
    server = request.getfixturevalue(server_name)
    headers = {"Authorization": f"Bearer {TOKEN}"} if server_name == "served" else None
    bodies = [{"query": q, "k": 5} for q in QUERIES] + \
             [{"queries": QUERIES[i:i + 2], "k": 4, "mode": "hybrid"} for i in range(0, 12, 3)] + \
             [{"query": q, "k": 3, "labels": ["tech"], "per_doc": None} for q in QUERIES[:8]]
    before = _forwards(server.url, headers)
    responses = asyncio.run(_concurrently(server.url, bodies, headers))
    forwards = _forwards(server.url, headers) - before
    for body, r in zip(bodies, responses, strict=True):
        assert r.status_code == 200, r.text
        texts = body.get("queries") or [body["query"]]
        opts = {k: v for k, v in body.items() if k not in ("query", "queries")}
        for res, hits in zip(r.json()["results"], reference.search(texts, **opts), strict=True):
            _same_hits(res["hits"], hits)
    if server_name == "served":  # 24 requests arriving together: a few forwards, not one per request
        assert 1 <= forwards <= len(bodies) // 3, forwards
        batching = httpx.get(server.url + "/info", headers=headers).json()["batching"]
        assert batching["merged_searches"] >= 1  # requests with the same options were searched in one call
    else:
        assert forwards == len(bodies)


def test_one_bad_request_in_a_batch_fails_alone(served):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    bodies = [{"query": q} for q in QUERIES[:6]] + [{"query": "team", "labels": ["cooking"]}, {"query": "   "}]
    responses = asyncio.run(_concurrently(served.url, bodies, headers))
    # the blank query has the options of the first six: their merged search fails, each is then searched alone
    assert [r.status_code for r in responses] == [200] * 6 + [400, 400], [r.text for r in responses[6:]]
    for r, q in zip(responses, QUERIES[:6], strict=False):
        assert r.json()["results"][0]["query"] == q


# --------------------------------------------------------------------------------------------------- hostile bodies


def _alive(server) -> None:
    assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200


@pytest.mark.parametrize(("field", "value"), [("k", True), ("k", 2.0), ("k", "5"), ("per_doc", True),
                                              ("max_tokens", 1.0), ("merge_gap", False)])
def test_numbers_are_not_coerced(client, served, field, value):
    """k=True is not k=1, nor "5" k=5: index.search refuses them (check_positive_int), so the server does."""
    r = client.post("/contexts", json={"query": "team", field: value})
    assert r.status_code == 422 and r.json()["error"].startswith(f"{field}: "), r.text
    r = client.post("/label", json={"documents": [{"id": "a", "text": "team"}], "top_windows": True})
    assert r.status_code == 422 and "top_windows" in r.json()["error"]
    _alive(served)


@pytest.mark.parametrize(("content", "content_type", "status", "words"), [
    (b'{"query": "team", "query": "goal"}', "application/json", 422, "'query' is given more than once"),
    (b'{"query": "team", "labels": [{"a": 1, "a": 2}]}', "application/json", 422, "'a' is given more than once"),
    ('{"query": "café"}'.encode("latin-1"), "application/json", 422, "not UTF-8"),
    (b'{"query": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", "application/json", 422, "nested too deeply"),
    (b'{"query": "team", "k": 1' + b"0" * 5000 + b"}", "application/json", 422, "not valid JSON"),
    (b'{"query": "team"}', "text/plain", 415, "Content-Type: application/json"),
    (b"query=team", "application/x-www-form-urlencoded", 415, "Content-Type: application/json"),
])
def test_bodies_that_are_not_plain_json_objects(client, served, content, content_type, status, words):
    for path in ("/search", "/contexts", "/label"):
        r = client.post(path, content=content, headers={"content-type": content_type})
        assert r.status_code == status and words in r.json()["error"], r.text
    _alive(served)
    r = client.post("/search", content=b'{"query": "team"}')  # no Content-Type at all
    assert r.status_code == 415 and "got Content-Type: none" in r.json()["error"]
    r = client.post("/search", content=b'{"query": "team"}', headers={"content-type": "application/json; charset=utf-8"})
    assert r.status_code == 200


@pytest.mark.parametrize("body", [b"[]", b"3", b'"x"', b"null", b"true"])
def test_non_object_json_bodies_get_422(client, served, body):
    r = client.post("/search", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"].startswith("body: ")
    _alive(served)


@pytest.mark.parametrize("query", ["\x00\x00", "\u200b\u200d", "\u202e \ufeff", "\t\x00 "])
def test_invisible_queries_are_blank(client, served, reference, query):
    """A query of NUL bytes, zero-width or direction characters has no words: refused like a blank one (the
    hits were arbitrary), by the server and by index.search alike."""
    r = client.post("/search", json={"queries": ["team", query]})
    assert r.status_code == 400 and "empty or only whitespace" in r.json()["error"], r.text
    with pytest.raises(IndexInputError, match="empty or only whitespace"):
        reference.search(query)
    _alive(served)


def test_odd_but_real_queries_are_searched_like_in_process(client, served, reference):
    big = " ".join(WORDS[i % len(WORDS)] for i in range(200_000))[:990_000]  # just under the 1 MB body limit
    for query in ["team\x00player", "\u202eteam\u200b goal", "😀 team 🏈", big]:
        r = client.post("/search", json={"query": query, "k": 3})
        assert r.status_code == 200, r.text
        _same_hits(r.json()["results"][0]["hits"], reference.search(query, k=3))
    r = client.post("/search", content=b'{"query": "team \\ud800"}',  # a lone surrogate: valid JSON, not Unicode
                    headers={"content-type": "application/json"})
    assert r.status_code == 400 and "lone surrogate" in r.json()["error"], r.text
    _alive(served)


def test_a_bad_request_merged_with_good_ones_fails_alone(served, reference):
    """Requests with the same options are searched in one call; a blank (NUL) query and an unknown label among
    them fail alone, and every good one still equals its in-process search."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    good = [{"query": q, "k": 4} for q in QUERIES[:6]]
    bad = [{"query": "\x00", "k": 4}, {"query": "team", "k": 4, "labels": ["cooking"]}, {"query": "\u200b", "k": 4}]
    bodies = good[:3] + bad[:2] + good[3:] + bad[2:]
    responses = asyncio.run(_concurrently(served.url, bodies, headers))
    for body, r in zip(bodies, responses, strict=True):
        if body in bad:
            assert r.status_code == 400 and r.json()["type"] == "IndexInputError", r.text
        else:
            assert r.status_code == 200, r.text
            _same_hits(r.json()["results"][0]["hits"], reference.search(body["query"], k=4))
    _alive(served)


def test_a_token_that_no_client_can_send_is_refused_at_start(dirs):
    index_dir, _ = dirs
    for token in ("s3cret\n", "two words", "tøken", "a\r\nX-Injected: 1"):
        with pytest.raises(ConfigError, match="printable ASCII"):
            create_app(index_dir, token=token, reload_interval_s=0)


# --------------------------------------------------------------------------------------------------- the rest


def _tree(path: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.rglob("*"))}


def test_no_endpoint_writes_to_disk(dirs, tiny_model_dir):
    index_dir, model_dir = dirs
    before = [_tree(index_dir), _tree(model_dir), _tree(Path(tiny_model_dir))]
    app = create_app(index_dir, model_dir, token=TOKEN)
    server = _Server(app)
    try:
        h = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=server.url, headers=h, timeout=60) as c:
            assert c.get("/info").status_code == 200
            assert c.post("/search", json={"query": "team", "mode": "hybrid"}).status_code == 200
            assert c.post("/contexts", json={"query": "team"}).status_code == 200
            assert c.post("/label", json={"documents": [{"id": "a", "text": "team goal"}]}).status_code == 200
            assert c.get("/docs").status_code == 200 and c.get("/openapi.json").status_code == 200
    finally:
        server.stop()
    assert [_tree(index_dir), _tree(model_dir), _tree(Path(tiny_model_dir))] == before


def test_create_app_refuses_bad_directories_and_limits(dirs, tmp_path):
    index_dir, model_dir = dirs
    with pytest.raises(ModelLoadError, match="not an index directory"):
        create_app(tmp_path)
    with pytest.raises(ModelLoadError):
        create_app(index_dir, tmp_path / "nope")
    with pytest.raises(ConfigError, match="max_k"):
        create_app(index_dir, max_k=0)
    with pytest.raises(ConfigError, match="token"):
        create_app(index_dir, token="  ")


def test_the_command_serves_with_a_token_from_the_environment(dirs):
    index_dir, _ = dirs
    proc, url = _start_command([str(index_dir), "--batch-wait-ms", "0", "--threads", "1", "--quiet"],
                               env={"LONGDOC_SERVE_TOKEN": TOKEN})
    try:
        assert httpx.get(url + "/info").status_code == 401
        r = httpx.get(url + "/info", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200 and r.json()["index"]["documents"] == 30
        assert r.json()["batching"]["wait_ms"] == 0 and r.json()["batching"]["enabled"] is True
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_the_command_reports_a_bad_index_like_search(tmp_path, capsys):
    from longdoc.cli import main

    assert main(["serve", str(tmp_path), "--quiet"]) == 3
    assert "longdoc serve: error:" in capsys.readouterr().err
    assert main(["search", str(tmp_path), "q", "--quiet"]) == 3
    assert "not an index directory (manifest.json is missing)" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--batch-wait-ms", "-1", "--quiet"]) == 2
    assert "batch_wait_ms must be a number in [0, 1000]" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------- reload, drain


def _info(url: str) -> dict:
    return httpx.get(url + "/info", timeout=30).json()


def _wait_for(condition, seconds: float = 60, what: str = "the condition") -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _save_index(docs: list[dict], encoder: Path, directory: Path) -> None:
    index, _ = build_index(docs, encoder=str(encoder), window=WINDOW)
    index.save(directory)
    index.close()


def test_a_new_version_of_the_index_is_served_without_a_restart_or_a_failed_request(tiny_model_dir, tmp_path):
    index_dir = tmp_path / "index"
    _save_index(_docs(20, 2), tiny_model_dir, index_dir)
    server = _Server(create_app(index_dir, reload_interval_s=0.05, batch_wait_ms=1))
    statuses: list[int] = []
    stop = threading.Event()

    def hammer() -> None:  # searches without a pause while the index is replaced under the server
        with httpx.Client(base_url=server.url, timeout=60) as c:
            while not stop.is_set():
                r = c.post("/search", json={"queries": QUERIES[:4], "k": 5, "mode": "hybrid"})
                statuses.append(r.status_code)

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    try:
        for t in threads:
            t.start()
        _wait_for(lambda: len(statuses) >= 10, what="searches before the update")
        _save_index(_docs(35, 3), tiny_model_dir, index_dir)  # what `longdoc index` does: an atomic swap
        _wait_for(lambda: _info(server.url)["index"]["documents"] == 35, what="the reload")
        n = len(statuses)
        _wait_for(lambda: len(statuses) >= n + 10, what="searches after the update")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    try:
        assert set(statuses) == {200}, sorted(set(statuses))
        info = _info(server.url)["index"]
        assert info["reloads"] == 1 and info["reload_error"] is None
        reference = PassageIndex.load(index_dir, encoder=index_encoder(index_dir, device="cpu"))
        try:
            r = httpx.post(server.url + "/search", json={"queries": QUERIES, "k": 6}, timeout=60)
            for res, hits in zip(r.json()["results"], reference.search(QUERIES, k=6), strict=True):
                _same_hits(res["hits"], hits)
        finally:
            reference.close()
    finally:
        server.stop()


def test_a_new_version_with_another_encoder_is_refused_and_the_old_one_kept(tiny_model_dir, tmp_path):
    import shutil

    import torch
    from transformers import BertModel

    other = tmp_path / "other-bert"  # the tiny BERT with other weights: another fingerprint
    shutil.copytree(tiny_model_dir, other)
    model = BertModel.from_pretrained(other)
    with torch.no_grad():
        model.embeddings.word_embeddings.weight.add_(0.5)
    model.save_pretrained(other, safe_serialization=True)

    index_dir = tmp_path / "index"
    _save_index(_docs(20, 2), tiny_model_dir, index_dir)
    server = _Server(create_app(index_dir, reload_interval_s=0.05))
    try:
        before = httpx.post(server.url + "/search", json={"queries": QUERIES, "k": 5}, timeout=60).json()
        _save_index(_docs(35, 3), other, index_dir)
        _wait_for(lambda: _info(server.url)["index"]["reload_error"] is not None, what="the refusal")
        info = _info(server.url)["index"]
        assert info["documents"] == 20 and info["reloads"] == 0
        assert "encoder" in info["reload_error"] and "restart the server" in info["reload_error"]
        after = httpx.post(server.url + "/search", json={"queries": QUERIES, "k": 5}, timeout=60)
        assert after.status_code == 200 and after.json() == before
        _save_index(_docs(25, 4), tiny_model_dir, index_dir)  # a version it can serve is taken up again
        _wait_for(lambda: _info(server.url)["index"]["documents"] == 25, what="the next reload")
        assert _info(server.url)["index"]["reload_error"] is None
    finally:
        server.stop()


def _start_command(args: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """``longdoc serve ARGS`` in a subprocess on a free port, once /healthz answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "longdoc.cli", "serve", *args, "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, proc.communicate()[1].decode()
        try:
            return httpx.get(url + "/healthz").status_code == 200
        except httpx.TransportError:
            return False

    try:
        _wait_for(up, 120, "longdoc serve to come up")
    except BaseException:
        proc.kill()
        raise
    return proc, url


def test_sigterm_lets_the_requests_in_flight_finish(dirs):
    import signal

    index_dir, model_dir = dirs
    proc, url = _start_command([str(index_dir), "--model", str(model_dir), "--quiet"])
    rng = np.random.default_rng(5)
    long_docs = [{"id": f"l{i}", "text": " ".join(rng.choice(WORDS, size=6000))} for i in range(16)]

    async def in_flight() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=120) as c:
            calls = [asyncio.ensure_future(c.post("/label", json={"documents": long_docs})) for _ in range(3)]
            calls += [asyncio.ensure_future(c.post("/search", json={"queries": QUERIES, "mode": "hybrid"}))]
            await asyncio.sleep(0.5)  # the requests are in; /label runs one at a time, each for a while
            assert not all(c.done() for c in calls), "the requests finished before the signal: make them longer"
            proc.send_signal(signal.SIGTERM)
            return list(await asyncio.gather(*calls))

    try:
        responses = asyncio.run(in_flight())
        assert [r.status_code for r in responses] == [200] * 4
        assert all(len(r.json()["results"]) == 16 for r in responses[:3])
        assert proc.wait(60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has drained
        with pytest.raises(httpx.TransportError):
            httpx.get(url + "/healthz")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
