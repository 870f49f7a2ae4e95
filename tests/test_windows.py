"""Window geometry: coverage, overlap, exact char spans, re-tokenization, bad input."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from longdoc.errors import ConfigError, DataError
from longdoc.windows import EMPTY_DOCUMENT, WindowConfig, make_windows, window_starts

WORDS = ["the", "file", "mode", "bits", "chmod", "changes", "-r", "755", "running", "x", "über", "naïve", "日本",
         "a.b", "(x)", "--flag", "zzzqqq", "émigré", "co-op", "", " ", "\n", "\t"]

texts = st.lists(st.sampled_from(WORDS), min_size=0, max_size=300).map(" ".join) | st.text(max_size=400)


def _doc_tokens(tokenizer, text):
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return enc["input_ids"], enc["offset_mapping"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    docs=st.lists(texts, min_size=1, max_size=4),
    max_length=st.integers(min_value=3, max_value=40),
    data=st.data(),
)
def test_windows_cover_overlap_and_slice_exactly(tiny_tokenizer, docs, max_length, data):
    stride = data.draw(st.integers(min_value=0, max_value=max_length - 3))
    config = WindowConfig(max_length=max_length, stride=stride)
    w = make_windows(docs, tiny_tokenizer, config)
    assert w.documents["doc_id"].to_list() == [str(i) for i in range(len(docs))]
    for doc_index, text in enumerate(docs):
        ids, offsets = _doc_tokens(tiny_tokenizer, text)
        rows = w.table.with_row_index("row").filter(pl.col("doc_id") == str(doc_index))
        assert rows.height == w.documents["n_windows"][doc_index]
        if not ids:
            assert rows.height == 0 and w.documents["warning"][doc_index] == EMPTY_DOCUMENT
            continue
        covered = np.zeros(len(ids), dtype=bool)
        spans = list(zip(rows["token_start"], rows["token_end"], strict=True))
        assert rows["window_index"].to_list() == list(range(rows.height))
        for (s, e), row, cs, ce in zip(spans, rows["row"], rows["char_start"], rows["char_end"], strict=True):
            covered[s:e] = True
            window_ids = w.ids(row)
            assert window_ids[0] == tiny_tokenizer.cls_token_id and window_ids[-1] == tiny_tokenizer.sep_token_id
            assert list(window_ids[1:-1]) == ids[s:e]
            assert len(window_ids) <= max_length
            assert (cs, ce) == (offsets[s][0], offsets[e - 1][1])
            # Re-tokenizing the window's text gives back its tokens. A window that starts inside a word
            # re-segments that first word fragment; every token from the next word on is the same.
            again = tiny_tokenizer.convert_ids_to_tokens(_doc_tokens(tiny_tokenizer, text[cs:ce])[0])
            mine = tiny_tokenizer.convert_ids_to_tokens(ids[s:e])
            if not mine[0].startswith("##"):
                assert again == mine
            else:
                k = next((j for j in range(1, len(mine)) if not mine[j].startswith("##")), len(mine))
                assert again[len(again) - (len(mine) - k):] == mine[k:]
        assert covered.all(), "every token is in some window"
        assert spans[-1][1] == len(ids), "the last window is right-aligned to the end"
        for (_s0, e0), (s1, _e1) in zip(spans[:-2], spans[1:-1], strict=True):
            assert e0 - s1 == stride, "consecutive windows overlap by exactly `stride`"
        if len(spans) >= 2:
            assert spans[-2][1] - spans[-1][0] >= stride
            assert spans[-1][1] - spans[-1][0] == max_length - 2


def test_window_starts_examples():
    cfg = WindowConfig(max_length=12, stride=2)  # content 10, step 8
    assert window_starts(0, cfg).tolist() == []
    assert window_starts(7, cfg).tolist() == [0]
    assert window_starts(10, cfg).tolist() == [0]
    assert window_starts(11, cfg).tolist() == [0, 1]
    assert window_starts(18, cfg).tolist() == [0, 8]
    assert window_starts(26, cfg).tolist() == [0, 8, 16]
    assert window_starts(27, cfg).tolist() == [0, 8, 16, 17]


def test_max_windows_keeps_head_and_tail():
    cfg = WindowConfig(max_length=12, stride=2, max_windows=3)
    full = window_starts(100, WindowConfig(max_length=12, stride=2))
    kept = window_starts(100, cfg)
    assert kept.tolist() == [full[0], full[1], full[-1]]


def test_document_table_and_empty_docs_are_kept(tiny_tokenizer):
    docs = pl.DataFrame({"doc_id": ["a", "empty", "b"], "text": ["the file mode " * 50, "   \n", "chmod"]})
    w = make_windows(docs, tiny_tokenizer, WindowConfig(max_length=32, stride=8))
    assert w.documents["doc_id"].to_list() == ["a", "empty", "b"]
    assert w.documents.filter(pl.col("doc_id") == "empty")["warning"].item() == EMPTY_DOCUMENT
    assert set(w.table["doc_id"]) == {"a", "b"}
    texts = w.texts(docs)
    assert texts[-1] == "chmod"
    assert len(w) == len(texts) == len(w.offsets) - 1


def test_processes_give_identical_windows(tiny_tokenizer):
    docs = [("the file mode bits " * (i % 17 + 1)) for i in range(40)]
    one = make_windows(docs, tiny_tokenizer, WindowConfig(max_length=16, stride=4), chunk_size=7)
    two = make_windows(docs, tiny_tokenizer, WindowConfig(max_length=16, stride=4), processes=2, chunk_size=7)
    assert one.table.equals(two.table)
    assert np.array_equal(one.input_ids, two.input_ids) and np.array_equal(one.offsets, two.offsets)


def test_large_document_is_linear(tiny_tokenizer):
    text = "file mode bits " * 200_000  # 600k tokens
    w = make_windows([text], tiny_tokenizer, WindowConfig())
    assert w.table["token_end"][-1] == 600_000
    assert w.input_ids.nbytes < 4 * 600_000 * 1.4  # overlap 128/510 -> ~1.34x the document


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [({"max_length": 2}, "max_length"), ({"stride": 510}, "stride"), ({"stride": -1}, "stride"),
     ({"max_windows": 0}, "max_windows")],
)
def test_bad_config_names_the_argument(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        WindowConfig(**kwargs)


def test_bad_documents(tiny_tokenizer):
    with pytest.raises(DataError, match="single str"):
        make_windows("one text", tiny_tokenizer)
    with pytest.raises(DataError, match="missing"):
        make_windows(pl.DataFrame({"body": ["x"]}), tiny_tokenizer)
    with pytest.raises(DataError, match="must all be str"):
        make_windows(["ok", None], tiny_tokenizer)


def test_tokenizer_without_offsets_is_refused():
    class WordSplitter:  # a tokenizer-like object with no fast backend (no character offsets)
        is_fast = False

    with pytest.raises(ConfigError, match="fast"):
        make_windows(["x"], WordSplitter())
