"""Rule-based rewards on decoded text (paper section 3.4)."""

from jax_tinyr1.rewards.accuracy import accuracy_reward
from jax_tinyr1.rewards.combined import (
    REWARD_FUNCTIONS,
    RewardConfig,
    batch_rewards,
    register_reward,
    total_reward,
)
from jax_tinyr1.rewards.format import format_reward

__all__ = [
    "REWARD_FUNCTIONS",
    "RewardConfig",
    "accuracy_reward",
    "batch_rewards",
    "format_reward",
    "register_reward",
    "total_reward",
]
