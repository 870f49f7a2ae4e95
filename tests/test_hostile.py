"""Hostile and careless input, round 2 (issue 14): real files, the real tiny tokenizer and model, no mocks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from cli_run import finishing_swap, swap_half_done
from cli_run import run_cli as _run

from longdoc.classifier import LongDocClassifier
from longdoc.errors import ModelLoadError
from longdoc.training import TrainConfig
from longdoc.windows import WindowConfig

REPO = Path(__file__).resolve().parents[1]
TEXTS = ["file mode bits change user group", "index search query document report"]


@pytest.fixture(scope="module")
def saved_model(tiny_model_dir, tmp_path_factory) -> Path:
    clf = LongDocClassifier.from_encoder(tiny_model_dir, labels=["a", "b"], window=WindowConfig(max_length=32, stride=8),
                                         device="cpu")
    clf.fit(TEXTS * 4, ["a", "b"] * 4, args=TrainConfig(epochs=1))
    path = tmp_path_factory.mktemp("model") / "m"
    clf.save(path)
    return path


@pytest.fixture(scope="module")
def docs_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("docs") / "docs.jsonl"
    rows = [{"id": f"d{i}", "text": TEXTS[i % 2], "label": "ab"[i % 2]} for i in range(6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path




def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# --------------------------------------------------------------------------------------------------- 1: remote code


def _make_evil(encoder: Path, marker: Path) -> None:
    """Turn a checkpoint into one that asks for remote code: ``auto_map``, no ``model_type``, and an ``evil.py``
    that writes ``marker`` when it is imported."""
    config = json.loads((encoder / "config.json").read_text())
    config.pop("model_type", None)
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel",
                          "AutoTokenizer": [None, "evil.EvilTokenizer"]}
    (encoder / "config.json").write_text(json.dumps(config))
    tok = json.loads((encoder / "tokenizer_config.json").read_text())
    tok.pop("tokenizer_class", None)
    tok["auto_map"] = {"AutoTokenizer": [None, "evil.EvilTokenizer"]}
    (encoder / "tokenizer_config.json").write_text(json.dumps(tok))
    (encoder / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import BertConfig as EvilConfig, BertModel as EvilModel\n"
        "from transformers import BertTokenizerFast as EvilTokenizer\n"
    )


def test_remote_code_directory_is_refused_without_a_prompt(saved_model, docs_file, tmp_path):
    model = _copy(saved_model, tmp_path / "evil")
    marker = tmp_path / "MARKER"
    _make_evil(model / "encoder", marker)
    answer = tmp_path / "stdin.txt"
    answer.write_text("y\n" * 10)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    with open(answer) as stdin:  # a real file: its offset, shared with the child, shows whether it was read
        proc = subprocess.run([sys.executable, "-m", "longdoc.cli", "eval", str(model), str(docs_file), "--device",
                               "cpu", "--quiet"], stdin=stdin, capture_output=True, text=True, env=env, timeout=300)
        consumed = os.lseek(stdin.fileno(), 0, os.SEEK_CUR)
    assert not marker.exists(), "the model directory's code ran"
    assert consumed == 0, "something read stdin (a prompt)"
    assert proc.returncode == 3, proc.stderr
    assert "remote code" in proc.stderr and "custom code" not in proc.stderr


def test_remote_code_encoder_is_refused_by_the_api(tiny_model_dir, tmp_path):
    from longdoc.encoder import WindowEncoder

    encoder = _copy(tiny_model_dir, tmp_path / "enc")
    marker = tmp_path / "MARKER"
    _make_evil(encoder, marker)
    with pytest.raises(ModelLoadError, match="remote code"):
        WindowEncoder(encoder, device="cpu")
    assert not marker.exists()


def test_every_from_pretrained_passes_trust_remote_code_false():
    import ast

    calls = 0
    for path in [*REPO.glob("longdoc/*.py"), *REPO.glob("indexer/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "from_pretrained":
                calls += 1
                given = {k.arg: k.value for k in node.keywords}
                value = given.get("trust_remote_code")
                assert isinstance(value, ast.Constant) and value.value is False, f"{path.name}:{node.lineno}"
    assert calls >= 3


# --------------------------------------------------------------------------------------------------- 7: weights outside


def test_weight_index_pointing_outside_is_refused(saved_model, docs_file, tmp_path, capsys):
    from safetensors import safe_open

    model = _copy(saved_model, tmp_path / "m")
    outside = tmp_path / "outside"
    outside.mkdir()
    weights = model / "encoder" / "model.safetensors"
    with safe_open(weights, "pt") as f:
        names = list(f.keys())
    shutil.move(weights, outside / "model.safetensors")
    (model / "encoder" / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": dict.fromkeys(names, "../../outside/model.safetensors")}))
    with pytest.raises(ModelLoadError, match="outside"):
        LongDocClassifier.load(model, device="cpu")
    code, _, err = _run(capsys, "eval", str(model), str(docs_file), "--device", "cpu", "--quiet")
    assert code == 3 and "outside" in err


# --------------------------------------------------------------------------------------------------- 4: saving via a link


def _leftovers(*dirs: Path) -> list[str]:
    return sorted(p.name for d in dirs for p in d.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def test_train_into_a_symbolic_link_saves_into_its_target(saved_model, docs_file, tiny_model_dir, tmp_path, capsys):
    real = _copy(saved_model, tmp_path / "real")
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    before = (real / "head.safetensors").read_bytes()
    code, _, err = _run(capsys, "train", str(docs_file), "-o", str(link), "--model", str(tiny_model_dir),
                        "--max-length", "32", "--stride", "8", "--epochs", "1", "--seed", "7", "--device", "cpu",
                        "--quiet")
    assert code == 0, err
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert (real / "head.safetensors").read_bytes() != before  # the new model is in the link's target
    assert _leftovers(tmp_path) == []
    LongDocClassifier.load(link, device="cpu")


def test_index_into_a_symbolic_link_updates_its_target(saved_model, docs_file, tmp_path, capsys):
    from indexer import PassageIndex

    real = tmp_path / "real"
    assert _run(capsys, "index", str(saved_model), str(docs_file), "-o", str(real), "--quiet")[0] == 0
    more = tmp_path / "more.jsonl"
    more.write_text(json.dumps({"id": "new", "text": "vote bank market", "label": "a"}) + "\n")
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    code, _, err = _run(capsys, "index", str(saved_model), str(more), "-o", str(link), "--quiet")
    assert code == 0, err
    assert link.is_symlink() and _leftovers(tmp_path) == []
    index = PassageIndex.load(real)
    assert "new" in index.doc_ids and "d0" in index.doc_ids


def test_label_into_a_symbolic_link_writes_into_its_target(saved_model, docs_file, tmp_path, capsys):
    from longdoc.labeling import read_labels

    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    code, _, err = _run(capsys, "label", str(saved_model), str(docs_file), "-o", str(link), "--quiet")
    assert code == 0, err
    assert link.is_symlink() and _leftovers(tmp_path, real) == []
    assert read_labels(real).height == 6


def test_a_dangling_link_is_saved_through(saved_model, docs_file, tmp_path, capsys):
    from longdoc.labeling import read_labels

    link = tmp_path / "link"
    link.symlink_to(tmp_path / "real", target_is_directory=True)  # the target does not exist yet
    code, _, err = _run(capsys, "label", str(saved_model), str(docs_file), "-o", str(link), "--quiet")
    assert code == 0, err
    assert link.is_symlink() and read_labels(tmp_path / "real").height == 6


# --------------------------------------------------------------------------------------------------- 8: sharded links


@pytest.fixture
def sharded(tmp_path) -> Path:
    import numpy as np

    from indexer import ShardedPassageIndex

    rng = np.random.default_rng(0)
    index = ShardedPassageIndex(8, shards=2)
    n = 6
    import polars as pl

    index.add(rng.normal(size=(n, 8)).astype(np.float32), pl.DataFrame({
        "doc_id": [f"d{i}" for i in range(n)], "window_index": [0] * n, "char_start": [0] * n, "char_end": [6] * n,
        "text": [f"text {i}" for i in range(n)]}))
    path = tmp_path / "sharded"
    index.save(path)
    index.close()
    return path


def test_sharded_index_refuses_a_linked_shard(sharded, tmp_path):
    from indexer.errors import IndexLoadError
    from indexer.sharded import ShardedPassageIndex

    outside = tmp_path / "outside-shard"
    shutil.move(sharded / "shard-00001", outside)
    (sharded / "shard-00001").symlink_to(outside, target_is_directory=True)
    with pytest.raises(IndexLoadError, match="symbolic link"):
        ShardedPassageIndex.load(sharded)


def test_sharded_index_refuses_a_linked_manifest(sharded, tmp_path):
    from indexer.errors import IndexLoadError
    from indexer.sharded import ShardedPassageIndex

    outside = tmp_path / "outside-manifest.json"
    shutil.move(sharded / "manifest.json", outside)
    (sharded / "manifest.json").symlink_to(outside)
    with pytest.raises(IndexLoadError, match="symbolic link"):
        ShardedPassageIndex.load(sharded)


def test_plain_and_sharded_indexes_both_load_through_a_linked_top_directory(sharded, tmp_path):
    from indexer.sharded import load_index

    link = tmp_path / "link"
    link.symlink_to(sharded, target_is_directory=True)
    assert len(load_index(link)) == 6
    assert len(load_index(link / "shard-00000")) + len(load_index(sharded / "shard-00001")) == 6


# --------------------------------------------------------------------------------------------------- 5: lone surrogates


@pytest.fixture(scope="module")
def surrogate_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sur") / "sur.jsonl"
    rows = [{"id": "a", "text": TEXTS[0], "label": "a"}, {"id": "bad", "text": "caf\ud800 file mode", "label": "b"},
            {"id": "c", "text": TEXTS[1], "label": "b"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))  # json.dumps writes the "\ud800" escape
    assert "\\ud800" in path.read_text()
    return path


def test_a_lone_surrogate_does_not_cost_the_other_rows_their_labels(saved_model, surrogate_file, tmp_path, capsys):
    from longdoc.labeling import read_labels

    code, _, err = _run(capsys, "label", str(saved_model), str(surrogate_file), "-o", str(tmp_path / "l"), "--quiet")
    assert code == 0, err
    rows = {r["doc_id"]: r for r in read_labels(tmp_path / "l").to_dicts()}
    assert sorted(rows) == ["a", "bad", "c"]
    assert all(rows[d]["label"] is not None and rows[d]["error"] is None for d in rows)
    assert "surrogate" in rows["bad"]["warning"] and rows["a"]["warning"] is None


def test_a_lone_surrogate_does_not_stop_indexing(saved_model, surrogate_file, tmp_path, capsys):
    from indexer import PassageIndex

    code, _, err = _run(capsys, "index", str(saved_model), str(surrogate_file), "-o", str(tmp_path / "i"), "--quiet")
    assert code == 0, err
    index = PassageIndex.load(tmp_path / "i")
    assert set(index.doc_ids) == {"a", "bad", "c"}
    assert "caf\ufffd" in " ".join(index.passages["text"].to_list())


def test_a_query_with_a_non_utf8_byte_exits_2(saved_model, docs_file, tmp_path, capsys):
    assert _run(capsys, "index", str(saved_model), str(docs_file), "-o", str(tmp_path / "i"), "--quiet")[0] == 0
    query = os.fsdecode(b"caf\xe9")  # what Python makes of the argv byte (surrogateescape)
    code, _, err = _run(capsys, "search", str(tmp_path / "i"), query, "--model", str(saved_model), "--quiet")
    assert code == 2 and "QUERY" in err and "UTF-8" in err and "0xe9" in err
    code, _, err = _run(capsys, "search", str(tmp_path / "i"), "caf\ud800", "--model", str(saved_model), "--quiet")
    assert code == 2 and "QUERY" in err


def test_the_encoder_names_a_text_with_a_lone_surrogate(tiny_model_dir):
    from longdoc.encoder import WindowEncoder
    from longdoc.errors import ConfigError

    with pytest.raises(ConfigError, match=r"texts\[1\].*surrogate"):
        WindowEncoder(tiny_model_dir, device="cpu").encode(["fine", "caf\ud800"])


# --------------------------------------------------------------------------------------------------- 6: list<str> text


def test_a_list_of_strings_text_column_is_joined_not_printed(tmp_path, caplog):
    import polars as pl

    from longdoc import data
    from longdoc.data import load_documents

    data._WARNED.clear()  # the warning is logged once per process
    words = [f"word{i}" for i in range(200)]
    path = tmp_path / "lists.parquet"
    pl.DataFrame({"id": ["x", "y"], "text": [words, ["only", None, "two"]], "label": ["a", "b"]}).write_parquet(path)
    with caplog.at_level("WARNING", logger="longdoc"):
        docs = load_documents(path)
    assert docs["text"].to_list() == ["\n".join(words), "only\ntwo"]
    assert all("joined with newlines" in w for w in docs["warning"].to_list())
    assert any("joined with newlines" in r.getMessage() for r in caplog.records)


def test_a_list_of_lists_text_column_exits_2(saved_model, tmp_path, capsys):
    import polars as pl

    path = tmp_path / "nested.parquet"
    pl.DataFrame({"id": ["x"], "text": [[["a", "b"]]], "label": ["a"]}).write_parquet(path)
    code, _, err = _run(capsys, "label", str(saved_model), str(path), "-o", str(tmp_path / "l"), "--quiet")
    assert code == 2 and "'text'" in err and "list" in err.lower()


# --------------------------------------------------------------------------------------------------- 2: one label writer


def test_two_label_runs_into_one_directory(saved_model, docs_file, surrogate_file, tmp_path, capsys):
    from longdoc.label_core import LabelRun
    from longdoc.labeling import read_labels

    out = tmp_path / "out"
    first = LabelRun(LongDocClassifier.load(saved_model, device="cpu"), out, retry_failed=True)  # a run in progress
    try:
        code, _, err = _run(capsys, "label", str(saved_model), str(surrogate_file), "-o", str(out), "--quiet")
        assert code == 1 and "labels directory" in err and "locked" in err and "another writer" in err
        assert "PassageIndex" not in err and "close()" not in err
    finally:
        first.close()
    assert read_labels(out).height == 0  # the second run wrote nothing
    assert _run(capsys, "label", str(saved_model), str(docs_file), "-o", str(out), "--quiet")[0] == 0
    assert _run(capsys, "label", str(saved_model), str(surrogate_file), "-o", str(out), "--quiet")[0] == 0
    assert read_labels(out).height == 9  # both runs' rows, once the first has finished


# --------------------------------------------------------------------------------------------------- 3: checkpoints


def _train_with_checkpoint(tiny_model_dir, ckpt, texts, labels, *, label_names=("a", "b"), max_length=32, epochs=2):
    clf = LongDocClassifier.from_encoder(tiny_model_dir, labels=list(label_names),
                                         window=WindowConfig(max_length=max_length, stride=8), device="cpu")
    return clf.fit(texts, labels, args=TrainConfig(epochs=epochs, checkpoint_dir=str(ckpt)))


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"texts": [t + " more" for t in TEXTS * 4]}, "training data"),
        ({"label_names": ("x", "y"), "labels": ["x", "y"] * 4}, "labels"),
        ({"max_length": 24}, "window"),
    ],
)
def test_a_checkpoint_of_another_run_is_refused_naming_what_differs(tiny_model_dir, tmp_path, change, needle):
    from longdoc.errors import ConfigError

    ckpt = tmp_path / "ckpt"
    _train_with_checkpoint(tiny_model_dir, ckpt, TEXTS * 4, ["a", "b"] * 4)
    kwargs = {"texts": TEXTS * 4, "labels": ["a", "b"] * 4, **change}
    with pytest.raises(ConfigError, match=f"another run.*{needle}"):
        _train_with_checkpoint(tiny_model_dir, ckpt, **kwargs)


def test_a_checkpoint_of_another_encoder_is_refused(tiny_model_dir, tmp_path):
    import torch
    from transformers import BertModel

    from longdoc.errors import ConfigError

    other = _copy(tiny_model_dir, tmp_path / "other")
    model = BertModel.from_pretrained(other, trust_remote_code=False)
    with torch.no_grad():
        model.embeddings.word_embeddings.weight.add_(1.0)
    model.save_pretrained(other)
    ckpt = tmp_path / "ckpt"
    _train_with_checkpoint(tiny_model_dir, ckpt, TEXTS * 4, ["a", "b"] * 4)
    with pytest.raises(ConfigError, match="encoder"):
        _train_with_checkpoint(other, ckpt, TEXTS * 4, ["a", "b"] * 4)


def test_the_same_run_still_resumes(tiny_model_dir, tmp_path):
    ckpt = tmp_path / "ckpt"
    _train_with_checkpoint(tiny_model_dir, ckpt, TEXTS * 4, ["a", "b"] * 4, epochs=1)
    clf = _train_with_checkpoint(tiny_model_dir, ckpt, TEXTS * 4, ["a", "b"] * 4, epochs=2)
    assert [r["epoch"] for r in clf.history] == [1, 2]  # epoch 1 came from the checkpoint, its record too


def test_the_cli_exits_2_for_a_checkpoint_of_another_run(docs_file, tiny_model_dir, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    _train_with_checkpoint(tiny_model_dir, ckpt, TEXTS * 4, ["a", "b"] * 4)
    code, _, err = _run(capsys, "train", str(docs_file), "-o", str(tmp_path / "m"), "--model", str(tiny_model_dir),
                        "--max-length", "32", "--stride", "8", "--epochs", "2", "--checkpoint-dir", str(ckpt),
                        "--device", "cpu", "--quiet")
    assert code == 2 and "another run" in err and "training data" in err
    assert not (tmp_path / "m").exists()


# --------------------------------------------------------------------------------------------------- 10: damaged config


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda c: c["window"].update(max_length=4096), "max_length"),
        (lambda c: c["encoder"].update(pooling="median"), "pooling"),
        (lambda c: c.update(temperature=0), "temperature"),
        (lambda c: c.update(temperature=float("nan")), "temperature"),
    ],
)
def test_a_damaged_model_config_exits_3(saved_model, docs_file, tmp_path, capsys, edit, needle):
    model = _copy(saved_model, tmp_path / "m")
    config = json.loads((model / "config.json").read_text())
    edit(config)
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=needle):
        LongDocClassifier.load(model, device="cpu")
    code, _, err = _run(capsys, "eval", str(model), str(docs_file), "--device", "cpu", "--quiet")
    assert code == 3 and needle in err


# --------------------------------------------------------------------------------------------------- misleading messages


def test_an_empty_input_file_says_so(saved_model, tiny_model_dir, tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, _, err = _run(capsys, "train", str(empty), "-o", str(tmp_path / "m"), "--model", str(tiny_model_dir),
                        "--quiet")
    assert code == 2 and "holds no documents" in err and "label" not in err.split("error:")[1]
    code, _, err = _run(capsys, "eval", str(saved_model), str(empty), "--device", "cpu", "--quiet")
    assert code == 2 and "holds no documents" in err


def test_eval_on_unlabelled_documents_does_not_call_them_training_documents(saved_model, tmp_path, capsys):
    path = tmp_path / "unlabelled.jsonl"
    path.write_text("".join(json.dumps({"id": f"u{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    code, _, err = _run(capsys, "eval", str(saved_model), str(path), "--device", "cpu", "--quiet")
    assert code == 2 and "2 documents have no label" in err and "training" not in err
    assert "--label-column" in err and "label_column=" not in err and "labels=" not in err


def test_training_on_a_mapping_as_label_says_why_the_document_has_no_label(tiny_model_dir, tmp_path, capsys):
    path = tmp_path / "train.jsonl"
    rows = [{"id": f"d{i}", "text": t, "label": "x" if i % 2 else "y"} for i, t in enumerate(TEXTS * 2)]
    rows[1]["label"] = {"section": 1}
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, _, err = _run(capsys, "train", str(path), "-o", str(tmp_path / "m"), "--model", str(tiny_model_dir),
                        "--quiet")
    assert code == 2 and "1 documents have no label (e.g. ['d1']; 'label' was a mapping" in err
    assert "--label-column" in err and not (tmp_path / "m").exists()


def test_cli_messages_use_flags_not_api_spellings(saved_model, tiny_model_dir, tmp_path, capsys):
    from indexer import PassageIndex

    docs = tmp_path / "docs.jsonl"
    docs.write_text(json.dumps({"id": "a", "body": "file mode", "label": "a"}) + "\n")
    code, _, err = _run(capsys, "train", str(docs), "-o", str(tmp_path / "m"), "--model", str(tiny_model_dir),
                        "--text-column", "text", "--quiet")
    assert code == 2 and "--text-column" in err and "text_column=" not in err
    multi = tmp_path / "multi.jsonl"
    multi.write_text("".join(json.dumps({"id": f"{i}", "text": t, "labels": ["a", "b"]}) + "\n"
                             for i, t in enumerate(TEXTS)))
    code, _, err = _run(capsys, "eval", str(saved_model), str(multi), "--device", "cpu", "--quiet")
    assert code == 2 and "--multi-label" in err and "multi_label=" not in err
    out = tmp_path / "index"
    assert _run(capsys, "index", str(saved_model), str(docs_file_of(tmp_path)), "-o", str(out), "--quiet")[0] == 0
    holder = PassageIndex.load(out, lock=True)
    try:
        code, _, err = _run(capsys, "index", str(saved_model), str(docs_file_of(tmp_path)), "-o", str(out), "--quiet")
    finally:
        holder.close()
    assert code == 1 and "locked" in err and "close()" not in err and "lock=True" not in err


def docs_file_of(tmp_path: Path) -> Path:
    path = tmp_path / "plain.jsonl"
    path.write_text("".join(json.dumps({"id": f"p{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    return path


def test_a_broken_line_can_be_kept_from_the_command_line(saved_model, tiny_model_dir, tmp_path, capsys):
    from indexer import PassageIndex

    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps({"id": "a", "text": TEXTS[0], "label": "a"}) + "\nnot json\n"
                    + json.dumps({"id": "b", "text": TEXTS[1], "label": "b"}) + "\n")
    code, _, err = _run(capsys, "index", str(saved_model), str(path), "-o", str(tmp_path / "i"), "--quiet")
    assert code == 2 and "--on-bad-line warn" in err and "on_bad_line=" not in err
    code, _, err = _run(capsys, "index", str(saved_model), str(path), "-o", str(tmp_path / "i"), "--quiet",
                        "--on-bad-line", "warn")
    assert code == 0, err
    assert set(PassageIndex.load(tmp_path / "i").doc_ids) == {"a", "b"}


def test_index_says_built_for_a_new_index_and_updated_after(saved_model, docs_file, tmp_path, capsys):
    out = tmp_path / "i"
    code, stdout, _ = _run(capsys, "index", str(saved_model), str(docs_file), "-o", str(out), "--quiet")
    assert code == 0 and stdout.startswith("built ")
    code, stdout, _ = _run(capsys, "index", str(saved_model), str(docs_file), "-o", str(out), "--quiet")
    assert code == 0 and stdout.startswith("updated ")


@pytest.mark.parametrize("mode", ["dense", "hybrid"])
@pytest.mark.parametrize("query", ["", "   \t", "\x00\u200b\u2060", "\u202e\ufeff "])  # invisible: as blank
def test_an_empty_or_blank_query_is_refused(saved_model, docs_file, tmp_path, capsys, mode, query):
    from indexer.errors import IndexInputError
    from indexer.sharded import load_index
    from longdoc.cli import load_query_encoder

    out = tmp_path / "i"
    assert _run(capsys, "index", str(saved_model), str(docs_file), "-o", str(out), "--quiet")[0] == 0
    index = load_index(out, encoder=load_query_encoder(str(saved_model), device="cpu"))
    with pytest.raises(IndexInputError, match="query.*empty or only whitespace"):
        index.search(query, mode=mode)
    with pytest.raises(IndexInputError, match=r"query\[1\]"):
        index.search(["file mode", query], mode=mode)
    code, _, err = _run(capsys, "search", str(out), query, "--model", str(saved_model), "--mode", mode, "--quiet")
    assert code == 2 and "query" in err and "whitespace" in err


def test_model_and_checkpoint_directories_respect_the_umask(tiny_model_dir, tmp_path):
    import stat

    old = os.umask(0o022)
    try:
        clf = _train_with_checkpoint(tiny_model_dir, tmp_path / "ckpt", TEXTS * 4, ["a", "b"] * 4, epochs=1)
        clf.save(tmp_path / "m")
    finally:
        os.umask(old)
    for path in (tmp_path / "m", tmp_path / "m" / "encoder", tmp_path / "ckpt" / "checkpoint"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o755, path


def test_empty_documents_are_not_counted_as_added_on_every_run(saved_model, tmp_path, capsys):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [{"id": "a", "text": TEXTS[0]}, {"id": "e", "text": ""},
                                                            {"id": "w", "text": "  \n "}]))
    out = tmp_path / "i"
    for _ in range(2):
        code, stdout, _ = _run(capsys, "index", str(saved_model), str(path), "-o", str(out), "--quiet", "--json")
        assert code == 0
    counts = json.loads(stdout)
    assert counts["added"] == 0 and counts["unchanged"] == 1 and counts["empty"] == 2


def test_a_list_text_column_raises_no_polars_performance_warning(tmp_path):
    import warnings

    import polars as pl

    from longdoc.data import load_documents

    path = tmp_path / "lists.parquet"
    pl.DataFrame({"id": ["x"], "text": [["file", "mode"]], "label": ["a"]}).write_parquet(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # polars' PolarsInefficientMapWarning came through --quiet
        assert load_documents(path)["text"].to_list() == ["file\nmode"]


# --------------------------------------------------------------------------------------------------- 9: fallback swap


def test_the_next_writer_restores_an_index_left_mid_swap(saved_model, docs_file, tmp_path, capsys):
    from indexer import PassageIndex

    out = tmp_path / "i"
    assert _run(capsys, "index", str(saved_model), str(docs_file), "-o", str(out), "--quiet")[0] == 0
    swap_half_done(out)  # its writer died right there
    more = tmp_path / "more.jsonl"
    more.write_text(json.dumps({"id": "new", "text": "vote bank market", "label": "a"}) + "\n")
    code, stdout, err = _run(capsys, "index", str(saved_model), str(more), "-o", str(out), "--quiet")
    assert code == 0, err
    assert stdout.startswith("updated ")
    assert set(PassageIndex.load(out).doc_ids) == {f"d{i}" for i in range(6)} | {"new"}
    assert _leftovers(tmp_path) == []


def test_a_search_during_the_swap_waits_for_it(saved_model, docs_file, tmp_path, capsys):
    out = tmp_path / "i"
    assert _run(capsys, "index", str(saved_model), str(docs_file), "-o", str(out), "--quiet")[0] == 0
    with finishing_swap(out):
        code, stdout, err = _run(capsys, "search", str(out), "file mode", "--model", str(saved_model), "--quiet",
                                 "--json")
    assert code == 0, err
    assert json.loads(stdout)[0]["hits"]


# --------------------------------------------------------------------------------------------------- 11: a long document


def test_a_long_document_does_not_hold_the_short_ones_back(saved_model, tmp_path, caplog):
    import polars as pl

    from longdoc.labeling import label_documents, read_labels

    long_text = "file mode bits change user group " * 2000  # 66,000 characters, 1,400 windows of 32 tokens
    rows = [{"id": "long", "text": long_text}, *({"id": f"s{i}", "text": TEXTS[i % 2]} for i in range(3))]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    clf = LongDocClassifier.load(saved_model, device="cpu")
    with caplog.at_level("INFO", logger="longdoc"):
        summary = label_documents(clf, path, tmp_path / "out", chunk_size=2, show_progress_bar=False)
    parts = sorted((tmp_path / "out").glob("part-*.parquet"))
    ids = [pl.read_parquet(p)["doc_id"].to_list() for p in parts]
    assert ids == [["s0"], ["s1", "s2"], ["long"]]  # the short documents' rows came first
    labels = read_labels(tmp_path / "out")
    assert labels.height == 4 and labels["label"].null_count() == 0 and summary.n_labelled == 4
    assert any("long document 'long'" in r.getMessage() for r in caplog.records)
    again = label_documents(clf, path, tmp_path / "out", chunk_size=2, show_progress_bar=False)
    assert again.n_skipped == 4 and again.n_labelled == 0


def test_only_auto_map_is_remote_code(tiny_model_dir, tmp_path):
    """A config with a model_type and no auto_map loads; only one that maps classes to the directory's code is
    refused (a config without auto_map cannot make transformers import anything)."""
    from longdoc.encoder import WindowEncoder, check_checkpoint_directory

    encoder = _copy(tiny_model_dir, tmp_path / "enc")
    check_checkpoint_directory(encoder)
    assert WindowEncoder(encoder, device="cpu").dim == 32
    config = json.loads((encoder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling.Custom"}  # model_type kept: still asks for code
    (encoder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="remote code"):
        check_checkpoint_directory(encoder)


def test_a_lone_surrogate_in_a_key_costs_no_row(saved_model, tmp_path, capsys):
    from longdoc.labeling import read_labels

    path = tmp_path / "keys.jsonl"
    path.write_text(json.dumps({"id": "a", "text": TEXTS[0]}) + "\n"
                    + json.dumps({"id": "b", "text": TEXTS[1], "note\ud800": 1}) + "\n")
    code, _, err = _run(capsys, "label", str(saved_model), str(path), "-o", str(tmp_path / "l"), "--quiet")
    assert code == 0, err
    rows = {r["doc_id"]: r for r in read_labels(tmp_path / "l").to_dicts()}
    assert rows["a"]["label"] and rows["b"]["label"] and "key" in rows["b"]["warning"]


def test_label_into_a_file_or_through_a_second_path_to_a_locked_directory(saved_model, docs_file, tmp_path, capsys):
    from longdoc.label_core import LabelRun

    file = tmp_path / "file"
    file.write_text("x")
    code, _, err = _run(capsys, "label", str(saved_model), str(docs_file), "-o", str(file), "--quiet")
    assert code == 2 and "not a directory" in err and file.read_text() == "x"
    real = tmp_path / "real"
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    first = LabelRun(LongDocClassifier.load(saved_model, device="cpu"), real, retry_failed=True)
    try:  # the same directory through a link is the same writer lock
        code, _, err = _run(capsys, "label", str(saved_model), str(docs_file), "-o", str(link), "--quiet")
        assert code == 1 and "locked" in err
    finally:
        first.close()


def test_a_damaged_checkpoint_state_is_a_named_error(tiny_model_dir, tmp_path):
    from longdoc.errors import ConfigError

    ckpt = tmp_path / "ckpt"
    _train_with_checkpoint(tiny_model_dir, ckpt, TEXTS * 4, ["a", "b"] * 4, epochs=1)
    (ckpt / "checkpoint" / "state.json").write_bytes(b"{\xff not json")
    with pytest.raises(ConfigError, match="state.json is unreadable"):
        _train_with_checkpoint(tiny_model_dir, ckpt, TEXTS * 4, ["a", "b"] * 4, epochs=2)


def test_a_label_filter_with_a_non_utf8_byte_exits_2(saved_model, docs_file, tmp_path, capsys):
    assert _run(capsys, "index", str(saved_model), str(docs_file), "-o", str(tmp_path / "i"), "--quiet")[0] == 0
    code, _, err = _run(capsys, "search", str(tmp_path / "i"), "file", "--label", os.fsdecode(b"\xe9t\xe9"),
                        "--model", str(saved_model), "--quiet")
    assert code == 2 and "--label" in err and "0xe9" in err


def test_a_query_with_a_lone_surrogate_is_a_query_error(tiny_model_dir):
    from indexer import IndexInputError, PassageIndex
    from longdoc.encoder import WindowEncoder

    encoder = WindowEncoder(tiny_model_dir, device="cpu")
    passages = pl.DataFrame({"doc_id": ["a", "b"], "window_index": [0, 0], "char_start": [0, 0], "char_end": [9, 10],
                             "text": ["file mode", "news sport"]})
    index = PassageIndex.build(encoder.encode(passages["text"].to_list()), passages, encoder=encoder)
    with pytest.raises(IndexInputError, match=r"query is 'caf\\ud800'.*lone surrogate"):
        index.search("caf\ud800", k=1)
    with pytest.raises(IndexInputError, match=r"query\[1\].*lone surrogate"):
        index.search(["file", "caf\ud800"], k=1, mode="hybrid")
    assert index.search("caf\ufffd file", k=1)[0].doc_id in {"a", "b"}
