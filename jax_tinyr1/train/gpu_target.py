"""GPU targets of `--plan --target`: compile-only CUDA devices of a real card, on any machine.

XLA:GPU compiles for a card from its device description (a `GpuTargetConfigProto` in text
form: SM count, shared memory, memory size, compute capability), with no GPU and no CUDA
libraries; the PJRT CUDA plugin (`jax-cuda12-pjrt`, the version of our jax) holds the
compiler. `jax.experimental.topologies.get_topology_desc` makes devices of such a card for a
topology of processes x devices per process; a mesh over them lowers and compiles every
program of a step as a run on those cards would (`memory_analysis()` works; no autotuning,
and `cost_analysis()` is not implemented there).

The descriptions of the named targets are in `gpu_targets/` (XLA's published files, edited
to parse with the plugin, and one derived for the L4; each file says which).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import jax

from jax_tinyr1 import platform
from jax_tinyr1.cli import BadInput

TARGETS_DIR = Path(__file__).parent / "gpu_targets"
# name -> (description file, what it is)
TARGETS: dict[str, tuple[str, str]] = {
    "a100-40gb": ("a100_sxm_40.txtpb", "A100-SXM4-40GB (the paper's card)"),
    "a100-80gb": ("a100_sxm_80.txtpb", "A100-SXM4-80GB"),
    "h100-80gb": ("h100_sxm.txtpb", "H100 80GB HBM3 (SXM)"),
    "h200-141gb": ("h200.txtpb", "H200 141GB HBM3e"),
    "l4-24gb": ("l4.txtpb", "L4 24 GB (derived from the RTX A6000 description; see the file)"),
    "ada-16gb": ("ada_16gb.txtpb", "a 16 GB Ada card (RTX 4060 Ti 16GB, RTX 4000 Ada): the L4 file with 16 GiB"),
}
# Memory a process loses on each card outside JAX's allocator: the CUDA context (kernels,
# cuBLAS/cuDNN handles and workspaces) and, on a mesh of several cards, NCCL's buffers.
CONTEXT_RESERVE_GIB = 0.5
NCCL_RESERVE_GIB = 0.5
# JAX preallocates this fraction of each card unless XLA_PYTHON_CLIENT_MEM_FRACTION says otherwise.
JAX_DEFAULT_MEM_FRACTION = 0.75
GIB = 1024**3


class PlanTargetError(BadInput):
    """A target that cannot be planned for (unknown name, unreadable file, missing plugin)."""


def install_command() -> str:
    return f"pip install jax-cuda12-pjrt=={jax.__version__}"


def targets_help() -> str:
    return ", ".join(f"{name} ({what})" for name, (_, what) in TARGETS.items())


@dataclasses.dataclass(frozen=True)
class GpuTarget:
    name: str
    description: str  # the GpuTargetConfigProto text
    processes: int
    devices_per_process: int

    @property
    def card(self) -> str:
        found = re.search(r'^device_description_str:\s*"([^"]*)"', self.description, re.M)
        return found.group(1) if found else self.name

    @property
    def memory_gib(self) -> float:
        found = re.search(r"^\s*device_memory_size:\s*(\d+)", self.description, re.M)
        if not found:
            raise PlanTargetError(f"--target {self.name}: the description has no device_memory_size")
        return int(found.group(1)) / GIB

    @property
    def memory_bandwidth(self) -> float:
        """Bytes per second of the card's memory, as its description states."""
        found = re.search(r"^\s*memory_bandwidth:\s*(\d+)", self.description, re.M)
        if not found:
            raise PlanTargetError(f"--target {self.name}: the description has no memory_bandwidth")
        return float(found.group(1))

    @property
    def device_count(self) -> int:
        return self.processes * self.devices_per_process

    def budget_gib(self, mem_fraction: float) -> tuple[float, str]:
        """(what one card can give a program, how that was worked out): JAX's pool (the
        preallocation fraction of the card) and never more than the card less the memory
        outside JAX (CUDA context, NCCL when there are several cards)."""
        reserve = CONTEXT_RESERVE_GIB + (NCCL_RESERVE_GIB if self.device_count > 1 else 0.0)
        budget = min(mem_fraction * self.memory_gib, self.memory_gib - reserve)
        how = (
            f"min({mem_fraction:g} x {self.memory_gib:.2f} GiB (JAX's preallocation), {self.memory_gib:.2f} - "
            f"{reserve:g} GiB (CUDA context{', NCCL buffers' if self.device_count > 1 else ''}))"
        )
        return budget, how


def resolve_target(spec: str, mesh_size: int) -> GpuTarget:
    """`NAME` or a description file, optionally `:PROCESSESxDEVICES` (default 1 x the mesh)."""
    if Path(spec).is_file():  # a file name may hold a colon; a topology follows only a name
        where, topology = spec, ""
    else:
        where, _, topology = spec.partition(":")
    if where in TARGETS:
        description = (TARGETS_DIR / TARGETS[where][0]).read_text()
    elif Path(where).is_file():
        description = Path(where).read_text()
        if "gpu_device_info" not in description:
            raise PlanTargetError(f"--target {where}: not a GpuTargetConfigProto text file (no gpu_device_info)")
    else:
        raise PlanTargetError(f"--target {where!r}: neither a known target ({', '.join(TARGETS)}) nor a file")
    processes, per_process = 1, mesh_size
    if topology:
        found = re.fullmatch(r"(\d+)x(\d+)", topology)
        if not found or int(found.group(1)) < 1 or int(found.group(2)) < 1:
            raise PlanTargetError(f"--target {spec}: the topology must be PROCESSESxDEVICES, e.g. 2x8")
        processes, per_process = int(found.group(1)), int(found.group(2))
    target = GpuTarget(where, description, processes, per_process)
    if target.device_count != mesh_size:
        raise PlanTargetError(
            f"--target {spec}: {processes} x {per_process} devices, but the mesh has {mesh_size} (mesh.* in the config)"
        )
    return target


def compile_only_devices(target: GpuTarget) -> list:
    """CUDA devices of the target's card that compile but never run. JAX must be on its CPU
    platform (the entry point sets it); the plugin needs no GPU and no CUDA libraries."""
    if not platform.cuda_plugin_installed():
        raise PlanTargetError(f"--target needs the PJRT CUDA plugin, which compiles for GPUs: {install_command()}")
    from jax.experimental import topologies

    try:
        topology = topologies.get_topology_desc(
            platform="cuda",
            target_config=target.description,
            topology=f"1x{target.processes}x{target.devices_per_process}",
        )
    except jax.errors.JaxRuntimeError as e:
        raise PlanTargetError(f"--target {target.name}: the plugin refused the description ({e})") from None
    return list(topology.devices)
