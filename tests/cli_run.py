"""Helpers the CLI tests share: run ``longdoc`` in-process and write a JSONL file."""

from __future__ import annotations

import json
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
