"""Config dataclasses <-> JSON, with errors that name the offending key."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any

from jax_tinyr1.cli import CheckpointError
from jax_tinyr1.model.registry import MODEL_TYPES, type_of

CONFIG_FILE = "config.json"


def config_from_dict(cls: type, values: dict[str, Any], where: str = "config"):
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise CheckpointError(f"{where}: unknown key(s) {unknown} for {cls.__name__}")
    missing = sorted(
        f.name for f in dataclasses.fields(cls) if f.name not in values and f.default is dataclasses.MISSING
    )
    if missing:
        raise CheckpointError(f"{where}: missing key(s) {missing} for {cls.__name__}")
    hints = typing.get_type_hints(cls)
    values = dict(values)
    for name, value in values.items():  # nested config dataclasses come as dicts
        if dataclasses.is_dataclass(hints.get(name)) and isinstance(value, dict):
            values[name] = config_from_dict(hints[name], value, f"{where}.{name}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:  # a value the config class refuses
        raise CheckpointError(f"{where}: {e}") from None


def save_model_config(directory: Path, config, **extra) -> None:
    payload = {"model_type": type_of(config).name, "config": dataclasses.asdict(config), **extra}
    (Path(directory) / CONFIG_FILE).write_text(json.dumps(payload, indent=2) + "\n")


def is_hf_config(path: Path) -> bool:
    """A config.json in the Hugging Face layout (a published checkpoint's), not ours: ours
    always nests the model's fields under "config"."""
    try:
        payload = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(payload, dict) and "model_type" in payload and "config" not in payload


def load_model_config(directory: Path) -> tuple[Any, dict[str, Any]]:
    """(config, extra fields) from a checkpoint directory written by us; the config's class
    is its model type (`registry.type_of`)."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no config.json (not a jax_tinyr1 checkpoint directory?)")
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if is_hf_config(path):
        raise CheckpointError(
            f"{path}: a Hugging Face config.json (a downloaded checkpoint), not a converted one: convert it with "
            f"python -m checkpoints_convert.hf_to_flax --hf-dir {path.parent} --out DIR (--plan reads it as it is)"
        )
    model_type = payload.get("model_type")
    if model_type not in MODEL_TYPES:
        raise CheckpointError(f"{path}: model_type {model_type!r} is not one of {sorted(MODEL_TYPES)}")
    config = config_from_dict(MODEL_TYPES[model_type].config_class, payload.get("config", {}), f"{path}: config")
    extra = {k: v for k, v in payload.items() if k not in ("model_type", "config")}
    return config, extra
