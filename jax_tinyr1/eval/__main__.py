"""Evaluation on the benchmarks as published, under a named protocol.

    python -m jax_tinyr1.eval --checkpoint DIR --benchmark mvbench|videomme|mlvu|mmvu|jsonl --data ROOT
        [--protocol original|strict] [--allow-missing] [--max-new-tokens 1024] [--batch-size 8]

`--data` is the benchmark's download directory as it comes (the layouts: eval/benchmarks.py;
for jsonl, a GRPO-format file). The tokenizer is read from `DIR/tokenizer` unless --tokenizer
is given. Every item the benchmark defines is accounted for per task: found, evaluated,
missing (no video file), undecodable. When any item could not be evaluated the command exits
4 naming the first files, unless --allow-missing (the table then says how many were left
out). Writes a results JSON (protocol, accounting, throughput, per-item outputs) and prints a
table. The JSON goes to --out, by default `runs/eval/NAME/BENCHMARK.json` under the current
directory, NAME being the checkpoint's folder and its parent's (`runs/paper/final` ->
`paper-final`): a checkpoint's folder is never written into unless --out says so.

The heavy libraries (JAX, Flax, transformers) are imported only after the arguments are checked.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from jax_tinyr1 import platform
from jax_tinyr1.cli import DTYPE_NAMES, ConfigError, exits_on_bad_input
from jax_tinyr1.data.policy import POLICIES, BadInputPolicy
from jax_tinyr1.eval.benchmarks import BENCHMARKS, load_benchmark
from jax_tinyr1.eval.scoring import PROTOCOLS, format_table, score

EXIT_INCOMPLETE = 4
SHOWN_MISSING = 5  # files named in the message


def default_results_path(checkpoint: str, benchmark: str) -> Path:
    """runs/eval/NAME/BENCHMARK.json: NAME the checkpoint folder's parent and own name (a hub
    id's owner and name), so that runs/a/final and runs/b/final do not overwrite each other."""
    parts = [p for p in Path(checkpoint).parts if p not in ("/", ".", "..")][-2:]
    return Path("runs") / "eval" / "-".join(parts or ["checkpoint"]) / f"{benchmark}.json"


@exits_on_bad_input
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--benchmark", choices=BENCHMARKS, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--tokenizer", type=Path, default=None, help="default: CHECKPOINT/tokenizer")
    parser.add_argument(
        "--dtype", choices=DTYPE_NAMES, default=None, help="compute (and weight) dtype; default: the checkpoint's"
    )
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="original")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0, help="sampling and the original protocol's random guesses")
    parser.add_argument("--workers", type=int, default=4, help="threads decoding the next batch's videos")
    parser.add_argument("--allow-missing", action="store_true", help="score what could be evaluated, say what not")
    parser.add_argument("--bad-input", choices=POLICIES, default="error", help="a malformed annotation item")
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default: runs/eval/NAME/BENCHMARK.json)")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.max_new_tokens < 1:
        raise ConfigError("--batch-size and --max-new-tokens must be >= 1")
    out = args.out or default_results_path(str(args.checkpoint), args.benchmark)
    policy = BadInputPolicy(args.bad_input)
    bench = load_benchmark(args.benchmark, args.data, policy)
    from checkpoints_convert.cache import converted_checkpoint

    args.checkpoint = converted_checkpoint(str(args.checkpoint))  # a hub id: converted once, then cached
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
    from jax_tinyr1.data.template import eos_id, pad_id, prompt_ids
    from jax_tinyr1.data.tokenizer import checkpoint_tokenizer, load_tokenizer
    from jax_tinyr1.eval.run import accounting, evaluate
    from jax_tinyr1.generate.sampling import SamplingConfig
    from jax_tinyr1.model.spec import load_for_inference

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
    platform.start_backend()
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
    out.parent.mkdir(parents=True, exist_ok=True)
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
