"""The demo's findings across seeds: for each seed, a full demo run (data, weights, order and
sampling all drawn from it); then one table with SFT / ColdStart / R1 held-out accuracy, the
GRPO reward and response length (first -> last fifth of the steps), the seconds, and whether
each finding held.

    python bench/demo_seeds.py [--seeds 0 1 2] [--out runs/demo_seeds]

Each run's plots and summary stay in OUT/seed_S; OUT/reward.png etc. put the seeds' GRPO
curves together. Measured figures: bench/RESULTS.md and the README.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

from jax_tinyr1.demo import KINDS, SFT_LETTER_KINDS, run
from jax_tinyr1.train.plot import plot_runs

FINDINGS = {
    "R1 > SFT": lambda s: s["r1_accuracy"] - s["sft_accuracy"],
    "R1 > ColdStart": lambda s: s["r1_accuracy"] - s["coldstart_accuracy"],
    "reward rises": lambda s: s["reward_last"] - s["reward_first"],
    "length rises": lambda s: s["length_last"] - s["length_first"],
}


def table(summaries: list[dict]) -> str:
    lines = [
        "| seed | SFT % | ColdStart % | R1 % | reward first -> last | length first -> last | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        lines.append(
            f"| {s['seed']} | {s['sft_accuracy']:.1f} | {s['coldstart_accuracy']:.1f} | {s['r1_accuracy']:.1f} | "
            f"{s['reward_first']:.2f} -> {s['reward_last']:.2f} | {s['length_first']:.1f} -> {s['length_last']:.1f} "
            f"| {s['seconds']:.0f} |"
        )
    lines += ["", "| finding | margin per seed | held in |", "|---|---|---|"]
    lines += [finding_row(name, [margin(s) for s in summaries]) for name, margin in FINDINGS.items()]
    return "\n".join(lines)


def finding_row(name: str, margins: list[float]) -> str:
    """A finding's table row: its margin in each seed (positive: it held) and how often it held."""
    held = sum(m > 0 for m in margins)
    return f"| {name} | {', '.join(f'{m:+.2f}' for m in margins)} | {held} of {len(margins)} |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("runs/demo_seeds"))
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), help="the question kinds (data.synthetic)")
    parser.add_argument(
        "--sft-letter-kinds", nargs="+", default=list(SFT_LETTER_KINDS), help="the SFT model's letter questions"
    )
    parser.add_argument("--sft-same-kinds", action="store_true", help="the SFT model answers the evaluated kinds")
    parser.add_argument("overrides", nargs="*", help="GRPO config overrides, e.g. reward.max_len=600")
    args = parser.parse_args(argv)
    letters = None if args.sft_same_kinds else tuple(args.sft_letter_kinds)
    summaries = [
        run(
            args.out / f"seed_{seed}",
            seed=seed,
            kinds=tuple(args.kinds),
            overrides=tuple(args.overrides),
            sft_letter_kinds=letters,
        )
        for seed in args.seeds
    ]
    plot_runs([args.out / f"seed_{seed}" / "grpo" for seed in args.seeds], args.out)
    result = table(summaries)
    (args.out / "seeds.md").write_text(result + "\n")
    (args.out / "seeds.json").write_text(json.dumps(summaries, indent=1))
    print(f"\n{platform.processor() or platform.machine()}, {len(summaries)} seeds\n{result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
