"""The machine's man pages as a labelled corpus of long documents (the embedded default corpus).

Pages under ``root/man1`` ... ``root/man8`` (the English top-level folders only, not translations) are rendered
to plain text with ``groff -mandoc -Tutf8`` (about 2.5x faster here than ``man -l``, which runs the same
pipeline; ``man -l`` is used where groff is missing), without hyphenation or justification, at ``width``
columns, with no formatting escapes. The section digit is the label.

Sampling happens before rendering, deterministically from ``seed``: ``max_per_source`` caps how many pages of one
*source* a section keeps (the source is the lower-cased page name up to its first ``_``, ``-`` or ``.``, so the
16,000 ``gcloud_*`` pages of section 1 count as one source), then ``max_per_section`` caps each section.
Symlinked pages (kept once, under the target's own path when it is selected) and ``.so`` redirect pages are
skipped.

Rendered tables are cached as Parquet in ``cache_dir/manpages/`` (default ``$LONGDOC_CACHE`` or
``~/.cache/longdoc``), under a name hashed from the options and the paths, sizes and mtimes of the pages, so a
second call with the same options on an unchanged machine reads the cache. Delete the folder to rebuild.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import logging
import lzma
import os
import random
import re
import shutil
import subprocess
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from longdoc.errors import DataError

logger = logging.getLogger(__name__)

__all__ = ["default_cache_dir", "load_man_pages"]

_CACHE_FORMAT = 1  # bump when the rendering or the table changes, to invalidate old caches
_RENDER_TIMEOUT_S = 60
_COMPRESSED = {".gz": gzip.decompress, ".bz2": bz2.decompress, ".xz": lzma.decompress, ".lzma": lzma.decompress}
# Redefining .ad as a no-op and starting with .na turns justification off for the whole page (man --nj does
# the same); -rHY=0 turns hyphenation off, so words are never split across lines.
_PREAMBLE = b".de ad\n..\n.na\n"


@dataclass(frozen=True)
class _Page:
    path: Path  # the file to read
    doc_id: str  # "man1/chmod.1.gz"
    page: str  # "chmod"
    section: str  # "1"
    source: str  # "chmod", "gcloud", "git"


def default_cache_dir() -> Path:
    """The cache root: ``$LONGDOC_CACHE``, else ``~/.cache/longdoc``."""
    env = os.environ.get("LONGDOC_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "longdoc"


def load_man_pages(
    *,
    root: str | Path = "/usr/share/man",
    sections: Sequence[str] = ("1", "2", "3", "4", "5", "7", "8"),
    max_per_section: int | None = None,
    max_per_source: int | None = 50,
    drop_name_section: bool = True,
    cache_dir: str | Path | None = None,
    processes: int | None = None,
    seed: int = 0,
    show_progress: bool | None = None,
    width: int = 80,
) -> pl.DataFrame:
    """Render the machine's man pages into a document table labelled by section.

    Args:
        root: the man page tree; pages are read from ``root/man<section>/``.
        sections: the section digits to read.
        max_per_section: at most this many pages per section (sampled with ``seed``); ``None`` for no cap.
        max_per_source: at most this many pages of one source per section (see the module docstring);
            ``None`` for no cap.
        drop_name_section: remove the header and footer lines and the NAME section from ``text``, so that
            ``name_line`` can serve as a retrieval query for its own page.
        cache_dir: where the ``manpages/`` cache folder lives; default ``$LONGDOC_CACHE`` or ``~/.cache/longdoc``.
        processes: rendering workers (each runs groff); ``None`` uses every core.
        seed: the sampling seed.
        show_progress: show a tqdm bar; ``None`` shows it when this module's logger is at INFO or lower.
        width: the rendering width in columns.

    Returns:
        A document table: ``doc_id`` (``"man1/chmod.1.gz"``), ``text``, ``labels`` (``["1"]``), ``warning``
        (set when a page failed to render or rendered empty; the row is kept), then ``page``, ``section``,
        ``name_line`` (``"chmod - change file mode bits"``), ``source`` and ``n_words``, sorted by ``doc_id``.

    Raises:
        DataError: ``root`` has none of the requested section folders.
    """
    root = Path(root)
    sections = tuple(str(s) for s in sections)
    for name, value in (("max_per_section", max_per_section), ("max_per_source", max_per_source)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise DataError(f"{name} must be a positive integer or None, got {value!r}")
    if not isinstance(width, int) or width < 20:
        raise DataError(f"width must be an integer >= 20, got {width!r}")

    files = _list_files(root, sections)
    options = {
        "format": _CACHE_FORMAT,
        "root": str(root.resolve()),
        "sections": sections,
        "max_per_section": max_per_section,
        "max_per_source": max_per_source,
        "drop_name_section": drop_name_section,
        "seed": seed,
        "width": width,
    }
    digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode())
    for rel, size, mtime in files:
        digest.update(f"{rel}\0{size}\0{mtime}\n".encode())
    cache_path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_file = cache_path / "manpages" / f"man-{digest.hexdigest()[:24]}.parquet"
    if cache_file.is_file():
        try:
            table = pl.read_parquet(cache_file)
            logger.info("man pages: %d pages read from the cache %s", table.height, cache_file)
            return table
        except Exception as exc:  # a damaged cache file is rebuilt, never fatal
            logger.warning("man pages: ignoring unreadable cache %s (%s)", cache_file, exc)

    pages = _sample(_dedupe(root, [rel for rel, _, _ in files]), max_per_section, max_per_source, seed)
    logger.info("man pages: rendering %d pages from %s (%d files listed)", len(pages), root, len(files))
    rendered = _render_all(pages, width=width, processes=processes, show_progress=show_progress)
    table = _table(pages, rendered, drop_name_section)
    _write_atomic(table, cache_file)
    return table


# --------------------------------------------------------------------------------------------------- listing


def _list_files(root: Path, sections: tuple[str, ...]) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime_ns) of every file in the section folders, sorted."""
    found = []
    present = False
    for section in sections:
        folder = root / f"man{section}"
        if not folder.is_dir():
            continue
        present = True
        with os.scandir(folder) as entries:
            for entry in entries:
                try:
                    st = entry.stat()  # follows symlinks; a dangling one is skipped
                except OSError:
                    continue
                if entry.is_file():
                    found.append((f"man{section}/{entry.name}", st.st_size, st.st_mtime_ns))
    if not present:
        raise DataError(f"no man page folders man{{{','.join(sections)}}} under root={str(root)!r}")
    return sorted(found)


def _parse_name(rel: str) -> tuple[str, str]:
    """("man1/chmod.1.gz") -> ("chmod", "1")."""
    folder, name = rel.split("/", 1)
    stem = name
    for suffix in _COMPRESSED:
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    page = stem.rsplit(".", 1)[0] if "." in stem else stem
    return page, folder[3:]


def _source_key(page: str) -> str:
    return re.split(r"[_\-.]", page.lower(), maxsplit=1)[0] or page.lower()


def _read_source(path: Path) -> bytes:
    data = path.read_bytes()
    decompress = _COMPRESSED.get(path.suffix)
    return decompress(data) if decompress else data


def _is_redirect(path: Path) -> bool:
    """A page whose source is only comments and one ``.so other.N`` line."""
    if path.stat().st_size > 1024:  # redirects are a line or two; skip reading real pages
        return False
    try:
        lines = [ln.strip() for ln in _read_source(path).decode("utf-8", "replace").splitlines()]
    except (OSError, EOFError, ValueError, lzma.LZMAError):
        return False
    lines = [ln for ln in lines if ln and not ln.startswith(('.\\"', "'\\\"", '.\\\\"'))]
    return len(lines) == 1 and lines[0].startswith(".so ")


def _dedupe(root: Path, rels: list[str]) -> list[_Page]:
    """Drop ``.so`` redirects and keep one path per real file (the non-symlink one when listed)."""
    by_target: dict[str, list[str]] = defaultdict(list)
    for rel in rels:
        path = root / rel
        if _is_redirect(path):
            continue
        by_target[os.path.realpath(path)].append(rel)
    pages = []
    for target, group in by_target.items():
        real = [r for r in group if not (root / r).is_symlink()]
        rel = (real or sorted(group))[0]
        page, section = _parse_name(rel)
        pages.append(_Page(Path(target), rel, page, section, _source_key(page)))
    return sorted(pages, key=lambda p: p.doc_id)


def _sample(pages: list[_Page], max_per_section: int | None, max_per_source: int | None, seed: int) -> list[_Page]:
    """Deterministic caps; each group draws from its own seeded generator, so groups do not affect each other."""
    by_section: dict[str, list[_Page]] = defaultdict(list)
    for page in pages:
        by_section[page.section].append(page)
    kept: list[_Page] = []
    for section, members in sorted(by_section.items()):
        if max_per_source is not None:
            by_source: dict[str, list[_Page]] = defaultdict(list)
            for page in members:
                by_source[page.source].append(page)
            members = []
            for source, group in sorted(by_source.items()):
                if len(group) > max_per_source:
                    group = random.Random(f"{seed}:{section}:{source}").sample(group, max_per_source)
                members.extend(group)
        if max_per_section is not None and len(members) > max_per_section:
            members = random.Random(f"{seed}:{section}").sample(sorted(members, key=lambda p: p.doc_id), max_per_section)
        kept.extend(members)
    return sorted(kept, key=lambda p: p.doc_id)


# --------------------------------------------------------------------------------------------------- rendering


def _render_page(path: Path, width: int) -> str:
    """Render one page to plain text; raises on failure."""
    source = _read_source(path)
    env = {**os.environ, "GROFF_NO_SGR": "1", "MANWIDTH": str(width), "LC_ALL": "C.UTF-8"}
    env.pop("MAN_KEEP_FORMATTING", None)
    groff = shutil.which("groff")
    if groff:
        # -k: preconv (input encoding), -t: tbl; -P-cbou: no escape sequences, no overstrike, no underline.
        cmd = [groff, "-k", "-t", "-mandoc", "-Tutf8", f"-rLL={width}n", f"-rLT={width}n", "-rHY=0", "-P-cbou"]
        stdin = _PREAMBLE + source
    else:
        man = shutil.which("man")
        if not man:
            raise RuntimeError("neither groff nor man is installed")
        cmd, stdin = [man, "--nh", "--nj", "-l", str(path)], b""
    done = subprocess.run(cmd, input=stdin, capture_output=True, env=env, timeout=_RENDER_TIMEOUT_S, check=False)
    if done.returncode != 0 and not done.stdout.strip():
        raise RuntimeError(f"exit {done.returncode}: {done.stderr.decode('utf-8', 'replace').strip()[:200]}")
    return _clean(done.stdout.decode("utf-8", "replace"))


def _clean(text: str) -> str:
    """Plain text: no overstrikes or escapes left, ASCII hyphens, no trailing spaces, at most one blank line."""
    text = re.sub(r".\x08", "", text)  # col -b: "c\bc" (bold) and "_\bc" (underline) -> "c"
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)  # any SGR escape left
    text = text.replace("\u2010", "-").replace("\u2212", "-")
    lines = [line.rstrip() for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n") + "\n"


def _render_safe(args: tuple[Path, int]) -> tuple[str, str | None]:
    path, width = args
    try:
        return _render_page(path, width), None
    except Exception as exc:  # one bad page never stops the run
        return "", f"render failed: {type(exc).__name__}: {exc}"


def _render_all(
    pages: list[_Page], *, width: int, processes: int | None, show_progress: bool | None
) -> list[tuple[str, str | None]]:
    from tqdm.auto import tqdm

    if show_progress is None:
        show_progress = logger.isEnabledFor(logging.INFO)
    workers = processes or os.cpu_count() or 1
    # Threads are enough: each page is rendered by a groff child process, and the GIL is released while waiting.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(_render_safe, [(p.path, width) for p in pages])
        return list(tqdm(results, total=len(pages), desc="man pages", unit="page", disable=not show_progress))


# --------------------------------------------------------------------------------------------------- table


_HEADING = re.compile(r"^\S")  # section headings start at column 0; their bodies are indented


def _split_name(text: str) -> tuple[str | None, str]:
    """(the NAME section, whitespace-normalised; the text without header, footer and NAME section)."""
    lines = text.strip("\n").split("\n")
    if len(lines) >= 2:
        lines = lines[1:-1]  # the header ("CHMOD(1) User Commands CHMOD(1)") and the footer line
    name_line = None
    out: list[str] = []
    i = 0
    while i < len(lines):
        if lines[i].strip() == "NAME" and _HEADING.match(lines[i]) and name_line is None:
            j = i + 1
            while j < len(lines) and not _HEADING.match(lines[j]):
                j += 1
            name_line = " ".join(" ".join(lines[i + 1 : j]).split()) or None
            i = j
            continue
        out.append(lines[i])
        i += 1
    return name_line, "\n".join(out).strip("\n") + "\n"


def _table(pages: list[_Page], rendered: list[tuple[str, str | None]], drop_name_section: bool) -> pl.DataFrame:
    rows: dict[str, list] = defaultdict(list)
    for page, (text, warning) in zip(pages, rendered, strict=True):
        name_line, body = _split_name(text) if text else (None, "")
        if drop_name_section:
            text = body if text else ""
        if not warning and not text.strip():
            warning = "empty document"
        rows["doc_id"].append(page.doc_id)
        rows["text"].append(text)
        rows["labels"].append([page.section])
        rows["warning"].append(warning)
        rows["page"].append(page.page)
        rows["section"].append(page.section)
        rows["name_line"].append(name_line)
        rows["source"].append(page.source)
        rows["n_words"].append(len(text.split()))
    schema = {
        "doc_id": pl.String,
        "text": pl.String,
        "labels": pl.List(pl.String),
        "warning": pl.String,
        "page": pl.String,
        "section": pl.String,
        "name_line": pl.String,
        "source": pl.String,
        "n_words": pl.Int64,
    }
    failed = sum(1 for _, w in rendered if w and w.startswith("render failed"))
    if failed:
        logger.warning("man pages: %d of %d pages failed to render (see the 'warning' column)", failed, len(pages))
    return pl.DataFrame(rows, schema=schema)


def _write_atomic(table: pl.DataFrame, path: Path) -> None:
    from indexer.storage import write_file_atomically  # here: importing ``indexer`` loads faiss

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_file_atomically(path, table.write_parquet)
        logger.info("man pages: cached %d pages in %s", table.height, path)
    except OSError as exc:  # a read-only home must not stop anyone: the table is still returned
        logger.warning("man pages: could not write the cache %s (%s)", path, exc)
