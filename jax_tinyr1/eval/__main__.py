"""Evaluation with the reasoning prompt: batched greedy generation, answer parsing, scores.

    python -m jax_tinyr1.eval --checkpoint DIR --benchmark mvbench|videomme|mlvu|mmvu|jsonl --data DIR

Data layouts (paths relative to --data): mvbench `json/<task>.json`; videomme
`videomme/*.parquet` with videos `data/<videoID>.mp4`; mlvu `json/<task>.json`; mmvu
`validation.json`; jsonl: `--data` is a GRPO-format .jsonl file, videos relative to its folder.
The tokenizer is read from `DIR/tokenizer` unless --tokenizer is given. Writes a results
JSON (per-item outputs included) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_tinyr1.data.formats import read_grpo_jsonl, read_mlvu, read_mmvu, read_mvbench, read_videomme_parquet
from jax_tinyr1.data.loader import LoaderConfig, pad_rows
from jax_tinyr1.data.policy import BadInputPolicy, DataError, resolve_inside
from jax_tinyr1.data.preprocess import preprocess_frames
from jax_tinyr1.data.template import eos_id, grpo_question, pad_id, prompt_ids
from jax_tinyr1.data.tokenizer import load_tokenizer
from jax_tinyr1.data.video import VideoDecodeError, read_frames
from jax_tinyr1.eval.scoring import BENCHMARKS, format_table, score
from jax_tinyr1.generate.sampler import generate
from jax_tinyr1.generate.sampling import SamplingConfig
from jax_tinyr1.model import load_pretrained


def load_records(benchmark: str, data: Path, policy: BadInputPolicy):
    """(records, data root the video paths are relative to)."""
    if benchmark == "jsonl":
        return read_grpo_jsonl(data, policy), data.parent
    if benchmark in ("mvbench", "mlvu"):
        files = sorted((data / "json").glob("*.json"))
        if not files:
            raise DataError(f"{data / 'json'}: no task files")
        if benchmark == "mlvu":
            return [r for f in files for r in read_mlvu(f, policy)], data
        return [r for f in files for r in read_mvbench(f, f.stem, policy)], data
    if benchmark == "videomme":
        files = sorted((data / "videomme").glob("*.parquet"))
        return [r for f in files for r in read_videomme_parquet(f, policy)], data / "data"
    return read_mmvu(data / "validation.json", policy), data


class Generator:
    """Greedy completions for batches of (prompt ids, frames); one compilation per shape bucket."""

    def __init__(self, model, max_new_tokens: int, eos: int, pad: int):
        self.graphdef, self.state = nnx.split(model)
        self.sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0, top_k=0, eos_id=eos, pad_id=pad)

        def run(state, ids, mask, pixels):
            model = nnx.merge(self.graphdef, state)
            embeds, m = model.embed_inputs(ids, mask, model.encode_video(pixels))
            out = generate(model.llm, embeds, m, jax.random.key(0), self.sampling, 1)
            return out.tokens, out.completion_mask

        self._run = jax.jit(run)

    def __call__(self, ids: np.ndarray, mask: np.ndarray, pixels: np.ndarray):
        return self._run(self.state, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(pixels))


def evaluate(
    model,
    config,
    tokenizer,
    records,
    root: Path,
    *,
    batch_size: int,
    max_new_tokens: int,
    policy: BadInputPolicy,
    reasoning_prompt: bool = True,
) -> tuple[list, list[str]]:
    """Greedy outputs for `records`; `reasoning_prompt=False` asks the plain question (how an
    SFT model without reasoning training is evaluated)."""
    generator = Generator(model, max_new_tokens, eos_id(tokenizer), pad_id(tokenizer))
    pad_multiple = LoaderConfig.pad_multiple  # the training loader's length buckets
    kept, outputs = [], []
    for start in range(0, len(records), batch_size):
        chunk, ids, frames = [], [], []
        for record in records[start : start + batch_size]:
            try:
                video = read_frames(resolve_inside(root, record.video), config.num_frames)
            except (DataError, VideoDecodeError) as e:
                policy.bad("video", f"{record.source}: {e}")
                continue
            chunk.append(record)
            ids.append(prompt_ids(tokenizer, grpo_question(record.question) if reasoning_prompt else record.question))
            frames.append(preprocess_frames(video, config.vision.image_size))
        if not chunk:
            continue
        # A fixed batch (filler rows repeat the first prompt) and the loader's length buckets:
        # few compilations.
        fill = batch_size - len(ids)
        id_array, mask = pad_rows(ids + [ids[0]] * fill, pad_id(tokenizer), pad_multiple)
        pixels = np.stack(frames + [frames[0]] * fill)
        tokens, cmask = (np.asarray(x) for x in generator(id_array, mask, pixels))
        for i, record in enumerate(chunk):
            kept.append(record)
            outputs.append(tokenizer.decode(tokens[i][cmask[i] > 0], skip_special_tokens=True).strip())
    return kept, outputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--benchmark", choices=BENCHMARKS, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--tokenizer", type=Path, default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument(
        "--random-fallback",
        action="store_true",
        help="guess a random option for unparsed answers, as the original does",
    )
    parser.add_argument("--bad-input", choices=("error", "skip"), default="skip")
    parser.add_argument(
        "--out", type=Path, default=None, help="results JSON (default: CHECKPOINT/eval_<benchmark>.json)"
    )
    args = parser.parse_args(argv)
    try:
        model, config = load_pretrained(args.checkpoint)
        tokenizer = load_tokenizer(args.tokenizer or args.checkpoint / "tokenizer")
        policy = BadInputPolicy(args.bad_input)
        records, root = load_records(args.benchmark, args.data, policy)
        kept, outputs = evaluate(
            model,
            config,
            tokenizer,
            records,
            root,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            policy=policy,
        )
    except (DataError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    results = score(kept, outputs, args.benchmark, random_fallback=args.random_fallback)
    results["skipped"] = dict(policy.counts)
    out = args.out or args.checkpoint / f"eval_{args.benchmark}.json"
    out.write_text(json.dumps(results, indent=1))
    print(format_table(results))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
