"""The GRPO update as one jit-compiled function with explicit shardings.

Parameters live as nested dicts split in two: `trainable` (connector + language model by
default) and `frozen` (the vision tower). The optimizer sees only `trainable`. The vision
features of each prompt's video are computed once per step (outside the gradient); the
connector runs inside it, once per prompt, and its output is shared by the prompt's G
completions.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jax_tinyr1.derived import derived
from jax_tinyr1.grpo.logprobs import chunked_token_logps
from jax_tinyr1.grpo.loss import ObjectiveConfig, grpo_loss
from jax_tinyr1.grpo.rollout import left_align
from jax_tinyr1.grpo.sampling import SamplingConfig
from jax_tinyr1.model.sharding import state_shardings
from jax_tinyr1.model.tinyllava import TinyLlavaVideo

TRAINABLE_DEFAULT = ("connector", "llm")


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
        if self.state_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"optimizer.state_dtype must be 'float32' or 'bfloat16', got {self.state_dtype!r}")


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    objective: ObjectiveConfig = derived(ObjectiveConfig(), "the objective section")
    sampling: SamplingConfig = derived(SamplingConfig(), "the sampling section")
    optimizer: OptimizerConfig = derived(OptimizerConfig(), "the optimizer section")
    group_size: int = 8  # G
    updates_per_rollout: int = 1  # mu
    micro_batches: int = 1  # gradient accumulation over groups of prompts
    logprob_chunk: int = 128  # completion tokens per log-prob chunk (the [rows, chunk, vocab] logits)
    # The frozen reference policy's weights: float32, or bfloat16 to halve them (the KL is
    # then taken against the bf16-rounded reference).
    reference_dtype: str = "float32"
    trainable: tuple[str, ...] = derived(TRAINABLE_DEFAULT, "the stage")

    def __post_init__(self):
        if self.group_size < 1:
            raise ValueError(f"grpo.group_size must be >= 1, got {self.group_size}")
        if self.updates_per_rollout < 1 or self.micro_batches < 1 or self.logprob_chunk < 1:
            raise ValueError("grpo.updates_per_rollout, grpo.micro_batches and grpo.logprob_chunk must be >= 1")
        if self.reference_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"grpo.reference_dtype must be 'float32' or 'bfloat16', got {self.reference_dtype!r}")


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
            _adam_moments_in(jnp.dtype(config.state_dtype), config.b1, config.b2, config.eps),
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


class Batch(NamedTuple):
    """One rollout's training data. R = prompts x G rows; prompts repeated per row."""

    prompt_ids: jax.Array  # [R, T] with one image placeholder per row
    prompt_mask: jax.Array  # [R, T]
    features: jax.Array  # [B, S, vision width] frozen vision features, one per prompt
    tokens: jax.Array  # [R, N]
    completion_mask: jax.Array  # [R, N]
    advantages: jax.Array  # [R]
    old_logps: jax.Array | None  # [R, N], None: on-policy (ratio = 1)
    ref_logps: jax.Array | None  # [R, N], None when beta = 0


def split_params(model: nnx.Module, trainable: tuple[str, ...] = TRAINABLE_DEFAULT):
    """(graphdef, trainable dict, frozen dict) of a model's parameters."""
    graphdef, state = nnx.split(model)
    pure = nnx.to_pure_dict(state)
    unknown = set(trainable) - set(pure)
    if unknown:
        raise ValueError(f"trainable parts {sorted(unknown)} are not parts of the model {sorted(pure)}")
    return (
        graphdef,
        {k: v for k, v in pure.items() if k in trainable},
        {k: v for k, v in pure.items() if k not in trainable},
    )


def completion_logps(
    model: TinyLlavaVideo,
    prompt_ids,
    prompt_mask,
    visual_rvd,
    tokens,
    completion_mask,
    *,
    temperature: float,
    chunk: int,
):
    """Log-probs [R, N] (and entropies) of the completion tokens under `model`."""
    embeds, mask = model.embed_inputs(prompt_ids, prompt_mask, visual_rvd)
    embeds, mask, positions = left_align(embeds, mask)
    p, n = embeds.shape[1], tokens.shape[1]
    lengths = jnp.sum(mask, axis=1)
    full = jnp.concatenate([embeds, model.llm.embed_tokens(tokens)], axis=1)
    full_mask = jnp.concatenate([mask, completion_mask.astype(mask.dtype)], axis=1)
    full_positions = jnp.concatenate([positions, lengths[:, None] + jnp.arange(n)[None, :]], axis=1)
    h, _ = model.llm.hidden_states(inputs_embeds=full, attention_mask=full_mask, positions=full_positions)
    # The hidden state at slot p - 1 + j predicts completion token j.
    return chunked_token_logps(
        h[:, p - 1 : p - 1 + n], model.llm.output_embedding(), tokens, temperature=temperature, chunk=chunk
    )


def _policy_logps(graphdef, trainable, frozen, batch: Batch, config: GRPOConfig):
    model = nnx.merge(graphdef, {**frozen, **trainable})
    group = batch.prompt_ids.shape[0] // batch.features.shape[0]
    visual = jnp.repeat(model.connector(batch.features), group, axis=0)
    temperature = config.sampling.temperature or 1.0
    return completion_logps(
        model,
        batch.prompt_ids,
        batch.prompt_mask,
        visual,
        batch.tokens,
        batch.completion_mask,
        temperature=temperature,
        chunk=config.logprob_chunk,
    )


def _loss(trainable, graphdef, frozen, batch: Batch, config: GRPOConfig):
    logps, entropy = _policy_logps(graphdef, trainable, frozen, batch, config)
    old = jax.lax.stop_gradient(logps) if batch.old_logps is None else batch.old_logps
    o = config.objective
    loss, metrics = grpo_loss(
        logps,
        old,
        batch.ref_logps,
        batch.advantages,
        batch.completion_mask,
        beta=o.beta,
        epsilon_low=o.epsilon_low,
        epsilon_high=o.epsilon_high,
        aggregation=o.aggregation,
        max_completion_length=config.sampling.max_new_tokens,
    )
    mask = batch.completion_mask.astype(jnp.float32)
    metrics["entropy"] = jnp.sum(entropy * mask) / jnp.maximum(jnp.sum(mask), 1.0)
    metrics["logp_mean"] = jnp.sum(logps * mask) / jnp.maximum(jnp.sum(mask), 1.0)  # -NLL for SFT
    return loss, metrics


def _micro_batches(batch: Batch, count: int) -> Batch:
    """[count, ...] slices made of whole prompts (a prompt's G rows stay together)."""

    def split(x):
        return None if x is None else x.reshape(count, x.shape[0] // count, *x.shape[1:])

    return Batch(*(split(x) for x in batch))


def make_update(graphdef, config: GRPOConfig, optimizer: optax.GradientTransformation):
    """update(trainable, frozen, opt_state, batch) -> (trainable, opt_state, metrics); not yet
    jitted (see `jit_update` for the sharded version)."""

    def update(trainable, frozen, opt_state, batch: Batch):
        grad_fn = jax.value_and_grad(_loss, has_aux=True)
        if config.micro_batches == 1:
            (loss, metrics), grads = grad_fn(trainable, graphdef, frozen, batch, config)
        else:

            def accumulate(acc, micro):
                (loss, metrics), grads = grad_fn(trainable, graphdef, frozen, micro, config)
                return jax.tree.map(jnp.add, acc, grads), (loss, metrics)

            zeros = jax.tree.map(jnp.zeros_like, trainable)
            grads, (losses, metrics) = jax.lax.scan(accumulate, zeros, _micro_batches(batch, config.micro_batches))
            grads = jax.tree.map(lambda g: g / config.micro_batches, grads)
            loss, metrics = jnp.mean(losses), jax.tree.map(jnp.mean, metrics)
        updates, opt_state = optimizer.update(grads, opt_state, trainable)
        trainable = optax.apply_updates(trainable, updates)
        metrics = {
            **metrics,
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            **{f"grad_norm/{part}": optax.tree.norm(g) for part, g in grads.items()},
        }
        return trainable, opt_state, metrics

    return update


def make_logps(graphdef, config: GRPOConfig):
    """logps(trainable, frozen, batch) -> [R, N]: old-policy or reference log-probs."""

    def logps(trainable, frozen, batch: Batch):
        if config.micro_batches == 1:
            return _policy_logps(graphdef, trainable, frozen, batch, config)[0]
        # One micro-batch at a time, as the update: the activations of one group of prompts.
        out = jax.lax.map(
            lambda micro: _policy_logps(graphdef, trainable, frozen, micro, config)[0],
            _micro_batches(batch, config.micro_batches),
        )
        return out.reshape(-1, out.shape[-1])

    return logps


# -- sharding ----------------------------------------------------------------------------


def param_shardings(model_state_abstract: nnx.State, mesh: Mesh, parts) -> dict:
    return {k: v for k, v in state_shardings(model_state_abstract, mesh).items() if k in parts}


def batch_sharding(mesh: Mesh, shape) -> NamedSharding:
    """Rows over the data-parallel axes (`data` x `fsdp`) when they divide them, else replicated."""
    across = mesh.shape["data"] * mesh.shape["fsdp"]
    lead = ("data", "fsdp") if shape and shape[0] % across == 0 else None
    return NamedSharding(mesh, P(lead, *([None] * (len(shape) - 1))))


def batch_shardings(mesh: Mesh, batch: Batch) -> Batch:
    return Batch(*(None if x is None else batch_sharding(mesh, x.shape) for x in batch))


def opt_state_shardings(optimizer, opt_state, trainable_shardings, mesh: Mesh):
    """Moments shard like their parameters; counters are replicated."""
    replicated = NamedSharding(mesh, P())
    return optax.tree_map_params(
        optimizer, lambda _, s: s, opt_state, trainable_shardings, transform_non_params=lambda _: replicated
    )


def jit_update(update, mesh: Mesh, shardings: dict[str, Any], batch_example: Batch):
    """The update jitted with explicit input/output shardings; parameters and optimizer state
    are donated (updated in place)."""
    metrics_sharding = NamedSharding(mesh, P())
    return jax.jit(
        update,
        in_shardings=(
            shardings["trainable"],
            shardings["frozen"],
            shardings["opt_state"],
            batch_shardings(mesh, batch_example),
        ),
        out_shardings=(shardings["trainable"], shardings["opt_state"], metrics_sharding),
        donate_argnums=(0, 2),
    )
