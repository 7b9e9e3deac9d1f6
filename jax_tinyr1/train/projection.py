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
