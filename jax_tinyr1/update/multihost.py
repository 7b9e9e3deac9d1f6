"""Moving batches between hosts and global arrays when several processes drive one mesh.

Each process reads its own block of every global batch (see `data.loader.process_order`);
the global batch is the blocks laid end to end in process order. With one process every
function here reduces to a plain `device_put` / `np.asarray`.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding

from jax_tinyr1.model.sharding import batch_sharding


def _blocks_follow_processes(sharding: NamedSharding, global_shape: tuple[int, ...], local_rows: int) -> bool:
    """True when every device holds rows of its own process's block only."""
    for device, index in sharding.devices_indices_map(global_shape).items():
        start, stop, _ = index[0].indices(global_shape[0])
        block = device.process_index * local_rows
        if start < block or stop > block + local_rows:
            return False
    return True


def allgather_rows(local: np.ndarray) -> np.ndarray:
    """Every process's rows, end to end in process order (all processes must call this)."""
    if jax.process_count() == 1:
        return np.asarray(local)
    return np.asarray(multihost_utils.process_allgather(np.asarray(local), tiled=True))


def allgather_strings(local: list[str]) -> list[str]:
    """Every process's strings, in process order."""
    if jax.process_count() == 1:
        return list(local)
    encoded = [s.encode() for s in local]
    width = int(allgather_rows(np.array([max(map(len, encoded), default=0)])).max())
    buffer = np.zeros((len(encoded), width + 1), np.uint8)  # the last column stays 0: a terminator
    for i, s in enumerate(encoded):
        buffer[i, : len(s)] = np.frombuffer(s, np.uint8)
    return [bytes(row).split(b"\0", 1)[0].decode() for row in allgather_rows(buffer)]


def pad_columns(local: np.ndarray, value) -> np.ndarray:
    """Right-pad axis 1 to the widest of all processes (prompt lengths differ per host)."""
    width = int(allgather_rows(np.array([local.shape[1]])).max())
    return np.pad(local, ((0, 0), (0, width - local.shape[1])), constant_values=value)


def global_batch(mesh, local: np.ndarray) -> jax.Array:
    """A global array of the processes' row blocks, sharded like the training batch.

    Rows are placed straight from each host when the batch sharding keeps every device within
    its own process's block; otherwise (e.g. fewer rows than data-parallel devices, so the rows
    are replicated) all rows are gathered to every host first."""
    local = np.asarray(local)
    if jax.process_count() > 1:
        global_shape = (local.shape[0] * jax.process_count(), *local.shape[1:])
        sharding = batch_sharding(mesh, global_shape)
        if _blocks_follow_processes(sharding, global_shape, local.shape[0]):
            return jax.make_array_from_process_local_data(sharding, local, global_shape)
    return replicated_to_global(mesh, allgather_rows(local))


def replicated_to_global(mesh, full: np.ndarray) -> jax.Array:
    """A global array, sharded like the training batch, from a value every process holds whole."""
    full = np.asarray(full)
    sharding = batch_sharding(mesh, full.shape)
    if jax.process_count() == 1:
        return jax.device_put(full, sharding)
    return jax.make_array_from_callback(full.shape, sharding, lambda index: full[index])


def to_host(x: jax.Array) -> np.ndarray:
    """The whole value of a (possibly multi-host) array on this host."""
    if x.is_fully_addressable:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def barrier(name: str) -> None:
    """Wait until every process gets here (nothing to wait for with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def any_process(*flags: bool) -> tuple[bool, ...]:
    """For each flag, whether it is set on any process: one collective for all of them (all
    processes must call this, at the same point)."""
    if jax.process_count() == 1:
        return tuple(bool(f) for f in flags)
    gathered = allgather_rows(np.array([[int(f) for f in flags]], np.int32))
    return tuple(bool(v) for v in gathered.max(axis=0))
