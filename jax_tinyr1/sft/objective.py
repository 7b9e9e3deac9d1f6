"""The SFT stage's section (`sft:` in a run's YAML), its batch and its loss: the mean
negative log-likelihood of the response tokens (the end-of-text token included), over all
response tokens of the batch (the original's token-mean cross-entropy)."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jax_tinyr1.derived import derived
from jax_tinyr1.update.logprobs import policy_logps
from jax_tinyr1.update.optimizer import OptimizerConfig
from jax_tinyr1.update.params import TRAINABLE_DEFAULT, check_trainable
from jax_tinyr1.update.step import make_update


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    optimizer: OptimizerConfig = derived(OptimizerConfig(), "the optimizer section")
    micro_batches: int = 1  # gradient accumulation over groups of examples
    logprob_chunk: int = 128  # response tokens per log-prob chunk
    trainable: tuple[str, ...] = TRAINABLE_DEFAULT  # the cold start trains the connector and the LLM

    def __post_init__(self):
        if self.micro_batches < 1 or self.logprob_chunk < 1:
            raise ValueError("sft.micro_batches and sft.logprob_chunk must be >= 1")
        check_trainable(self.trainable, "sft.trainable")


class Batch(NamedTuple):
    prompt_ids: jax.Array  # [B, T] with one image placeholder per row
    prompt_mask: jax.Array  # [B, T]
    vision_input: jax.Array  # [B, ...] frozen vision features, or frames (update/params.py)
    tokens: jax.Array  # [B, T] the response, ending with the end-of-text token
    completion_mask: jax.Array  # [B, T]
    dropout_keys: jax.Array | None = None  # [B, 2] key data: the adapters' dropout (lora.dropout)


def nll_loss(logps_bt: jax.Array, mask_bt: jax.Array) -> tuple[jax.Array, dict]:
    """Mean negative log-likelihood over the batch's response tokens."""
    mask = mask_bt.astype(jnp.float32)
    nll = -jnp.sum(logps_bt * mask) / jnp.maximum(jnp.sum(mask), 1.0)
    return nll, {"nll": nll}


def make_sft_update(graphdef, config: SFTConfig, optimizer: optax.GradientTransformation):
    def loss(trainable, frozen, batch: Batch):
        logps, _ = policy_logps(
            graphdef,
            trainable,
            frozen,
            batch,
            config.trainable,
            temperature=1.0,
            chunk=config.logprob_chunk,
            dropout_keys=batch.dropout_keys,
        )
        return nll_loss(logps, batch.completion_mask)

    return make_update(loss, optimizer, config.micro_batches)
