"""Format reward (paper section 3.4, eq. 3): FR = r0 + min(1, Len / ML) * r1, or 0."""

from __future__ import annotations

import re

TAGS = ("<think>", "</think>", "<answer>", "</answer>")
# A think block then an answer block; only whitespace around and between them.
_THINK_THEN_ANSWER = re.compile(r"\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*", re.DOTALL)


def think_content(text: str) -> str | None:
    """The stripped think content when the text has the required format, else None."""
    if any(text.count(tag) != 1 for tag in TAGS):
        return None
    match = _THINK_THEN_ANSWER.fullmatch(text)
    return None if match is None else match.group(1).strip()


def format_reward(text: str, *, max_len: int = 1200, r0: float = 0.5, r1: float = 0.5) -> float:
    """r0 for the format plus a length reward growing linearly up to `max_len` characters of
    stripped think content; 0 if any of the four tags is missing, repeated or misplaced, or
    anything but whitespace stands outside the two blocks."""
    think = think_content(text)
    if think is None:
        return 0.0
    return r0 + min(1.0, len(think) / max_len) * r1
