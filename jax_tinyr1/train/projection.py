"""How long a step takes on a card, projected from its compiled programs: a stated roofline.

Per program, from its optimized HLO (train/hlo_stats.py) and its traced matmuls
(train/flops.py), every loop at its trips (the token loop at `max_new_tokens`):

    seconds = max(matmul FLOPs / (peak x MATMUL_EFFICIENCY), HBM bytes / (bandwidth x HBM_EFFICIENCY))
              + collective bytes x (2 for an all-reduce, else 1) / link bandwidth   (none overlapped)
              + kernels x LAUNCH_SECONDS                                             (no CUDA graphs)

A step is the sum over its programs (times their runs per step); the run, that times its
steps. The memory bandwidth is the target description's own; the peak bf16 dense tensor
FLOP/s and the bandwidth between cards are not in it, so they are the vendors' published
figures (NCCL's bus bandwidth for the links), in `CARDS`. It is a projection: the constants are
printed with it, and `bench/gpu_3b.py` prints measured figures beside it on a real card.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

MATMUL_EFFICIENCY = 0.45  # of the tensor cores' peak: large bf16 matmuls reach 40-50 %
HBM_EFFICIENCY = 0.75  # of the memory bandwidth: 70-85 % for streaming kernels
LAUNCH_SECONDS = 4.5e-6  # per kernel, without CUDA graphs (4-5 us)


@dataclasses.dataclass(frozen=True)
class Card:
    bf16_flops: float  # dense tensor-core peak, FLOP/s
    link_bytes_per_s: float  # between cards of one node: NCCL bus bandwidth
    link: str


# By the target description's `device_description_str`.
CARDS = {
    "NVIDIA A100-SXM4-40GB": Card(312e12, 250e9, "NVLink 3 (NCCL bus bandwidth ~230-300 GB/s)"),
    "NVIDIA A100-SXM4-80GB": Card(312e12, 250e9, "NVLink 3 (NCCL bus bandwidth ~230-300 GB/s)"),
    "NVIDIA H100 80GB HBM3": Card(989e12, 400e9, "NVLink 4 (NCCL bus bandwidth ~350-450 GB/s)"),
    "NVIDIA H200 141GB HBM3e": Card(989e12, 400e9, "NVLink 4 (NCCL bus bandwidth ~350-450 GB/s)"),
    "NVIDIA L4": Card(121e12, 20e9, "PCIe 4.0 x16 (~20 GB/s)"),
    "NVIDIA L4 with 16 GiB (a 16 GB Ada card)": Card(121e12, 20e9, "PCIe 4.0 x16 (~20 GB/s; the L4's figures)"),
}


@dataclasses.dataclass(frozen=True)
class Projection:
    compute_s: float
    memory_s: float
    collective_s: float
    launch_s: float

    @property
    def seconds(self) -> float:
        return max(self.compute_s, self.memory_s) + self.collective_s + self.launch_s


def project(
    card: Card, hbm_bytes_per_s: float, *, flops: float, hbm_bytes: float, collectives: dict, kernels: float
) -> Projection:
    linked = sum(value * (2.0 if name == "all-reduce" else 1.0) for name, value in collectives.items())
    return Projection(
        compute_s=flops / (card.bf16_flops * MATMUL_EFFICIENCY),
        memory_s=hbm_bytes / (hbm_bytes_per_s * HBM_EFFICIENCY),
        collective_s=linked / card.link_bytes_per_s,
        launch_s=kernels * LAUNCH_SECONDS,
    )


def constants_line(card_name: str, card: Card, hbm_bytes_per_s: float) -> str:
    return (
        f"projection constants: {card_name}: bf16 peak {card.bf16_flops / 1e12:g} TFLOP/s x {MATMUL_EFFICIENCY:g}, "
        f"HBM {hbm_bytes_per_s / 1e12:.3g} TB/s (the description's) x {HBM_EFFICIENCY:g}, links "
        f"{card.link_bytes_per_s / 1e9:g} GB/s ({card.link}), {LAUNCH_SECONDS * 1e6:g} us per kernel launch"
    )


def planned_steps(config, processes: int) -> tuple[int | None, str]:
    """(steps of the run, where the number comes from): run.max_steps, else the annotation
    file's records when it is there, else unknown."""
    d = config.data
    per_step = d.batch_size * processes
    path = Path(d.root) / d.train
    records = None
    if path.is_file():
        text = path.read_text()
        records = (
            sum(1 for line in text.splitlines() if line.strip()) if path.suffix == ".jsonl" else len(json.loads(text))
        )
    steps = None if records is None else config.run.epochs * (records // per_step)
    if config.run.max_steps and (steps is None or config.run.max_steps < steps):
        return config.run.max_steps, "run.max_steps"
    if steps is None:
        return None, f"{path} is not here to count"
    return steps, f"{records} records in {path}, {per_step} per step, {config.run.epochs} epoch(s)"


def projection_lines(config, plans, gpu, stage: str) -> list[str]:
    """The projected seconds of each program and of a step on the target card (train/projection.py)."""
    card = CARDS.get(gpu.card)
    if card is None:
        return [f"projection: no published bf16 peak or link figures for {gpu.card} (train/projection.py CARDS)"]
    bandwidth = gpu.memory_bandwidth
    lines = [
        constants_line(gpu.card, card, bandwidth),
        f"{'projected (seconds per run)':<46}{'compute':>9}{'HBM':>9}{'links':>9}{'launch':>9}{'total':>9}"
        f"{'HBM GB':>10}{'link GB':>10}{'kernels':>10}",
    ]
    step = 0.0
    for p in plans:
        proj = project(
            card,
            bandwidth,
            flops=p.matmul_tflops * 1e12,
            hbm_bytes=p.hbm_bytes,
            collectives=p.collective_bytes,
            kernels=p.kernels,
        )
        step += proj.seconds * p.runs_per_step
        lines.append(
            f"{p.name:<46}{proj.compute_s:>9.3f}{proj.memory_s:>9.3f}{proj.collective_s:>9.3f}{proj.launch_s:>9.3f}"
            f"{proj.seconds:>9.3f}{p.hbm_bytes / 1e9:>10.2f}{sum(p.collective_bytes.values()) / 1e9:>10.2f}"
            f"{p.kernels:>10.0f}"
        )
        if p.token_loop is not None:
            t = p.token_loop
            gathered = t.collective_bytes.get("all-gather", 0.0)
            other = sum(t.collective_bytes.values()) - gathered
            lines.append(
                f"token loop of {p.name}, per token and device: {t.kernels:.0f} kernels, {t.hbm_bytes / 1e9:.4f} GB "
                f"HBM, {gathered:.0f} bytes all-gathered, {other:.0f} bytes in other collectives"
            )
    steps, source = planned_steps(config, gpu.processes)
    if steps is not None:
        lines.append(f"projected run: {steps} steps ({source}): {steps * step / 3600:.2f} hours")
    else:
        lines.append(f"projected run: steps unknown ({source}; run.max_steps sets them)")
    lines.append(
        f"projected_step_seconds={step:.3f} (a roofline projection from the compiled programs, not a measurement)"
    )
    return lines
