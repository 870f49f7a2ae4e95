"""Text for a terminal: escaping of untrusted text (document passages, ids, labels) and plain-text tables and
search hits. Shared by the command line (``longdoc.cli``) and the demo (``longdoc.demo``); imports nothing of
either.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

import polars as pl

__all__ = ["format_hit", "format_table", "safe_text"]

_UNSAFE = {"Cc", "Cf", "Co", "Cs", "Cn", "Zl", "Zp"}


def safe_text(text: str, *, max_chars: int | None = None, one_line: bool = True) -> str:
    """Text made safe for a terminal: control, format (bidi, zero-width) and private-use characters become
    visible escapes (``\\x1b``, ``\\u202e``); with ``one_line`` runs of spaces, tabs and newlines become one
    space. ``max_chars`` cuts the (unescaped) text and appends ``...``."""
    text = str(text)
    if one_line:
        text = re.sub(r"[ \t\r\n]+", " ", text).strip()
    if max_chars is not None and len(text) > max_chars:
        text = text[: max(0, max_chars - 3)].rstrip() + "..."
    out = []
    for ch in text:
        if unicodedata.category(ch) in _UNSAFE and not (not one_line and ch in "\n\t"):
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)


def format_hit(hit: Any, *, snippet_chars: int = 160) -> str:
    """Two lines for a terminal: rank, score, document, labels, span; then an escaped snippet."""
    labels = ",".join(hit.labels) or "-"
    head = (f"  {hit.rank:>2}. {hit.score:7.4f}  {safe_text(hit.doc_id)}  [{safe_text(labels)}]  "
            f"window {hit.window_index}, chars {hit.char_start}-{hit.char_end}")
    return f"{head}\n      {safe_text(hit.text, max_chars=snippet_chars)}"


def format_table(table: Any) -> str:
    """A plain-text rendering of a small polars table (floats to 4 places)."""
    cols = table.columns
    rows = [[(f"{v:.4f}" if isinstance(v, float) else safe_text(str(v))) for v in row] for row in table.iter_rows()]
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    numeric = [table.schema[c].is_numeric() if isinstance(table, pl.DataFrame) else False for c in cols]
    fmt = lambda vals: "  ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in zip(vals, widths, numeric, strict=True))  # noqa: E731
    lines = [fmt(cols), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in rows]
    return "\n".join(lines)
