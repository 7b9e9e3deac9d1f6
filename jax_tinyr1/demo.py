"""The embedded default job: the paper's pipeline in miniature, on CPU, with no downloads.

    python -m jax_tinyr1.demo [--out runs/demo] [--quick]

1. Synthetic video-QA data with real H.264 clips (SFT set with captions, cold start + GRPO set,
   held-out eval set).
2. A byte-level BPE tokenizer trained on that text.
3. SFT model: the tiny TinyLLaVA-Video from scratch, SFT on option answers and captions.
4. ColdStart: SFT on 16 reasoning samples (<think>...</think><answer>X</answer>).
5. R1: GRPO with the paper's reward rule (configs/demo_cpu.yaml).
6. Evaluation of the three on the held-out set (SFT with the plain question, the others with
   the reasoning prompt); a table like the paper's Table 1, plots, OUT/summary.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from jax_tinyr1.cli import exits_on_bad_input
from jax_tinyr1.data.formats import read_cold_start_json, read_grpo_jsonl
from jax_tinyr1.data.policy import BadInputPolicy, DataError
from jax_tinyr1.data.synthetic import generate
from jax_tinyr1.data.template import eos_id, grpo_question, pad_id
from jax_tinyr1.data.tokenizer import build_tokenizer
from jax_tinyr1.eval.__main__ import evaluate
from jax_tinyr1.eval.benchmarks import load_benchmark
from jax_tinyr1.eval.scoring import score
from jax_tinyr1.generate.sampling import SamplingConfig
from jax_tinyr1.model import build_model, get_preset, load_pretrained, save_pretrained
from jax_tinyr1.train.config import load_config
from jax_tinyr1.train.logging import read_metrics
from jax_tinyr1.train.run import train

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo_cpu.yaml"
# The demo's question: one the tiny model sees plainly at 16 x 16 pixels, options in a fixed
# order (see data.synthetic.make_clip), letters balanced.
KINDS = ("screen_colour",)
# The resampler's learned latents start at std 1 (as the original's torch.randn); next to them
# the video moves the connector's output by ~0.05 %, which a model trained from scratch takes
# thousands of CPU steps to pick up. The demo's from-scratch model starts them at std 0.02,
# the scale of every other weight (about 50 % then).
LATENTS_INIT_STD = 0.02


@dataclasses.dataclass(frozen=True)
class Sizes:
    base: int = 192  # SFT samples (option letter answers)
    base_epochs: int = 6
    base_lr: float = 2e-3
    batch: int = 8
    cold: int = 16  # cold-start reasoning samples
    cold_epochs: int = 30
    cold_lr: float = 2e-3
    grpo: int = 200  # GRPO prompts
    grpo_steps: int = 50
    eval: int = 96  # held-out questions


SIZES = {"full": Sizes(), "quick": Sizes(base=24, base_epochs=1, cold=8, cold_epochs=2, grpo=16, grpo_steps=4, eval=8)}


def initial_model(out: Path) -> Path:
    """The tiny TinyLLaVA-Video at random initialization (see LATENTS_INIT_STD)."""
    model = build_model(get_preset("tinyllava-video-tiny"), seed=0)
    model.connector.latents[...] = model.connector.latents[...] * LATENTS_INIT_STD
    save_pretrained(out, model)
    return out


def sft_config(out: Path, data: Path, checkpoint: Path, epochs: int, lr: float, tokenizer: Path, batch: int = 4):
    overrides = [
        f"data.root={data}",
        "data.train=cold_start.json",
        f"data.batch_size={batch}",
        f"run.epochs={epochs}",
        f"run.output_dir={out}",
        f"run.tokenizer={tokenizer}",
        f"optimizer.learning_rate={lr}",
        "optimizer.schedule=constant",
        "optimizer.warmup_ratio=0",
        "run.save_every=1000",
        f"model.checkpoint={checkpoint}",
    ]
    return load_config(None, overrides, stage="sft")


def evaluate_stage(final: Path, tokenizer, eval_dir: Path, max_new_tokens: int, *, reasoning_prompt: bool) -> dict:
    """Greedy answers (the strict protocol) on the held-out clips; the SFT model is asked the
    plain question and answers with a letter."""
    model, config = load_pretrained(final)
    items = load_benchmark("jsonl", eval_dir / "train.jsonl", BadInputPolicy("error")).items
    sampling = SamplingConfig(
        max_new_tokens=max_new_tokens, temperature=0.0, top_k=0, eos_id=eos_id(tokenizer), pad_id=pad_id(tokenizer)
    )
    outputs, undecodable, _ = evaluate(
        model,
        config,
        tokenizer,
        items,
        question=lambda r: grpo_question(r.question) if reasoning_prompt else r.question,
        batch_size=8,
        sampling=sampling,
    )
    if undecodable:
        raise DataError(f"held-out clips could not be decoded: {sorted(undecodable.values())[:3]}")
    records = [items[i].record for i in sorted(outputs)]
    return score(records, [outputs[i] for i in sorted(outputs)], "jsonl", protocol="strict", tagged=reasoning_prompt)


def first_and_last_fifth(metrics: list[dict], key: str) -> tuple[float, float]:
    """Means of `key` over the first and the last fifth of the logged steps."""
    k = max(1, len(metrics) // 5)
    values = [m[key] for m in metrics]
    return sum(values[:k]) / k, sum(values[-k:]) / k


def run(out: Path, *, quick: bool = False, sizes: Sizes | None = None, overrides: tuple[str, ...] = ()) -> dict:
    n = sizes or SIZES["quick" if quick else "full"]
    started = time.perf_counter()
    seconds, lap_start = {}, [started]

    def lap(name: str) -> None:
        """Record the seconds since the previous lap (the stages run back to back)."""
        now = time.perf_counter()
        seconds[name], lap_start[0] = round(now - lap_start[0], 1), now

    out.mkdir(parents=True, exist_ok=True)
    print("1/6 synthetic data (real H.264 clips)", flush=True)
    synthetic = dict(kinds=KINDS, shuffle_options=False)
    generate(out / "base_data", 0, seed=1, cold_start=n.base, with_reasoning=False, captions=True, **synthetic)
    generate(out / "data", n.grpo, seed=2, cold_start=n.cold, **synthetic)
    generate(out / "eval", n.eval, seed=3, cold_start=0, **synthetic)
    print("2/6 tokenizer", flush=True)
    corpus = [r.question + " " + (r.response or "") for r in read_cold_start_json(out / "data" / "cold_start.json")]
    corpus += [r.question for r in read_grpo_jsonl(out / "data" / "train.jsonl")]
    corpus += [r.question for r in read_cold_start_json(out / "base_data" / "cold_start.json")]
    tokenizer = build_tokenizer(corpus * 3, out / "tokenizer", vocab_size=500)
    lap("data")
    print("3/6 SFT model: SFT on option answers", flush=True)
    tok = out / "tokenizer"
    init = initial_model(out / "init")
    base = train(sft_config(out / "base", out / "base_data", init, n.base_epochs, n.base_lr, tok, n.batch), stage="sft")
    lap("sft")
    print("4/6 ColdStart: SFT on reasoning samples", flush=True)
    cold = train(sft_config(out / "coldstart", out / "data", base, n.cold_epochs, n.cold_lr, tok), stage="sft")
    lap("coldstart")
    print("5/6 R1: GRPO", flush=True)
    grpo_config = load_config(
        CONFIG,
        [
            f"model.checkpoint={cold}",
            f"data.root={out / 'data'}",
            f"run.output_dir={out / 'grpo'}",
            f"run.tokenizer={out / 'tokenizer'}",
            f"run.max_steps={n.grpo_steps}",
            *overrides,
        ],
    )
    r1 = train(grpo_config, stage="grpo")
    lap("grpo")
    print("6/6 evaluation on held-out clips", flush=True)
    max_new = grpo_config.sampling.max_new_tokens
    results = {
        "sft": evaluate_stage(base, tokenizer, out / "eval", 8, reasoning_prompt=False),
        "coldstart": evaluate_stage(cold, tokenizer, out / "eval", max_new, reasoning_prompt=True),
        "r1": evaluate_stage(r1, tokenizer, out / "eval", max_new, reasoning_prompt=True),
    }
    lap("eval")
    metrics = read_metrics(out / "grpo")
    reward_first, reward_last = first_and_last_fifth(metrics, "reward")
    length_first, length_last = first_and_last_fifth(metrics, "completions/mean_length")
    summary = {
        **{f"{k}_accuracy": results[k]["overall"] for k in results},
        **{f"{k}_unparsed": results[k]["unparsed"] for k in results},
        "eval_count": results["r1"]["count"],
        "reward_first": reward_first,
        "reward_last": reward_last,
        "length_first": length_first,
        "length_last": length_last,
        "seconds": round(time.perf_counter() - started, 1),
        "stage_seconds": seconds,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"\n{'model':<12}{'accuracy':>10}{'unparsed':>10}   (held-out, {summary['eval_count']} questions)")
    for name, label in (("sft", "SFT"), ("coldstart", "ColdStart"), ("r1", "R1")):
        print(f"{label:<12}{results[name]['overall']:>10.1f}{results[name]['unparsed']:>10}")
    print(f"GRPO reward: {reward_first:.2f} (first fifth of the steps) -> {reward_last:.2f} (last fifth)")
    print(f"GRPO response length: {length_first:.1f} -> {length_last:.1f} tokens")
    print(f"{summary['seconds']:.0f} s; plots: {out / 'grpo'}/*.png; summary: {out / 'summary.json'}")
    return summary


@exits_on_bad_input
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    parser.add_argument("--quick", action="store_true", help="a much shorter run (the test suite's)")
    args = parser.parse_args(argv)
    run(args.out, quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
