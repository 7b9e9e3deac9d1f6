"""PNG plots of a run, like the paper's Figures 4-5: reward, response length, KL, accuracy.

python -m jax_tinyr1.train.plot RUN_DIR
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jax_tinyr1.cli import exits_on_bad_input
from jax_tinyr1.train.logging import read_metrics

PLOTS = {
    "reward": ("reward", "reward (mean over completions)"),
    "response_length": ("completions/mean_length", "response length (tokens)"),
    "kl": ("kl", "KL to the reference"),
    "accuracy": ("rewards/accuracy/mean", "accuracy reward"),
}


def plot_run(run_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    written = []
    for name, (key, label) in PLOTS.items():
        points = [(r["step"], r[key]) for r in records if key in r]
        if not points:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
        ax.plot(*zip(*points, strict=True), color="tab:blue", linewidth=1.2)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = Path(run_dir) / f"{name}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


@exits_on_bad_input
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    paths = plot_run(args.run_dir)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
