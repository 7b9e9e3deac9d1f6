"""The embedded default job: the paper's pipeline in miniature, on CPU, with no downloads.

    python -m jax_tinyr1.demo [--out runs/demo] [--quick]

1. Synthetic video-QA data with real H.264 clips (train, cold start, held-out eval).
2. A byte-level BPE tokenizer trained on that text.
3. Base model: the tiny TinyLLaVA-Video, SFT on option answers (as TinyLLaVA-Video-SFT).
4. ColdStart: SFT on 16 reasoning samples (<think>...</think><answer>X</answer>).
5. R1: GRPO with the paper's reward rule (configs/demo_cpu.yaml).
6. Evaluation of ColdStart and R1 on the held-out set with the reasoning prompt; plots.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from jax_tinyr1.data.formats import read_cold_start_json, read_grpo_jsonl
from jax_tinyr1.data.policy import BadInputPolicy
from jax_tinyr1.data.synthetic import generate
from jax_tinyr1.data.tokenizer import build_tokenizer
from jax_tinyr1.eval.__main__ import evaluate
from jax_tinyr1.eval.scoring import score
from jax_tinyr1.model import load_pretrained
from jax_tinyr1.train.config import load_config
from jax_tinyr1.train.logging import read_metrics
from jax_tinyr1.train.run import train

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo_cpu.yaml"
SIZES = {
    "full": dict(base=192, base_epochs=3, cold=16, cold_epochs=60, grpo=80, grpo_steps=40, eval=48),
    "quick": dict(base=24, base_epochs=1, cold=8, cold_epochs=2, grpo=8, grpo_steps=4, eval=8),
}


def sft_config(out: Path, data: Path, checkpoint: Path | None, epochs: int, lr: float, tokenizer: Path):
    overrides = [
        f"data.root={data}",
        "data.train=cold_start.json",
        "data.batch_size=4",
        f"run.epochs={epochs}",
        f"run.output_dir={out}",
        f"run.tokenizer={tokenizer}",
        f"optimizer.learning_rate={lr}",
        "optimizer.schedule=constant",
        "run.save_every=1000",
    ]
    if checkpoint is not None:
        overrides.append(f"model.checkpoint={checkpoint}")
    return load_config(None, overrides)


def evaluate_stage(final: Path, tokenizer, eval_dir: Path, max_new_tokens: int) -> dict:
    model, config = load_pretrained(final)
    policy = BadInputPolicy("skip")
    records = read_grpo_jsonl(eval_dir / "train.jsonl", policy)
    kept, outputs = evaluate(
        model, config, tokenizer, records, eval_dir, batch_size=8, max_new_tokens=max_new_tokens, policy=policy
    )
    return score(kept, outputs, "jsonl")


def run(out: Path, *, quick: bool = False) -> dict:
    n = SIZES["quick" if quick else "full"]
    out.mkdir(parents=True, exist_ok=True)
    print("1/6 synthetic data (real H.264 clips)", flush=True)
    generate(out / "base_data", 0, seed=1, cold_start=n["base"], with_reasoning=False)
    generate(out / "data", n["grpo"], seed=2, cold_start=n["cold"])
    generate(out / "eval", n["eval"], seed=3, cold_start=0)
    print("2/6 tokenizer", flush=True)
    corpus = [r.question + " " + (r.response or "") for r in read_cold_start_json(out / "data" / "cold_start.json")]
    corpus += [r.question for r in read_grpo_jsonl(out / "data" / "train.jsonl")]
    corpus += [r.question for r in read_cold_start_json(out / "base_data" / "cold_start.json")]
    tokenizer = build_tokenizer(corpus * 3, out / "tokenizer", vocab_size=500)
    print("3/6 base model: SFT on option answers", flush=True)
    base = train(sft_config(out / "base", out / "base_data", None, n["base_epochs"], 5e-3, out / "tokenizer"), sft=True)
    print("4/6 ColdStart: SFT on reasoning samples", flush=True)
    cold = train(sft_config(out / "coldstart", out / "data", base, n["cold_epochs"], 5e-3, out / "tokenizer"), sft=True)
    print("5/6 R1: GRPO", flush=True)
    grpo_config = load_config(
        CONFIG,
        [
            f"model.checkpoint={cold}",
            f"data.root={out / 'data'}",
            f"run.output_dir={out / 'grpo'}",
            f"run.tokenizer={out / 'tokenizer'}",
            f"run.max_steps={n['grpo_steps']}",
        ],
    )
    r1 = train(grpo_config, sft=False)
    print("6/6 evaluation on held-out clips", flush=True)
    max_new = grpo_config.grpo.max_new_tokens
    results = {
        "coldstart": evaluate_stage(cold, tokenizer, out / "eval", max_new),
        "r1": evaluate_stage(r1, tokenizer, out / "eval", max_new),
    }
    metrics = read_metrics(out / "grpo")
    k = max(1, len(metrics) // 4)

    def mean(key, rows):
        return sum(r[key] for r in rows) / len(rows)

    summary = {
        "coldstart_accuracy": results["coldstart"]["overall"],
        "r1_accuracy": results["r1"]["overall"],
        "coldstart_unparsed": results["coldstart"]["unparsed"],
        "r1_unparsed": results["r1"]["unparsed"],
        "reward_first": mean("reward", metrics[:k]),
        "reward_last": mean("reward", metrics[-k:]),
        "length_first": mean("completions/mean_length", metrics[:k]),
        "length_last": mean("completions/mean_length", metrics[-k:]),
        "eval_count": results["r1"]["count"],
    }
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=1))
    print(f"\n{'model':<12}{'accuracy':>10}{'unparsed':>10}   (held-out, {summary['eval_count']} questions)")
    for stage in ("coldstart", "r1"):
        print(f"{stage:<12}{results[stage]['overall']:>10.1f}{results[stage]['unparsed']:>10}")
    print(f"GRPO reward: {summary['reward_first']:.2f} (first quarter) -> {summary['reward_last']:.2f} (last quarter)")
    print(f"GRPO response length: {summary['length_first']:.1f} -> {summary['length_last']:.1f} tokens")
    print(f"plots: {out / 'grpo'}/*.png; summary: {out / 'demo_summary.json'}")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    parser.add_argument("--quick", action="store_true", help="a much shorter run (the test suite's)")
    args = parser.parse_args(argv)
    run(args.out, quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
