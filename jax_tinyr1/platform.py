"""How this project's programs are compiled, the same on every path: the XLA flags for GPUs
(plans for a target card and real runs alike), and JAX kept quiet on a machine whose only
use of the CUDA plugin is to compile for a card it does not have.

`configure()` runs when the package is imported, before JAX compiles anything (XLA reads its
flags once per process); it only sets environment variables, and never fails: every install
(no plugin, the plugin without a GPU, `jax[cuda12]` with a GPU) must import. A flag the user
already put in XLA_FLAGS is left as the user set it. `start_backend()` is what an entry point
calls before its first JAX computation: it starts JAX's backends with the CUDA plugin's
start-up lines (printed by its C++ library straight to the process's stderr when no driver is
found) left out, and everything else on stderr passed through.

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

import importlib.util
import logging
import os
import sys
import tempfile

GPU_XLA_FLAGS = ("--xla_gpu_enable_triton_gemm=false",)
MEM_FRACTION_ENV = "XLA_PYTHON_CLIENT_MEM_FRACTION"
PLUGIN_NAMESPACE = "jax_plugins"
CUDA_PLUGIN = f"{PLUGIN_NAMESPACE}.xla_cuda12"
# jax 0.11's CUDA 13 build names its plugin so (a lent GPU machine's image has it).
CUDA13_PLUGIN = f"{PLUGIN_NAMESPACE}.xla_cuda13"
# The device nodes JAX itself looks for (jax._src.hardware_utils): a driver's first card,
# its control node (containers), and WSL2's GPU paravirtualisation device.
NVIDIA_DEVICE_NODES = ("/dev/nvidia0", "/dev/nvidiactl", "/dev/dxg")
# What the CUDA plugin's library prints at start when it finds no driver: nothing a user can act on.
PLUGIN_NOISE = (
    "All log messages before absl::InitializeLog() is called are written to STDERR",
    "cudart_stub.cc",
    "Unable to initialize backend 'cuda'",
)


def _flag_name(flag: str) -> str:
    return flag.lstrip("-").split("=", 1)[0]


def add_gpu_xla_flags(environ=os.environ) -> None:
    """Append GPU_XLA_FLAGS to XLA_FLAGS, except those the user set (either way)."""
    current = environ.get("XLA_FLAGS", "")
    missing = [f for f in GPU_XLA_FLAGS if _flag_name(f) not in current]
    if missing:
        environ["XLA_FLAGS"] = " ".join([current, *missing]).strip()


def has_nvidia_gpu() -> bool:
    """An NVIDIA driver's device nodes exist, as JAX decides it (bare metal, containers, WSL2)."""
    return any(os.path.exists(node) for node in NVIDIA_DEVICE_NODES)


def cuda_plugin_installed() -> bool:
    """Whether a CUDA plugin (jax 0.10's CUDA 12 one, or jax 0.11's CUDA 13 one) can be imported,
    without importing it. `find_spec` of a dotted name imports its parent, and raises when the
    parent is absent: ask for the parent first."""
    try:
        if importlib.util.find_spec(PLUGIN_NAMESPACE) is None:
            return False
        return any(importlib.util.find_spec(name) is not None for name in (CUDA_PLUGIN, CUDA13_PLUGIN))
    except (ImportError, ValueError):  # a broken namespace package counts as no plugin
        return False


def plugin_without_gpu() -> bool:
    return cuda_plugin_installed() and not has_nvidia_gpu()


def keep_cuda_plugin_quiet(environ=os.environ) -> None:
    """With the CUDA plugin installed (to plan for GPUs) and no GPU here, JAX would print the
    plugin's failed initialisation, a traceback, at every start: use the CPU platform unless
    the user chose platforms."""
    if not plugin_without_gpu():
        return
    environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    logging.getLogger(CUDA_PLUGIN).setLevel(logging.ERROR)
    if environ.get("JAX_PLATFORMS"):
        return
    environ["JAX_PLATFORMS"] = "cpu"
    if "jax" in sys.modules:  # imported before us: its config has read the environment already
        sys.modules["jax"].config.update("jax_platforms", "cpu")


def apply_memory_fraction(fraction: float, environ=os.environ) -> None:
    """A run's `run.memory_fraction` (0: none) as XLA_PYTHON_CLIENT_MEM_FRACTION, before the
    backends start. A value the user exported wins, and a line on stderr says so."""
    if not fraction:
        return
    exported = environ.get(MEM_FRACTION_ENV)
    if exported is None:
        environ[MEM_FRACTION_ENV] = f"{fraction:g}"
    elif exported.strip() != f"{fraction:g}":
        print(
            f"note: {MEM_FRACTION_ENV}={exported} (exported) is used, not run.memory_fraction={fraction:g}",
            file=sys.stderr,
        )


def configure() -> None:
    add_gpu_xla_flags()
    keep_cuda_plugin_quiet()


def start_backend() -> None:
    """Start JAX's backends now (idempotent). Without a GPU and with the plugin installed, the
    plugin's library writes its start-up lines to file descriptor 2 from C++; they are held
    back and every other line written meanwhile is passed on."""
    import jax

    if not plugin_without_gpu():
        jax.devices()
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as held:
        os.dup2(held.fileno(), 2)
        try:
            jax.devices()
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().decode(errors="replace").splitlines(keepends=True)
            kept = [line for line in lines if not any(noise in line for noise in PLUGIN_NOISE)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
