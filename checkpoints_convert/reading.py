"""Our orbax checkpoints read one parameter at a time, as flat {path: array} mappings (what
the exporters consume)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from jax.sharding import SingleDeviceSharding

from checkpoints_convert.mapping import flatten
from jax_tinyr1.cli import CheckpointError
from jax_tinyr1.model.checkpoint import abstract_model, load_leaf
from jax_tinyr1.model.config_io import load_model_config
from jax_tinyr1.model.registry import type_of


class LazyParams(Mapping):
    """Flat {path: array} of a checkpoint, read on demand with one parameter in memory at a
    time (the exporter asks for them grouped)."""

    def __init__(self, checkpoint: Path, abstract: dict, prefix: str = ""):
        self.checkpoint, self.abstract = checkpoint, abstract
        self.shapes = {p[len(prefix) :]: tuple(v.shape) for p, v in flatten(abstract).items() if p.startswith(prefix)}
        self.prefix = prefix
        self._current: tuple[str, np.ndarray] | None = None

    def __getitem__(self, path: str) -> np.ndarray:
        if self._current is None or self._current[0] != path:
            self._current = None  # drop the previous parameter before reading the next
            value = load_leaf(self.checkpoint, self.abstract, tuple((self.prefix + path).split("/")))
            self._current = (path, np.asarray(value))
        return self._current[1]

    def __iter__(self):
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)


def read_checkpoint(checkpoint: Path, model_type: str | None, prefix: str = ""):
    """(config, extra, lazily read flat params on the host CPU) of one of our checkpoints;
    `prefix` keeps the parameters under it (a component), named without it."""
    config, extra = load_model_config(checkpoint)
    found_type = type_of(config).name
    if model_type is not None and found_type != model_type:
        raise CheckpointError(f"{checkpoint}: holds a {found_type!r} model, not --model-type {model_type!r}")
    state = nnx.to_pure_dict(nnx.state(abstract_model(config), nnx.Param))
    cpu = SingleDeviceSharding(jax.devices("cpu")[0])
    abstract = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=cpu), state)
    return config, extra, LazyParams(checkpoint, abstract, prefix)
