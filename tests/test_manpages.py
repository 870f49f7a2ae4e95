"""Man pages: a handful of the machine's real pages, copied into a temporary man tree and rendered for real."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import polars as pl
import pytest

from longdoc import manpages
from longdoc.data import DOC_COLUMNS
from longdoc.errors import DataError
from longdoc.manpages import load_man_pages

SYSTEM = Path("/usr/share/man")
PAGES = ["man1/chmod.1.gz", "man1/ls.1.gz", "man2/open.2.gz", "man3/printf.3.gz"]
COLUMNS = [*DOC_COLUMNS, "page", "section", "name_line", "source", "n_words"]


@pytest.fixture(scope="module")
def man_root(tmp_path_factory) -> Path:
    if not all((SYSTEM / p).is_file() for p in PAGES):
        pytest.skip(f"the pages {PAGES} are not all under {SYSTEM}")
    if not (shutil.which("groff") or shutil.which("man")):
        pytest.skip("neither groff nor man is installed")
    root = tmp_path_factory.mktemp("man")
    for rel in PAGES:
        (root / rel).parent.mkdir(exist_ok=True)
        shutil.copy(SYSTEM / rel, root / rel)
    (root / "man1" / "chmod-alias.1.gz").symlink_to("chmod.1.gz")  # a symlinked page: kept once
    (root / "man1" / "dir.1.gz").write_bytes(gzip.compress(b'.\\" redirect\n.so man1/ls.1\n'))  # a redirect
    (root / "man1" / "broken.1.gz").write_bytes(b"this is not gzip data")  # fails to render
    (root / "de" / "man1").mkdir(parents=True)  # a translation: not read
    shutil.copy(SYSTEM / "man1/chmod.1.gz", root / "de" / "man1" / "chmod.1.gz")
    return root


def test_real_pages_rendered_with_name_lines(man_root, tmp_path):
    table = load_man_pages(root=man_root, cache_dir=tmp_path, processes=2, show_progress=False)
    assert table.columns == COLUMNS
    assert table["doc_id"].to_list() == ["man1/broken.1.gz", *PAGES]
    rows = {r["page"]: r for r in table.iter_rows(named=True)}

    chmod = rows["chmod"]
    assert chmod["name_line"] == "chmod - change file mode bits"
    assert chmod["labels"] == ["1"] and chmod["section"] == "1" and chmod["source"] == "chmod"
    assert rows["ls"]["name_line"] == "ls - list directory contents"
    assert rows["open"]["name_line"].startswith("open, openat, creat - open")
    assert rows["open"]["labels"] == ["2"]
    assert rows["printf"]["name_line"].startswith("printf, fprintf, dprintf, sprintf")
    assert rows["printf"]["labels"] == ["3"]

    for page in ("chmod", "ls", "open", "printf"):
        text = rows[page]["text"]
        assert rows[page]["warning"] is None
        assert "\nNAME\n" not in f"\n{text}" and rows[page]["name_line"] not in text
        assert "\nSYNOPSIS\n" in f"\n{text}" and text[0].isupper()  # starts at a section heading
        assert "CHMOD(1)" not in text and "LS(1)" not in text  # header and footer lines dropped
        assert "\x08" not in text and "\x1b" not in text
        assert rows[page]["n_words"] == len(text.split()) > 100
    assert "mode bits of each given file" in " ".join(chmod["text"].split())

    broken = rows["broken"]
    assert broken["warning"].startswith("render failed") and broken["text"] == ""


def test_keep_name_section(man_root, tmp_path):
    table = load_man_pages(
        root=man_root, sections=("1",), drop_name_section=False, cache_dir=tmp_path, show_progress=True
    )
    chmod = table.filter(pl.col("page") == "chmod").row(0, named=True)
    assert chmod["text"].startswith("CHMOD(1)")
    assert "\nNAME\n       chmod - change file mode bits\n" in chmod["text"]
    assert chmod["name_line"] == "chmod - change file mode bits"


def test_cache_second_call_renders_nothing(man_root, tmp_path, monkeypatch):
    options = dict(root=man_root, sections=("1", "2"), cache_dir=tmp_path, show_progress=False)
    first = load_man_pages(**options)
    cached = list((tmp_path / "manpages").iterdir())
    assert len(cached) == 1 and cached[0].suffix == ".parquet"  # no temporary file left behind

    def no_rendering(path, width):
        raise AssertionError(f"rendered {path} although the cache holds it")

    monkeypatch.setattr(manpages, "_render_page", no_rendering)
    assert load_man_pages(**options).equals(first)
    # other options are another cache entry: they render (here: fail, recorded per page, never raised)
    other = load_man_pages(**{**options, "width": 100})
    assert other["warning"].str.starts_with("render failed").all()
    assert len(list((tmp_path / "manpages").iterdir())) == 2


def test_sampling_caps_sources_deterministically(man_root, tmp_path):
    root = tmp_path / "man"
    (root / "man1").mkdir(parents=True)
    for name in ["gcloud_a", "gcloud_b", "gcloud_c", "gcloud_d", "ls"]:
        shutil.copy(man_root / "man1" / "ls.1.gz", root / "man1" / f"{name}.1.gz")
    options = dict(root=root, cache_dir=tmp_path / "cache", max_per_source=2, show_progress=False)
    table = load_man_pages(**options)
    assert table["source"].value_counts().sort("source").rows() == [("gcloud", 2), ("ls", 1)]
    again = load_man_pages(**{**options, "cache_dir": tmp_path / "other-cache"})
    assert again["doc_id"].to_list() == table["doc_id"].to_list()
    capped = load_man_pages(**{**options, "max_per_source": None, "max_per_section": 3})
    assert capped.height == 3


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no man page folders"):
        load_man_pages(root=tmp_path, cache_dir=tmp_path)
    with pytest.raises(DataError, match="max_per_source"):
        load_man_pages(root=tmp_path, max_per_source=0)
