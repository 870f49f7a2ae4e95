"""A saved model directory's ``config.json``: its file names and the one reader (validation in one place).

A model directory (``LongDocClassifier.save``) holds ``config.json``, ``encoder/`` (a Hugging Face checkpoint plus
``longdoc_encoder.json``), ``head.safetensors`` and, as the config says, ``task_heads.safetensors`` and
``retrieval_encoder/``. The window geometry is stored once, as ``config.json``'s ``"window"``. Directories saved
by earlier versions also carry it in ``config.json``'s ``"encoder"`` entry and in ``encoder/longdoc_encoder.json``;
those copies are still read, and a directory whose copies disagree is refused.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longdoc.encoder import TOKEN_POOLINGS
from longdoc.errors import ConfigError, ModelLoadError
from longdoc.heads import HeadConfig
from longdoc.windows import WindowConfig

__all__ = ["CONFIG", "ENCODER_SETTINGS", "FORMAT_VERSION", "ModelConfig", "TaskConfig", "is_model_directory",
           "read_encoder_settings", "read_model_config", "write_model_config"]

FORMAT_VERSION = 1
CONFIG = "config.json"
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
    index's vectors; ``raw`` is the parsed JSON as read.
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
    the copies an older save left agree), the ``retrieval_encoder`` part and the ``tasks`` entries. Weights are
    not read here.
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
    return ModelConfig(
        path=config_path, labels=labels, head=head, window=window, pooling=pooling, normalize=normalize,
        retrieval_encoder=part, temperature=temperature, thresholds=config.get("thresholds"),
        tasks=tasks, history=config.get("history", []), raw=config,
    )


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
