"""Training configuration: YAML files in configs/ plus dotted command-line overrides
(`grpo.beta=0 optimizer.learning_rate=2e-6`). Unknown keys, wrong types and bad values are
errors that name the key."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A bad configuration; the message names the key."""


@dataclasses.dataclass(frozen=True)
class ModelSection:
    preset: str = "tinyllava-video-tiny"
    checkpoint: str | None = None  # a converted checkpoint (checkpoints_convert output); overrides preset
    dtype: str = "float32"  # compute dtype; master weights stay float32
    remat: bool = False


@dataclasses.dataclass(frozen=True)
class DataSection:
    root: str = ""
    train: str = "train.jsonl"  # relative to root
    batch_size: int = 1  # prompts per step and process
    num_workers: int = 0
    bad_input: str = "error"
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class GRPOSection:
    objective: str = "paper"  # preset: paper | no_kl | dr_grpo; the fields below override it
    beta: float | None = None
    epsilon_low: float | None = None
    epsilon_high: float | None = None
    aggregation: str | None = None
    advantage_scale: str | None = None
    noise_std: float | None = None
    group_size: int = 8
    updates_per_rollout: int = 1
    micro_batches: int = 1
    max_new_tokens: int = 512
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0


@dataclasses.dataclass(frozen=True)
class RewardSection:
    rule: str = "paper"
    max_len: int = 1200


@dataclasses.dataclass(frozen=True)
class OptimizerSection:
    learning_rate: float = 1e-6
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    schedule: str = "cosine"  # cosine (with warmup) | constant
    b1: float = 0.9  # AdamW
    b2: float = 0.999
    eps: float = 1e-8


@dataclasses.dataclass(frozen=True)
class RunSection:
    output_dir: str = "runs/demo"
    tokenizer: str = ""
    epochs: int = 1
    max_steps: int = 0  # 0: as many as the epochs give
    save_every: int = 50
    keep_last: int = 3
    log_every: int = 1
    seed: int = 0
    export_hf: bool = False


@dataclasses.dataclass(frozen=True)
class MeshSection:
    data: int = 1
    fsdp: int = 1
    tensor: int = 1


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    grpo: GRPOSection = GRPOSection()
    reward: RewardSection = RewardSection()
    optimizer: OptimizerSection = OptimizerSection()
    run: RunSection = RunSection()
    mesh: MeshSection = MeshSection()


def _check(value: Any, annotation: Any, key: str) -> Any:
    """`value` converted to `annotation` (int -> float allowed), else ConfigError naming `key`."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _check(value, option, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {annotation}, got {value!r}")
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a section (mapping), got {value!r}")
        return from_dict(annotation, value, key)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-6" (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if annotation in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{key}: expected {annotation.__name__}, got {value!r}")
    if not isinstance(value, annotation):
        raise ConfigError(f"{key}: expected {annotation.__name__}, got {type(value).__name__} {value!r}")
    return value


def from_dict(cls, values: dict[str, Any], where: str = ""):
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"unknown key(s) {[prefix + k for k in unknown]}; known: {sorted(hints)}")
    converted = {k: _check(v, hints[k], f"{where}.{k}" if where else k) for k, v in values.items()}
    return cls(**converted)


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`a.b=v` sets values["a"]["b"] = yaml(v)."""
    values = {k: dict(v) if isinstance(v, dict) else v for k, v in values.items()}
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"override {override!r} is not of the form section.key=value")
        path, raw = override.split("=", 1)
        *sections, leaf = path.split(".")
        node = values
        for section in sections:
            node = node.setdefault(section, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {override!r}: {section} is not a section")
        node[leaf] = yaml.safe_load(raw)
    return values


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"--config {path}: no such file")
        values = yaml.safe_load(path.read_text()) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping of sections")
    return from_dict(TrainConfig, apply_overrides(values, list(overrides)))


def to_dict(config: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)
