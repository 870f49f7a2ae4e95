"""From search hits to LLM-ready contexts: merge overlapping windows, de-duplicate, fit a token budget.

Windows carry their exact character span in the document, so overlapping or touching windows of one document
are stitched back into the original text: ``text = w1.text + w2.text[w1.char_end - w2.char_start:]``. The
result is a verbatim substring of the document, never a paraphrase. ``format_contexts`` renders contexts as
JSON lines (data with provenance), so passage text is never spliced raw into a prompt.
"""

from __future__ import annotations

import json
import logging
import math
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from indexer.errors import IndexInputError

__all__ = ["GAP_MARKER", "Context", "approx_tokens", "build_contexts", "format_contexts"]

logger = logging.getLogger(__name__)

#: Put between two pieces of one context that a gap of at most ``merge_gap`` characters separates.
GAP_MARKER = "\n[...]\n"


@dataclass(frozen=True)
class Context:
    """A stretch of one document built from one or more hit windows.

    ``text`` is ``document[char_start:char_end]`` verbatim when ``spans`` has one piece; with ``merge_gap > 0``
    pieces separated by a gap are joined with ``GAP_MARKER`` and ``spans`` lists each piece's (start, end).
    ``score`` is the best score of the merged windows; ``sources`` their window indices; ``truncated`` is True
    when the text was cut to fit the token budget.
    """

    doc_id: str
    char_start: int
    char_end: int
    text: str
    labels: tuple[str, ...]
    score: float
    sources: tuple[int, ...]
    spans: tuple[tuple[int, int], ...]
    truncated: bool = False


def approx_tokens(text: str) -> int:
    """Default token count: the larger of 1.3 per whitespace-separated word and 1 per 4 characters.

    Prose runs about 1.3 subword tokens per word; code, identifiers and numbers about 4 characters per token.
    Taking the larger errs high, which keeps a prompt inside its budget. Pass your tokenizer's count for exact
    figures, e.g. ``count_tokens=lambda t: len(tok(t).input_ids)``.
    """
    return max(math.ceil(len(text.split()) * 1.3), math.ceil(len(text) / 4))


class _Group:
    def __init__(self, hit: Any) -> None:
        self.doc_id: str = hit.doc_id
        self.labels = tuple(hit.labels)
        self.score = float(hit.score)
        self.sources = [int(hit.window_index)]
        self.pieces: list[list[Any]] = [[int(hit.char_start), int(hit.char_end), str(hit.text)]]
        self.exact = _exact(hit)

    def try_merge(self, hit: Any, merge_gap: int) -> bool:
        start, end, text = self.pieces[-1]
        if not (self.exact and _exact(hit)) or hit.char_start > end + merge_gap:
            return False
        if hit.char_start <= end:  # overlapping or touching: stitch by offsets
            if hit.char_end > end:
                self.pieces[-1] = [start, int(hit.char_end), text + hit.text[end - hit.char_start:]]
        else:  # a gap of at most merge_gap characters we have no text for
            self.pieces.append([int(hit.char_start), int(hit.char_end), str(hit.text)])
        self.score = max(self.score, float(hit.score))
        self.sources.append(int(hit.window_index))
        return True

    def context(self) -> Context:
        return _context(self.doc_id, self.labels, self.score, tuple(sorted(self.sources)),
                        [tuple(p) for p in self.pieces])


def _exact(hit: Any) -> bool:
    return len(hit.text) == hit.char_end - hit.char_start


def _context(doc_id: str, labels: tuple[str, ...], score: float, sources: tuple[int, ...],
             pieces: list[tuple[int, int, str]], truncated: bool = False) -> Context:
    return Context(
        doc_id=doc_id,
        char_start=pieces[0][0],
        char_end=pieces[-1][1],
        text=GAP_MARKER.join(p[2] for p in pieces),
        labels=labels,
        score=score,
        sources=sources,
        spans=tuple((p[0], p[1]) for p in pieces),
        truncated=truncated,
    )


def _prefix(ctx: Context, n_chars: int) -> Context | None:
    """The context cut to its first ``n_chars`` characters of text (never inside a gap marker)."""
    pieces: list[tuple[int, int, str]] = []
    offset = 0
    for i, (start, end) in enumerate(ctx.spans):
        if i:
            offset += len(GAP_MARKER)
        if offset >= n_chars:
            break
        length = end - start
        take = min(length, n_chars - offset)
        pieces.append((start, start + take, ctx.text[offset:offset + take]))
        offset += length
        if take < length:
            break
    if not pieces or pieces[-1][1] == pieces[-1][0]:
        pieces = [p for p in pieces if p[1] > p[0]]
    if not pieces:
        return None
    return _context(ctx.doc_id, ctx.labels, ctx.score, ctx.sources, pieces, truncated=True)


def _truncate(ctx: Context, budget: int, count: Callable[[str], int]) -> Context | None:
    """The longest prefix of ``ctx`` whose token count fits ``budget``, cut at whitespace when possible."""
    lo, hi = 0, len(ctx.text)
    while lo < hi:  # largest n with count(prefix(n)) <= budget
        mid = (lo + hi + 1) // 2
        cut = _prefix(ctx, mid)
        if cut is not None and count(cut.text) <= budget:
            lo = mid
        else:
            hi = mid - 1
    if lo == 0:
        return None
    space = max(ctx.text.rfind(" ", 0, lo + 1), ctx.text.rfind("\n", 0, lo + 1))
    if space > 0 and lo < len(ctx.text) and not ctx.text[lo].isspace():
        lo = space
    return _prefix(ctx, lo)


def build_contexts(
    hits: Iterable[Any],
    *,
    max_tokens: int = 1024,
    count_tokens: Callable[[str], int] | None = None,
    merge_gap: int = 0,
) -> list[Context]:
    """Merge hits into contexts, best first, within ``max_tokens``.

    ``hits``: the ``Hit`` list of one query (any objects with doc_id, window_index, char_start, char_end, text,
    score, labels). The same window twice counts once (best score). Windows of one document that overlap or
    touch (or, with ``merge_gap > 0``, lie at most that many characters apart) become one context, rebuilt
    from the windows' texts by their character offsets. Windows whose text length differs from their span
    are kept as they are, never stitched.

    Contexts are taken best score first while they fit ``max_tokens`` (counted by ``count_tokens``, default
    ``approx_tokens``); the first one that does not fit is cut at a word boundary to the tokens left
    (``truncated=True``), and nothing after it is taken.
    """
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens <= 0:
        raise IndexInputError(f"max_tokens must be a positive int, got {max_tokens!r}")
    if isinstance(merge_gap, bool) or not isinstance(merge_gap, int) or merge_gap < 0:
        raise IndexInputError(f"merge_gap must be an int >= 0, got {merge_gap!r}")
    count = count_tokens or approx_tokens
    if not callable(count):
        raise IndexInputError(f"count_tokens must be a callable str -> int or None, got {count_tokens!r}")

    best: dict[tuple[str, int], Any] = {}
    for hit in hits:
        if isinstance(hit, list | tuple):
            raise IndexInputError(
                "hits must be the flat list of one query's hits; got a nested list (a batch search result): "
                "call build_contexts once per query"
            )
        key = (hit.doc_id, int(hit.window_index))
        if key not in best or hit.score > best[key].score:
            best[key] = hit

    by_doc: dict[str, list[Any]] = {}
    for hit in best.values():
        by_doc.setdefault(hit.doc_id, []).append(hit)
    contexts: list[Context] = []
    for windows in by_doc.values():
        windows.sort(key=lambda h: (h.char_start, h.char_end, h.window_index))
        group: _Group | None = None
        for hit in windows:
            if group is not None and group.try_merge(hit, merge_gap):
                continue
            if group is not None:
                contexts.append(group.context())
            group = _Group(hit)
        if group is not None:
            contexts.append(group.context())
    contexts.sort(key=lambda c: (-c.score, c.doc_id, c.char_start))

    chosen: list[Context] = []
    used = 0
    for ctx in contexts:
        tokens = count(ctx.text)
        if used + tokens <= max_tokens:
            chosen.append(ctx)
            used += tokens
            continue
        cut = _truncate(ctx, max_tokens - used, count) if max_tokens > used else None
        if cut is not None:
            chosen.append(cut)
        break
    logger.debug("built %d contexts (%d candidates) within %d tokens", len(chosen), len(contexts), max_tokens)
    return chosen


_UNSAFE_CATEGORIES = {"Cc", "Cf", "Co", "Cs", "Zl", "Zp"}


def _escape_unsafe(line: str) -> str:
    out = []
    for ch in line:
        if unicodedata.category(ch) in _UNSAFE_CATEGORIES:
            code = ord(ch)
            if code > 0xFFFF:  # a JSON escape is UTF-16: write the surrogate pair
                code -= 0x10000
                out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
            else:
                out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def format_contexts(contexts: Iterable[Context]) -> str:
    """Render contexts as JSON lines, one object per context, for a prompt's data section.

    Each line is ``json.dumps`` of {"source": n, "doc_id", "char_start", "char_end", "labels", "score", "text"}:
    passage text stays a JSON string, so newlines, quotes, ANSI escapes, bidi and zero-width characters in a
    document cannot break out of it or pose as instructions (control and format characters are written as
    \\uXXXX escapes). ``json.loads`` of a line gives the text back exactly.
    """
    lines = []
    for n, ctx in enumerate(contexts, start=1):
        record = {
            "source": n,
            "doc_id": ctx.doc_id,
            "char_start": ctx.char_start,
            "char_end": ctx.char_end,
            "labels": list(ctx.labels),
            "score": round(float(ctx.score), 6),
            "text": ctx.text,
        }
        lines.append(_escape_unsafe(json.dumps(record, ensure_ascii=False)))
    return "\n".join(lines)
