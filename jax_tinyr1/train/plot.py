"""PNG plots of runs, like the paper's Figures 4-5: reward, response length, KL, accuracy; each
run's raw curve faint and its moving average bold, one colour per run. The command is
`python -m jax_tinyr1.plot`; a training run draws its own at the end (train/run.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jax_tinyr1.train.logging import read_metrics

PLOTS = {
    "reward": ("reward", "reward (mean over completions)"),
    "response_length": ("completions/mean_length", "response length (tokens)"),
    "kl": ("kl", "KL to the reference"),
    "accuracy": ("rewards/accuracy/mean", "accuracy reward"),
}


def moving_average(values, window: int) -> np.ndarray:
    """The mean of each value and the up to `window - 1` before it (no look-ahead)."""
    values = np.asarray(values, np.float64)
    sums = np.cumsum(np.concatenate([[0.0], values]))
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    return (sums[1:] - sums[np.arange(len(values)) + 1 - counts]) / counts


def plot_runs(run_dirs: list[Path], out: Path | None = None, window: int | None = None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [(Path(d), read_metrics(d)) for d in run_dirs]
    labels = run_labels([d for d, _ in runs])
    out = Path(out or run_dirs[0])
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (key, label) in PLOTS.items():
        fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
        drawn = False
        for i, (_, records) in enumerate(runs):
            points = [(r["step"], r[key]) for r in records if key in r]
            if not points:
                continue
            steps, values = zip(*points, strict=True)
            colour = f"C{i}"
            smooth = moving_average(values, window or max(1, len(values) // 10))
            ax.plot(steps, values, color=colour, linewidth=0.8, alpha=0.3)
            ax.plot(steps, smooth, color=colour, linewidth=2.0, label=labels[i] if len(runs) > 1 else None)
            drawn = True
        if not drawn:
            plt.close(fig)
            continue
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if len(runs) > 1:
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"{name}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def run_labels(run_dirs: list[Path]) -> list[str]:
    """The shortest path endings that tell the runs apart (seed_0/grpo, seed_1/grpo, ...)."""
    for depth in range(1, max(len(d.parts) for d in run_dirs) + 1):
        labels = ["/".join(d.parts[-depth:]) for d in run_dirs]
        if len(set(labels)) == len(labels):
            return labels
    return [str(d) for d in run_dirs]


def plot_run(run_dir: Path) -> list[Path]:
    """The plots of one run, in its directory."""
    return plot_runs([run_dir])
