"""Accuracy reward: the option letter inside <answer>...</answer> compared with the label."""

from __future__ import annotations

from jax_tinyr1.data.answers import answer_content, label_letter, parse_option_letter


def accuracy_reward(text: str, label: str, *, r2: float = 1.0) -> float:
    """r2 when the parsed answer letter equals the label's, else 0 (unparseable included)."""
    answer = answer_content(text)
    if answer is None:
        return 0.0
    predicted = parse_option_letter(answer)
    return r2 if predicted is not None and predicted == label_letter(label) else 0.0


def original_code_accuracy(text: str, label: str) -> float:
    """The published code's rule: the first answer block's content (the whole text if there is
    none), stripped; right when it equals the label letter or starts with it."""
    answer = answer_content(text)
    answer = (text if answer is None else answer).strip()
    gold = label_letter(label) or label.strip()
    return 1.0 if answer == gold or (answer[:1] == gold) else 0.0
