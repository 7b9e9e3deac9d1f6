"""The SFT stage's step: encode the videos, then one update on (prompt, response) pairs."""

from __future__ import annotations

import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jax_tinyr1.sft.objective import Batch, SFTConfig
from jax_tinyr1.sft.programs import sft_programs
from jax_tinyr1.update.trainer import Trainer


class SFTTrainer(Trainer):
    def __init__(self, model: nnx.Module, config: SFTConfig, *, pad_id: int, mesh: Mesh | None = None):
        super().__init__(
            model,
            trainable=config.trainable,
            optimizer=config.optimizer,
            pad_id=pad_id,
            programs=lambda graphdef, optimizer, _mesh: sft_programs(graphdef, config, optimizer),
            mesh=mesh,
        )
        self.config = config

    def step(
        self, prompt_ids: np.ndarray, prompt_mask: np.ndarray, pixels: np.ndarray, response_ids, response_mask, key=None
    ) -> dict[str, float]:
        """One update on this process's examples (all processes call it together); `key` (the
        step's) draws the adapters' dropout when there is one."""
        prompt_ids, response_ids = self.global_rows(prompt_ids, response_ids, pad_value=self.pad_id)
        prompt_mask, response_mask = self.global_rows(prompt_mask, response_mask)
        batch = Batch(
            self.to_global(prompt_ids),
            self.to_global(prompt_mask),
            self.encode_local(pixels),
            self.to_global(response_ids),
            self.to_global(response_mask),
            None if key is None else self.dropout_keys(key, len(prompt_ids)),
        )
        metrics = self.update(batch)
        self.step_count += 1
        return {k: float(metrics[k]) for k in ("nll", "grad_norm", "nonfinite")}
