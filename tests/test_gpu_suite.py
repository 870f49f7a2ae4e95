"""The GPU suite's dry run (benchmarks/gpu_suite.py --dry-run): the same sections on the CPU with the tiny BERT.

It runs as a subprocess, as on the GPU machine, and must finish in under a minute with a result line (or a
recorded reason) for every section. The out-of-memory back-off needs CUDA: that check skips without it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "benchmarks" / "gpu_suite.py"
SECTIONS = ("encode", "oom", "finetune", "search", "quality")

pytestmark = pytest.mark.slow


def run_suite(out: Path, *args: str, timeout: float = 180) -> tuple[subprocess.CompletedProcess, list[dict]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(SUITE), str(out), *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, check=False)
    jsonl = out / "results.jsonl"
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()] if jsonl.is_file() else []
    return proc, rows


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, list[dict], float, Path]:
    out = tmp_path_factory.mktemp("gpu-suite")
    t0 = time.perf_counter()
    proc, rows = run_suite(out, "--dry-run")
    return proc, rows, time.perf_counter() - t0, out


def rows_of(rows: list[dict], section: str) -> list[dict]:
    return [r for r in rows if r["section"] == section]


def one(rows: list[dict], section: str, what: str) -> dict:
    found = [r for r in rows_of(rows, section) if r["what"] == what]
    assert len(found) == 1, f"{section}/{what}: {len(found)} rows in {[r['what'] for r in rows_of(rows, section)]}"
    return found[0]


def test_dry_run_finishes_under_a_minute_with_every_section(dry_run):
    proc, rows, seconds, out = dry_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    errors = [r for r in rows if r["status"] == "error"]
    assert not errors, errors
    done = one(rows, "setup", "done")
    assert done["seconds"] < 60, f"the dry run took {done['seconds']} s (the subprocess {seconds:.1f} s)"
    assert one(rows, "setup", "machine")["dry_run"] is True
    for section in SECTIONS:
        assert rows_of(rows, section), f"no line for section {section}"
    for row in rows:
        assert row["status"] in ("ok", "skipped"), row
        if row["status"] == "skipped":
            assert row.get("reason"), f"a skip without a reason: {row}"
    markdown = (out / "results.md").read_text()
    assert markdown.startswith("# GPU suite results")
    for section in SECTIONS:
        assert f"| {section} |" in markdown


def test_encode_section_measures_the_encoder_and_its_peers_on_the_same_windows(dry_run):
    _, rows, _, _ = dry_run
    for model in ("bert-base", "minilm"):
        eager = one(rows, "encode", f"{model} longdoc eager")
        assert eager["tokens_per_s"] > 0 and eager["windows"] >= 40 and eager["tokens"] > 0
        for peer in ("hf_forward", "st"):
            row = one(rows, "encode", f"{model} {peer}")
            assert row["windows"] == eager["windows"] and row["tokens"] == eager["tokens"]
            assert row["tokens_per_s"] > 0
            # the peers embed the same windows with the same weights: the same vectors
            assert row["min_cosine"] > 0.999, row
            assert row["ratio_vs_longdoc_eager"] == pytest.approx(eager["seconds"] / row["seconds"], rel=0.01)
        compiled = [r for r in rows_of(rows, "encode") if r["what"] == f"{model} torch.compile"
                    or r["what"] == f"{model} longdoc compile"]
        assert compiled, f"{model}: neither a compiled run nor a reason for its absence"
    cosine = one(rows, "encode", "MiniLM bf16 vs fp32 cosine (real weights)")
    if cosine["status"] == "ok":
        assert 0.99 < cosine["min_cosine"] <= 1.0 + 1e-6 and cosine["windows"] > 0
    else:
        assert "MiniLM" in cosine["reason"]


def test_oom_section_without_cuda_says_so_and_still_runs_the_oversize_batch(dry_run):
    _, rows, _, _ = dry_run
    row = one(rows, "oom", "out-of-memory back-off")
    assert row["status"] == "skipped" and "no CUDA" in row["reason"]
    assert row["finished"] is True and row["backoffs"] == 0 and row["min_cosine"] > 0.999
    assert row["first_budget_tokens"] == 4096 * 512


def test_finetune_section_counts_the_trained_tokens(dry_run):
    _, rows, _, _ = dry_run
    row = one(rows, "finetune", "LongDocClassifier.fit(mode='finetune'), one epoch")
    assert row["status"] == "ok"
    assert row["windows"] == row["docs"] * 2  # --dry-run: 2 windows kept per document
    assert 0 < row["tokens"] <= row["windows"] * 512
    assert row["tokens_per_s"] == pytest.approx(row["tokens"] / row["seconds"], rel=0.02)


def test_search_section_recall_against_float32_exact(dry_run):
    _, rows, _, _ = dry_run
    plain = one(rows, "search", "plain torch bf16 matmul + topk")
    ours = one(rows, "search", "PassageIndex(Flat, device='cpu').search, per_doc=None")
    assert plain["n"] == ours["n"] == 10_000 and plain["dim"] == 384
    assert ours["recall_at_10"] >= 0.99  # float32 on the CPU: exact
    assert 0.8 < plain["recall_at_10"] <= 1.0
    assert ours["qps"] > 0 and ours["ratio_vs_plain"] == pytest.approx(ours["qps"] / plain["qps"], rel=0.01)


def test_quality_is_skipped_unless_asked(dry_run):
    _, rows, _, _ = dry_run
    row = one(rows, "quality", "MiniLM fine-tuned, BBC fold 0 and man-page sections")
    assert row["status"] == "skipped" and "--quality" in row["reason"]


def test_a_failing_section_is_recorded_and_the_next_one_runs(tmp_path):
    # no vectors to search: the search section fails; quality still writes its line
    proc, rows = run_suite(tmp_path, "--dry-run", "--sections", "search,quality", "--search-n", "0")
    assert proc.returncode == 1, proc.stderr[-4000:]
    error = one(rows, "search", "section")
    assert error["status"] == "error" and error["error"] and "Traceback" in error["traceback"]
    assert one(rows, "quality", "MiniLM fine-tuned, BBC fold 0 and man-page sections")["status"] == "skipped"
    assert "| search | section | error |" in (tmp_path / "results.md").read_text()


def test_sections_past_the_budget_are_skipped_with_the_reason(tmp_path):
    proc, rows = run_suite(tmp_path, "--dry-run", "--sections", "encode,finetune", "--budget-s", "0.01")
    assert proc.returncode == 0, proc.stderr[-4000:]
    for section in ("encode", "finetune"):
        row = one(rows, section, "section")
        assert row["status"] == "skipped" and "time budget" in row["reason"]
    assert (tmp_path / "results.md").is_file()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_oom_back_off_on_cuda(tmp_path):
    proc, rows = run_suite(tmp_path, "--dry-run", "--device", "cuda", "--sections", "oom")
    assert proc.returncode == 0, proc.stderr[-4000:]
    row = one(rows, "oom", "out-of-memory back-off")
    assert row["status"] == "ok" and row["backoffs"] >= 1 and row["min_cosine"] > 0.99
