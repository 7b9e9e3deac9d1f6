"""Metrics: a progress bar with ETA and key figures, JSONL, TensorBoard event files."""

from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm

SHOWN = ("reward", "rewards/accuracy/mean", "completions/mean_length", "kl", "nll")


class MetricsLogger:
    def __init__(self, output_dir: Path, total_steps: int, start_step: int = 0, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self.bar = tqdm(total=total_steps, initial=start_step, disable=not enabled, dynamic_ncols=True)
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
        self.bar.set_postfix({k.split("/")[-2] if "/" in k else k: f"{metrics[k]:.3g}" for k in SHOWN if k in metrics})
        self.bar.update(1)

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
            raise ValueError(f"{path}:{number}: not a metrics record ({type(e).__name__}: {e})") from None
    return [by_step[s] for s in sorted(by_step)]
