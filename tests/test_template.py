"""The qwen2_base template, character for character, and tokenization in pieces."""

import pytest

from jax_tinyr1.data.template import (
    IGNORE_INDEX,
    IMAGE_TOKEN_INDEX,
    grpo_question,
    prompt_ids,
    render_prompt,
    sft_example,
)
from jax_tinyr1.data.tokenizer import build_tokenizer, load_tokenizer

PROBLEM = "What does the red square do?\nA. moves left\nB. moves right\nC. stays\nD. spins"
EXPECTED_GRPO_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions. USER: <image>\n"
    "What does the red square do?\nA. moves left\nB. moves right\nC. stays\nD. spins"
    " Output the thinking process in <think> </think> and final answer (option) in <answer> </answer> tags."
    " ASSISTANT:"
)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    corpus = [EXPECTED_GRPO_PROMPT, "<think>It moves to the left.</think><answer>A</answer>"] * 20
    return build_tokenizer(corpus, tmp_path_factory.mktemp("tok"), vocab_size=400)


def test_grpo_prompt_character_for_character():
    assert render_prompt(grpo_question(PROBLEM)) == EXPECTED_GRPO_PROMPT
    # <image> anywhere in the question is moved to the front on its own line.
    assert render_prompt(grpo_question("  <image> " + PROBLEM)) == EXPECTED_GRPO_PROMPT
    assert render_prompt(PROBLEM + "<image>").endswith("D. spins ASSISTANT:")


def test_tokenized_in_pieces_around_one_placeholder(tokenizer):
    ids = prompt_ids(tokenizer, grpo_question(PROBLEM))
    p = ids.index(IMAGE_TOKEN_INDEX)
    before, after = EXPECTED_GRPO_PROMPT.split("<image>")
    assert ids[:p] == tokenizer(before, add_special_tokens=False)["input_ids"]
    assert ids[p + 1 :] == tokenizer(after, add_special_tokens=False)["input_ids"]
    assert ids.count(IMAGE_TOKEN_INDEX) == 1


def test_sft_labels_supervise_only_the_response_and_eos(tokenizer):
    answer = "<think>It moves to the left.</think><answer>A</answer>"
    example = sft_example(tokenizer, "<image>\n" + PROBLEM, answer)
    n_prompt = len(prompt_ids(tokenizer, PROBLEM))
    assert example.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    supervised = example.labels[n_prompt:]
    assert supervised == example.input_ids[n_prompt:] and supervised[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(supervised) == " " + answer + "<|endoftext|>"


def test_tokenizer_round_trip_and_special_tokens(tokenizer, tmp_path):
    assert tokenizer.pad_token == tokenizer.eos_token == "<|endoftext|>"
    text = "<think>ünïcode — and 12 frames</think><answer>B</answer>"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text  # byte-level: lossless
    assert "<think>" not in tokenizer.get_vocab() or tokenizer.convert_tokens_to_ids("<think>") not in (
        tokenizer.all_special_ids
    )
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "missing")
