"""Accuracy reward: the option letter inside <answer>...</answer> compared with the label."""

from __future__ import annotations

import re

from jax_tinyr1.data.answers import answer_content, label_letter, parse_option_letter


def accuracy_reward(text: str, label: str, *, r2: float = 1.0) -> float:
    """r2 when the parsed answer letter equals the label's, else 0 (unparseable included)."""
    answer = answer_content(text)
    if answer is None:
        return 0.0
    predicted = parse_option_letter(answer)
    return r2 if predicted is not None and predicted == label_letter(label) else 0.0


# The published code's answer pattern: no DOTALL, so a block spanning lines does not count.
_ORIGINAL_ANSWER = re.compile(r"<answer>(.*?)</answer>")


def _math_verified(text: str, label: str) -> bool:
    """The published code's first check, math_verify's parse/verify, when the package is
    installed (the `original-reward` extra); False without it."""
    try:
        from math_verify import parse, verify
    except ImportError:
        return False
    try:
        return float(verify(parse(text), parse(label))) > 0
    except Exception:  # math_verify gives up on text it cannot read; the string check follows
        return False


def original_code_accuracy(text: str, label: str) -> float:
    """The published code's rule, exactly: math_verify first (when installed); else the first
    answer block's content of the label and of the text (each the whole string, stripped, when
    it has none; no DOTALL), right when they are equal or the label equals the answer's first
    character."""
    if _math_verified(text, label):
        return 1.0
    gold_match = _ORIGINAL_ANSWER.search(label)
    gold = gold_match.group(1).strip() if gold_match else label.strip()
    match = _ORIGINAL_ANSWER.search(text)
    answer = match.group(1).strip() if match else text.strip()
    return 1.0 if answer and (answer == gold or gold == answer[0]) else 0.0
