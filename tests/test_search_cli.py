"""``longdoc search`` says which score it prints (cosine, document blend, hybrid fusion), on a real saved index
encoded by the tiny BERT."""

from __future__ import annotations

import json

import polars as pl
import pytest

from indexer import PassageIndex
from longdoc.cli import main
from longdoc.encoder import WindowEncoder

TEXTS = ["the team player won the goal", "the bank vote for the market", "file mode bits change user group",
         "read write run command option", "device format page manual news", "search index query document label"]


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, tiny_model_dir):
    encoder = WindowEncoder(str(tiny_model_dir))
    table = pl.DataFrame({"doc_id": [f"d{i // 2}" for i in range(len(TEXTS))],
                          "window_index": [i % 2 for i in range(len(TEXTS))],
                          "char_start": [0] * len(TEXTS), "char_end": [len(t) for t in TEXTS], "text": TEXTS})
    path = tmp_path_factory.mktemp("search") / "index"
    index = PassageIndex.build(encoder.encode(TEXTS), table, encoder=encoder)
    index.save(path)
    index.close()
    return path


@pytest.mark.parametrize(("options", "kind"), [
    ([], "score: document score: 0.7 x mean cosine of its 2 best windows + 0.3 x cosine of its first window"),
    (["--doc-score", "max"], "score: document score: the cosine of its best window"),
    (["--windows"], "score: window score: cosine of query and window"),
    (["--mode", "hybrid"], "score: hybrid document score: (document score: 0.7 x mean cosine of its 2 best windows"
                           " + 0.3 x cosine of its first window) + 0.2 x page BM25 / best page BM25"),
    (["--mode", "hybrid", "--windows"], "score: hybrid window score: reciprocal rank fusion of the dense and BM25 "
                                        "window ranks (sum of 1/(60 + rank))"),
])
def test_search_prints_the_kind_of_score(index_dir, tiny_model_dir, capsys, options, kind):
    code = main(["search", str(index_dir), "team goal", "--model", str(tiny_model_dir), "--k", "3", "--quiet",
                 *options])
    out = capsys.readouterr().out
    assert code == 0
    assert out.splitlines()[0] == kind
    code = main(["search", str(index_dir), "team goal", "--model", str(tiny_model_dir), "--k", "3", "--quiet",
                 "--json", *options])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result[0]["score_kind"] == kind.removeprefix("score: ")
    hits = result[0]["hits"]
    assert len(hits) == 3 and all(isinstance(h["window_score"], float) for h in hits)
    if "--windows" in options and "hybrid" not in options:
        assert all(h["score"] == pytest.approx(h["window_score"]) for h in hits)
    if "--windows" not in options:
        assert len({h["doc_id"] for h in hits}) == 3


def test_search_refuses_a_bad_doc_score(index_dir, tiny_model_dir, capsys):
    code = main(["search", str(index_dir), "q", "--model", str(tiny_model_dir), "--doc-score", "mean", "--quiet"])
    assert code == 2 and "--doc-score" in capsys.readouterr().err


@pytest.mark.parametrize("options", [["--doc-score", "max"], ["--doc-score", "top2_first"], ["--per-doc", "2"],
                                     ["--doc-score", "max", "--per-doc", "2"]])
def test_windows_refuses_the_options_about_documents(index_dir, tiny_model_dir, capsys, options):
    """--windows ranks windows: a --doc-score (or --per-doc) beside it would be ignored, so it is refused."""
    code = main(["search", str(index_dir), "team goal", "--model", str(tiny_model_dir), "--windows", "--quiet",
                 *options])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    err = captured.err.strip()
    assert err.startswith("longdoc search: error: ") and len(err.splitlines()) == 1
    named = [o for o in ("--doc-score", "--per-doc") if o in options]
    assert all(o in err for o in named) and "--windows" in err
