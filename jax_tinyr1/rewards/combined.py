"""The total reward under a named rule (paper eq. 4; the sums of the paper's Figure 5 ablation;
the published code's variant), a registry of named extra reward functions, and the batch API
the trainer calls."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from jax_tinyr1.rewards.accuracy import accuracy_reward, original_code_accuracy
from jax_tinyr1.rewards.format import format_reward

# paper: eq. 4, the format reward with its length term and a penalty for a wrong answer.
# format_plus_accuracy: the sum "other works" use, the format reward without the length term
#   (FR = r0 for the format alone); the rule the paper started from (section 4.3.2, Fig. 5).
# format_with_length_plus_accuracy: FR with its length term plus AR, no penalty (Fig. 5).
# original_code: the published code's rule.
RULES = ("paper", "format_plus_accuracy", "format_with_length_plus_accuracy", "original_code")
# What every rule reports beside the total: extra functions may not take these names.
BUILT_IN_TERMS = ("format", "accuracy", "total")


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
        clash = sorted(set(self.extra) & set(BUILT_IN_TERMS))
        if clash:
            raise ValueError(f"reward.extra: {clash} are built-in terms of every rule, already in the total")
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
    format_plus_accuracy: r0 (the format, no length term) + AR, each 0 when not earned.
    format_with_length_plus_accuracy: FR + AR, each 0 when not earned.
    original_code: acc + (2 acc - 1) * FR with the code's accuracy; a 0 becomes -(r0 + r1 + r2)
    (-2 with the defaults, the code's constant)."""
    fr = rule_format_reward(text, rule=rule, max_len=max_len, r0=r0, r1=r1)
    if rule in ("format_plus_accuracy", "format_with_length_plus_accuracy"):
        return fr + accuracy_reward(text, label, r2=r2)
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


def rule_format_reward(text: str, *, rule: str, max_len: int, r0: float, r1: float) -> float:
    """The format reward a rule adds: without the length term for format_plus_accuracy."""
    fr = format_reward(text, max_len=max_len, r0=r0, r1=r1)
    return (r0 if fr > 0 else 0.0) if rule == "format_plus_accuracy" else fr


RewardFn = Callable[..., float]
REWARD_FUNCTIONS: dict[str, RewardFn] = {}


def register_reward(name: str):
    """Decorator: make `fn(text, label) -> float` available by name (RewardConfig.extra)."""

    def decorate(fn: RewardFn) -> RewardFn:
        if name in BUILT_IN_TERMS:
            raise ValueError(f"reward function {name!r}: a built-in term of every rule")
        if name in REWARD_FUNCTIONS:
            raise ValueError(f"reward function {name!r} is already registered")
        REWARD_FUNCTIONS[name] = fn
        return fn

    return decorate


def batch_rewards(
    completions: Sequence[str], labels: Sequence[str], config: RewardConfig = RewardConfig()
) -> dict[str, np.ndarray]:
    """Per-completion arrays: `format` and `accuracy` as the rule adds them, each extra
    function, and `total`."""
    if len(completions) != len(labels):
        raise ValueError(f"{len(completions)} completions but {len(labels)} labels")
    c = config
    out = {
        "format": [rule_format_reward(t, rule=c.rule, max_len=c.max_len, r0=c.r0, r1=c.r1) for t in completions],
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
