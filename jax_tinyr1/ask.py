"""Ask one video a question.

    python -m jax_tinyr1.ask --checkpoint DIR --video PATH --question TEXT [--option "A. ..." ...]
        [--max-new-tokens N] [--temperature T] [--seed S] [--tokenizer DIR] [--prompt eval|train]

The question is asked as the evaluation asks it (options on their own lines, a newline, the
format instruction), or with `--prompt train` as GRPO training asked it (a space before the
instruction): a small model trained on one wording, like the demo's, may only follow that one.
Prints the reasoning and the answer, streamed token by token when stdout is a terminal, else at
the end, then the seconds spent decoding the video, encoding it (vision tower + connector) and
generating. A bad path or an unreadable video: exit 2, naming it.

Options: lines already lettered ("A. a dog") are asked as given; plain texts ("a dog") are
lettered A, B, C, ... in order. Fewer than two options, a mix of the two forms, or letters out
of order: exit 2. No option at all asks an open question. An answer that names no offered
letter is printed as it was written, with `(not an option)`.

The heavy libraries (JAX, Flax, transformers) are imported only after the arguments are checked.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from jax_tinyr1 import platform
from jax_tinyr1.cli import DTYPE_NAMES, ConfigError, exits_on_bad_input
from jax_tinyr1.data.answers import LETTERS, answer_content, lettered_options, parse_option_letter
from jax_tinyr1.data.template import eval_question, grpo_question


class _Printer:
    """Prints the completion as its tokens arrive (the text decoded so far, new part only)."""

    def __init__(self, tokenizer, eos: int):
        self.tokenizer, self.eos, self.ids, self.shown = tokenizer, eos, [], ""

    def __call__(self, tokens, done) -> None:
        if bool(np.asarray(done)[0]):
            return
        token = int(np.asarray(tokens)[0])
        if token == self.eos:
            return
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        sys.stdout.write(text[len(self.shown) :])
        sys.stdout.flush()
        self.shown = text


# The two wordings of a question: the official evaluation's, and GRPO training's.
PROMPTS = {"eval": eval_question, "train": grpo_question}


def ask(
    checkpoint: Path,
    video: Path,
    question: str,
    options: list[str],
    *,
    tokenizer_dir,
    max_new_tokens,
    temperature,
    seed,
    stream: bool,
    prompt: str = "eval",
    dtype: str | None = None,
) -> dict:
    """Everything that can be checked (the wording, the tokenizer and its end token, the
    prompt, the video) is, before the model is read; the model is read in its compute dtype."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jax_tinyr1.data.preprocess import preprocess_frames
    from jax_tinyr1.data.template import eos_id, pad_id, prompt_ids
    from jax_tinyr1.data.tokenizer import checkpoint_tokenizer, load_tokenizer
    from jax_tinyr1.data.video import read_frame_folder, read_frames
    from jax_tinyr1.generate.sampler import generate, inference_split
    from jax_tinyr1.generate.sampling import SamplingConfig
    from jax_tinyr1.model.config_io import load_model_config
    from jax_tinyr1.model.spec import load_for_inference

    if prompt not in PROMPTS:
        raise ConfigError(f"prompt must be one of {sorted(PROMPTS)}, got {prompt!r}")
    platform.start_backend()
    if options:
        try:
            options = lettered_options(options)
        except ValueError as e:
            raise ConfigError(f"--option: {e}") from None
    config, _ = load_model_config(checkpoint)
    tokenizer = load_tokenizer(tokenizer_dir or checkpoint_tokenizer(checkpoint))
    eos = eos_id(tokenizer)
    block = "\n".join([question, *options]) if options else question
    question_text = PROMPTS[prompt](block)
    ids = np.asarray([prompt_ids(tokenizer, question_text)], np.int32)

    start = time.perf_counter()
    read = read_frame_folder if video.is_dir() else read_frames
    frames = read(video, config.num_frames)
    pixels = jnp.asarray(preprocess_frames(frames, config.vision.image_size))[None]
    decode_s = time.perf_counter() - start
    del frames
    model, config = load_for_inference(checkpoint, dtype)

    graphdef, state = inference_split(model)
    start = time.perf_counter()
    visual = jax.jit(lambda s, p: nnx.merge(graphdef, s).encode_video(p))(state, pixels)
    visual.block_until_ready()
    encode_s = time.perf_counter() - start

    sampling = SamplingConfig(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=50 if temperature else 0,
        eos_id=eos,
        pad_id=pad_id(tokenizer),
    )
    printer = _Printer(tokenizer, eos) if stream else None

    def answer(state, ids, visual, key):
        m = nnx.merge(graphdef, state)
        embeds, mask = m.embed_inputs(ids, jnp.ones_like(ids), visual)
        return generate(m.llm, embeds, mask, key, sampling, 1, on_token=printer)

    start = time.perf_counter()
    out = jax.jit(answer)(state, jnp.asarray(ids), visual, jax.random.key(seed))
    tokens = np.asarray(out.tokens[0])[np.asarray(out.completion_mask[0]) > 0]
    generate_s = time.perf_counter() - start
    text = tokenizer.decode(tokens, skip_special_tokens=True).strip()
    content = answer_content(text)
    letters = LETTERS[: len(options)]
    letter = None if content is None or not options else parse_option_letter(content, letters)
    return {
        "question": question_text,
        "completion": text,
        "answer": letter or (None if content is None else content.strip()),
        "answer_is_option": letter is not None,
        "tokens": len(tokens),
        "seconds": {"decode_video": decode_s, "encode_video": encode_s, "generate": generate_s},
    }


@exits_on_bad_input
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--video", type=Path, required=True, help="a video file, or a folder of 00001.jpg ... frames")
    parser.add_argument("--question", required=True)
    parser.add_argument("--option", action="append", default=[], help='an option line, e.g. "A. a dog" (repeatable)')
    parser.add_argument("--max-new-tokens", type=int, default=1024)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy; else sampled with top-k 50")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokenizer", type=Path, default=None, help="default: CHECKPOINT/tokenizer")
    parser.add_argument(
        "--dtype", choices=DTYPE_NAMES, default=None, help="compute (and weight) dtype; default: the checkpoint's"
    )
    parser.add_argument(
        "--prompt", choices=tuple(PROMPTS), default="eval", help="the evaluation's wording or GRPO training's"
    )
    args = parser.parse_args(argv)
    stream = sys.stdout.isatty()
    if args.max_new_tokens < 1 or args.temperature < 0:
        raise ConfigError("--max-new-tokens must be >= 1 and --temperature >= 0")
    if args.option:
        try:
            lettered_options(args.option)
        except ValueError as e:
            raise ConfigError(f"--option: {e}") from None
    if not args.video.exists():
        raise FileNotFoundError(f"--video {args.video}: no such file or folder")
    from checkpoints_convert.cache import converted_checkpoint

    args.checkpoint = converted_checkpoint(str(args.checkpoint))  # a hub id: converted once, then cached
    result = ask(
        args.checkpoint,
        args.video,
        args.question,
        args.option,
        tokenizer_dir=args.tokenizer,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        seed=args.seed,
        stream=stream,
        prompt=args.prompt,
        dtype=args.dtype,
    )
    print("" if stream else result["completion"])
    unoffered = args.option and result["answer"] is not None and not result["answer_is_option"]
    not_option = " (not an option)" if unoffered else ""
    print(f"answer: {result['answer']}{not_option}")
    s = result["seconds"]
    print(
        f"seconds: decode video {s['decode_video']:.2f}, encode video {s['encode_video']:.2f}, "
        f"generate {s['generate']:.2f} ({result['tokens']} tokens)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
