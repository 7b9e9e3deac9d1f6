"""Metrics: progress with ETA and key figures (a bar on a terminal, else one line per tenth
of the run: a log file gets no redraws), JSONL, TensorBoard event files."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from tqdm import tqdm

from jax_tinyr1.data.policy import DataError

SHOWN = ("reward", "rewards/accuracy/mean", "completions/mean_length", "kl", "nll")


class MetricsLogger:
    def __init__(self, output_dir: Path, total_steps: int, start_step: int = 0, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self.total, self.start, self.began = total_steps, start_step, time.perf_counter()
        self.every = max(1, total_steps // 10)  # without a terminal: one line per tenth
        interactive = sys.stderr.isatty()
        self.bar = tqdm(
            total=total_steps, initial=start_step, disable=not (enabled and interactive), dynamic_ncols=True
        )
        self.lines = enabled and not interactive
        self.writer = None
        if enabled:
            from tensorboardX import SummaryWriter

            self._forget_after(start_step)
            # purge_step: TensorBoard drops the events of steps logged after the checkpoint.
            self.writer = SummaryWriter(str(Path(output_dir) / "tensorboard"), purge_step=start_step + 1)

    def _forget_after(self, step: int) -> None:
        """A resumed run repeats the steps after its checkpoint: their old records go, so that
        every step is in metrics.jsonl once."""
        if not self.path.is_file():
            return
        lines = [line for line in self.path.read_text().splitlines() if line.strip()]
        kept = [line for line in lines if json.loads(line)["step"] <= step]
        if len(kept) != len(lines):
            self.path.write_text("".join(line + "\n" for line in kept))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        shown = {k.split("/")[-2] if "/" in k else k: f"{metrics[k]:.3g}" for k in SHOWN if k in metrics}
        self.bar.set_postfix(shown)
        self.bar.update(1)
        if self.lines and (step % self.every == 0 or step == self.total):
            elapsed = time.perf_counter() - self.began
            left = elapsed / max(step - self.start, 1) * (self.total - step)
            figures = " ".join(f"{k}={v}" for k, v in shown.items())
            print(
                f"step {step}/{self.total} {figures} ({elapsed:.0f} s, ~{left:.0f} s left)", file=sys.stderr, flush=True
            )

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    """The metrics of a run; a step logged twice (a resumed run) keeps its last record."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics (is {run_dir} a run directory?)")
    by_step = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            by_step[int(record["step"])] = record
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{path}:{number}: not a metrics record ({type(e).__name__}: {e})") from None
    return [by_step[s] for s in sorted(by_step)]
