"""The total reward (paper eq. 4, or the published code's variant), a registry of named
reward functions, and the batch API the trainer calls."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from jax_tinyr1.rewards.accuracy import accuracy_reward, original_code_accuracy
from jax_tinyr1.rewards.format import format_reward

RULES = ("paper", "original_code")


@dataclass(frozen=True)
class RewardConfig:
    rule: str = "paper"
    max_len: int = 1200  # ML
    r0: float = 0.5
    r1: float = 0.5
    r2: float = 1.0
    # Extra registered reward functions added to the total: {name: weight}.
    extra: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"reward rule must be one of {RULES}, got {self.rule!r}")
        if self.max_len <= 0:
            raise ValueError(f"reward max_len must be positive, got {self.max_len}")
        unknown = sorted(set(self.extra) - set(REWARD_FUNCTIONS))
        if unknown:
            raise ValueError(f"unknown reward function(s) {unknown}; registered: {sorted(REWARD_FUNCTIONS)}")


def total_reward(
    text: str,
    label: str,
    *,
    rule: str = "paper",
    max_len: int = 1200,
    r0: float = 0.5,
    r1: float = 0.5,
    r2: float = 1.0,
) -> float:
    """paper:  AR + FR if FR > 0 and right; -FR if FR > 0 and wrong; -(r0 + r1 + r2) if FR = 0.
    original_code: acc + (2 acc - 1) * FR with the code's accuracy; a 0 becomes -(r0 + r1 + r2)
    (-2 with the defaults, the code's constant)."""
    fr = format_reward(text, max_len=max_len, r0=r0, r1=r1)
    if rule == "paper":
        if fr == 0.0:
            return -(r0 + r1 + r2)
        ar = accuracy_reward(text, label, r2=r2)
        return ar + fr if ar > 0 else -fr
    if rule == "original_code":
        acc = original_code_accuracy(text, label)
        r = acc + (2 * acc - 1) * fr
        return -(r0 + r1 + r2) if r == 0 else r
    raise ValueError(f"reward rule must be one of {RULES}, got {rule!r}")


RewardFn = Callable[..., float]
REWARD_FUNCTIONS: dict[str, RewardFn] = {}


def register_reward(name: str):
    """Decorator: make `fn(text, label) -> float` available by name (RewardConfig.extra)."""

    def decorate(fn: RewardFn) -> RewardFn:
        if name in REWARD_FUNCTIONS:
            raise ValueError(f"reward function {name!r} is already registered")
        REWARD_FUNCTIONS[name] = fn
        return fn

    return decorate


register_reward("format")(lambda text, label: format_reward(text))
register_reward("accuracy")(lambda text, label: accuracy_reward(text, label))


def batch_rewards(
    completions: Sequence[str], labels: Sequence[str], config: RewardConfig = RewardConfig()
) -> dict[str, np.ndarray]:
    """Per-completion arrays: `format`, `accuracy`, each extra function, and `total`."""
    if len(completions) != len(labels):
        raise ValueError(f"{len(completions)} completions but {len(labels)} labels")
    c = config
    out = {
        "format": [format_reward(t, max_len=c.max_len, r0=c.r0, r1=c.r1) for t in completions],
        "accuracy": [accuracy_reward(t, y, r2=c.r2) for t, y in zip(completions, labels, strict=True)],
        "total": [
            total_reward(t, y, rule=c.rule, max_len=c.max_len, r0=c.r0, r1=c.r1, r2=c.r2)
            for t, y in zip(completions, labels, strict=True)
        ],
    }
    out = {k: np.asarray(v, np.float32) for k, v in out.items()}
    for name, weight in c.extra.items():
        values = np.asarray(
            [REWARD_FUNCTIONS[name](t, y) for t, y in zip(completions, labels, strict=True)], np.float32
        )
        out[name] = values
        out["total"] = out["total"] + weight * values
    return out
