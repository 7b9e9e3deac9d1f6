"""Rewards against the paper's formulas (eq. 3-4) on a hand-written table, plus properties."""

import random
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jax_tinyr1.rewards import (
    REWARD_FUNCTIONS,
    RewardConfig,
    accuracy_reward,
    batch_rewards,
    format_reward,
    register_reward,
    total_reward,
)
from jax_tinyr1.rewards.accuracy import original_code_accuracy

ML, R0, R1, R2 = 1200, 0.5, 0.5, 1.0


def fr(think: str) -> float:
    """Eq. 3 for a well-formatted completion with this think content."""
    return R0 + min(1.0, len(think.strip()) / ML) * R1


def paper_total(fr_value: float, ar_value: float) -> float:
    """Eq. 4."""
    if fr_value == 0:
        return -(R0 + R1 + R2)
    return ar_value + fr_value if ar_value == R2 else -fr_value


LONG = "frame by frame the red square moves to the left. " * 30  # 1470 characters
assert len(LONG.strip()) > ML

# (completion, label, expected FR, expected AR)
TABLE = [
    ("<think>The ball moves left.</think><answer>B</answer>", "B", fr("The ball moves left."), 1),
    ("<think>The ball moves left.</think><answer>B</answer>", "<answer>B</answer>", fr("The ball moves left."), 1),
    ("<think>The ball moves left.</think><answer>C</answer>", "B", fr("The ball moves left."), 0),
    (f"<think>{LONG}</think><answer>A</answer>", "A", 1.0, 1),
    (f"<think>{LONG}</think><answer>A</answer>", "D", 1.0, 0),
    ("<think>" + "x" * 1200 + "</think><answer>A</answer>", "A", 1.0, 1),
    ("<think>" + "x" * 600 + "</think><answer>A</answer>", "A", 0.75, 1),
    ("<think>" + "x" * 1199 + "</think><answer>A</answer>", "A", 0.5 + 0.5 * 1199 / 1200, 1),
    ("<think>" + "x" * 300 + "</think><answer>A</answer>", "B", 0.625, 0),
    ("  \n<think> x </think>\n\n<answer> B </answer>\n", "B", fr("x"), 1),
    ("<think>x</think>\t<answer>A</answer>", "A", fr("x"), 1),
    (
        "<think>Counting: one, two,\nthree circles.\n</think>\n<answer>C</answer>",
        "C",
        fr("Counting: one, two,\nthree circles."),
        1,
    ),
    (
        "<think>Le cercle bleu apparaît d'abord — puis le carré.</think><answer>D</answer>",
        "D",
        fr("Le cercle bleu apparaît d'abord — puis le carré."),
        1,
    ),
    ("<think></think><answer>A</answer>", "A", 0.5, 1),
    ("<think>   </think><answer>A</answer>", "A", 0.5, 1),
    # Broken formats: FR = 0; the accuracy reward still reads the first answer block.
    ("<think>x<answer>B</answer>", "B", 0.0, 1),
    ("<think>x</think><think>y</think><answer>B</answer>", "B", 0.0, 1),
    ("<think>x</think><answer>B</answer><answer>B</answer>", "B", 0.0, 1),
    ("<answer>B</answer><think>x</think>", "B", 0.0, 1),
    ("Sure! <think>x</think><answer>B</answer>", "B", 0.0, 1),
    ("<think>x</think><answer>B</answer> Hope this helps.", "B", 0.0, 1),
    ("<think>x</think> so <answer>B</answer>", "B", 0.0, 1),
    ("<think><think>x</think></think><answer>B</answer>", "B", 0.0, 1),
    ("<THINK>x</THINK><ANSWER>B</ANSWER>", "B", 0.0, 0),
    ("<think>x</think>", "B", 0.0, 0),
    ("<answer>B</answer>", "B", 0.0, 1),
    ("B", "B", 0.0, 0),
    ("", "B", 0.0, 0),
    ("<think>x</think><answer>B </think></answer>", "B", 0.0, 1),
    ("<think>x</think><answer>A</answer", "A", 0.0, 0),
    # Answer parsing inside a good format.
    ("<think>x</think><answer>\nB. the red ball\n</answer>", "B", fr("x"), 1),
    ("<think>x</think><answer>The answer is (B)</answer>", "B", fr("x"), 1),
    ("<think>x</think><answer>(c)</answer>", "C", fr("x"), 1),
    ("<think>x</think><answer>b</answer>", "B", fr("x"), 1),
    ("<think>x</think><answer>b) a cat</answer>", "B", fr("x"), 1),
    ("<think>x</think><answer>  c  </answer>", "C", fr("x"), 1),
    ("<think>x</think><answer>B, because it moves</answer>", "B", fr("x"), 1),
    ("<think>x</think><answer>Bus</answer>", "B", fr("x"), 1),
    ("<think>x</think><answer>A man walks</answer>", "A", fr("x"), 1),
    ("<think>x</think><answer>dog</answer>", "D", fr("x"), 0),
    ("<think>x</think><answer>Option B</answer>", "B", fr("x"), 0),
    ("<think>x</think><answer></answer>", "B", fr("x"), 0),
    ("<think>x</think><answer>   </answer>", "B", fr("x"), 0),
    ("<think>x</think><answer>(F)</answer>", "F", fr("x"), 1),
    ("<think>x</think><answer>E</answer>", "<answer> E </answer>", fr("x"), 1),
    ("<think>x</think><answer>E</answer>", "e", fr("x"), 1),
    ("<think>x</think><answer>A</answer>", "<answer>B</answer>", fr("x"), 0),
]


def test_table_is_large_enough():
    assert len(TABLE) >= 40


@pytest.mark.parametrize("text, label, want_fr, want_ar", TABLE)
def test_reward_table(text, label, want_fr, want_ar):
    assert format_reward(text) == pytest.approx(want_fr, abs=1e-12)
    assert accuracy_reward(text, label) == want_ar
    assert total_reward(text, label) == pytest.approx(paper_total(want_fr, want_ar), abs=1e-12)


def test_reward_parameters_are_used():
    text = "<think>" + "y" * 100 + "</think><answer>A</answer>"
    assert format_reward(text, max_len=200, r0=0.3, r1=0.4) == pytest.approx(0.3 + 0.5 * 0.4)
    assert accuracy_reward(text, "A", r2=0.7) == 0.7
    assert total_reward("nonsense", "A", r0=0.3, r1=0.4, r2=0.7) == pytest.approx(-1.4)
    assert total_reward(text, "B", max_len=100) == -1.0


def test_original_code_rule_differs_only_when_format_fails_and_answer_is_right():
    good_right = "<think>" + "x" * 600 + "</think><answer>A</answer>"
    good_wrong = "<think>" + "x" * 600 + "</think><answer>B</answer>"
    broken_right = "<answer>A</answer> and <think>x</think>"
    broken_wrong = "<answer>B</answer>"
    for text in (good_right, good_wrong, broken_wrong):
        assert total_reward(text, "A", rule="original_code") == total_reward(text, "A", rule="paper")
    assert total_reward(broken_right, "A", rule="paper") == -2.0
    assert total_reward(broken_right, "A", rule="original_code") == 1.0  # acc + (2 acc - 1) * 0
    # The code reads the whole text when there is no answer block: "A ..." starts with A.
    assert total_reward("A, the ball", "A", rule="original_code") == 1.0
    assert total_reward("A, the ball", "A", rule="paper") == -2.0
    with pytest.raises(ValueError, match="rule"):
        total_reward(good_right, "A", rule="nope")


def test_batch_api_and_registry():
    texts = [TABLE[0][0], TABLE[2][0], "garbage"]
    labels = ["B", "B", "A"]
    out = batch_rewards(texts, labels)
    np.testing.assert_allclose(out["format"], [TABLE[0][2], TABLE[2][2], 0.0])
    np.testing.assert_allclose(out["accuracy"], [1, 0, 0])
    np.testing.assert_allclose(out["total"], [1 + TABLE[0][2], -TABLE[2][2], -2.0], rtol=1e-6)

    if "mentions_red" not in REWARD_FUNCTIONS:
        register_reward("mentions_red")(lambda text, label: float("red" in text))
    texts = ["<think>red square</think><answer>A</answer>", "<think>blue</think><answer>A</answer>"]
    out = batch_rewards(texts, ["A", "A"], RewardConfig(extra={"mentions_red": 0.5}))
    np.testing.assert_allclose(out["mentions_red"], [1.0, 0.0])
    np.testing.assert_allclose(out["total"], [1 + fr("red square") + 0.5, 1 + fr("blue")], rtol=1e-6)
    with pytest.raises(ValueError, match="unknown reward"):
        RewardConfig(extra={"nope": 1.0})
    with pytest.raises(ValueError, match="already registered"):
        register_reward("mentions_red")(lambda t, y: 0.0)
    # The built-in terms cannot be shadowed (a second, default-max_len `format` in the log and the total).
    with pytest.raises(ValueError, match="built-in term"):
        register_reward("format")(lambda t, y: 0.0)
    with pytest.raises(ValueError, match="built-in terms"):
        RewardConfig(extra={"accuracy": 1.0})
    with pytest.raises(ValueError, match="labels"):
        batch_rewards(["a"], [])


PIECES = st.sampled_from(
    [
        "<think>",
        "</think>",
        "<answer>",
        "</answer>",
        "A",
        "b",
        "(C)",
        " ",
        "\n",
        "x" * 50,
        "<think",
        "answer>",
        "D. dog",
    ]
)
TEXTS = st.one_of(st.text(max_size=300), st.lists(PIECES, max_size=12).map("".join))
LABELS = st.one_of(
    st.sampled_from(list("ABCDE")),
    st.sampled_from(list("ABCDE")).map("<answer>{}</answer>".format),
    st.text(max_size=5),
)


@settings(max_examples=1000, deadline=None)
@given(TEXTS, LABELS)
def test_no_input_raises_and_values_stay_in_range(text, label):
    f = format_reward(text)
    assert f == 0.0 or 0.5 <= f <= 1.0
    assert accuracy_reward(text, label) in (0.0, 1.0)
    t = total_reward(text, label)
    assert t == -2.0 or -1.0 <= t <= -0.5 or 1.5 <= t <= 2.0
    total_reward(text, label, rule="original_code")


@settings(max_examples=1000, deadline=None)
@given(st.text(max_size=2000), st.sampled_from(list("ABCDE")), st.sampled_from(list("ABCDE")))
def test_well_formed_completion_gets_eq3_and_eq4(think, answer, label):
    think = think.replace("<", "")  # no tags inside the think content
    text = f"<think>{think}</think>\n<answer>{answer}</answer>"
    assert format_reward(text) == pytest.approx(fr(think))
    assert total_reward(text, label) == pytest.approx(paper_total(fr(think), float(answer == label)))


def _published_accuracy(content: str, sol: str) -> float:
    """The published code's string check, written out from its rules (no math_verify):
    `re.search(r'<answer>(.*?)</answer>', ...)` on each side, stripped, else the stripped
    whole; right when equal or when the label is the answer's first character."""
    sol_match = re.search(r"<answer>(.*?)</answer>", sol)
    ground_truth = sol_match.group(1).strip() if sol_match else sol.strip()
    content_match = re.search(r"<answer>(.*?)</answer>", content)
    student = content_match.group(1).strip() if content_match else content.strip()
    return 1.0 if len(student) > 0 and (student == ground_truth or ground_truth == student[0]) else 0.0


def test_original_code_accuracy_equals_the_published_rule_on_a_fuzzed_corpus():
    rng = random.Random(0)
    pieces = ["A", "b", "(C)", "(d)", " D", "B. a dog", "dog", "", "\n", "  ", "E", "Answer: C", "c)"]
    completions = []
    for _ in range(2500):
        lead = rng.choice(["A", "B", "C", "D", ""])  # most answers start with a letter
        answer = lead + "".join(rng.choice(pieces) for _ in range(rng.randint(0, 2)))
        think = rng.choice(["", "<think>looks at frames</think>", "<think>multi\nline</think>\n"])
        shape = rng.randrange(6)
        if shape == 0:
            text = f"{think}<answer>{answer}</answer>"
        elif shape == 1:  # the answer block spans lines: no match without DOTALL
            text = f"{think}<answer>\n{answer}\n</answer>"
        elif shape == 2:  # no tags at all
            text = answer
        elif shape == 3:  # an unclosed tag
            text = f"{think}<answer>{answer}"
        elif shape == 4:  # two blocks: the first counts
            text = f"<answer>{answer}</answer> then <answer>{rng.choice('ABCD')}</answer>"
        else:
            text = f"{think} {answer} <answer> {answer} </answer> trailing"
        completions.append(text)
    labels = [rng.choice(["A", "B", "<answer>C</answer>", " B ", "<answer>\nD</answer>"]) for _ in completions]
    ours = [original_code_accuracy(t, y) for t, y in zip(completions, labels, strict=True)]
    published = [_published_accuracy(t, y) for t, y in zip(completions, labels, strict=True)]
    assert ours == published
    # The corpus reaches both outcomes and the multi-line case.
    assert 0.05 < sum(ours) / len(ours) < 0.95, sum(ours) / len(ours)
    assert original_code_accuracy("<answer>\nA\n</answer>", "A") == 0.0  # no DOTALL: the whole text


def test_the_figure_5_rules_by_hand():
    """r0 = r1 = 0.5, r2 = 1, ML = 10 characters; think contents of 5 and 20 characters."""
    short_right = "<think>abcde</think><answer>A</answer>"  # LR = 0.5 * 5/10 = 0.25
    long_wrong = "<think>" + "x" * 20 + "</think><answer>B</answer>"  # LR = 0.5 (capped)
    broken_right = "<think>abcde</think> A"
    cases = {  # rule: (short right, long wrong, broken right)
        "format_plus_accuracy": (0.5 + 1.0, 0.5 + 0.0, 0.0),
        "format_with_length_plus_accuracy": (0.75 + 1.0, 1.0 + 0.0, 0.0),
        "paper": (0.75 + 1.0, -1.0, -2.0),
    }
    for rule, expected in cases.items():
        got = tuple(total_reward(t, "A", rule=rule, max_len=10) for t in (short_right, long_wrong, broken_right))
        assert got == pytest.approx(expected), rule
        logged = batch_rewards([short_right, long_wrong], ["A", "A"], RewardConfig(rule=rule, max_len=10))
        # the logged terms are the ones the total is made of
        assert logged["format"] == pytest.approx([expected[0] - 1.0, expected[1]] if rule != "paper" else [0.75, 1.0])
        assert logged["accuracy"] == pytest.approx([1.0, 0.0])


@pytest.mark.parametrize(
    "text, shortcut, reflection",
    [
        ("<think> </think><answer>B</answer>", True, False),  # section 4.3.1's shortcut
        ("<think></think><answer>B</answer>", True, False),
        ("<think>red.</think><answer>A</answer>", True, False),  # 4 characters of reasoning
        ("<think>It is red, so A.</think><answer>A</answer>", False, False),
        ("<think> </think>", False, False),  # no answer block: not in the format, so no shortcut
        ("<think>It is red. Wait, the middle frames are blue.</think><answer>B</answer>", False, True),
        ("<think>Blue, so B. Let me re-examine the clip: yes.</think><answer>B</answer>", False, True),
        ("<think>Blue, so B. Checked: yes.</think><answer>B</answer>", False, True),  # the demo's checks
        ("<think>Blue. Going over the whole clip again, it holds.</think><answer>B</answer>", False, True),
        ("<think>Blue, so B.</think><answer>B</answer> Wait.", False, False),  # after the reasoning
        ("I think it is blue, but let me double-check", False, True),  # no think block: the whole text
        ("<think>The waiter checks the menu; against the wall.</think><answer>C</answer>", False, False),
    ],
)
def test_shortcut_and_reflection_by_hand(text, shortcut, reflection):
    from jax_tinyr1.rewards.behaviour import behaviour_rates, is_shortcut, reflects

    assert (is_shortcut(text), reflects(text)) == (shortcut, reflection)
    rates = behaviour_rates([text, "no tags at all"])
    assert rates == {"shortcut_rate": shortcut / 2, "reflection_rate": reflection / 2}
