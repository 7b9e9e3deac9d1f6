"""GRPO: advantages, the objective, and (later) rollout and the train step."""

from jax_tinyr1.grpo.advantages import group_advantages
from jax_tinyr1.grpo.loss import OBJECTIVE_PRESETS, ObjectiveConfig, grpo_loss, k3_kl

__all__ = ["OBJECTIVE_PRESETS", "ObjectiveConfig", "group_advantages", "grpo_loss", "k3_kl"]
