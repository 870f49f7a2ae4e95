"""Helpers the CLI tests share: run ``longdoc`` in-process, write a JSONL file, leave an index mid-swap."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from longdoc.cli import main


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """``longdoc ARGV`` in this process: (exit code, stdout, stderr)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def swap_half_done(out: Path) -> Path:
    """The state the two-rename fallback swap leaves between its renames: the index moved to ``.<name>.old-*``."""
    old = out.parent / f".{out.name}.old-deadbeef"
    os.rename(out, old)
    return old


@contextlib.contextmanager
def finishing_swap(out: Path, after_s: float = 0.05) -> Iterator[None]:
    """The index at ``out`` is between the two renames of a swap when the block starts; a writer thread makes
    the second rename ``after_s`` later (joined when the block ends)."""
    old = swap_half_done(out)

    def second_rename() -> None:
        time.sleep(after_s)
        os.rename(old, out)

    writer = threading.Thread(target=second_rename)
    writer.start()
    try:
        yield
    finally:
        writer.join()
