"""Model checkpoints: orbax parameters plus our config.json beside them.

Layout of a model directory:
    DIR/config.json   {"model_type": ..., "config": {...}, ...}
    DIR/params/       orbax PyTree checkpoint of the parameter tree (nested dict of arrays)

Training saves the tree in one orbax call (every process writes its shards); the converter
writes it one leaf at a time (orbax partial saves, `params/state/`), so its memory does not
grow with the model. Both layouts are read the same way, a few parameters at a time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import orbax.checkpoint.experimental.v1 as ocp_v1
from flax import nnx
from jax.sharding import Mesh, SingleDeviceSharding

from jax_tinyr1.cli import CheckpointError
from jax_tinyr1.model.config_io import load_model_config, save_model_config
from jax_tinyr1.model.lora import has_adapters, merge_trees, split_adapters
from jax_tinyr1.model.registry import type_of
from jax_tinyr1.model.sharding import state_shardings

PARAMS_DIR = "params"


def build_model(config, seed: int = 0):
    """A randomly initialised model of the type `config` configures (training from scratch,
    tests)."""
    return type_of(config).module_class(config, rngs=nnx.Rngs(seed))


def abstract_model(config):
    """The model with ShapeDtypeStruct leaves: no memory allocated."""
    return nnx.eval_shape(lambda: build_model(config))


def save_params(directory: Path, params: dict) -> None:
    """Write a (nested dict) parameter tree with orbax; `directory/params` must not exist."""
    path = Path(directory).absolute() / PARAMS_DIR
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path, params)
        checkpointer.wait_until_finished()


def save_params_leafwise(directory: Path, leaves: Iterable[tuple[str, np.ndarray]]) -> None:
    """Write ("a/b/c", array) leaves one by one into `directory/params`: each is on disk
    before the next is made, so peak memory is one leaf."""
    path = Path(directory).absolute() / PARAMS_DIR
    for name, array in leaves:
        *parents, leaf = name.split("/")
        tree = {leaf: array}
        for parent in reversed(parents):
            tree = {parent: tree}
        ocp_v1.partial.save(path, tree)
        del tree, array
    ocp_v1.partial.finalize(path)


def _flat_paths(tree: dict, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for key, value in tree.items():
        out.extend(_flat_paths(value, (*prefix, key)) if isinstance(value, dict) else [(*prefix, key)])
    return out


def _get(tree: dict, path: tuple[str, ...]):
    for key in path:
        tree = tree[key]
    return tree


# Parameters restored per orbax call: a few large ones or many small ones, so that reading a
# model never holds much more than the model (each call stages its leaves on the host first)
# and a small model is read in one call.
RESTORE_GROUP_BYTES = 64 << 20


def load_leaves(directory: Path, abstract_params: dict, leaf_paths: list[tuple[str, ...]]) -> list[jax.Array]:
    """Some parameters of the tree (an orbax partial load: the others are not read)."""
    path = Path(directory).absolute() / PARAMS_DIR
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no orbax parameter checkpoint")
    request = jax.tree.map(lambda _: ocp_v1.PLACEHOLDER, abstract_params)
    for leaf_path in leaf_paths:
        node = request
        for key in leaf_path[:-1]:
            node = node[key]
        node[leaf_path[-1]] = _get(abstract_params, leaf_path)
    try:
        loaded = ocp_v1.load(path, request)
    except ValueError as e:
        names = ", ".join("/".join(p) for p in leaf_paths)
        raise CheckpointError(f"{path}: cannot read parameter(s) {names} ({e})") from None
    return [_get(loaded, leaf_path) for leaf_path in leaf_paths]


def load_leaf(directory: Path, abstract_params: dict, leaf_path: tuple[str, ...]) -> jax.Array:
    return load_leaves(directory, abstract_params, [leaf_path])[0]


def _groups(abstract_params: dict) -> Iterator[list[tuple[str, ...]]]:
    group, size = [], 0
    for leaf_path in _flat_paths(abstract_params):
        leaf = _get(abstract_params, leaf_path)
        nbytes = int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize
        if group and size + nbytes > RESTORE_GROUP_BYTES:
            yield group
            group, size = [], 0
        group.append(leaf_path)
        size += nbytes
    if group:
        yield group


def restore_params(directory: Path, abstract_params: dict) -> dict:
    """Read the parameter tree; `abstract_params` leaves are ShapeDtypeStructs with shardings.
    In groups of parameters of at most RESTORE_GROUP_BYTES (or one larger parameter), so the
    host holds little beyond the restored model."""
    restored: dict = {}
    for group in _groups(abstract_params):
        for leaf_path, value in zip(group, load_leaves(directory, abstract_params, group), strict=True):
            node = restored
            for key in leaf_path[:-1]:
                node = node.setdefault(key, {})
            node[leaf_path[-1]] = value
    return restored


def save_pretrained(directory: Path, model, **extra) -> None:
    """Parameters and config.json (the model type read from the model's config)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_params(directory, nnx.to_pure_dict(nnx.state(model, nnx.Param)))  # all processes take part
    if jax.process_index() == 0:
        save_model_config(directory, model.config, **extra)


def load_pretrained(
    checkpoint_dir, *, mesh: Mesh | None = None, config=None, adapter_seed: int = 0, **config_overrides
):
    """(model, config) from a directory written by `save_pretrained` or the converter.

    Parameters are placed per the sharding rules on `mesh` when given, else on the
    default device. `config` replaces the stored config (a `ModelSpec` passes the run's
    numerics this way; parameters are cast to its `param_dtype`), `config_overrides`
    replace top-level fields; shapes must stay those of the checkpoint. Adapters that
    `config` asks for and the checkpoint does not hold (a LoRA run from a plain model)
    start as LoRA starts them, drawn from `adapter_seed`.
    """
    stored, _ = load_model_config(checkpoint_dir)
    config = stored if config is None else config
    if type(config) is not type(stored):
        raise CheckpointError(
            f"{checkpoint_dir}: holds a {type_of(stored).name} model, not a {type_of(config).name} one"
        )
    if config_overrides:
        config = dataclasses.replace(config, **config_overrides)
    model = abstract_model(config)
    fresh_adapters = has_adapters(config) and not has_adapters(stored)
    if fresh_adapters:
        model.init_adapters(nnx.Rngs(adapter_seed))  # real arrays in the otherwise abstract model
    state = nnx.state(model, nnx.Param)
    if mesh is None:
        device = SingleDeviceSharding(jax.local_devices()[0])
        shardings = jax.tree.map(lambda _: device, nnx.to_pure_dict(state))
    else:
        shardings = state_shardings(state, mesh)
    abstract = jax.tree.map(
        lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s), nnx.to_pure_dict(state), shardings
    )
    if fresh_adapters:
        abstract, _ = split_adapters(abstract)
        adapters = split_adapters(nnx.to_pure_dict(state))[1]
        params = merge_trees(
            restore_params(checkpoint_dir, abstract), jax.device_put(adapters, split_adapters(shardings)[1])
        )
    else:
        params = restore_params(checkpoint_dir, abstract)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(model, state)
    return model, config
