"""The host side of a GRPO step: encode videos -> sample G completions per prompt -> decode
-> rewards -> group advantages -> mu updates -> metrics (named as TRL names them).

Several processes may drive one mesh: each passes its own block of the global batch; the
small host-side pieces (prompt ids, labels, sampled tokens) are gathered so that every process
computes the same rewards and advantages, and the videos go straight to the devices of the
process that read them (see `multihost`)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jax_tinyr1.grpo import multihost
from jax_tinyr1.grpo.advantages import group_advantages
from jax_tinyr1.grpo.rollout import Rollout, generate
from jax_tinyr1.grpo.step import (
    Batch,
    GRPOConfig,
    batch_shardings,
    jit_update,
    make_logps,
    make_optimizer,
    make_update,
    opt_state_shardings,
    param_shardings,
    split_params,
)
from jax_tinyr1.model.sharding import make_mesh
from jax_tinyr1.rewards import RewardConfig, batch_rewards


def encode_program(vision_graphdef):
    """(trainable, frozen, pixels [B, F, H, W, 3]) -> frozen vision features [B, F * tokens,
    width], once per prompt and step (no gradient)."""

    def encode(trainable, frozen, pixels_bfhwc):
        vision = nnx.merge(vision_graphdef, {**frozen, **trainable}["vision"])
        b, f = pixels_bfhwc.shape[:2]
        feats = vision(pixels_bfhwc.reshape(b * f, *pixels_bfhwc.shape[2:]))
        return jax.lax.stop_gradient(feats.reshape(b, f * feats.shape[1], feats.shape[2]))

    return encode


def rollout_program(graphdef, config: GRPOConfig, decode_path: str = "auto"):
    """(trainable, frozen, prompt ids, mask, features, key) -> G sampled completions per prompt."""

    def rollout(trainable, frozen, prompt_ids, prompt_mask, features, key) -> Rollout:
        model = nnx.merge(graphdef, {**frozen, **trainable})
        embeds, mask = model.embed_inputs(prompt_ids, prompt_mask, model.connector(features))
        return generate(model.llm, embeds, mask, key, config.sampling, config.group_size, decode_path=decode_path)

    return rollout


def reference_copy(trainable: dict, config: GRPOConfig) -> dict | None:
    """The frozen reference policy (the trainable weights as they start, in
    `reference_dtype`), or None when the objective has no KL term."""
    if config.objective.beta == 0:
        return None
    dtype = jnp.dtype(config.reference_dtype)
    return jax.tree.map(lambda x: x.astype(dtype) if x.dtype != dtype else jnp.copy(x), trainable)


class GRPOTrainer:
    """Owns the sharded parameters, the optimizer state and the compiled functions."""

    def __init__(
        self,
        model: nnx.Module,
        config: GRPOConfig,
        *,
        mesh: Mesh | None = None,
        tokenizer=None,
        reward_config: RewardConfig = RewardConfig(),
    ):
        self.config, self.tokenizer, self.reward_config = config, tokenizer, reward_config
        self.mesh = mesh or make_mesh(devices=jax.devices()[:1])
        state = nnx.state(model)
        self.graphdef, trainable, frozen = split_params(model, config.trainable)
        frozen_parts = tuple(frozen)
        self.shardings = {
            "trainable": param_shardings(state, self.mesh, config.trainable),
            "frozen": param_shardings(state, self.mesh, frozen_parts),
        }
        self.trainable = jax.device_put(trainable, self.shardings["trainable"])
        self.frozen = jax.device_put(frozen, self.shardings["frozen"])
        self.optimizer = make_optimizer(config.optimizer)
        abstract_opt = jax.eval_shape(self.optimizer.init, self.trainable)
        self.shardings["opt_state"] = opt_state_shardings(
            self.optimizer, abstract_opt, self.shardings["trainable"], self.mesh
        )
        self.opt_state = jax.jit(self.optimizer.init, out_shardings=self.shardings["opt_state"])(self.trainable)
        self.reference = reference_copy(self.trainable, config)
        self._update = make_update(self.graphdef, config, self.optimizer)
        self._jitted_update = None
        self._reshard_cache = {}
        self._logps = jax.jit(make_logps(self.graphdef, config))
        self._encode = jax.jit(encode_program(nnx.graphdef(model.vision)))
        self._rollout = jax.jit(rollout_program(self.graphdef, config))
        self.step_count = 0

    def encode(self, pixels_bfhwc) -> jax.Array:
        with jax.set_mesh(self.mesh):  # activations follow the data-parallel axes
            return self._encode(self.trainable, self.frozen, pixels_bfhwc)

    def rollout(self, prompt_ids, prompt_mask, features, key) -> Rollout:
        with jax.set_mesh(self.mesh):
            return self._rollout(self.trainable, self.frozen, prompt_ids, prompt_mask, features, key)

    def logps(self, trainable, batch: Batch) -> jax.Array:
        with jax.set_mesh(self.mesh):
            return self._logps(trainable, self.frozen, batch)

    def update(self, batch: Batch):
        if self._jitted_update is None:
            self._jitted_update = jit_update(self._update, self.mesh, self.shardings, batch)
        batch = self._reshard(batch, batch_shardings(self.mesh, batch))
        with jax.set_mesh(self.mesh):
            self.trainable, self.opt_state, metrics = self._jitted_update(
                self.trainable, self.frozen, self.opt_state, batch
            )
        return metrics

    def _reshard(self, tree, shardings):
        """Place (possibly multi-host) arrays on the given shardings (a no-op where they are);
        one compiled identity per sharding layout."""
        move = self._reshard_cache.get(shardings)
        if move is None:
            move = self._reshard_cache[shardings] = jax.jit(lambda t: t, out_shardings=shardings)
        return move(tree)

    def global_rows(self, *local: np.ndarray, pad_value: int = 0) -> list[np.ndarray]:
        """The whole batch's rows of per-process token arrays (right padded to one width)."""
        return [multihost.allgather_rows(multihost.pad_columns(x, pad_value)) for x in local]

    # -- one step -------------------------------------------------------------------------
    def step(
        self, prompt_ids: np.ndarray, prompt_mask: np.ndarray, pixels: np.ndarray, labels: Sequence[str], key: jax.Array
    ) -> dict[str, float]:
        """One GRPO step on this process's B prompts (ids with one image placeholder, right
        padded); with several processes, all call it together with their own blocks."""
        start = time.perf_counter()
        c, g = self.config, self.config.group_size
        sample_key, noise_key = jax.random.split(key)
        pad = self.config.sampling.pad_id
        (prompt_ids,) = self.global_rows(prompt_ids, pad_value=pad)
        (prompt_mask,) = self.global_rows(prompt_mask)
        labels = multihost.allgather_strings(list(labels))
        features = self.encode(multihost.global_batch(self.mesh, pixels))
        out = self.rollout(
            multihost.replicated_to_global(self.mesh, prompt_ids),
            multihost.replicated_to_global(self.mesh, prompt_mask),
            features,
            sample_key,
        )
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
            prompt_ids=multihost.replicated_to_global(self.mesh, np.repeat(prompt_ids, g, axis=0)),
            prompt_mask=multihost.replicated_to_global(self.mesh, np.repeat(prompt_mask, g, axis=0)),
            features=features,
            tokens=out.tokens,
            completion_mask=out.completion_mask,
            advantages=multihost.replicated_to_global(self.mesh, np.asarray(advantages)),
            old_logps=None,
            ref_logps=None,
        )
        extra = {}
        if self.reference is not None:
            batch = batch._replace(ref_logps=self.logps(self.reference, batch))
        if c.updates_per_rollout > 1:  # real old-policy log-probs for the later updates
            old = self.logps(self.trainable, batch)
            batch = batch._replace(old_logps=old)
            difference = np.abs(multihost.to_host(old) - multihost.to_host(out.logps)) * cmask
            extra["sampler_logp_abs_diff"] = float(difference.sum() / max(cmask.sum(), 1))
        for _ in range(c.updates_per_rollout):
            metrics = self.update(batch)
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
            "frac_reward_zero_std": float(adv_metrics["frac_reward_zero_std"]),
            **{k: float(v) for k, v in metrics.items()},
            **extra,
            "step_time": elapsed,
            "tokens_per_second": float(lengths.sum() / elapsed),
        }
