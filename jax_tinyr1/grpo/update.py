"""The GRPO update's batch and loss: policy log-probs of the sampled completions, then the
objective (paper eq. 1-2, `grpo.loss`) against the old-policy and reference log-probs."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jax_tinyr1.grpo.config import GRPOConfig
from jax_tinyr1.grpo.loss import grpo_loss
from jax_tinyr1.model.lora import merge_trees, without_adapters
from jax_tinyr1.update.logprobs import policy_logps
from jax_tinyr1.update.step import make_update, map_micro_batches


class Batch(NamedTuple):
    """One rollout's training data. R = prompts x G rows; prompts repeated per row."""

    prompt_ids: jax.Array  # [R, T] with one image placeholder per row
    prompt_mask: jax.Array  # [R, T]
    vision_input: jax.Array  # [B, ...] one per prompt: frozen vision features, or frames (params.py)
    tokens: jax.Array  # [R, T]
    completion_mask: jax.Array  # [R, T]
    advantages: jax.Array  # [R]
    old_logps: jax.Array | None  # [R, T], None: on-policy (ratio = 1)
    ref_logps: jax.Array | None  # [R, T], None when beta = 0
    dropout_keys: jax.Array | None = None  # [R, 2] key data: the adapters' dropout in the update (lora.dropout)


def _logps(graphdef, config: GRPOConfig, *, dropout: bool = False):
    def logps(trainable, frozen, batch: Batch):
        return policy_logps(
            graphdef,
            trainable,
            frozen,
            batch,
            config.trainable,
            temperature=config.sampling.temperature or 1.0,  # greedy sampling scores at temperature 1
            chunk=config.logprob_chunk,
            dropout_keys=batch.dropout_keys if dropout else None,
        )

    return logps


def make_logps(graphdef, config: GRPOConfig):
    """logps(trainable, frozen, batch) -> [R, T]: old-policy or reference log-probs."""
    logps = _logps(graphdef, config)
    return map_micro_batches(lambda t, f, b: logps(t, f, b)[0], config.micro_batches)


def make_reference_logps(graphdef, config: GRPOConfig):
    """reference_logps(reference, adapters, frozen, batch) -> [R, T]: the reference policy's
    log-probs. `reference` holds the starting copy of what trains in full; `adapters` (the
    trainable tree's adapter dicts, `lora.split_adapters`; empty without LoRA) are switched
    off (the base model: LoRA's reference at no cost)."""
    logps = make_logps(graphdef, config)

    def reference_logps(reference, adapters, frozen, batch: Batch):
        return logps(merge_trees(without_adapters(adapters), reference), frozen, batch)

    return reference_logps


def make_grpo_update(graphdef, config: GRPOConfig, optimizer: optax.GradientTransformation):
    logps_fn = _logps(graphdef, config, dropout=True)

    def loss(trainable, frozen, batch: Batch):
        logps, entropy = logps_fn(trainable, frozen, batch)
        old = jax.lax.stop_gradient(logps) if batch.old_logps is None else batch.old_logps
        o = config.objective
        value, metrics = grpo_loss(
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
        return value, metrics

    return make_update(loss, optimizer, config.micro_batches)
