"""The document table: every reader on real files, the error messages, the reading policy."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import polars as pl
import pytest

from longdoc.data import DOC_COLUMNS, documents_from_texts, hub_dataset, iter_documents, load_documents
from longdoc.errors import DataError

ROWS = [
    {"id": "a", "text": "first document", "label": "x", "source": "s1"},
    {"id": "b", "text": "second document", "label": ["x", "y"], "source": "s2"},
    {"id": "c", "text": "third", "label": None, "source": "s1"},
]
CP1252_WARNING = "not valid UTF-8: decoded as cp1252 with replacement"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def check_table(table: pl.DataFrame) -> None:
    assert tuple(table.columns[:4]) == DOC_COLUMNS
    assert table.schema["doc_id"] == pl.String
    assert table.schema["text"] == pl.String
    assert table.schema["labels"] == pl.List(pl.String)
    assert table.schema["warning"] == pl.String
    assert table["doc_id"].is_unique().all()
    assert table["text"].null_count() == 0


def check_rows(table: pl.DataFrame) -> None:
    check_table(table)
    assert table["doc_id"].to_list() == ["a", "b", "c"]
    assert table["text"].to_list() == ["first document", "second document", "third"]
    assert table["labels"].to_list() == [["x"], ["x", "y"], []]
    assert table["warning"].to_list() == [None, None, None]
    assert table.columns == [*DOC_COLUMNS, "source"]
    assert table["source"].to_list() == ["s1", "s2", "s1"]


# --------------------------------------------------------------------------------------------------- sources


def test_jsonl(tmp_path):
    check_rows(load_documents(write_jsonl(tmp_path / "d.jsonl", ROWS)))
    check_rows(load_documents(str(write_jsonl(tmp_path / "d.ndjson", ROWS))))


def test_json_lines_and_json_array(tmp_path):
    check_rows(load_documents(write_jsonl(tmp_path / "lines.json", ROWS)))
    (tmp_path / "array.json").write_text(json.dumps(ROWS, indent=2), encoding="utf-8")
    check_rows(load_documents(tmp_path / "array.json"))


def test_parquet(tmp_path):
    frame = pl.DataFrame(ROWS[:1]).with_columns(pl.col("label").cast(pl.String))
    path = tmp_path / "d.parquet"
    pl.DataFrame(
        {"id": ["a", "b", "c"], "text": [r["text"] for r in ROWS], "label": [["x"], ["x", "y"], None],
         "source": ["s1", "s2", "s1"]}
    ).write_parquet(path)
    check_rows(load_documents(path))
    frame.write_parquet(tmp_path / "single.parquet")  # a plain string label column
    assert load_documents(tmp_path / "single.parquet")["labels"].to_list() == [["x"]]


def test_csv_with_multiline_field_and_json_array_labels(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text(
        'id,text,label,source\na,first document,x,s1\nb,second document,"[""x"", ""y""]",s2\nc,third,,s1\n',
        encoding="utf-8",
    )
    check_rows(load_documents(path))
    path.write_text('id,text\n1,"two\nlines"\n2,plain\n', encoding="utf-8")
    table = load_documents(path)
    assert table["text"].to_list() == ["two\nlines", "plain"]
    assert table["doc_id"].to_list() == ["1", "2"]


def test_tsv(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text("text\tlabel\nhello world\tgreeting\n", encoding="utf-8")
    table = load_documents(path)
    assert table["text"].to_list() == ["hello world"]
    assert table["labels"].to_list() == [["greeting"]]


def test_folder_recursive_with_parent_labels(tmp_path):
    (tmp_path / "sport").mkdir()
    (tmp_path / "tech" / "deep").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "sport" / "1.txt").write_text("a goal", encoding="utf-8")
    (tmp_path / "tech" / "2.md").write_text("# chips", encoding="utf-8")
    (tmp_path / "tech" / "deep" / "3.TXT").write_text("deep text", encoding="utf-8")
    (tmp_path / "top.txt").write_text("at the top", encoding="utf-8")
    (tmp_path / "skip.csv").write_text("not,a,document", encoding="utf-8")
    (tmp_path / ".hidden" / "x.txt").write_text("hidden", encoding="utf-8")

    table = load_documents(tmp_path)
    check_table(table)
    assert table["doc_id"].to_list() == ["sport/1.txt", "tech/2.md", "tech/deep/3.TXT", "top.txt"]
    assert table["labels"].to_list() == [[], [], [], []]
    assert table["parent_dir"].to_list() == ["sport", "tech", "deep", None]

    labelled = load_documents(tmp_path, label_column="parent_dir", metadata_columns=[])
    assert labelled.columns == list(DOC_COLUMNS)
    assert labelled["labels"].to_list() == [["sport"], ["tech"], ["deep"], []]
    assert load_documents(tmp_path, glob="sport/*")["doc_id"].to_list() == ["sport/1.txt"]


def test_single_text_file(tmp_path):
    path = tmp_path / "note.md"
    path.write_text("hello", encoding="utf-8")
    assert load_documents(path)["doc_id"].to_list() == ["note.md"]


def test_datasets_dataset_with_class_labels():
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )
    ds = datasets.Dataset.from_dict({"text": ["bad", "good", "fine"], "label": [0, 1, 1]}, features=features)
    table = load_documents(ds)
    check_table(table)
    assert table["labels"].to_list() == [["neg"], ["pos"], ["pos"]]
    assert table["doc_id"].to_list() == ["0", "1", "2"]
    # a view (select) is read as the view, not the underlying table
    assert load_documents(ds.select([2, 0]))["text"].to_list() == ["fine", "bad"]
    multi = datasets.Dataset.from_dict(
        {"text": ["a"], "labels": [[0, 1]]},
        features=datasets.Features(
            {"text": datasets.Value("string"), "labels": datasets.Sequence(datasets.ClassLabel(names=["p", "q"]))}
        ),
    )
    assert load_documents(multi)["labels"].to_list() == [["p", "q"]]


def test_polars_and_pandas():
    frame = pl.DataFrame(
        {"id": ["a", "b", "c"], "text": [r["text"] for r in ROWS], "label": [["x"], ["x", "y"], None],
         "source": ["s1", "s2", "s1"]}
    )
    check_rows(load_documents(frame))
    check_rows(load_documents(frame.lazy()))
    check_rows(load_documents(pd.DataFrame(ROWS)))  # mixed str/list/None labels: an object column


def test_pandas_nan_and_int_labels():
    table = load_documents(pd.DataFrame({"text": ["a", "b", None], "label": [1.0, float("nan"), 2.0]}))
    assert table["labels"].to_list() == [["1"], [], ["2"]]  # a whole float is its integer
    assert table["warning"].to_list() == [None, None, "missing text (null)"]
    ints = load_documents(pl.DataFrame({"text": ["a", "b"], "label": [3, 4]}))
    assert ints["labels"].to_list() == [["3"], ["4"]]


def test_list_of_str_and_list_of_dicts():
    table = load_documents(["one", "two"])
    check_table(table)
    assert table["doc_id"].to_list() == ["0", "1"]
    assert table["text"].to_list() == ["one", "two"]
    check_rows(load_documents(ROWS))
    assert load_documents([]).columns == list(DOC_COLUMNS)


def test_generator_source():
    table = load_documents(row for row in ROWS)
    check_rows(table)


def test_documents_from_texts():
    table = documents_from_texts(["a", "b"], labels=["x", ["y", "z"]], ids=["d1", "d2"])
    check_table(table)
    assert table.columns == list(DOC_COLUMNS)
    assert table["labels"].to_list() == [["x"], ["y", "z"]]
    assert table["doc_id"].to_list() == ["d1", "d2"]
    assert documents_from_texts(["a"])["doc_id"].to_list() == ["0"]
    with pytest.raises(DataError, match="labels has 1 entries but texts has 2"):
        documents_from_texts(["a", "b"], labels=["x"])
    with pytest.raises(DataError, match="ids"):
        documents_from_texts(["a", "b"], ids=["x"])
    with pytest.raises(DataError, match="texts must be a list"):
        documents_from_texts("a single string")


def test_round_trip_is_stable():
    table = load_documents(ROWS)
    again = load_documents(load_documents(table))
    assert again.equals(table)


def test_hub_dataset_on_local_files(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    table = hub_dataset("json", data_files=str(path), cache_dir=str(tmp_path / "hf-cache"))
    check_rows(table)


# --------------------------------------------------------------------------------------------------- options


def test_column_options(tmp_path):
    rows = [{"key": "k1", "body": "text one", "tags": ["t"], "a": 1, "b": 2}]
    table = load_documents(rows, text_column="body", label_column="tags", id_column="key", metadata_columns=["b"])
    assert table.columns == [*DOC_COLUMNS, "b"]
    assert table.row(0) == ("k1", "text one", ["t"], None, 2)
    assert load_documents(rows, text_column="body", metadata_columns=[]).columns == list(DOC_COLUMNS)
    unlabelled = load_documents(ROWS, label_column=None)
    assert unlabelled["labels"].to_list() == [[], [], []]
    assert unlabelled.columns == [*DOC_COLUMNS, "label", "source"]
    numbered = load_documents(ROWS, id_column=None, metadata_columns=[])
    assert numbered["doc_id"].to_list() == ["0", "1", "2"]


def test_default_alternatives_labels_and_doc_id():
    table = load_documents([{"doc_id": "z", "text": "t", "labels": ["p", "q"]}])
    assert table.row(0) == ("z", "t", ["p", "q"], None)


def test_int_ids_become_strings():
    table = load_documents(pl.DataFrame({"id": [10, 11], "text": ["a", "b"]}))
    assert table["doc_id"].to_list() == ["10", "11"]


# --------------------------------------------------------------------------------------------------- errors


def test_missing_text_column_names_the_argument():
    with pytest.raises(DataError, match=r"expected a text column 'text', found \['body', 'title'\]; pass text_column="):
        load_documents([{"body": "x", "title": "y"}])
    with pytest.raises(DataError, match="text_column="):
        load_documents(pl.DataFrame({"body": ["x"]}))


def test_explicit_id_or_label_column_missing():
    with pytest.raises(DataError, match="expected an id column 'key'.*id_column="):
        load_documents(ROWS, id_column="key")
    with pytest.raises(DataError, match="expected a label column 'topic'.*label_column="):
        load_documents(ROWS, label_column="topic")
    with pytest.raises(DataError, match=r"metadata_columns \['nope'\] not found"):
        load_documents(ROWS, metadata_columns=["nope"])


def test_default_id_absent_numbers_rows():
    table = load_documents([{"text": "a"}, {"text": "b"}])
    assert table["doc_id"].to_list() == ["0", "1"]


def test_duplicate_ids_listed_with_counts():
    rows = [{"id": i, "text": "t"} for i in ["a", "a", "a", "b", "b", "c"]]
    with pytest.raises(DataError, match=r"duplicate ids in id_column='id': 'a' \(3 times\), 'b' \(2 times\)"):
        load_documents(rows)
    many = [{"id": f"d{i % 7}", "text": "t"} for i in range(14)]
    with pytest.raises(DataError, match="and 2 more"):
        load_documents(many)


def test_missing_ids_are_an_error():
    with pytest.raises(DataError, match="id_column='id' has 1 missing ids"):
        load_documents([{"id": "a", "text": "t"}, {"id": None, "text": "u"}])


def test_bad_sources():
    with pytest.raises(DataError, match="does not exist"):
        load_documents("/no/such/file.jsonl")
    with pytest.raises(DataError, match="unsupported file type '.xyz'"):
        path = Path(__file__).with_suffix(".xyz")
        try:
            path.write_text("x")
            load_documents(path)
        finally:
            path.unlink()
    with pytest.raises(DataError, match="not supported"):
        load_documents(42)
    with pytest.raises(DataError, match="item 1 is int"):
        load_documents(["text", 3])
    with pytest.raises(DataError, match="on_bad_line"):
        load_documents(ROWS, on_bad_line="ignore")
    with pytest.raises(DataError, match="encoding_fallback"):
        load_documents(ROWS, encoding_fallback="no-such-codec")


def test_metadata_clash_is_explained():
    with pytest.raises(DataError, match="clash"):
        load_documents([{"body": "x", "text": "y"}], text_column="body")


# --------------------------------------------------------------------------------------------------- policy


def test_bad_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "ok"}\n{"text": broken\n{"text": "also ok"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"line 2 of d\.jsonl.*on_bad_line='warn'"):
        load_documents(path)
    table = load_documents(path, on_bad_line="warn")
    assert table["text"].to_list() == ["ok", "", "also ok"]
    assert table["warning"][1].startswith("line 2 of d.jsonl is not a JSON object")
    assert table["warning"].to_list()[::2] == [None, None]


def test_bad_json_line_with_ids_gets_a_fallback_id(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"id": "a", "text": "ok"}\n[1, 2]\n{"id": "b", "text": "fine"}\n', encoding="utf-8")
    table = load_documents(path, on_bad_line="warn")
    assert table["doc_id"].to_list() == ["a", "d.jsonl:2", "b"]


def test_bad_csv_row(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("id,text\n1,ok\n2,too,many\n3,fine\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"line 3 of d\.csv"):
        load_documents(path)
    table = load_documents(path, on_bad_line="warn")
    assert table["doc_id"].to_list() == ["1", "d.csv:3", "3"]
    assert table["text"].to_list() == ["ok", "", "fine"]


def test_non_utf8_files_are_kept_with_a_warning(tmp_path):
    bad = "caf\u00e9 cr\u00e8me".encode("cp1252")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "good.txt").write_text("fine \u00e9", encoding="utf-8")
    (tmp_path / "docs" / "latin.txt").write_bytes(bad)
    (tmp_path / "docs" / "bom.txt").write_bytes(b"\xef\xbb\xbfwith bom")
    folder = load_documents(tmp_path / "docs")
    assert folder["text"].to_list() == ["with bom", "fine \u00e9", "caf\u00e9 cr\u00e8me"]
    assert folder["warning"].to_list() == [None, None, CP1252_WARNING]

    jsonl = tmp_path / "d.jsonl"
    jsonl.write_bytes(b'{"text": "ok"}\n{"text": "' + bad + b'"}\n')
    table = load_documents(jsonl)
    assert table["text"].to_list() == ["ok", "caf\u00e9 cr\u00e8me"]
    assert table["warning"].to_list() == [None, CP1252_WARNING]

    csv_path = tmp_path / "d.csv"
    csv_path.write_bytes(b'text,label\nok,a\n"' + bad + b'\nsecond line",b\nlast,c\n')
    table = load_documents(csv_path)
    assert table["text"].to_list() == ["ok", "caf\u00e9 cr\u00e8me\nsecond line", "last"]
    assert table["warning"].to_list() == [None, CP1252_WARNING, None]
    assert table["labels"].to_list() == [["a"], ["b"], ["c"]]

    latin1 = load_documents(jsonl, encoding_fallback="latin-1")
    assert latin1["warning"][1] == "not valid UTF-8: decoded as latin-1 with replacement"


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-be", "utf-32"])
def test_utf16_and_utf32_files_with_a_byte_order_mark_are_decoded(tmp_path, codec):
    """Windows tools save "Unicode" text as UTF-16 with a byte-order mark: every reader decodes it, line breaks
    that are not single bytes, a line longer than a read block and quoted CSV newlines included."""
    bom = {"utf-16": "", "utf-16-be": "\ufeff", "utf-32": ""}[codec]  # "utf-16" and "utf-32" write their own mark

    def write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_bytes((bom + text).encode(codec))
        return path

    long_text = "caf\u00e9 " * 20_000  # 100,000 characters: spans several read blocks
    rows = [{"id": "a", "text": "caf\u00e9 \u2028 \U0001f600", "label": "x"}, {"id": "b", "text": long_text}]
    jsonl = load_documents(write("d.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in rows)))
    assert jsonl["text"].to_list() == [rows[0]["text"], long_text]
    assert jsonl["labels"].to_list() == [["x"], []]
    assert jsonl["warning"].to_list() == [None, None]
    array = load_documents(write("d.json", json.dumps(rows, ensure_ascii=False)))
    assert array["text"].to_list() == [rows[0]["text"], long_text]
    table = load_documents(write("d.csv", 'text,label\n"two\nlines \u00e9",a\nlast,b'))
    assert table["text"].to_list() == ["two\nlines \u00e9", "last"]
    assert table["labels"].to_list() == [["a"], ["b"]]
    assert table["warning"].to_list() == [None, None]
    (tmp_path / "docs").mkdir()
    folder = load_documents(write("docs/n.txt", "na\u00efve text"))
    assert folder["text"].to_list() == ["na\u00efve text"]
    assert folder["warning"].to_list() == [None]


def test_an_invalid_utf16_sequence_is_replaced_with_a_warning_and_the_other_rows_kept(tmp_path):
    good = '{"text": "fine"}\n'.encode("utf-16-le")
    lone_surrogate = b"\x00\xd8"  # a high surrogate with no low one after it
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\xff\xfe" + good + '{"text": "bad '.encode("utf-16-le") + lone_surrogate
                     + '"}\n'.encode("utf-16-le") + good)
    table = load_documents(path)
    assert table["text"].to_list() == ["fine", "bad \ufffd", "fine"]
    assert table["warning"].to_list() == [None, "not valid UTF-16: decoded with replacement", None]
    # a dangling byte at the very end is replaced (and warned about), never dropped
    csv_path = tmp_path / "d.csv"
    csv_path.write_bytes(b"\xff\xfe" + "text\nok\nlast".encode("utf-16-le") + b"A")
    table = load_documents(csv_path)
    assert table["text"].to_list() == ["ok", "last\ufffd"]
    assert table["warning"].to_list() == [None, "not valid UTF-16: decoded with replacement"]


def test_only_a_files_first_bytes_can_be_a_utf16_mark(tmp_path):
    """A cp1252 line that begins with the bytes FF FE ("\u00ff\u00fe") is not UTF-16."""
    path = tmp_path / "d.csv"
    path.write_bytes(b"text,label\n" + "\u00ff\u00feabc,x\n".encode("cp1252"))
    table = load_documents(path)
    assert table["text"].to_list() == ["\u00ff\u00feabc"]
    assert table["labels"].to_list() == [["x"]]
    assert table["warning"].to_list() == [CP1252_WARNING]


def test_a_numeric_id_is_the_same_whatever_the_rows_read_with_it(tmp_path):
    """Each id is made text by its own value: a float elsewhere in the column (or in the chunk) does not turn 3
    into "3.0", and a 19-digit integer keeps every digit (as a float it would collide with its neighbour)."""
    ids = [2.5, 3, 7, 123456789012345678, 123456789012345679]
    path = write_jsonl(tmp_path / "d.jsonl", [{"id": i, "text": "t"} for i in ids])
    expected = ["2.5", "3", "7", "123456789012345678", "123456789012345679"]
    assert load_documents(path)["doc_id"].to_list() == expected
    for chunk_size in (1, 2, 3):
        assert [x for c in iter_documents(path, chunk_size=chunk_size) for x in c["doc_id"].to_list()] == expected


@pytest.mark.parametrize("bad", [[1], {"k": 1}])
def test_an_id_that_is_a_list_or_mapping_is_kept_as_json_text_with_a_warning(tmp_path, bad):
    """The row is kept (a batch never loses its other rows), and JSON lines and Python rows agree."""
    rows = [{"id": "a", "text": "ok"}, {"id": bad, "text": "b"}, {"id": 7, "text": "c"}]
    for source in (rows, write_jsonl(tmp_path / "d.jsonl", rows)):
        table = load_documents(source)
        assert table["doc_id"].to_list() == ["a", json.dumps(bad), "7"]
        assert table["warning"][1].startswith(f"the id was a {type(bad).__name__}")
        assert table["warning"][0] is None and table["warning"][2] is None
    with pytest.raises(DataError, match="id_column='id' is a List"):  # a whole typed column of lists: not ids
        load_documents(pl.DataFrame({"id": [[1], [2]], "text": ["a", "b"]}))


def test_a_nan_id_is_a_missing_id():
    with pytest.raises(DataError, match="missing ids"):
        load_documents([{"id": "a", "text": "ok"}, {"id": float("nan"), "text": "b"}])


def test_one_column_cannot_be_two_roles():
    with pytest.raises(DataError, match="label_column and id_column are both 'id'"):
        load_documents(ROWS, label_column="id", id_column="id")
    with pytest.raises(DataError, match="text_column and label_column are both 'text'"):
        load_documents(ROWS, label_column="text")
    # a default name gives way to the one the caller chose: labels from "id", rows numbered
    table = load_documents(ROWS, label_column="id")
    assert table["doc_id"].to_list() == ["0", "1", "2"]
    assert table["labels"].to_list() == [["a"], ["b"], ["c"]]


def test_a_label_value_is_spelt_the_same_by_every_reader(tmp_path):
    """A model trained on JSON lines must evaluate the same rows read from Parquet: booleans were "True" in one and
    "true" in the other, and 1 and 1.0 (pandas' int column with a NaN) were two classes."""
    rows = [{"text": "a", "label": True}, {"text": "b", "label": False}, {"text": "c", "label": 1},
            {"text": "d", "label": 1.0}, {"text": "e", "label": 2.5}, {"text": "f", "label": None}]
    expected = [["True"], ["False"], ["1"], ["1"], ["2.5"], []]
    assert load_documents(write_jsonl(tmp_path / "d.jsonl", rows))["labels"].to_list() == expected
    assert load_documents(rows)["labels"].to_list() == expected
    assert load_documents(pl.DataFrame({"text": ["a", "b"], "label": [True, False]}))["labels"].to_list() == \
        [["True"], ["False"]]
    floats = pl.DataFrame({"text": ["c", "d", "e", "f"], "label": [1.0, 1.0, 2.5, float("nan")]})
    floats.write_parquet(tmp_path / "d.parquet")
    assert load_documents(tmp_path / "d.parquet")["labels"].to_list() == [["1"], ["1"], ["2.5"], []]
    with_nan = pd.DataFrame({"text": ["c", "d", "f"], "label": [1, 1, None]})  # pandas: float64 1.0, 1.0, NaN
    assert load_documents(with_nan)["labels"].to_list() == [["1"], ["1"], []]
    assert load_documents(pl.DataFrame({"text": ["a"], "label": [[1.0, 2.5]]}))["labels"].to_list() == [["1", "2.5"]]
    assert load_documents(pl.DataFrame({"text": ["b"], "label": [[True, False]]}))["labels"].to_list() == \
        [["True", "False"]]


def test_a_folder_of_data_files_without_text_files_is_an_error_naming_them(tmp_path):
    """A folder is read as .txt/.md files: one that holds only JSON lines or CSV used to give 0 documents (and
    `longdoc label` exit 0) with only a log line saying why."""
    write_jsonl(tmp_path / "docs.jsonl", ROWS)
    with pytest.raises(DataError, match=r"holds no \.txt or \.md files .* but holds docs\.jsonl.*pass a data file"):
        load_documents(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert load_documents(empty).height == 0  # an empty folder is just empty


def test_empty_whitespace_missing_and_non_string_text_are_kept():
    rows = [
        {"text": ""},
        {"text": "  \n\t"},
        {"text": None},
        {},
        {"text": 12},
        {"text": "fine"},
    ]
    table = load_documents(rows)
    assert table.height == 6
    assert table["text"].to_list() == ["", "  \n\t", "", "", "12", "fine"]
    assert table["warning"].to_list() == [
        "empty document",
        "whitespace-only document",
        "missing text (null)",
        "missing text (null)",
        "text was int, converted to str",
        None,
    ]
    numeric = load_documents(pl.DataFrame({"text": [1.5, None]}))
    assert numeric["text"].to_list() == ["1.5", ""]
    assert numeric["warning"].to_list() == ["text was Float64, converted to str", "missing text (null)"]


def test_warnings_combine(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"text": "  \xa0 "}\n')  # cp1252 0xA0 is a no-break space
    assert load_documents(path)["warning"][0] == f"{CP1252_WARNING}; whitespace-only document"


# --------------------------------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet", "folder", "polars", "list", "dataset"])
def test_iter_documents_covers_every_row_once(tmp_path, kind):
    n = 23
    rows = [{"id": f"d{i:02d}", "text": f"document {i}", "label": str(i % 3)} for i in range(n)]
    if kind == "jsonl":
        source = write_jsonl(tmp_path / "d.jsonl", rows)
    elif kind == "csv":
        source = tmp_path / "d.csv"
        pl.DataFrame(rows).write_csv(source)
    elif kind == "parquet":
        source = tmp_path / "d.parquet"
        pl.DataFrame(rows).write_parquet(source, row_group_size=7)
    elif kind == "folder":
        source = tmp_path / "docs"
        for row in rows:
            (source / row["label"]).mkdir(parents=True, exist_ok=True)
            (source / row["label"] / f"{row['id']}.txt").write_text(row["text"], encoding="utf-8")
    elif kind == "polars":
        source = pl.DataFrame(rows)
    elif kind == "dataset":
        datasets = pytest.importorskip("datasets")
        source = datasets.Dataset.from_list(rows)
    else:
        source = rows

    chunks = list(iter_documents(source, chunk_size=5))
    assert [c.height for c in chunks] == [5, 5, 5, 5, 3]
    streamed = pl.concat(chunks)
    check_table(streamed)
    assert streamed.equals(load_documents(source))
    assert streamed.height == n


def test_iter_documents_generated_ids_count_across_chunks():
    chunks = list(iter_documents([f"t{i}" for i in range(7)], chunk_size=3))
    assert [c["doc_id"].to_list() for c in chunks] == [["0", "1", "2"], ["3", "4", "5"], ["6"]]


def test_iter_documents_detects_duplicates_across_chunks():
    rows = [{"id": x, "text": "t"} for x in ["a", "b", "c", "a"]]
    stream = iter_documents(rows, chunk_size=2)
    next(stream)
    with pytest.raises(DataError, match="duplicate ids across chunks.*'a'"):
        next(stream)


def test_iter_documents_bad_line_keeps_the_rest_of_its_chunk(tmp_path):
    path = tmp_path / "d.jsonl"
    lines = [json.dumps({"text": f"t{i}"}) for i in range(6)]
    lines[3] = "{oops"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    chunks = list(iter_documents(path, chunk_size=4, on_bad_line="warn"))
    texts = [t for c in chunks for t in c["text"].to_list()]
    assert texts == ["t0", "t1", "t2", "", "t4", "t5"]
    with pytest.raises(DataError, match="line 4"):
        list(iter_documents(path, chunk_size=4))


def test_iter_documents_rejects_bad_chunk_size():
    with pytest.raises(DataError, match="chunk_size"):
        list(iter_documents(ROWS, chunk_size=0))


def test_iter_documents_sparse_metadata_key_is_null_in_chunks_without_it():
    rows = [{"text": "a"}, {"text": "b"}, {"text": "c", "extra": 1}]
    chunks = list(iter_documents(rows, chunk_size=2, metadata_columns=["extra"]))
    assert [c["extra"].to_list() for c in chunks] == [[None, None], [1]]
    with pytest.raises(DataError, match="metadata_columns"):
        load_documents(rows[:2], metadata_columns=["extra"])


def test_a_mapping_or_nested_list_is_never_a_label_and_its_row_is_kept(tmp_path):
    path = write_jsonl(tmp_path / "labels.jsonl", [
        {"id": "a", "text": "merge two files", "label": {"k": 1}},
        {"id": "b", "text": "sort lines", "label": [["x"], "y"]},
        {"id": "c", "text": "copy files", "label": True},
        {"id": "d", "text": "list files", "label": ["x", 2]},
    ])
    table = load_documents(path)
    assert table["doc_id"].to_list() == ["a", "b", "c", "d"]
    assert table["labels"].to_list() == [[], [], ["True"], ["x", "2"]]
    warnings = table["warning"].to_list()
    assert "'label' was a mapping" in warnings[0] and "nested list" in warnings[1] and warnings[2:] == [None, None]


def test_a_struct_or_nested_list_label_column_of_a_dataframe_is_never_a_label_and_its_rows_are_kept():
    structs = pl.DataFrame({"text": ["merge two files", "sort lines"], "label": [{"k": 1}, None]})
    table = load_documents(structs)
    assert table["labels"].to_list() == [[], []]
    assert "'label' was a mapping" in table["warning"][0] and table["warning"][1] is None

    nested = pl.DataFrame({"text": ["merge", "sort"], "label": [[["x"]], [["y"], ["z"]]]})
    table = load_documents(nested)  # polars could not cast a list of lists to strings: it raised
    assert table["labels"].to_list() == [[], []]
    assert all("nested list" in w for w in table["warning"].to_list())


def test_a_fixed_width_array_label_column_gives_its_items_as_labels():
    frame = pl.DataFrame({"text": ["merge", "sort"], "label": [["cmd", "x"], ["lib", None]]})
    table = load_documents(frame.with_columns(pl.col("label").cast(pl.Array(pl.String, 2))))
    assert table["labels"].to_list() == [["cmd", "x"], ["lib"]] and table["warning"].to_list() == [None, None]


def test_a_bytes_text_column_is_decoded_and_a_bad_byte_costs_no_row():
    table = load_documents(pl.DataFrame({"text": [b"merge files", b"caf\xe9", None], "label": ["1", "2", "3"]}))
    assert table["text"].to_list() == ["merge files", "caf\ufffd", ""]
    assert "decoded as UTF-8" in table["warning"][1] and table["labels"].to_list() == [["1"], ["2"], ["3"]]


def test_nan_in_a_list_of_float_labels_is_no_label():
    table = load_documents(pl.DataFrame({"text": ["a", "b"], "label": [[1.0, float("nan")], [2.0]]}))
    assert table["labels"].to_list() == [["1"], ["2"]]


def test_a_pandas_frame_of_mixed_cells_keeps_its_row_warnings():
    frame = pd.DataFrame({"text": ["merge two files", 3], "label": [{"k": 1}, "cmd"]})  # not one arrow type
    table = load_documents(frame)
    assert table["labels"].to_list() == [[], ["cmd"]]
    assert "'label' was a mapping" in table["warning"][0]
    assert table["text"][1] == "3" and "text was int" in table["warning"][1]
