"""How this project's programs are compiled, the same on every path: the XLA flags for GPUs
(plans for a target card and real runs alike), and JAX kept quiet on a machine whose only
use of the CUDA plugin is to compile for a card it does not have.

Applied when the package is imported, before JAX compiles anything (XLA reads its flags once
per process). A flag the user already put in XLA_FLAGS is left as the user set it.

Why `--xla_gpu_enable_triton_gemm=false`: with its default flags XLA:GPU fuses a transpose
into the operand of a Triton matmul when the matmul's rows or contraction span two array
dimensions, e.g. SigLIP's attention output [frames, heads, 729, 72] read as [frames x 729,
16 x 72] by the output projection. With no device to autotune on, XLA then gives the fusion
its untuned tile sizes (16-128), which cannot be laid over a dimension of 72 (SigLIP's head
width) or 19 (a group of the tiny model's connector), and the compile fails ("Couldn't find
output tile sizes that satisfy ..."). A GPU that autotunes would likely discard those
configurations and fall back to cuBLAS, but that was never checked on a card, and a plan
that compiles other programs than the run is worthless; with the flag every matmul is a
cuBLAS call on both paths (MaxText's and AlphaFold 3's GPU settings turn Triton GEMMs off
too). Element-wise work is still fused by XLA around the cuBLAS calls.
"""

from __future__ import annotations

import glob
import importlib.util
import logging
import os
import sys

GPU_XLA_FLAGS = ("--xla_gpu_enable_triton_gemm=false",)
CUDA_PLUGIN = "jax_plugins.xla_cuda12"


def _flag_name(flag: str) -> str:
    return flag.lstrip("-").split("=", 1)[0]


def add_gpu_xla_flags(environ=os.environ) -> None:
    """Append GPU_XLA_FLAGS to XLA_FLAGS, except those the user set (either way)."""
    current = environ.get("XLA_FLAGS", "")
    missing = [f for f in GPU_XLA_FLAGS if _flag_name(f) not in current]
    if missing:
        environ["XLA_FLAGS"] = " ".join([current, *missing]).strip()


def has_nvidia_gpu() -> bool:
    """A CUDA driver's device nodes exist (containers with a GPU have them too)."""
    return bool(glob.glob("/dev/nvidia[0-9]*"))


def keep_cuda_plugin_quiet(environ=os.environ) -> None:
    """With the CUDA plugin installed (to plan for GPUs) and no GPU here, JAX would print the
    plugin's failed initialisation, a traceback, at every start: use the CPU platform unless
    the user chose platforms."""
    if has_nvidia_gpu() or importlib.util.find_spec(CUDA_PLUGIN) is None:
        return
    # JAX imports every installed plugin at start: without a GPU the CUDA one logs that it
    # found no driver (XLA's C++ log, the plugin's Python log), which says nothing here.
    environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    logging.getLogger(CUDA_PLUGIN).setLevel(logging.ERROR)
    if environ.get("JAX_PLATFORMS"):
        return
    environ["JAX_PLATFORMS"] = "cpu"
    if "jax" in sys.modules:  # imported before us: its config has read the environment already
        sys.modules["jax"].config.update("jax_platforms", "cpu")


def configure() -> None:
    add_gpu_xla_flags()
    keep_cuda_plugin_quiet()
