"""Evaluation on the benchmarks as published, under a named protocol.

    python -m jax_tinyr1.eval --checkpoint DIR --benchmark mvbench|videomme|mlvu|mmvu|jsonl --data ROOT
        [--protocol original|strict] [--allow-missing] [--max-new-tokens 1024] [--batch-size 8]

`--data` is the benchmark's download directory as it comes (the layouts: eval/benchmarks.py;
for jsonl, a GRPO-format file). The tokenizer is read from `DIR/tokenizer` unless --tokenizer
is given. Every item the benchmark defines is accounted for per task: found, evaluated,
missing (no video file), undecodable. When any item could not be evaluated the command exits
4 naming the first files, unless --allow-missing (the table then says how many were left
out). Writes a results JSON (protocol, accounting, throughput, per-item outputs) and prints a
table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax

from checkpoints_convert.hub import converted_checkpoint
from jax_tinyr1.cli import ConfigError, exits_on_bad_input
from jax_tinyr1.data.formats import Record
from jax_tinyr1.data.loader import LoaderConfig
from jax_tinyr1.data.policy import POLICIES, BadInputPolicy, DataError
from jax_tinyr1.data.preprocess import preprocess_frames
from jax_tinyr1.data.template import eos_id, pad_id, prompt_ids
from jax_tinyr1.data.tokenizer import checkpoint_tokenizer, load_tokenizer
from jax_tinyr1.eval.benchmarks import BENCHMARKS, Item, load_benchmark
from jax_tinyr1.eval.scoring import PROTOCOLS, format_table, score
from jax_tinyr1.generate.answer import Answerer
from jax_tinyr1.generate.sampling import SamplingConfig
from jax_tinyr1.model.layers import DTYPES
from jax_tinyr1.model.spec import load_for_inference

EXIT_INCOMPLETE = 4
SHOWN_MISSING = 5  # files named in the message


def evaluate(
    model,
    config,
    tokenizer,
    items: list[Item],
    *,
    question: Callable[[Record], str],
    batch_size: int,
    sampling: SamplingConfig,
    seed: int = 0,
    workers: int = 4,
) -> tuple[dict[int, str], dict[int, str], dict[str, float]]:
    """(outputs by item index, undecodable items' messages by index, throughput). Batches
    are items of similar prompt length; the next batch's videos are decoded and preprocessed
    (`workers` threads) while the current one generates."""
    start = time.perf_counter()
    answerer = Answerer(model, sampling, pad_multiple=LoaderConfig.pad_multiple)
    prompts = [prompt_ids(tokenizer, question(item.record)) for item in items]
    order = sorted(range(len(items)), key=lambda i: len(prompts[i]))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    outputs, undecodable = {}, {}
    generated_tokens, generate_s = 0, 0.0

    def frames_of(i):
        try:
            return i, preprocess_frames(items[i].read(config.num_frames), config.vision.image_size), None
        except DataError as e:  # VideoDecodeError included
            return i, None, str(e)

    with ThreadPoolExecutor(max(1, workers)) as decoders, ThreadPoolExecutor(1) as prefetch:

        def load(batch):
            return list(decoders.map(frames_of, batch))

        pending = prefetch.submit(load, batches[0]) if batches else None
        for k, _ in enumerate(batches):
            loaded = pending.result()
            pending = prefetch.submit(load, batches[k + 1]) if k + 1 < len(batches) else None
            good = [(i, f) for i, f, error in loaded if error is None]
            undecodable.update({i: error for i, _, error in loaded if error is not None})
            if not good:
                continue
            began = time.perf_counter()
            key = jax.random.fold_in(jax.random.key(seed), k)
            tokens = answerer([prompts[i] for i, _ in good], [f for _, f in good], key, rows=batch_size)
            generate_s += time.perf_counter() - began
            for (i, _), row in zip(good, tokens, strict=True):
                generated_tokens += len(row)
                outputs[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
    elapsed = time.perf_counter() - start
    throughput = {
        "seconds": elapsed,
        "videos_per_s": len(outputs) / elapsed if elapsed else 0.0,
        "generated_tokens_per_s": generated_tokens / generate_s if generate_s else 0.0,
        "generate_seconds": generate_s,
    }
    return outputs, undecodable, throughput


def accounting(bench, missing: set[int], undecodable: dict[int, str], evaluated: set[int]) -> dict[str, dict]:
    """Per task: items found in the annotations, evaluated, missing (no video), undecodable."""
    table = {t: {"found": 0, "evaluated": 0, "missing": 0, "undecodable": 0} for t in bench.tasks}
    for i, item in enumerate(bench.items):
        row = table.setdefault(item.task, {"found": 0, "evaluated": 0, "missing": 0, "undecodable": 0})
        row["found"] += 1
        row["evaluated"] += i in evaluated
        row["missing"] += i in missing
        row["undecodable"] += i in undecodable
    return table


@exits_on_bad_input
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--benchmark", choices=BENCHMARKS, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--tokenizer", type=Path, default=None, help="default: CHECKPOINT/tokenizer")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default=None, help="compute (and weight) dtype; default: the checkpoint's"
    )
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="original")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0, help="sampling and the original protocol's random guesses")
    parser.add_argument("--workers", type=int, default=4, help="threads decoding the next batch's videos")
    parser.add_argument("--allow-missing", action="store_true", help="score what could be evaluated, say what not")
    parser.add_argument("--bad-input", choices=POLICIES, default="error", help="a malformed annotation item")
    parser.add_argument(
        "--out", type=Path, default=None, help="results JSON (default: CHECKPOINT/eval_<benchmark>.json)"
    )
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.max_new_tokens < 1:
        raise ConfigError("--batch-size and --max-new-tokens must be >= 1")
    args.checkpoint = converted_checkpoint(str(args.checkpoint))  # a hub id: converted once, then cached
    policy = BadInputPolicy(args.bad_input)
    bench = load_benchmark(args.benchmark, args.data, policy)
    missing = {i for i, item in enumerate(bench.items) if not item.video.exists()}
    absent = bench.missing_files + [str(bench.items[i].video) for i in sorted(missing)]
    if absent and not args.allow_missing:
        shown = ", ".join(absent[:SHOWN_MISSING])
        print(
            f"error: {len(absent)} file(s) of {args.benchmark} missing below {args.data}: {shown}"
            f"{' ...' if len(absent) > SHOWN_MISSING else ''} (--allow-missing scores the rest)",
            file=sys.stderr,
        )
        return EXIT_INCOMPLETE
    tokenizer = load_tokenizer(args.tokenizer or checkpoint_tokenizer(args.checkpoint))
    protocol = PROTOCOLS[args.protocol]
    sampling = SamplingConfig(
        max_new_tokens=args.max_new_tokens,
        temperature=protocol.temperature,
        top_k=protocol.top_k,
        eos_id=eos_id(tokenizer),
        pad_id=pad_id(tokenizer),
    )
    for item in bench.items:  # every prompt is well formed before the model is read
        prompt_ids(tokenizer, bench.question(item.record))
    model, config = load_for_inference(args.checkpoint, args.dtype)
    present = [i for i in range(len(bench.items)) if i not in missing]
    outputs, undecodable, throughput = evaluate(
        model,
        config,
        tokenizer,
        [bench.items[i] for i in present],
        question=bench.question,
        batch_size=args.batch_size,
        sampling=sampling,
        seed=args.seed,
        workers=args.workers,
    )
    undecodable = {present[j]: message for j, message in undecodable.items()}
    evaluated = {present[j]: text for j, text in outputs.items()}
    order = sorted(evaluated)
    results = score(
        [bench.items[i].record for i in order],
        [evaluated[i] for i in order],
        args.benchmark,
        protocol=args.protocol,
        seed=args.seed,
    )
    table = accounting(bench, missing, undecodable, set(evaluated))
    left_out = len(bench.items) - len(evaluated)
    results.update(
        accounting=table,
        complete=not left_out and not bench.missing_files,
        missing_files=bench.missing_files + [str(bench.items[i].video) for i in sorted(missing)],
        undecodable={str(bench.items[i].video): m for i, m in sorted(undecodable.items())},
        throughput=throughput,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
    )
    out = args.out or args.checkpoint / f"eval_{args.benchmark}.json"
    out.write_text(json.dumps(results, indent=1))
    print(format_table(results, table))
    if left_out or bench.missing_files:
        print(f"left out: {left_out} item(s) and {len(bench.missing_files)} annotation file(s)")
    speed = f"{throughput['videos_per_s']:.2f} videos/s, {throughput['generated_tokens_per_s']:.1f} tokens/s"
    print(f"{speed}; results: {out}")
    if undecodable and not args.allow_missing:
        first = next(iter(results["undecodable"].items()))
        print(f"error: {len(undecodable)} video(s) could not be decoded, first {first[0]}: {first[1]}", file=sys.stderr)
        return EXIT_INCOMPLETE
    return 0


if __name__ == "__main__":
    sys.exit(main())
