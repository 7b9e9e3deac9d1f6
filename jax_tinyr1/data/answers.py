"""The answer conventions, in one place: the `<answer>...</answer>` block, option letters,
and how a label or a model's output names an option. Read by the annotation readers (labels),
the rewards (completions) and the evaluation (predictions)."""

from __future__ import annotations

import re
import string

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
# The original evaluation scripts' pattern: whitespace trimmed, and no DOTALL (an answer block
# spanning lines does not match).
_ORIGINAL_EVAL_ANSWER = re.compile(r"<answer>\s*(.*?)\s*</answer>")
_PARENTHESISED = re.compile(r"\(([A-Za-z])\)")
LETTERS = string.ascii_uppercase  # option i is LETTERS[i]
OPTION_LETTERS = LETTERS[:10]  # A..J: more options than any benchmark has
# An option line as questions lay them out: "A. text", "(B) text", "C) text".
OPTION_LINE = re.compile(r"^\s*\(?([A-Z])[.)]\s*(.*\S)?\s*$")


def option_lines(options) -> str:
    """ "A. first\\nB. second..." as the questions list their options."""
    return "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))


def lettered_options(options) -> list[str]:
    """Option lines for a question asked by hand (`ask`, the server): lines already lettered
    "A. ..." are kept; plain texts are lettered A, B, ... in order. Refused (ValueError, with
    the reason): fewer than two options, lettered and plain lines mixed, letters that are not
    A, B, C, ... in order, more options than OPTION_LETTERS."""
    options = [str(o).strip() for o in options]
    if len(options) < 2:
        raise ValueError(f"a multiple-choice question needs at least two options, got {len(options)}")
    if len(options) > len(OPTION_LETTERS):
        raise ValueError(f"at most {len(OPTION_LETTERS)} options, got {len(options)}")
    matches = [OPTION_LINE.match(o) for o in options]
    if not any(matches):
        return option_lines(options).splitlines()
    if not all(matches):
        plain = [o for o, m in zip(options, matches, strict=True) if not m]
        raise ValueError(f'give every option with its letter ("A. ...") or none: {plain[0]!r} has none')
    letters = "".join(m.group(1) for m in matches)
    if letters != LETTERS[: len(options)]:
        raise ValueError(f"option letters must run A, B, C, ... in order, got {', '.join(letters)}")
    return options


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


def parse_prediction(text: str, num_options: int, *, tagged: bool = True, letters: str | None = None) -> str | None:
    """The option letter inside <answer>...</answer>, or None. `tagged=False` reads the whole
    text as the answer (a model asked the plain question answers with the letter alone).
    `letters`: the question's option letters when they are not A, B, ... in order."""
    content = answer_content(text) if tagged else text
    return None if content is None else parse_option_letter(content, letters or LETTERS[:num_options])


def original_prediction(text: str, choices, rng) -> tuple[str | None, bool]:
    """(the letter, whether it was guessed) by the original evaluation scripts' rule: in the
    first answer block, its first character when it is a choice letter in either case, else
    the first "(X)" or "(x)" in choice order, else a random choice from `rng`; no answer
    block: a random choice; an empty one: None (scored wrong)."""
    match = _ORIGINAL_EVAL_ANSWER.search(text)
    if match is None:
        return rng.choice(list(choices)), True
    response = match.group(1).strip()
    if not response:
        return None, False
    if response[0] in choices or response[0] in [c.lower() for c in choices]:
        return response[0].upper(), False
    for choice in choices:
        if f"({choice})" in response or f"({choice.lower()})" in response:
            return choice, False
    return rng.choice(list(choices)), True
