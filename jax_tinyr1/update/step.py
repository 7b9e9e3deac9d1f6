"""The update every stage runs: loss and gradient (accumulated over micro-batches of whole
prompts), clipping and AdamW, as one jitted program with explicit shardings; parameters and
optimizer state donated; a non-finite step changes nothing (metric `nonfinite`). A stage
brings its loss and its batch (a NamedTuple of arrays)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jax_tinyr1.model.sharding import batch_shardings

# loss(trainable, frozen, batch) -> (scalar loss, metrics dict)
Loss = Callable[[Any, Any, Any], tuple[jax.Array, dict]]


def micro_batches(batch, count: int):
    """[count, ...] slices of every field, made of whole prompts (a prompt's G rows stay
    together, as its vision input is one row)."""

    def split(x):
        return None if x is None else x.reshape(count, x.shape[0] // count, *x.shape[1:])

    return type(batch)(*(split(x) for x in batch))


def make_update(loss: Loss, optimizer: optax.GradientTransformation, num_micro_batches: int = 1):
    """update(trainable, frozen, opt_state, batch) -> (trainable, opt_state, metrics); not yet
    jitted (see `jit_update` for the sharded version)."""
    grad_fn = jax.value_and_grad(loss, has_aux=True)

    def update(trainable, frozen, opt_state, batch):
        if num_micro_batches == 1:
            (value, metrics), grads = grad_fn(trainable, frozen, batch)
        else:

            def accumulate(acc, micro):
                (value, metrics), grads = grad_fn(trainable, frozen, micro)
                return jax.tree.map(jnp.add, acc, grads), (value, metrics)

            zeros = jax.tree.map(jnp.zeros_like, trainable)
            grads, (values, metrics) = jax.lax.scan(accumulate, zeros, micro_batches(batch, num_micro_batches))
            grads = jax.tree.map(lambda g: g / num_micro_batches, grads)
            value, metrics = jnp.mean(values), jax.tree.map(jnp.mean, metrics)
        grad_norm = optax.tree.norm(grads)
        updates, new_opt_state = optimizer.update(grads, opt_state, trainable)
        new_trainable = optax.apply_updates(trainable, updates)
        # A non-finite loss or gradient leaves parameters and optimizer state as they were
        # (optax.apply_if_finite's rule, kept in the donated buffers); the run counts it.
        finite = jnp.isfinite(value) & jnp.isfinite(grad_norm)

        def keep_if_not_finite(new, old):
            return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)

        metrics = {
            **metrics,
            "loss": value,
            "grad_norm": grad_norm,
            "nonfinite": 1.0 - finite.astype(jnp.float32),
            **{f"grad_norm/{part}": optax.tree.norm(g) for part, g in grads.items()},
        }
        return keep_if_not_finite(new_trainable, trainable), keep_if_not_finite(new_opt_state, opt_state), metrics

    return update


def map_micro_batches(fn, num_micro_batches: int):
    """fn(trainable, frozen, batch) -> [R, ...] run one micro-batch at a time (the activations
    of one group of prompts, as in the update), results laid end to end."""
    if num_micro_batches == 1:
        return fn

    def mapped(trainable, frozen, batch):
        out = jax.lax.map(lambda micro: fn(trainable, frozen, micro), micro_batches(batch, num_micro_batches))
        return out.reshape(-1, *out.shape[2:])

    return mapped


def jit_update(update, mesh: Mesh, shardings: dict[str, Any], batch_example):
    """The update jitted with explicit input/output shardings; parameters and optimizer state
    are donated (updated in place)."""
    return jax.jit(
        update,
        in_shardings=(
            shardings["trainable"],
            shardings["frozen"],
            shardings["opt_state"],
            batch_shardings(mesh, batch_example),
        ),
        out_shardings=(shardings["trainable"], shardings["opt_state"], NamedSharding(mesh, P())),
        donate_argnums=(0, 2),
    )
