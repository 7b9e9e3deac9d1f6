"""The optimizer every stage trains with: AdamW after global-norm clipping, a linear warmup
then cosine decay (HF's schedule) or a constant rate; moments stored in float32 or bf16."""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jax_tinyr1.derived import derived
from jax_tinyr1.model.layers import DTYPES, STORAGE_DTYPES
from jax_tinyr1.model.validation import require_dtype


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    learning_rate: float = 1e-6
    warmup_ratio: float = 0.03
    total_steps: int = derived(687, "the run's step count")
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    schedule: str = "cosine"  # after the linear warmup: cosine to 0 | constant
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    # AdamW moments: float32, or bfloat16 to halve their memory (updates still computed in
    # float32; the moments keep 8 bits of mantissa between steps).
    state_dtype: str = "float32"

    def __post_init__(self):
        if self.learning_rate <= 0 or self.total_steps <= 0:
            raise ValueError("optimizer.learning_rate and optimizer.total_steps must be positive")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"optimizer.schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"optimizer.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1 and self.eps > 0):
            raise ValueError(f"optimizer needs 0 <= b1, b2 < 1 and eps > 0, got {self.b1}, {self.b2}, {self.eps}")
        require_dtype("optimizer.state_dtype", self.state_dtype, STORAGE_DTYPES)


def make_optimizer(config: OptimizerConfig) -> optax.GradientTransformation:
    """AdamW after global-norm clipping, with a linear warmup over `warmup_ratio` of the steps
    from 0, then cosine decay to 0 (HF's cosine schedule) or the constant rate."""
    # At least one step after the warmup (a 1-step run has none: optax needs decay steps).
    warmup = min(math.ceil(config.total_steps * config.warmup_ratio), config.total_steps - 1)
    if config.schedule == "cosine":
        schedule = optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, warmup, config.total_steps, 0.0)
    elif warmup:
        schedule = optax.join_schedules(
            [optax.linear_schedule(0.0, config.learning_rate, warmup), optax.constant_schedule(config.learning_rate)],
            [warmup],
        )
    else:
        schedule = optax.constant_schedule(config.learning_rate)
    return optax.chain(
        optax.clip_by_global_norm(config.max_grad_norm),
        optax.chain(  # optax.adamw's own chain (same state layout), with the moments' dtype
            _adam_moments_in(DTYPES[config.state_dtype], config.b1, config.b2, config.eps),
            optax.add_decayed_weights(config.weight_decay),
            optax.scale_by_learning_rate(schedule),
        ),
    )


def _adam_moments_in(dtype, b1: float, b2: float, eps: float) -> optax.GradientTransformation:
    """optax's Adam scaling with both moments stored in `dtype` and computed in float32
    (optax's own `mu_dtype` covers only the first moment)."""
    adam = optax.scale_by_adam(b1=b1, b2=b2, eps=eps)
    if dtype == jnp.float32:
        return adam

    def cast(state, to):
        return state._replace(mu=optax.tree.cast(state.mu, to), nu=optax.tree.cast(state.nu, to))

    def init(params):
        return cast(adam.init(params), dtype)

    def update(updates, state, params=None):
        updates, state = adam.update(updates, cast(state, jnp.float32), params)
        return updates, cast(state, dtype)

    return optax.GradientTransformation(init, update)


def opt_state_shardings(optimizer, opt_state, trainable_shardings, mesh: Mesh):
    """Moments shard like their parameters; counters are replicated."""
    replicated = NamedSharding(mesh, P())
    return optax.tree_map_params(
        optimizer, lambda _, s: s, opt_state, trainable_shardings, transform_non_params=lambda _: replicated
    )
