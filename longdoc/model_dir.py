"""A saved model directory's ``config.json``: its file names and the one reader (validation in one place).

A model directory (``LongDocClassifier.save``) holds ``config.json``, ``encoder/`` (a Hugging Face checkpoint plus
``longdoc_encoder.json``), ``head.safetensors`` and, as the config says, ``task_heads.safetensors`` and
``retrieval_encoder/``, and ``README.md``, the model card (``longdoc.model_card``), which is written for people and
never read. The window geometry is stored once, as ``config.json``'s ``"window"``. Directories saved
by earlier versions also carry it in ``config.json``'s ``"encoder"`` entry and in ``encoder/longdoc_encoder.json``;
those copies are still read, and a directory whose copies disagree is refused.

``config.json``'s optional ``"base_encoder"``, ``"training"`` and ``"evaluation"`` keys hold the facts of the model
card (what ``from_encoder`` started from, what the last ``fit`` did, the last ``evaluate`` figures); directories
saved before they existed load without them. When present they are checked like the rest.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longdoc.encoder import TOKEN_POOLINGS
from longdoc.errors import ConfigError, ModelLoadError
from longdoc.heads import HeadConfig
from longdoc.model_card import BASE_SOURCES, VALIDATION_SOURCES
from longdoc.windows import WindowConfig

__all__ = ["CONFIG", "ENCODER_SETTINGS", "FORMAT_VERSION", "MODEL_CARD", "ModelConfig", "TaskConfig", "check_save_target",
           "is_model_directory", "read_encoder_settings", "read_model_config", "write_model_config"]

FORMAT_VERSION = 1
CONFIG = "config.json"
#: The model card ``save`` writes (``longdoc.model_card``); ``load`` never reads it.
MODEL_CARD = "README.md"
#: The settings file ``WindowEncoder.save`` writes beside an encoder checkpoint.
ENCODER_SETTINGS = "longdoc_encoder.json"
_PARTS = ("encoder", "retrieval_encoder")


@dataclass(frozen=True)
class TaskConfig:
    """One extra task of a saved model (``config.json``'s ``"tasks"`` entry)."""

    labels: tuple[str, ...]
    column: str
    multi_label: bool
    head: HeadConfig
    temperature: float = 1.0
    thresholds: list[float] | None = None


@dataclass(frozen=True)
class ModelConfig:
    """A validated ``config.json`` of a model directory.

    ``retrieval_encoder`` names the part (``"encoder"`` or ``"retrieval_encoder"``) whose encoder makes the passage
    index's vectors; ``base_encoder``, ``training`` and ``evaluation`` are the model card's facts (None when the
    directory has none); ``raw`` is the parsed JSON as read.
    """

    path: Path
    labels: list[str]
    head: HeadConfig
    window: WindowConfig
    pooling: str
    normalize: bool
    retrieval_encoder: str = "encoder"
    temperature: float = 1.0
    thresholds: list[float] | None = None
    tasks: dict[str, TaskConfig] = field(default_factory=dict)
    history: list[Any] = field(default_factory=list)
    base_encoder: dict[str, str] | None = None
    training: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def directory(self) -> Path:
        return self.path.parent

    @property
    def encoder_settings(self) -> dict[str, Any]:
        """The ``WindowEncoder`` keywords of both encoders (``pooling``, ``normalize``)."""
        return {"pooling": self.pooling, "normalize": self.normalize}


def is_model_directory(path: str | Path) -> bool:
    """Whether ``path`` looks like a saved classifier (``config.json`` and ``encoder/``), not an encoder checkpoint."""
    path = Path(path)
    return (path / CONFIG).is_file() and (path / "encoder").is_dir()


def check_save_target(directory: str | Path, *, argument: str = "directory") -> None:
    """Refuse (``ConfigError``) a place a model cannot be saved to without destroying something: an existing path
    that is not a directory, or a non-empty directory that is not a saved classifier. A save replaces the whole
    directory, so only a new or empty directory, or an earlier model's, may be written to. ``argument`` names the
    caller's argument in the message (``--out`` for the CLI)."""
    path = Path(os.path.realpath(directory))  # as the save resolves it: through symbolic links
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{argument}={str(path)!r} exists and is not a directory: a model is saved as a directory; "
                          "choose a new or empty directory")
    if path.is_dir() and any(path.iterdir()) and not is_model_directory(path):
        raise ConfigError(f"{argument}={str(path)!r} is not empty and is not a saved longdoc model (no {CONFIG} "
                          "beside encoder/): saving replaces the whole directory, so it refuses one that may hold "
                          "other files; choose a new or empty directory")


def write_model_config(directory: Path, config: dict[str, Any]) -> None:
    """Write ``config`` as ``directory/config.json`` (indented JSON), the format ``read_model_config`` reads."""
    (directory / CONFIG).write_text(json.dumps(config, indent=2))


def read_encoder_settings(path: Path) -> dict[str, Any]:
    """The parsed ``longdoc_encoder.json`` at ``path``; ``ValueError`` / ``OSError`` when it is unreadable."""
    settings = json.loads(path.read_text())
    if not isinstance(settings, dict):
        raise ValueError(f"expected a JSON object, got {type(settings).__name__}")
    return settings


def read_model_config(directory: str | Path) -> ModelConfig:
    """Read and validate ``directory/config.json``; every problem is a ``ModelLoadError`` naming the file.

    Checks the format version, the labels against the head, the encoder settings, the window geometry (and that
    the copies an older save left agree), the ``retrieval_encoder`` part, the ``tasks`` entries and the model
    card's facts. Weights are not read here, nor is ``README.md``.
    """
    directory = Path(directory)
    config_path = directory / CONFIG
    if not config_path.is_file():
        raise ModelLoadError(f"{directory} is not a longdoc model directory: {CONFIG} is missing")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{config_path} is not valid JSON: {exc}") from exc
    except OSError as exc:
        raise ModelLoadError(f"cannot read {config_path}: {exc}") from exc
    if not isinstance(config, dict):
        raise ModelLoadError(f"{config_path} must hold a JSON object, got {type(config).__name__}")
    if "format_version" not in config and ("model_type" in config or "architectures" in config):
        raise ModelLoadError(f"{directory} is an encoder checkpoint (a Hugging Face {CONFIG}), not a saved longdoc "
                             "classifier: start one from it with LongDocClassifier.from_encoder(path, labels=...) "
                             "(longdoc train DOCUMENTS --model PATH)")
    if config.get("format_version") != FORMAT_VERSION:
        raise ModelLoadError(f"{config_path}: format_version {config.get('format_version')!r}, expected {FORMAT_VERSION}")
    try:
        head = HeadConfig.from_dict(config["head"])
        labels = [str(x) for x in config["labels"]]
        window = WindowConfig.from_dict(config["window"])
        pooling, normalize = config["encoder"]["pooling"], bool(config["encoder"]["normalize"])
    except (KeyError, TypeError, ConfigError) as exc:
        raise ModelLoadError(f"{config_path} is not a valid longdoc model config: {exc!r}") from exc
    if len(labels) != head.num_labels:
        raise ModelLoadError(f"{config_path}: {len(labels)} labels but the head has {head.num_labels} outputs")
    if pooling not in TOKEN_POOLINGS:
        raise ModelLoadError(f"{config_path}: 'encoder'.'pooling' is {pooling!r}; valid: {list(TOKEN_POOLINGS)}")
    temperature = _temperature(config.get("temperature", 1.0), config_path, "'temperature'")
    _check_old_window_copies(directory, config, window)
    part = config.get("retrieval_encoder", "encoder")
    if part not in _PARTS:
        raise ModelLoadError(f"{config_path}: retrieval_encoder must be 'encoder' or 'retrieval_encoder', "
                             f"got {part!r}")
    for name in sorted({"encoder", part}):
        _check_window_fits(directory / name, window, config_path)
    tasks: dict[str, TaskConfig] = {}
    task_configs = config.get("tasks") or {}
    try:
        for name, t in task_configs.items():
            tasks[name] = TaskConfig(
                tuple(t["labels"]), t["column"], bool(t["multi_label"]), HeadConfig.from_dict(t["head"]),
                _temperature(t.get("temperature", 1.0), config_path, f"'tasks'.{name!r}.'temperature'"),
                t.get("thresholds"))
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ModelLoadError(f"{config_path}: malformed 'tasks' entry: {exc}") from exc
    card = {key: _card_facts(config.get(key), fields, config_path, key) for key, fields in _CARD_FACTS.items()}
    return ModelConfig(
        path=config_path, labels=labels, head=head, window=window, pooling=pooling, normalize=normalize,
        retrieval_encoder=part, temperature=temperature, thresholds=config.get("thresholds"),
        tasks=tasks, history=config.get("history", []), raw=config, **card,
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _mapping_of(check: Any) -> Any:
    return lambda value: isinstance(value, dict) and all(isinstance(k, str) and check(v) for k, v in value.items())


def _scores(fields: tuple[str, ...]) -> Any:
    return lambda value: isinstance(value, dict) and all(_is_number(v) for k, v in value.items() if k in fields)


_SCORES = ("accuracy", "macro_f1", "micro_f1", "weighted_f1", "ece")
_PER_LABEL = _mapping_of(lambda v: isinstance(v, dict) and all(_is_number(v.get(k)) for k in ("precision", "recall", "f1"))
                         and _is_int(v.get("support")))
#: The model card's facts in config.json: for each key, the check of each known field (unknown fields are kept).
_CARD_FACTS: dict[str, dict[str, Any]] = {
    "base_encoder": {"name": _is_str, "source": lambda v: v in BASE_SOURCES},
    "training": {
        "date": _is_str, "mode": _is_str, "epochs_run": _is_int, "max_epochs": _is_int, "documents": _is_int,
        "train_documents": _is_int, "validation_documents": _is_int,
        "validation": lambda v: v in VALIDATION_SOURCES, "label_counts": _mapping_of(_is_int),
        "seed": _is_int, "batch_size": _is_int, "head_lr": _is_number, "encoder_lr": _is_number,
        "class_weights": lambda v: v is None or _is_str(v), "calibrated": lambda v: isinstance(v, bool),
        "versions": _mapping_of(_is_str),
    },
    "evaluation": {
        "date": _is_str, "documents": _is_int, "without_tokens": _is_int, "scored": _is_int,
        **{name: _is_number for name in _SCORES}, "per_label": _PER_LABEL, "tasks": _mapping_of(_scores(_SCORES)),
    },
}
_REQUIRED = {"base_encoder": ("name", "source"), "training": ("mode", "documents"), "evaluation": ("documents",)}


def _card_facts(value: Any, fields: dict[str, Any], config_path: Path, key: str) -> dict[str, Any] | None:
    """One optional model-card entry of config.json: absent or null gives None, else every known field is checked.

    The facts only describe the model (they feed ``README.md``), yet a damaged entry is refused like any other
    damaged part of the config; removing the key makes the directory load (its card then says "not recorded").
    """
    if value is None:
        return None
    hint = f"; it only feeds the model card: delete the {key!r} key to load the model without it"
    if not isinstance(value, dict):
        raise ModelLoadError(f"{config_path}: {key!r} must be a JSON object, got {type(value).__name__}{hint}")
    missing = [name for name in _REQUIRED[key] if name not in value]
    if missing:
        raise ModelLoadError(f"{config_path}: {key!r} lacks {missing}{hint}")
    for name, check in fields.items():
        if name in value and not check(value[name]):
            raise ModelLoadError(f"{config_path}: {key!r}.{name!r} is {value[name]!r}, not a valid value{hint}")
    return value


def _temperature(value: Any, config_path: Path, where: str) -> float:
    """A stored temperature: a finite number > 0 (probabilities divide the logits by it)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ModelLoadError(f"{config_path}: {where} is {value!r}; expected a finite number > 0")
    return float(value)


def _check_window_fits(encoder_dir: Path, window: WindowConfig, config_path: Path) -> None:
    """The stored window length must fit the encoder's position embeddings (its ``config.json``, read as JSON)."""
    encoder_config = encoder_dir / "config.json"
    if not encoder_config.is_file():
        return  # a missing encoder is reported when it is loaded
    try:
        positions = json.loads(encoder_config.read_text(encoding="utf-8")).get("max_position_embeddings")
    except (OSError, ValueError, AttributeError):
        return  # unreadable: reported when the encoder is loaded
    if isinstance(positions, int) and window.max_length > positions:
        raise ModelLoadError(f"{config_path}: 'window'.'max_length' is {window.max_length}, more than the "
                             f"{positions} positions of {encoder_config}; the config is damaged")


def _check_old_window_copies(directory: Path, config: dict[str, Any], window: WindowConfig) -> None:
    """Directories saved before the geometry was stored once also hold it in ``config.json``'s ``"encoder"``
    entry and in ``encoder/longdoc_encoder.json``: refuse the directory when a copy disagrees with ``"window"``."""
    config_path = directory / CONFIG
    copies: list[tuple[str, Any]] = []
    if "window" in config["encoder"]:
        copies.append((f"{config_path} 'encoder'.'window'", config["encoder"]["window"]))
    settings_path = directory / "encoder" / ENCODER_SETTINGS
    if settings_path.is_file():
        try:
            settings = read_encoder_settings(settings_path)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{settings_path} is not a longdoc encoder config: {exc}") from exc
        if "window" in settings:
            copies.append((f"{settings_path} 'window'", settings["window"]))
    for where, value in copies:
        try:
            same = WindowConfig.from_dict(value) == window
        except (TypeError, ConfigError):
            same = False
        if not same:
            raise ModelLoadError(
                f"{directory}: the window geometry is stored twice and the copies disagree: {config_path} 'window' "
                f"is {window.to_dict()}, {where} is {value!r}; make them equal (config.json's 'window' is the one "
                "this version writes)"
            )
