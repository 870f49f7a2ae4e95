"""Hostile and careless input, round 2 (issue 14): real files, the real tiny tokenizer and model, no mocks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from longdoc.classifier import LongDocClassifier
from longdoc.cli import main
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


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


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
