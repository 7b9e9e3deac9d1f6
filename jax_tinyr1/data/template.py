"""The `qwen2_base` conversation template of TinyLLaVA-Video, and prompt tokenization.

    system:     "A chat between ... questions. "
    user:       "USER: {question} "
    assistant:  "ASSISTANT: {answer}<|endoftext|>"   (a generation prompt ends "ASSISTANT:")

A question's `<image>` is removed, the question stripped and prefixed with "<image>\\n". The
prompt is tokenized in pieces split on `<image>`, joined by the placeholder id (-200) that
the model replaces with the visual embeddings. Qwen has no BOS token, so nothing is
prepended.
"""

from __future__ import annotations

from dataclasses import dataclass

from jax_tinyr1.data.policy import DataError

IMAGE_TOKEN = "<image>"
IMAGE_TOKEN_INDEX = -200  # the placeholder id the model replaces with the visual tokens
IGNORE_INDEX = -100  # a label that is not supervised
# Qwen's end of text: the end of every response, and the padding of every batch (the
# padded positions are masked, so any id would do; one id means one source).
EOS_TOKEN = "<|endoftext|>"
SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions. "
)
REASONING_INSTRUCTION = (
    "Output the thinking process in <think> </think> and final answer (option) in <answer> </answer> tags."
)
REASONING_SUFFIX = " " + REASONING_INSTRUCTION  # how training appends it


def grpo_question(problem: str) -> str:
    """The question the paper's GRPO stage asks: the problem, a space, the format instruction."""
    return problem + REASONING_SUFFIX


def eval_question(block: str) -> str:
    """The question the original's evaluation scripts ask: the benchmark's question block
    (options included), a newline, the format instruction."""
    return block + "\n" + REASONING_INSTRUCTION


def format_question(question: str) -> str:
    question = question.replace(IMAGE_TOKEN, "").strip()
    return f"{IMAGE_TOKEN}\n{question}".strip()


def render_prompt(question: str) -> str:
    """The generation prompt for one question (one user turn)."""
    return f"{SYSTEM}USER: {format_question(question)} ASSISTANT:"


def tokenize_with_image(tokenizer, text: str) -> list[int]:
    """Token ids of `text` with each `<image>` replaced by the placeholder id."""
    pieces = [tokenizer(piece, add_special_tokens=False)["input_ids"] for piece in text.split(IMAGE_TOKEN)]
    ids = list(pieces[0])
    for piece in pieces[1:]:
        ids += [IMAGE_TOKEN_INDEX, *piece]
    return ids


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where not supervised


def prompt_ids(tokenizer, question: str) -> list[int]:
    ids = tokenize_with_image(tokenizer, render_prompt(question))
    if ids.count(IMAGE_TOKEN_INDEX) != 1:
        raise DataError(f"a prompt must hold exactly one {IMAGE_TOKEN}, got {ids.count(IMAGE_TOKEN_INDEX)}")
    return ids


def sft_example(tokenizer, question: str, answer: str) -> Example:
    """Prompt + " {answer}<|endoftext|>"; only the response and the end token are supervised
    (the original masks the tokens of everything up to and including "ASSISTANT:")."""
    prompt = prompt_ids(tokenizer, question)
    response = tokenizer(" " + answer, add_special_tokens=False)["input_ids"] + [eos_id(tokenizer)]
    return Example(prompt + response, [IGNORE_INDEX] * len(prompt) + response)


def eos_id(tokenizer) -> int:
    """The id that ends a response (and stops sampling). A token missing from a vocabulary
    converts to the unknown token's id, or to None without one; the published tokenizers
    name <|endoftext|> itself their unknown token, so the test is whether the id is the token."""
    token = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    if token is None or tokenizer.convert_ids_to_tokens(int(token)) != EOS_TOKEN:
        raise DataError(f"the tokenizer has no {EOS_TOKEN} token ({type(tokenizer).__name__}, {len(tokenizer)} tokens)")
    return int(token)


def pad_id(tokenizer) -> int:
    """The id batches are padded with: the end-of-text id, as the original pads Qwen."""
    return eos_id(tokenizer)
