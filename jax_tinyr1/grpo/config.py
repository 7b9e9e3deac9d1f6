"""The GRPO stage's section (`grpo:` in a run's YAML) and the sections it composes."""

from __future__ import annotations

import dataclasses

from jax_tinyr1.derived import derived
from jax_tinyr1.generate.sampling import SamplingConfig
from jax_tinyr1.grpo.loss import ObjectiveConfig
from jax_tinyr1.model.layers import STORAGE_DTYPES
from jax_tinyr1.model.validation import require_dtype
from jax_tinyr1.update.optimizer import OptimizerConfig
from jax_tinyr1.update.params import TRAINABLE_DEFAULT, check_trainable


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
    trainable: tuple[str, ...] = TRAINABLE_DEFAULT  # parts of the model the update trains

    def __post_init__(self):
        if self.group_size < 1:
            raise ValueError(f"grpo.group_size must be >= 1, got {self.group_size}")
        if self.updates_per_rollout < 1 or self.micro_batches < 1 or self.logprob_chunk < 1:
            raise ValueError("grpo.updates_per_rollout, grpo.micro_batches and grpo.logprob_chunk must be >= 1")
        require_dtype("grpo.reference_dtype", self.reference_dtype, STORAGE_DTYPES)
        check_trainable(self.trainable, "grpo.trainable")
