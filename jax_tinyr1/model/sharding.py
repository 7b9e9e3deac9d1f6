"""Logical axis names -> mesh axes.

Every parameter carries a tuple of logical axis names in its `axes` metadata (one name per
array dimension). One rules table maps each logical name to a mesh axis (or None for
replication). The mesh always has the three axes `data`, `fsdp`, `tensor`; the paper's
8xA100 ZeRO-3 setup is `make_mesh(fsdp=8)`.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# The single table. ZeRO-3 style: the model dimension of every large matrix is split over
# `fsdp`; heads, MLP width and vocabulary over `tensor`.
LOGICAL_RULES: dict[str, str | None] = {
    "layers": None,
    "embed": "fsdp",
    "vocab": "tensor",
    "q_heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "norm": None,
    # vision tower and connector
    "vision_embed": "fsdp",
    "vision_mlp": "tensor",
    "vision_heads": "tensor",
    "patch": None,
    "channels": None,
    "positions": None,
    "latents": None,
    "conv_in": None,
    "lora_rank": None,  # the adapters' small inner dimension (model/lora.py)
}


def make_mesh(data: int = 1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
    """A mesh with Auto axis types (with_sharding_constraint works under it)."""
    devices = jax.devices() if devices is None else devices
    n = data * fsdp * tensor
    if n > len(devices):
        raise ValueError(f"mesh data={data} fsdp={fsdp} tensor={tensor} needs {n} devices, have {len(devices)}")
    grid = np.asarray(devices[:n]).reshape(data, fsdp, tensor)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def logical_to_spec(axes: tuple[str | None, ...], shape: tuple[int, ...], mesh: Mesh) -> PartitionSpec:
    """PartitionSpec for one array. A dimension that the mesh axis does not divide evenly is
    replicated instead (tiny test models), never padded."""
    spec = []
    used: set[str] = set()
    for name, size in zip(axes, shape, strict=True):
        mesh_axis = LOGICAL_RULES.get(name) if name is not None else None
        if name is not None and name not in LOGICAL_RULES:
            raise KeyError(f"logical axis {name!r} has no rule in LOGICAL_RULES")
        if mesh_axis is None or mesh_axis in used or size % mesh.shape[mesh_axis] != 0:
            spec.append(None)
        else:
            spec.append(mesh_axis)
            used.add(mesh_axis)
    return PartitionSpec(*spec)


def state_shardings(state: nnx.State, mesh: Mesh) -> dict:
    """A nested dict (the shape of `nnx.to_pure_dict(state)`) of NamedShardings, from each
    variable's `axes` metadata."""
    out: dict = {}
    for path, var in nnx.to_flat_state(state):
        shape = tuple(var.get_value().shape)  # works for abstract (ShapeDtypeStruct) values too
        axes = var.get_metadata().get("axes") or (None,) * len(shape)
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = NamedSharding(mesh, logical_to_spec(tuple(axes), shape, mesh))
    return out


def shard_model(model: nnx.Module, mesh: Mesh) -> nnx.Module:
    """Place every parameter of `model` per the rules table (in place); returns the model."""
    state = nnx.state(model, nnx.Param)
    placed = jax.tree.map(jax.device_put, nnx.to_pure_dict(state), state_shardings(state, mesh))
    nnx.replace_by_pure_dict(state, placed)
    nnx.update(model, state)
    return model


def constrain_batch(x: jax.Array) -> jax.Array:
    """Pin an activation's leading (batch) axis to the data-parallel mesh axes when a mesh is
    set (`jax.set_mesh`) and divides it. Without this, SPMD propagation may follow the
    parameters' fsdp split of the model dimension and replicate the batch."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(("data", "fsdp")) <= set(mesh.axis_names):
        return x
    if x.shape[0] % (mesh.shape["data"] * mesh.shape["fsdp"]):
        return x
    return jax.lax.with_sharding_constraint(x, PartitionSpec(("data", "fsdp")))


def batch_sharding(mesh: Mesh, shape) -> NamedSharding:
    """An input batch's rows over the data-parallel axes (`data` x `fsdp`) when they divide
    them, else replicated: the placement `constrain_batch` asks of activations."""
    across = mesh.shape["data"] * mesh.shape["fsdp"]
    lead = ("data", "fsdp") if shape and shape[0] % across == 0 else None
    return NamedSharding(mesh, PartitionSpec(lead, *([None] * (len(shape) - 1))))


def batch_shardings(mesh: Mesh, batch):
    """`batch_sharding` for every array of a NamedTuple batch (None fields stay None)."""
    return type(batch)(*(None if x is None else batch_sharding(mesh, x.shape) for x in batch))
