"""A synthetic video-QA data set with real encoded videos, in the paper's formats.

    python -m jax_tinyr1.data.synthetic --out DIR --n N [--seed S] [--codec libx264]

Short clips of simple moving shapes and questions that need the video: the direction of
motion, which object appears first, how many circles appear, what colour a square turns
into. 4 or 5 options; the right letters are balanced; everything is deterministic for a
seed. Writes DIR/videos/*.mp4, DIR/train.jsonl (the GRPO format) and DIR/cold_start.json
(with generated <think>...</think><answer>X</answer> reasoning: what the clip shows, the
answer, then a check of varied length). Each frame carries its own
index in an 8-bit strip at the bottom (white block = 1), so decoders can be checked.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from jax_tinyr1.cli import ConfigError, exits_on_bad_input
from jax_tinyr1.data.answers import LETTERS, option_lines
from jax_tinyr1.data.template import grpo_question

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
}
DIRECTIONS = ("left", "right", "up", "down")
KINDS = ("direction", "first_appearance", "count", "colour_change")  # the default mix
# The whole frame changes colour (visible at any resolution): once, or twice with the question
# about the colour between the changes (the answer needs the clip's course, not its end).
EXTRA_KINDS = ("screen_colour", "middle_colour")

BACKGROUND = 40
STAMP_ROWS = 4  # the bottom rows hold the frame index
# Checks of varied length after the tentative answer (the paper's model re-checks its answer):
# the cold-start model then writes reasoning of varied length, which the format reward's length
# term can select among. They follow the answer, so their length cannot change it, and each
# starts with its own word: checks sharing an opening ("Let me check again, ...") were blended
# by the tiny model at temperature 1 into text that broke the format (27 % of ColdStart's samples
# in one seed, 5 % with these), and the format's -2 then made every longer check a risk.
CHECKS = (
    "",
    " Checked: yes.",
    " Once more, change by change: it holds.",
    " Going over the whole clip again, from its first frame to its last one, every change is where "
    "I said it is, so the answer stands.",
)


def stamp_index(frame: np.ndarray, index: int) -> None:
    """Write `index` (0..255) as 8 black/white blocks across the bottom rows."""
    width = frame.shape[1] // 8
    for bit in range(8):
        frame[-STAMP_ROWS:, bit * width : (bit + 1) * width] = 255 if (index >> bit) & 1 else 0


def read_index(frame: np.ndarray) -> int:
    width = frame.shape[1] // 8
    bits = [frame[-STAMP_ROWS + 1 : -1, b * width + 2 : (b + 1) * width - 2].mean() > 127 for b in range(8)]
    return sum(1 << b for b, on in enumerate(bits) if on)


def _canvas(frames: int, size: int) -> np.ndarray:
    return np.full((frames, size, size, 3), BACKGROUND, np.uint8)


def _square(frame, x, y, r, colour):
    frame[max(y - r, 0) : y + r, max(x - r, 0) : x + r] = colour


def _circle(frame, x, y, r, colour):
    yy, xx = np.ogrid[: frame.shape[0], : frame.shape[1]]
    frame[(yy - y) ** 2 + (xx - x) ** 2 <= r * r] = colour


def _options(correct: str, pool, answer_index: int, rng) -> list[str]:
    distractors = [p for p in pool if p != correct]
    rng.shuffle(distractors)
    options = distractors[: len(pool) - 1]
    options.insert(answer_index, correct)
    return options


def _named_colour(answer_index: int, rng: np.random.Generator, shuffle_options: bool) -> tuple[list[str], str]:
    """(options, the right colour) of a question answered by one of the first four colours."""
    names = list(COLOURS)
    if shuffle_options:
        colour = names[rng.integers(4)]
        return _options(colour, names[:4], answer_index, rng), colour
    return names[:4], names[answer_index]


def _other_colour(colour: str, rng: np.random.Generator) -> str:
    """A colour drawn uniformly from the others (the colour before a change)."""
    others = [n for n in COLOURS if n != colour]
    return others[rng.integers(len(others))]


def make_clip(
    kind: str,
    answer_index: int,
    rng: np.random.Generator,
    frames: int = 24,
    size: int = 64,
    *,
    shuffle_options: bool = True,
):
    """(frames [T, size, size, 3] uint8, question, options, reasoning before the answer).

    With `shuffle_options=False` the direction and colour questions list their options in one
    fixed order (the answer still varies), so a very small model needs no circuit that finds
    the option matching what it saw: the letter follows from the video alone."""
    video = _canvas(frames, size)
    usable = size - STAMP_ROWS
    colour_names = list(COLOURS)
    if kind == "direction":
        direction = DIRECTIONS[rng.integers(4)] if shuffle_options else DIRECTIONS[answer_index]
        colour = colour_names[rng.integers(len(colour_names))]
        a, b = 10, size - 12
        for t in range(frames):
            s = a + (b - a) * t // max(frames - 1, 1)
            x, y = {
                "right": (s, usable // 2),
                "left": (size - s, usable // 2),
                "down": (size // 2, s * usable // size),
                "up": (size // 2, usable - s * usable // size),
            }[direction]
            _square(video[t], x, y, 5, COLOURS[colour])
        options = _options(direction, DIRECTIONS, answer_index, rng) if shuffle_options else list(DIRECTIONS)
        question = f"In which direction does the {colour} square move?"
        reasoning = (
            f"The {colour} square starts near one edge and steadily travels across the frame; "
            f"following it frame by frame, it moves {direction}."
        )
    elif kind == "first_appearance":
        names = [colour_names[i] for i in rng.permutation(len(colour_names))[:4]]
        first = names[0]
        for order, name in enumerate(names):
            x, y = 10 + 14 * order, 12 + 10 * (order % 2)
            for t in range(order * frames // 5, frames):
                _square(video[t], x, y, 4, COLOURS[name])
        pool = [f"the {n} square" for n in names]
        options = _options(f"the {first} square", pool, answer_index, rng)
        question = "Which object appears first in the video?"
        reasoning = (
            f"At the start only the {first} square is visible; the others "
            f"({', '.join(names[1:])}) appear later, one after another."
        )
    elif kind == "count":
        count = answer_index + 1  # options "1".."5" in order, so the right letter follows the count
        for i in range(count):
            x, y = 8 + 12 * i, 14 + 18 * (i % 2)
            colour = COLOURS[colour_names[i % len(colour_names)]]
            for t in range(i * frames // (count + 1), frames):
                _circle(video[t], x, y, 4, colour)
        options = [str(k) for k in range(1, 6)]
        question = "How many circles appear in the video?"
        reasoning = f"Circles appear one at a time; by the last frame I count {count} of them."
    elif kind == "colour_change":
        if shuffle_options:
            before, after = (colour_names[i] for i in rng.permutation(len(colour_names))[:2])
            pool = [after, *[n for n in colour_names if n not in (before, after)]][:4]
            options = _options(after, pool, answer_index, rng)
        else:
            options = colour_names[:4]
            after = options[answer_index]
            before = _other_colour(after, rng)
        for t in range(frames):
            _square(video[t], size // 2, usable // 2, 8, COLOURS[before if t < frames // 2 else after])
        question = "What colour does the square turn into?"
        reasoning = f"The square is {before} in the first half of the clip and then becomes {after}."
    elif kind == "screen_colour":
        options, after = _named_colour(answer_index, rng, shuffle_options)
        before = _other_colour(after, rng)
        for t in range(frames):
            video[t, :usable] = COLOURS[before if t < frames // 2 else after]
        question = "What colour does the screen turn into?"
        reasoning = f"The screen is {before} in the first half of the clip and then turns {after}."
    elif kind == "middle_colour":
        options, middle = _named_colour(answer_index, rng, shuffle_options)
        first = _other_colour(middle, rng)
        last = _other_colour(middle, rng)
        for t in range(frames):
            third = 3 * t // frames
            video[t, :usable] = COLOURS[(first, middle, last)[third]]
        question = "What colour is the screen between its two changes?"
        reasoning = f"The screen is {first} at first, then turns {middle}, and at the end turns {last}."
    else:
        raise ValueError(f"unknown question kind {kind!r}")
    for t in range(frames):
        stamp_index(video[t], t)
    return video, question, options, reasoning


def write_video(path: Path, frames: np.ndarray, *, codec: str = "libx264", fps: int = 8) -> None:
    """Encode RGB frames with PyAV (a real codec; yuv420p)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "10", "preset": "veryfast"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def generate(
    out: Path,
    n: int,
    seed: int = 0,
    *,
    cold_start: int = 16,
    frames: int = 24,
    size: int = 64,
    codec: str = "libx264",
    extension: str = "mp4",
    with_reasoning: bool = True,
    kinds: tuple[str, ...] = KINDS,
    shuffle_options: bool = True,
    captions: bool = False,
) -> dict[str, Path]:
    """Write `n` GRPO samples and `cold_start` more for SFT; returns the annotation paths. The SFT
    samples answer with reasoning and the paper's instruction (the cold
    start, `with_reasoning=True`) or with the option letter alone to the plain question (a base
    model's SFT data). `kinds` picks the question kinds (in turn); see `make_clip` for
    `shuffle_options`. `captions=True` adds, for each SFT clip, a "Describe the video." sample
    answered with the plain description (a base model that can put what it sees in words)."""
    unknown = sorted(set(kinds) - set(KINDS + EXTRA_KINDS))
    if unknown or not kinds:
        raise ConfigError(f"kinds: {unknown or 'none given'}; known: {list(KINDS + EXTRA_KINDS)}")
    out = Path(out)
    rng = np.random.default_rng(seed)
    rows, cold = [], []
    for i in range(n + cold_start):
        kind = kinds[i % len(kinds)]
        n_options = 5 if kind == "count" else 4
        within_kind = i // len(kinds)
        answer_index = within_kind % n_options  # balanced letters within each kind
        video, question, options, reasoning = make_clip(
            kind, answer_index, rng, frames, size, shuffle_options=shuffle_options
        )
        # Every check with every letter equally often (16 cold-start samples of one kind: each
        # pair once): drawn at random, a small cold-start set ties a check to a letter, and GRPO
        # then moves the length for that letter's sake.
        check = CHECKS[(within_kind // n_options) % len(CHECKS)]
        name = f"videos/clip_{i:05d}.{extension}"
        write_video(out / name, video, codec=codec)
        problem = question + "\n" + option_lines(options)
        letter = LETTERS[answer_index]
        if i < n:
            rows.append(
                {
                    "id": f"synthetic-{i:05d}",
                    "problem": problem,
                    "solution": f"<answer>{letter}</answer>",
                    "video_filename": f"./{name}",
                    "kind": kind,
                }
            )
        else:
            response = f"<think>{reasoning} So the answer is option {letter}.{check}</think><answer>{letter}</answer>"
            cold.append(
                {
                    "id": f"synthetic-cold-{i:05d}",
                    "video": name,
                    "conversations": [
                        {
                            "from": "human",
                            "value": "<image>\n" + (grpo_question(problem) if with_reasoning else problem),
                        },
                        {"from": "gpt", "value": response if with_reasoning else letter},
                    ],
                }
            )
            if captions:
                cold.append(
                    {
                        "id": f"synthetic-caption-{i:05d}",
                        "video": name,
                        "conversations": [
                            {"from": "human", "value": "<image>\nDescribe the video."},
                            {"from": "gpt", "value": reasoning},
                        ],
                    }
                )
    (out / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "cold_start.json").write_text(json.dumps(cold, indent=1))
    return {"train": out / "train.jsonl", "cold_start": out / "cold_start.json"}


@exits_on_bad_input
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n", type=int, required=True, help="number of GRPO samples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cold-start", type=int, default=16, help="extra samples with reasoning (cold start)")
    parser.add_argument("--codec", default="libx264")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args(argv)
    if args.n < 0 or args.cold_start < 0:
        parser.error("--n and --cold-start must be >= 0")
    import av  # PyAV writes the clips (the `video` extra)

    try:
        av.codec.Codec(args.codec, "w")
    except av.codec.codec.UnknownCodecError:
        raise ConfigError(f"--codec {args.codec!r}: PyAV has no such encoder") from None
    paths = generate(
        args.out, args.n, args.seed, cold_start=args.cold_start, frames=args.frames, size=args.size, codec=args.codec
    )
    print(f"wrote {args.n} GRPO samples to {paths['train']} and {args.cold_start} to {paths['cold_start']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
