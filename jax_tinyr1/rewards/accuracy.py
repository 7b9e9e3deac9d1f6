"""Accuracy reward: the option letter inside <answer>...</answer> compared with the label."""

from __future__ import annotations

import re
import string

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_PARENTHESISED = re.compile(r"\(([A-Za-z])\)")
OPTION_LETTERS = string.ascii_uppercase[:10]  # A..J: more options than any benchmark has


def answer_content(text: str) -> str | None:
    """Content of the first <answer>...</answer> block (may span lines), or None."""
    match = _ANSWER.search(text)
    return None if match is None else match.group(1)


def parse_option_letter(answer: str, letters: str = OPTION_LETTERS) -> str | None:
    """The option letter an answer names, upper-cased, or None.

    Its first character when that is an option letter: an upper-case one always ("B",
    "B. a dog", "Bus" -> B, as the original's first-character rule), a lower-case one only
    when no letter follows it ("b", "b)"; "dog" is a word, not option D). Otherwise the
    first "(X)" inside it.
    """
    answer = answer.strip()
    if answer:
        first = answer[0]
        word_follows = len(answer) > 1 and answer[1].isalpha()
        if first.upper() in letters and (first.isupper() or not word_follows):
            return first.upper()
    match = _PARENTHESISED.search(answer)
    if match and match.group(1).upper() in letters:
        return match.group(1).upper()
    return None


def label_letter(label: str) -> str | None:
    """Labels come as "X" or as "<answer>X</answer>"."""
    inner = answer_content(label)
    return parse_option_letter(label if inner is None else inner)


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
