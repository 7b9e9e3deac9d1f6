"""Rule-based rewards on decoded text (paper section 3.4)."""

from jax_tinyr1.rewards.accuracy import accuracy_reward, answer_content, parse_option_letter
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
    "answer_content",
    "batch_rewards",
    "format_reward",
    "parse_option_letter",
    "register_reward",
    "total_reward",
]
