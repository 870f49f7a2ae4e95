"""The command line on the tiny BERT: train -> label -> index -> search -> eval, JSON output, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cli_run import run_cli as _run

from longdoc.cli import main, safe_text

FILLER = "the a of to and in is it for on with as by at from that this be are was or not "
TOPICS = {"sport": "team player goal win", "tech": "device system library model", "news": "vote bank market report"}


def _write(path: Path, n: int, seed: int, extra: list[dict] | None = None) -> Path:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = list(TOPICS)[i % 3]
        text = f"{FILLER * int(rng.integers(1, 4))} {TOPICS[label]} {FILLER * int(rng.integers(1, 4))}"
        rows.append({"id": f"{path.stem}-{i}", "text": text, "label": label})
    rows += extra or []
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path




@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_model_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    ansi = {"id": "ansi", "label": "tech", "text": "device system \x1b[31mRED\x1b[0m library model \u202eevil"}
    paths = {
        "root": root,
        "train": _write(root / "train.jsonl", 30, 0),
        "test": _write(root / "test.jsonl", 12, 1, extra=[ansi]),
        "model": root / "model",
    }
    code = main(["train", str(paths["train"]), "--out", str(paths["model"]), "--model", str(tiny_model_dir),
                 "--max-length", "32", "--stride", "8", "--epochs", "3", "--batch-size", "8", "--eval-fraction",
                 "0.2", "--device", "cpu", "--quiet"])
    assert code == 0
    return paths


def test_train_json_output(workspace, tiny_model_dir, capsys, tmp_path):
    code, out, _ = _run(capsys, "train", str(workspace["train"]), "--out", str(tmp_path / "m"), "--model",
                        str(tiny_model_dir), "--max-length", "32", "--stride", "8", "--epochs", "1",
                        "--max-windows", "3", "--pooling", "mean", "--device", "cpu", "--quiet", "--json",
                        "--no-lexical")
    assert code == 0
    assert not (tmp_path / "m" / "lexical.json").exists()  # --no-lexical: the windows alone
    assert (workspace["model"] / "lexical.json").is_file()  # the default keeps the lexical branch
    data = json.loads(out)
    assert data["labels"] == sorted(TOPICS) and data["n_documents"] == 30 and len(data["history"]) == 1
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["window"] == {"max_length": 32, "stride": 8, "max_windows": 3}
    assert config["head"]["pooling"] == "mean"
    # 30 documents: fewer than 40, so no split was carved, whatever --eval-fraction says
    assert data["eval"] == {"source": "none", "documents": 0, "reason": "fewer than 40 training documents"}


def test_train_refuses_an_output_that_would_destroy_files(workspace, tiny_model_dir, capsys, tmp_path):
    """`train -o` replaces the whole directory: a folder holding the training data, or the data file itself,
    is refused before any training (exit 2, naming --out), and nothing is touched."""
    project = tmp_path / "project"
    project.mkdir()
    docs = project / "train.jsonl"
    docs.write_bytes(workspace["train"].read_bytes())
    common = ["--model", str(tiny_model_dir), "--max-length", "32", "--stride", "8", "--epochs", "1", "--device",
              "cpu", "--quiet"]
    for out in (project, docs):
        code, out_text, err = _run(capsys, "train", str(docs), "--out", str(out), *common)
        assert code == 2, err
        assert "--out=" in err and str(out) in err
    assert sorted(p.name for p in project.iterdir()) == ["train.jsonl"]
    assert docs.read_bytes() == workspace["train"].read_bytes()
    # checkpoints inside --out would make it a folder that is not a model, refused at the save after training
    code, _, err = _run(capsys, "train", str(docs), "--out", str(tmp_path / "m"), "--checkpoint-dir",
                        str(tmp_path / "m" / "ckpt"), *common)
    assert code == 2 and "--checkpoint-dir=" in err and "inside --out=" in err


def test_train_reports_the_validation_documents_it_used(workspace, tiny_model_dir, capsys, tmp_path):
    docs = _write(tmp_path / "many.jsonl", 45, 3)
    common = ["--model", str(tiny_model_dir), "--max-length", "32", "--stride", "8", "--epochs", "1",
              "--no-lexical", "--device", "cpu", "--quiet", "--json"]
    code, out, _ = _run(capsys, "train", str(docs), "--out", str(tmp_path / "a"), "--eval-fraction", "0.2", *common)
    assert code == 0
    # a stratified split: 20% of each label's 15 documents
    assert json.loads(out)["eval"] == {"source": "held_out", "documents": 9, "eval_fraction": 0.2}
    code, out, _ = _run(capsys, "train", str(docs), "--out", str(tmp_path / "b"), "--eval", str(workspace["test"]),
                        *common)
    assert code == 0
    assert json.loads(out)["eval"] == {"source": "--eval", "file": str(workspace["test"]), "documents": 13}


def test_label_index_search_eval(workspace, capsys):
    model, test, root = str(workspace["model"]), str(workspace["test"]), workspace["root"]

    code, out, _ = _run(capsys, "label", model, test, "--out", str(root / "labels"), "--chunk-size", "5", "--quiet",
                        "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["n_labelled"] == 13 and summary["n_parts"] == 3

    code, out, _ = _run(capsys, "index", model, test, "--out", str(root / "index"), "--quiet", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["added"] == 13 and data["encoded"] == 13 and data["documents"] == 13
    code, out, _ = _run(capsys, "index", model, test, "--out", str(root / "index"), "--quiet", "--json")
    assert code == 0 and json.loads(out)["unchanged"] == 13 and json.loads(out)["encoded"] == 0

    code, out, _ = _run(capsys, "search", str(root / "index"), "team player goal", "vote bank", "--model", model,
                        "--k", "2", "--label", "sport", "--label", "news", "--quiet", "--json")
    assert code == 0
    results = json.loads(out)
    assert [r["query"] for r in results] == ["team player goal", "vote bank"]
    assert all(1 <= len(r["hits"]) <= 2 for r in results)
    assert all(set(h["labels"]) & {"sport", "news"} for r in results for h in r["hits"])
    assert {"score", "doc_id", "char_start", "char_end", "text", "rank"} <= set(results[0]["hits"][0])

    code, out, _ = _run(capsys, "search", str(root / "index"), "RED library", "--model", model, "--k", "13",
                        "--mode", "hybrid", "--quiet")
    assert code == 0
    assert "ansi" in out and "\x1b" not in out and "\u202e" not in out
    assert "\\x1b[31mRED\\x1b[0m" in out and "\\u202e" in out
    code, out, _ = _run(capsys, "search", str(root / "index"), "RED library", "--model", model, "--k", "13",
                        "--mode", "hybrid", "--quiet", "--json")
    texts = [h["text"] for h in json.loads(out)[0]["hits"]]
    assert any("\x1b[31mRED" in t for t in texts)  # JSON carries the data itself, escaped by JSON

    png = root / "cm.png"
    code, out, _ = _run(capsys, "eval", model, test, "--confusion-png", str(png), "--quiet")
    assert code == 0 and "accuracy" in out and "macro avg" in out and png.is_file()
    code, out, _ = _run(capsys, "eval", model, test, "--baselines", "first512", "tfidf", "--train",
                        str(workspace["train"]), "--quiet", "--json")
    assert code == 0
    data = json.loads(out)
    assert 0 <= data["report"]["accuracy"] <= 1
    assert [r["method"] for r in data["comparison"]] == ["model", "first512", "tfidf"]
    from longdoc.classifier import LongDocClassifier
    from longdoc.data import load_documents

    saved = LongDocClassifier.load(model, device="cpu").evaluate(load_documents(test))  # the saved model, scored apart
    first = data["comparison"][0]
    assert (first["accuracy"], first["macro_f1"]) == (pytest.approx(saved["accuracy"]), pytest.approx(saved["macro_f1"]))
    assert data["report"]["macro_f1"] == pytest.approx(saved["macro_f1"])
    assert data["difference"]["model"] == "model" and data["difference"]["baseline"] in {"first512", "tfidf"}
    assert len(data["runs"]) == 3

    code, out, _ = _run(capsys, "eval", model, test, "--baselines", "tfidf", "head_tail", "--train",
                        str(workspace["train"]), "--seeds", "2", "--quiet")
    assert code == 0
    table = out[out.index("the saved model"):].splitlines()
    assert table[1].split() == ["method", "runs", "accuracy", "macro_f1"]
    assert table[3].split() == ["model", "1", f"{saved['accuracy']:.4f}", f"{saved['macro_f1']:.4f}"]  # scored once
    assert [line.split()[0] for line in table[4:6]] == ["head_tail", "tfidf"] and "+-" in table[4]
    assert table[5].split()[1] == "1" and "+-" not in table[5]  # tfidf: no random state, one fixed score
    assert "model, tfidf: fixed scores (no seed changes them" in out
    difference = out.splitlines()[-1]
    assert difference.startswith("model - ") and "[" not in difference  # never a zero-width interval
    assert ("2 paired runs" in difference if "head_tail (best" in difference
            else "both fixed scores, which no seed changes" in difference and "one split: no interval" in difference)
    code, out, _ = _run(capsys, "eval", model, test, "--baselines", "tfidf", "head_tail", "--train",
                        str(workspace["train"]), "--seeds", "2", "--quiet", "--json")
    data = json.loads(out)
    assert code == 0 and [r["runs"] for r in data["comparison"]] == [1, 2, 1]
    assert data["comparison"][2]["macro_f1_ci"] is None and data["notes"][0].startswith("model, tfidf: fixed scores")


def test_bad_input_exits_2(workspace, capsys, tmp_path):
    model, train = str(workspace["model"]), str(workspace["train"])
    code, _, err = _run(capsys, "label", model, train, "--out", str(tmp_path / "l"), "--text-column", "body", "--quiet")
    assert code == 2 and "body" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    code, _, err = _run(capsys, "train", train, "--out", str(tmp_path / "m"), "--epochs", "zero")
    assert code == 2 and "--epochs" in err
    code, _, err = _run(capsys, "train", train, "--out", str(tmp_path / "m"), "--max-length", "64", "--stride", "70",
                        "--quiet")
    assert code == 2 and "stride" in err
    code, _, _ = _run(capsys, "search", "x", "q", "--k", "0")
    assert code == 2
    code, _, err = _run(capsys, "index", model, str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "i"), "--quiet")
    assert code == 2 and "not found" in err
    code, _, _ = _run(capsys, "nonsense")
    assert code == 2
    code, _, err = _run(capsys, "eval", model, train, "--baselines", "--quiet")
    assert code == 2 and "--train" in err


def test_load_errors_exit_3(workspace, capsys, tmp_path):
    bad = tmp_path / "bad_model"
    bad.mkdir()
    code, _, err = _run(capsys, "eval", str(bad), str(workspace["train"]), "--quiet")
    assert code == 3 and "config.json" in err and "Traceback" not in err
    (bad / "config.json").write_text("{not json")
    code, _, err = _run(capsys, "label", str(bad), str(workspace["train"]), "--out", str(tmp_path / "l"), "--quiet")
    assert code == 3
    code, _, err = _run(capsys, "search", str(tmp_path), "query", "--model", str(workspace["model"]), "--quiet")
    assert code == 3 and "manifest.json" in err


def test_debug_prints_a_traceback(workspace, capsys, tmp_path):
    code, _, err = _run(capsys, "eval", str(tmp_path), str(workspace["train"]), "--debug")
    assert code == 3 and "Traceback" in err


def test_safe_text():
    assert safe_text("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert safe_text("line1\nline2\t x") == "line1 line2 x"
    assert safe_text("bidi\u202eX\u200b") == "bidi\\u202eX\\u200b"
    assert safe_text("keep\nlines", one_line=False) == "keep\nlines"
    assert safe_text("x" * 50, max_chars=10) == "xxxxxxx..."
    assert safe_text("\x7f\x9b") == "\\x7f\\x9b"


@pytest.mark.slow
def test_demo_quick_runs_end_to_end(tiny_model_dir, capsys, tmp_path):
    if not Path("/usr/share/man/man1").is_dir():
        pytest.skip("the demo reads the machine's man pages; /usr/share/man/man1 is absent")
    code, out, err = _run(capsys, "demo", "--quick", "--model", str(tiny_model_dir), "--out", str(tmp_path / "demo"),
                          "--baselines", "tfidf", "--no-bf16", "--device", "cpu", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert [r["method"] for r in data["table"]] == ["model", "tfidf"]
    assert data["window"]["stride"] == 16 and data["difference"]["baseline"] == "tfidf"
    assert data["answers"] and data["explain"]["windows"]
    assert (tmp_path / "demo" / "model" / "config.json").is_file()
    assert (tmp_path / "demo" / "index" / "manifest.json").is_file()
    assert "index" in err and "total" in err  # the narration went to stderr
    assert " INFO " not in err and "epoch 1" not in err and "macro avg" not in err  # quiet by default
    lines = err[err.index("the model, then the baselines"):].splitlines()
    assert lines[1].split() == ["method", "accuracy", "macro_f1"] and lines[3].split()[0] == "model"
    assert "epoch 1/2" not in err  # no per-epoch progress bar either
    code, out, err = _run(capsys, "demo", "--quick", "--model", str(tiny_model_dir), "--out", str(tmp_path / "v"),
                          "--baselines", "tfidf", "--no-bf16", "--device", "cpu", "--verbose")
    assert code == 0, err
    assert " INFO longdoc.training: epoch 1:" in err and "macro avg" in out  # --verbose: the logs and the report


def test_schema_invalid_model_config_exits_3(workspace, capsys, tmp_path):
    import json
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(workspace["model"], broken)
    config = json.loads((broken / "config.json").read_text())
    del config["head"]
    (broken / "config.json").write_text(json.dumps(config))
    code, _, err = _run(capsys, "label", str(broken), str(workspace["test"]), "--out", str(tmp_path / "l"), "--quiet")
    assert code == 3 and "config" in err


def test_second_index_writer_fails_before_encoding(workspace, capsys, tmp_path):
    from indexer import PassageIndex

    out = tmp_path / "index"
    assert _run(capsys, "index", str(workspace["model"]), str(workspace["test"]), "--out", str(out), "--quiet")[0] == 0
    holder = PassageIndex.load(out, lock=True)  # another writer holds the directory
    try:
        code, _, err = _run(capsys, "index", str(workspace["model"]), str(workspace["train"]), "--out", str(out),
                            "--quiet")
        assert code != 0 and "locked" in err
    finally:
        holder.close()
    assert _run(capsys, "index", str(workspace["model"]), str(workspace["train"]), "--out", str(out), "--quiet")[0] == 0


def test_train_flags_mirror_train_config():
    import dataclasses

    from longdoc.cli import build_parser
    from longdoc.training import TrainConfig

    args = build_parser().parse_args(["train", "docs.jsonl", "-o", "m", "--grad-accum", "3", "--no-calibrate",
                                      "--class-weights", "balanced", "--seed", "0"])
    from longdoc.cli import _train_config

    config = _train_config(args)
    assert (config.grad_accum, config.calibrate, config.class_weights, config.seed) == (3, False, "balanced", 0)
    assert {f.name for f in dataclasses.fields(TrainConfig)} <= set(vars(args))
