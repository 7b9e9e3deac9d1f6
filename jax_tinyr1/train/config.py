"""Training configuration: YAML files in configs/ plus dotted command-line overrides
(`objective.beta=0 optimizer.learning_rate=2e-6`).

Each YAML section loads straight into the dataclass the code uses, and that dataclass
validates its own values:

    model      ModelSpec        (model/spec.py: preset or checkpoint, dtypes, remat)
    data       LoaderConfig     (data/loader.py)
    sft        SFTConfig        (sft/objective.py: micro-batches, log-prob chunk, trainable)     SFT only
    grpo       GRPOConfig       (grpo/config.py: G, mu, micro-batches, chunk, reference dtype)  GRPO only
    objective  ObjectiveConfig  (grpo/loss.py: beta, clip, aggregation, advantages)             GRPO only
    sampling   SamplingConfig   (generate/sampling.py)                                          GRPO only
    reward     RewardConfig     (rewards/combined.py)                                           GRPO only
    lora       LoraConfig       (model/lora.py: rank, alpha, dropout, targets, connector)
    optimizer  OptimizerConfig  (update/optimizer.py)
    run        RunSection       (this file: output, checkpoints, seed)
    mesh       MeshSection      (this file)

Fields the run fills in itself are marked with `jax_tinyr1.derived.derived`; a key for one of them
is refused, as are unknown keys, wrong types, bad values and a section of the other stage
(nothing is accepted and then ignored). Errors name the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from jax_tinyr1.cli import ConfigError
from jax_tinyr1.data.loader import LoaderConfig
from jax_tinyr1.derived import DERIVED
from jax_tinyr1.generate.sampling import SamplingConfig
from jax_tinyr1.grpo.config import GRPOConfig
from jax_tinyr1.grpo.loss import ObjectiveConfig
from jax_tinyr1.model.lora import LoraConfig
from jax_tinyr1.model.spec import ModelSpec
from jax_tinyr1.rewards import RewardConfig
from jax_tinyr1.sft.objective import SFTConfig
from jax_tinyr1.update.optimizer import OptimizerConfig
from jax_tinyr1.update.params import ADAPTER_PARTS


@dataclasses.dataclass(frozen=True)
class RunSection:
    output_dir: str = "runs/demo"
    tokenizer: str = ""
    epochs: int = 1
    max_steps: int = 0  # 0: as many as the epochs give
    save_every: int = 50
    keep_last: int = 3
    seed: int = 0
    export_hf: bool = False
    # This many consecutive steps with a non-finite loss or gradient (each left the parameters
    # unchanged) stop the run with a checkpoint of the last finite state.
    max_nonfinite_steps: int = 3
    # The share of each GPU JAX takes for the run (XLA_PYTHON_CLIENT_MEM_FRACTION, applied before
    # the backends start; the plan's budget too); 0: JAX's default, 0.75.
    memory_fraction: float = 0.0

    def __post_init__(self):
        if self.epochs < 1 or self.max_steps < 0 or self.save_every < 1 or self.keep_last < 1:
            raise ValueError("run.epochs, run.save_every and run.keep_last must be >= 1, run.max_steps >= 0")
        if not 0 <= self.memory_fraction <= 1:
            raise ValueError(f"run.memory_fraction must be in [0, 1] (0: JAX's default), got {self.memory_fraction}")
        if self.max_nonfinite_steps < 1:
            raise ValueError(f"run.max_nonfinite_steps must be >= 1, got {self.max_nonfinite_steps}")


@dataclasses.dataclass(frozen=True)
class MeshSection:
    data: int = 1
    fsdp: int = 1
    tensor: int = 1

    def __post_init__(self):
        if min(self.data, self.fsdp, self.tensor) < 1:
            raise ValueError(f"mesh: every axis must be >= 1, got {self}")

    @property
    def size(self) -> int:
        return self.data * self.fsdp * self.tensor


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    model: ModelSpec = ModelSpec()
    data: LoaderConfig = LoaderConfig()
    sft: SFTConfig = SFTConfig()
    grpo: GRPOConfig = GRPOConfig()
    objective: ObjectiveConfig = ObjectiveConfig()
    sampling: SamplingConfig = SamplingConfig()
    reward: RewardConfig = RewardConfig()
    lora: LoraConfig = LoraConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    run: RunSection = RunSection()
    mesh: MeshSection = MeshSection()


# The sections each stage reads; a section of the other stage in its config is an error.
STAGE_SECTIONS = {
    "sft": ("model", "data", "sft", "lora", "optimizer", "run", "mesh"),
    "grpo": ("model", "data", "grpo", "objective", "sampling", "reward", "lora", "optimizer", "run", "mesh"),
}


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
    if origin is tuple:  # tuple[X, ...] from a YAML list
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_type, _) = typing.get_args(annotation)
        return tuple(_check(v, item_type, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        key_type, value_type = typing.get_args(annotation)
        return {_check(k, key_type, key): _check(v, value_type, f"{key}.{k}") for k, v in value.items()}
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


def settable_fields(cls) -> dict[str, dataclasses.Field]:
    """The fields of a section that a config file may set (not the derived ones)."""
    return {f.name: f for f in dataclasses.fields(cls) if DERIVED not in f.metadata}


def from_dict(cls, values: dict[str, Any], where: str = ""):
    hints = typing.get_type_hints(cls)
    prefix = f"{where}." if where else ""
    derived = {f.name: f.metadata[DERIVED] for f in dataclasses.fields(cls) if DERIVED in f.metadata}
    for name in sorted(set(values) & set(derived)):
        raise ConfigError(f"{prefix}{name} is set by the run from {derived[name]}, not by the config")
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ConfigError(f"unknown key(s) {[prefix + k for k in unknown]}; known: {sorted(settable_fields(cls))}")
    converted = {k: _check(v, hints[k], prefix + k) for k, v in values.items()}
    try:
        return cls(**converted)
    except ValueError as e:
        raise ConfigError(f"{where or 'config'}: {e}") from None


# Keys that exclude each other: the command line choosing one drops the other from the file,
# so that `model.preset=tinyllava-video-3b` plans a recipe whose YAML names a checkpoint.
EXCLUSIVE_KEYS = {"model.preset": "model.checkpoint", "model.checkpoint": "model.preset"}


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`a.b=v` sets values["a"]["b"] = yaml(v)."""
    values = {k: dict(v) if isinstance(v, dict) else v for k, v in values.items()}
    given = {o.split("=", 1)[0] for o in overrides}
    for key, other in EXCLUSIVE_KEYS.items():
        if key in given and other not in given:
            section, leaf = other.split(".")
            if isinstance(values.get(section), dict):
                values[section].pop(leaf, None)
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


def _check_stage(values: dict[str, Any], config: TrainConfig, stage: str) -> None:
    """Keys that the stage (or the rest of the config) would leave unread are errors."""
    if stage not in STAGE_SECTIONS:
        raise ConfigError(f"stage must be one of {sorted(STAGE_SECTIONS)}, got {stage!r}")
    other = sorted(set(values) - set(STAGE_SECTIONS[stage]))
    if other:
        raise ConfigError(f"section(s) {other} configure another stage; {stage} does not read them")
    if stage == "grpo":
        if config.objective.beta == 0 and "reference_dtype" in values.get("grpo", {}):
            raise ConfigError("grpo.reference_dtype: objective.beta is 0, so there is no reference model")
        if "response_tokens" in values.get("data", {}):
            raise ConfigError("data.response_tokens: the length of SFT responses; GRPO samples its completions")
    _check_lora(values, config, stage)


def _check_lora(values: dict[str, Any], config: TrainConfig, stage: str) -> None:
    """The lora section decides what trains; keys it would leave unread are errors."""
    lora, given = config.lora, values.get("lora", {})
    trainable = (config.sft if stage == "sft" else config.grpo).trainable
    if not lora.enabled:
        unread = sorted(set(given) - {"rank"})
        if unread:
            raise ConfigError(f"lora.{unread[0]}: lora.rank is 0, so there are no adapters")
        adapter_parts = sorted(set(trainable) & set(ADAPTER_PARTS))
        if adapter_parts:
            raise ConfigError(f"{stage}.trainable: {adapter_parts} are set by the lora section (lora.rank > 0)")
        return
    if "trainable" in values.get(stage, {}):
        raise ConfigError(
            f"{stage}.trainable: with lora.rank > 0 the adapters train, and the connector as lora.connector says"
        )
    if stage == "grpo" and "reference_dtype" in values.get("grpo", {}) and lora.connector != "full":
        raise ConfigError(
            f"grpo.reference_dtype: with lora.connector={lora.connector} the reference is the base model with the "
            "adapters off; it keeps no copy of its own"
        )


BASE_KEY = "base"  # a config file's parent: a path relative to the file; the file holds what differs


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(f"{path}: not valid YAML ({where}{getattr(e, 'problem', None) or e})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of sections")
    return values


def _unknown_keys(values: dict[str, Any], cls, prefix: str = "") -> list[str]:
    """Keys of `values` that no field of `cls` (or of its section dataclasses) takes."""
    hints = typing.get_type_hints(cls)
    unknown = []
    for key, value in values.items():
        if key not in hints:
            unknown.append(prefix + key)
        elif dataclasses.is_dataclass(hints[key]) and isinstance(value, dict):
            unknown += _unknown_keys(value, hints[key], f"{prefix}{key}.")
    return unknown


def merge_sections(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """`child` over `base`, section by section (a section's keys merge; any other value, a
    list included, replaces the base's)."""
    merged = dict(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_sections(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_config_file(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file's values with its `base:` chain merged under it (MaxText's base_config).
    A cycle, a missing base and a key no section takes are refused, naming the file."""
    path = Path(path).absolute()
    if path in _chain:
        cycle = " -> ".join(p.name for p in (*_chain, path))
        raise ConfigError(f"{path}: the base chain is a cycle ({cycle})")
    values = _read_yaml(path)
    unknown = _unknown_keys({k: v for k, v in values.items() if k != BASE_KEY}, TrainConfig)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}")
    base = values.pop(BASE_KEY, None)
    if base is None:
        return values
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base must name a config file, got {base!r}")
    parent = path.parent / base
    if not parent.is_file():
        raise ConfigError(f"{path}: base {base!r}: no such file {parent}")
    return merge_sections(read_config_file(parent, (*_chain, path)), values)


def load_config(path: str | Path | None, overrides: list[str] = (), *, stage: str = "grpo") -> TrainConfig:
    """The run config of `stage` ("grpo" or "sft") from a YAML file (and its bases) and overrides."""
    values = {} if path is None else read_config_file(path)
    values = apply_overrides(values, list(overrides))
    config = from_dict(TrainConfig, values)
    _check_stage(values, config, stage)
    return config


def _trainable(config: TrainConfig, section) -> tuple[str, ...]:
    """What the stage trains: the lora section's parts with a rank, else the stage's `trainable`."""
    return config.lora.trainable_parts() if config.lora.enabled else section.trainable


def sft_config(config: TrainConfig, total_steps: int) -> SFTConfig:
    """The SFT update's config: the sft section with the optimizer section it composes."""
    return dataclasses.replace(
        config.sft,
        trainable=_trainable(config, config.sft),
        optimizer=dataclasses.replace(config.optimizer, total_steps=total_steps),
    )


def grpo_config(config: TrainConfig, total_steps: int, *, eos: int, pad: int) -> GRPOConfig:
    """The GRPO update's config: the grpo section with the objective, sampling and optimizer
    sections it composes."""
    return dataclasses.replace(
        config.grpo,
        trainable=_trainable(config, config.grpo),
        objective=config.objective,
        sampling=dataclasses.replace(config.sampling, eos_id=eos, pad_id=pad),
        optimizer=dataclasses.replace(config.optimizer, total_steps=total_steps),
    )


def to_dict(config: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)
