"""The GRPO stage's step: encode videos -> sample G completions per prompt -> decode ->
rewards -> group advantages -> reference (and old-policy) log-probs -> mu updates -> metrics
(named as TRL names them). With several processes, every one computes the same rewards and
advantages from the gathered completions (see `update.trainer`)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jax_tinyr1.generate.sampler import Rollout
from jax_tinyr1.grpo.advantages import group_advantages
from jax_tinyr1.grpo.config import GRPOConfig
from jax_tinyr1.grpo.programs import grpo_programs
from jax_tinyr1.grpo.update import Batch
from jax_tinyr1.model.layers import DTYPES
from jax_tinyr1.model.lora import split_adapters
from jax_tinyr1.rewards import RewardConfig, batch_rewards
from jax_tinyr1.rewards.behaviour import behaviour_rates
from jax_tinyr1.update import multihost
from jax_tinyr1.update.trainer import Trainer


def reference_copy(trainable: dict, config: GRPOConfig) -> dict | None:
    """What the frozen reference policy keeps of its own: the trainable weights as they start,
    in `reference_dtype`, but for adapters (the reference switches them off, see
    `make_reference_logps`: with LoRA only a fully trained connector is copied); None when
    the objective has no KL term."""
    if config.objective.beta == 0:
        return None
    dtype = DTYPES[config.reference_dtype]
    base, _ = split_adapters(trainable)
    return jax.tree.map(lambda x: x.astype(dtype) if x.dtype != dtype else jnp.copy(x), base)


def device_memory(mesh: Mesh | None) -> int | None:
    """Bytes one device of `mesh` gives JAX's allocator, when the platform says (GPUs do)."""
    device = (jax.devices() if mesh is None else mesh.devices.flat)[0]
    try:
        stats = device.memory_stats()
    except (AttributeError, NotImplementedError, jax.errors.JaxRuntimeError):
        return None
    return None if not stats else stats.get("bytes_limit")


class GRPOTrainer(Trainer):
    def __init__(
        self,
        model: nnx.Module,
        config: GRPOConfig,
        *,
        mesh: Mesh | None = None,
        tokenizer=None,
        reward_config: RewardConfig = RewardConfig(),
    ):
        super().__init__(
            model,
            trainable=config.trainable,
            optimizer=config.optimizer,
            pad_id=config.sampling.pad_id,
            programs=lambda graphdef, optimizer, mesh: grpo_programs(
                graphdef, config, optimizer, device_memory=device_memory(mesh)
            ),
            mesh=mesh,
        )
        self.config, self.tokenizer, self.reward_config = config, tokenizer, reward_config
        self.reference = reference_copy(self.trainable, config)
        self._logps = jax.jit(self.programs["old_logps"].fn)
        self._reference_logps = jax.jit(self.programs["reference"].fn)
        self._rollout = jax.jit(self.programs["rollout"].fn)

    def rollout(self, prompt_ids, prompt_mask, vision_input, key) -> Rollout:
        with jax.set_mesh(self.mesh):
            return self._rollout(self.trainable, self.frozen, prompt_ids, prompt_mask, vision_input, key)

    def logps(self, trainable, batch: Batch) -> jax.Array:
        with jax.set_mesh(self.mesh):
            return self._logps(trainable, self.frozen, batch)

    def reference_logps(self, batch: Batch) -> jax.Array:
        with jax.set_mesh(self.mesh):
            return self._reference_logps(self.reference, split_adapters(self.trainable)[1], self.frozen, batch)

    # -- one step -------------------------------------------------------------------------
    def step(
        self, prompt_ids: np.ndarray, prompt_mask: np.ndarray, pixels: np.ndarray, labels: Sequence[str], key: jax.Array
    ) -> dict[str, float]:
        """One GRPO step on this process's B prompts (ids with one image placeholder, right
        padded); with several processes, all call it together with their own blocks."""
        start = time.perf_counter()
        c, g = self.config, self.config.group_size
        sample_key, noise_key = jax.random.split(key)
        (prompt_ids,) = self.global_rows(prompt_ids, pad_value=self.pad_id)
        (prompt_mask,) = self.global_rows(prompt_mask)
        labels = multihost.allgather_strings(list(labels))
        vision_input = self.encode_local(pixels)
        out = self.rollout(self.to_global(prompt_ids), self.to_global(prompt_mask), vision_input, sample_key)
        tokens, cmask = multihost.to_host(out.tokens), multihost.to_host(out.completion_mask)
        texts = [
            self.tokenizer.decode(t[m > 0], skip_special_tokens=True).strip()
            for t, m in zip(tokens, cmask, strict=True)
        ]
        rewards = batch_rewards(texts, [y for y in labels for _ in range(g)], self.reward_config)
        advantages, adv_metrics = group_advantages(
            jnp.asarray(rewards["total"]),
            g,
            scale=c.objective.advantage_scale,
            noise_std=c.objective.noise_std,
            key=noise_key,
        )
        batch = Batch(
            prompt_ids=self.to_global(np.repeat(prompt_ids, g, axis=0)),
            prompt_mask=self.to_global(np.repeat(prompt_mask, g, axis=0)),
            vision_input=vision_input,
            tokens=out.tokens,
            completion_mask=out.completion_mask,
            advantages=self.to_global(np.asarray(advantages)),
            old_logps=None,
            ref_logps=None,
            dropout_keys=self.dropout_keys(key, len(tokens)),
        )
        extra = {}
        if self.reference is not None:
            batch = batch._replace(ref_logps=self.reference_logps(batch))
        if c.updates_per_rollout > 1:  # real old-policy log-probs for the later updates
            old = self.logps(self.trainable, batch)
            batch = batch._replace(old_logps=old)
            difference = np.abs(multihost.to_host(old) - multihost.to_host(out.logps)) * cmask
            extra["sampler_logp_abs_diff"] = float(difference.sum() / max(cmask.sum(), 1))
        nonfinite = 0.0
        for _ in range(c.updates_per_rollout):
            metrics = self.update(batch)
            nonfinite = max(nonfinite, float(metrics["nonfinite"]))  # any of the mu updates
        self.step_count += 1
        lengths = cmask.sum(axis=1)
        elapsed = time.perf_counter() - start
        return {
            "reward": float(rewards["total"].mean()),
            "reward_std": float(adv_metrics["reward_std"]),
            **{f"rewards/{k}/mean": float(v.mean()) for k, v in rewards.items() if k != "total"},
            "completions/mean_length": float(lengths.mean()),
            "completions/min_length": float(lengths.min()),
            "completions/max_length": float(lengths.max()),
            "completions/clipped_ratio": float(multihost.to_host(out.truncated).mean()),
            **{f"completions/{k}": v for k, v in behaviour_rates(texts).items()},
            "frac_reward_zero_std": float(adv_metrics["frac_reward_zero_std"]),
            **{k: float(v) for k, v in metrics.items()},
            "nonfinite": nonfinite,
            **extra,
            "step_time": elapsed,
            "tokens_per_second": float(lengths.sum() / elapsed),
        }
