"""What a completion does beside what it earns: the shortcut of section 4.3.1 (an answer in the
required format after an empty or near-empty think block) and reflection (re-checking the
answer, as in the paper's Figures 1-3). Logged by GRPO per step and by the evaluation."""

from __future__ import annotations

import re
from collections.abc import Sequence

from jax_tinyr1.rewards.format import think_content

# Think content shorter than this many characters (stripped) is a shortcut: "<think> </think>"
# and the like, where no reasoning was written at all.
SHORTCUT_MAX_CHARS = 8
# A completion reflects when its reasoning matches one of these (case-insensitive): the
# re-checking and backtracking words of the paper's cases, and the demo's stated checks.
REFLECTION_PATTERNS = (
    r"\bwait\b",
    r"\bre-?(?:check|examin|evaluat|consider|visit|think)",
    r"\bdouble[- ]?check",
    r"\b(?:check|look|go|think|watch)\w*(?:\s+\w+){0,6}\s+again\b",
    r"\bon second thought",
    r"\bonce more\b",
    r"\bchecked\b",
    r"\bverif(?:y|ies|ied|ying)\b",
    r"\blet me confirm\b",
)
_REFLECTION = re.compile("|".join(REFLECTION_PATTERNS), re.IGNORECASE)
_THINK = re.compile(r"<think>(.*?)(?:</think>|$)", re.DOTALL)


def is_shortcut(text: str) -> bool:
    """In the required format, with fewer than SHORTCUT_MAX_CHARS characters of reasoning."""
    think = think_content(text)
    return think is not None and len(think) < SHORTCUT_MAX_CHARS


def reflects(text: str) -> bool:
    """The reasoning (the first think block, or the whole text when there is none) re-checks."""
    match = _THINK.search(text)
    return _REFLECTION.search(match.group(1) if match else text) is not None


def behaviour_rates(texts: Sequence[str]) -> dict[str, float]:
    """Shares of `texts` that take the shortcut and that reflect."""
    n = max(len(texts), 1)
    return {
        "shortcut_rate": sum(map(is_shortcut, texts)) / n,
        "reflection_rate": sum(map(reflects, texts)) / n,
    }
