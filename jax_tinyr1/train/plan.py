"""`--plan`: the memory and compute of a run, from its config, before any GPU is rented.

The run is built with abstract shapes only (the model config from `model.checkpoint/
config.json` or `model.preset`; no weights, no data) and every program a step runs is
compiled ahead of time for the configured mesh, the same functions the trainer jits:

    GRPO: vision encode -> rollout (connector, prefill, KV-cache decode) -> reference
          log-probs (beta > 0) -> old-policy log-probs (mu > 1) -> update (forward,
          backward, AdamW)
    SFT:  vision encode -> update

When the machine has fewer accelerators than the mesh, the programs are compiled for that
many virtual CPU devices (the entry point sets XLA's host device count before JAX starts).
A program's peak is XLA's own figure for it (arguments + temporaries + outputs - donated)
plus what stays resident on the device meanwhile without being its argument (e.g. the
optimizer state during the rollout, the reference weights during the update).
FLOPs are XLA's cost analysis of one execution, where a loop's body counts once (the layer
scan, the micro-batch scan, the decode loop): they compare programs of one shape, they are
not the step's arithmetic.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jax_tinyr1 import platform
from jax_tinyr1.cli import one_line
from jax_tinyr1.generate import decode_layout
from jax_tinyr1.grpo import update as grpo_update
from jax_tinyr1.grpo.programs import grpo_programs
from jax_tinyr1.grpo.trainer import reference_copy
from jax_tinyr1.model import abstract_model
from jax_tinyr1.model.lora import split_adapters
from jax_tinyr1.model.sharding import batch_sharding, make_mesh
from jax_tinyr1.sft import objective as sft_objective
from jax_tinyr1.sft.programs import sft_programs
from jax_tinyr1.train.config import ConfigError, TrainConfig, grpo_config, sft_config
from jax_tinyr1.train.flops import jaxpr_matmul_flops
from jax_tinyr1.train.gpu_target import GIB, JAX_DEFAULT_MEM_FRACTION, compile_only_devices, resolve_target
from jax_tinyr1.train.hlo_stats import Program, Stats
from jax_tinyr1.train.projection import projection_lines
from jax_tinyr1.update.optimizer import make_optimizer, opt_state_shardings
from jax_tinyr1.update.params import drop, param_shardings, take

PLAN_DEVICES_FLAG = "--xla_force_host_platform_device_count"
EXIT_OVER_BUDGET = 3


class ProgramCompileError(RuntimeError):
    """XLA could not compile a program of the step (not bad input: the traceback stays)."""


@dataclasses.dataclass
class ProgramPlan:
    name: str
    runs_per_step: int
    arguments_gib: float
    temporaries_gib: float
    outputs_gib: float
    resident_gib: float  # on the device meanwhile, not an argument of this program
    gflops: float  # per device and execution (XLA's cost analysis: loop bodies once)
    matmul_tflops: float  # per device and execution, every loop iteration (train/flops.py)
    compile_s: float
    collectives: dict[str, int]  # communication ops in the compiled program (a loop body's once)
    # From the optimized HLO (train/hlo_stats.py), every loop at its trips (the token loop at its longest):
    kernels: float = 0.0
    hbm_bytes: float = 0.0
    collective_bytes: dict[str, float] = dataclasses.field(default_factory=dict)
    token_loop: Stats | None = None  # one trip of the rollout's token loop

    @property
    def peak_gib(self) -> float:
        return self.arguments_gib + self.temporaries_gib + self.outputs_gib + self.resident_gib


def request_plan_devices(count: int) -> None:
    """Ask XLA for `count` virtual CPU devices; effective only before JAX's backends start."""
    flags = os.environ.get("XLA_FLAGS", "")
    if PLAN_DEVICES_FLAG not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {PLAN_DEVICES_FLAG}={count}".strip()


def plan_devices(count: int) -> list:
    """The accelerators when there are enough of them, else virtual CPU devices."""
    if jax.default_backend() != "cpu" and jax.device_count() >= count:
        return jax.devices()[:count]
    cpus = jax.devices("cpu")
    if len(cpus) < count:
        raise ConfigError(
            f"mesh: the plan needs {count} devices and this process has {len(cpus)} CPU devices "
            f"(set XLA_FLAGS={PLAN_DEVICES_FLAG}={count} before JAX starts)"
        )
    return cpus[:count]


def _abstract(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def device_gib(tree) -> float:
    """Bytes one device holds of a tree of sharded abstract arrays, in GiB."""
    total = 0
    for x in jax.tree.leaves(tree):
        total += math.prod(x.sharding.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize
    return total / GIB


def _flops(cost) -> float:
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float((cost or {}).get("flops", 0.0))


def unoptimised_flops(lowered) -> float:
    """FLOPs of a lowered program's whole-mesh HLO before optimisation, counted by XLA:CPU's
    cost analysis (what a compile-only GPU cannot give: its cost analysis is not implemented)."""
    from jax._src.lib import _jax  # the cost analysis of an HLO module, as Lowered.cost_analysis calls it

    module = lowered.compiler_ir("hlo").as_hlo_module()
    return _flops(_jax.hlo_module_cost_analysis(jax.devices("cpu")[0].client, module))


def _compile_one(
    name, fn, args, *, devices, runs, resident, in_shardings=None, out_shardings=None, donate=(), while_trips=1
):
    kwargs = {} if in_shardings is None else {"in_shardings": in_shardings, "out_shardings": out_shardings}
    print(
        f"plan: compiling {name} for {len(devices)} {devices[0].device_kind} device(s)...", file=sys.stderr, flush=True
    )
    start = time.perf_counter()
    traced = jax.jit(fn, donate_argnums=donate, **kwargs).trace(*args)
    lowered = traced.lower()
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        raise ProgramCompileError(f"{name}: XLA cannot compile it: {one_line(e)[:3000]}") from e
    seconds = time.perf_counter() - start
    print(f"plan: compiled {name} in {seconds:.1f} s", file=sys.stderr, flush=True)
    memory = compiled.memory_analysis()
    if devices[0].platform == "cpu":
        gflops = _flops(compiled.cost_analysis()) / 1e9
    else:  # a compile-only GPU has no cost analysis: whole-mesh FLOPs before optimisation, per device
        gflops = unoptimised_flops(lowered) / len(devices) / 1e9
    program = Program(compiled.as_text(), unknown_trips=while_trips)
    whole = program.stats()
    token_loop = None
    if while_trips > 1:  # the rollout: its token loop is the entry's loop of unknown trips with the most kernels
        loops = [loop for loop in program.loops() if not program.knows_trips(loop)]
        if loops:
            token_loop = max((program.iteration(loop) for loop in loops), key=lambda s: s.kernels)
    return ProgramPlan(
        name=name,
        runs_per_step=runs,
        arguments_gib=memory.argument_size_in_bytes / GIB,
        temporaries_gib=memory.temp_size_in_bytes / GIB,
        outputs_gib=(memory.output_size_in_bytes - memory.alias_size_in_bytes) / GIB,
        resident_gib=resident,
        gflops=gflops,
        matmul_tflops=jaxpr_matmul_flops(traced.jaxpr.jaxpr, while_trips) / len(devices) / 1e12,
        compile_s=seconds,
        collectives=program.collective_ops(),
        kernels=whole.kernels,
        hbm_bytes=whole.hbm_bytes,
        collective_bytes=whole.collective_bytes,
        token_loop=token_loop,
    )


def plan_run(
    config: TrainConfig, *, stage: str, devices, processes: int = 1, device_memory: int | None = None
) -> list[ProgramPlan]:
    """Compile every program of one step of `config` ahead of time for `devices` (of
    `processes` processes, each with its `data.batch_size`); nothing is allocated.
    `device_memory` (bytes of one device, when known) decides the rollout's decode layout."""
    sft = stage == "sft"
    _compile = functools.partial(_compile_one, devices=devices)
    model_config = config.model.resolve(config.lora)
    mesh = make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor, devices=devices)
    # The trainer's own config (the step count only shapes the learning-rate schedule).
    stage_config = sft_config(config, 1000) if sft else grpo_config(config, 1000, eos=0, pad=0)
    d = config.data
    if not d.prompt_tokens:
        raise ConfigError("data.prompt_tokens: the plan needs the prompt length (0 means 'as the data comes')")
    if sft and not d.response_tokens:
        raise ConfigError("data.response_tokens: the SFT plan needs the response length")
    visual = model_config.num_visual_tokens
    if d.prompt_tokens <= visual:
        raise ConfigError(f"data.prompt_tokens: {d.prompt_tokens} leaves no text beside {visual} visual tokens")

    model = abstract_model(model_config)
    graphdef, state = nnx.split(model)
    pure = nnx.to_pure_dict(nnx.state(model))
    trainable_parts = stage_config.trainable
    shard = {
        "trainable": param_shardings(state, mesh, trainable_parts),
        "frozen": param_shardings(state, mesh, trainable_parts, frozen=True),
    }
    trainable = _abstract(take(pure, trainable_parts), shard["trainable"])
    frozen = _abstract(drop(pure, trainable_parts), shard["frozen"])
    optimizer = make_optimizer(stage_config.optimizer)
    opt_abstract = jax.eval_shape(optimizer.init, trainable)
    shard["opt_state"] = opt_state_shardings(optimizer, opt_abstract, shard["trainable"], mesh)
    opt_state = _abstract(opt_abstract, shard["opt_state"])
    with_reference = not sft and stage_config.objective.beta != 0
    reference = None
    if with_reference:  # what the trainer's reference keeps of its own (no adapters), abstract
        copied = jax.eval_shape(functools.partial(reference_copy, config=stage_config), trainable)
        reference = jax.tree.map(
            lambda r, t: jax.ShapeDtypeStruct(r.shape, r.dtype, sharding=t.sharding),
            copied,
            split_adapters(trainable)[0],
        )
    sizes = {
        "trainable": device_gib(trainable),
        "frozen": device_gib(frozen),
        "opt_state": device_gib(opt_state),
        "reference": device_gib(reference) if with_reference else 0.0,
    }

    b = d.batch_size * processes
    rows = b * (1 if sft else stage_config.group_size)
    text = d.prompt_tokens - visual + 1
    new_tokens = d.response_tokens if sft else stage_config.sampling.max_new_tokens
    image = model_config.vision.image_size
    replicated = NamedSharding(mesh, P())

    def spec(shape, dtype):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding(mesh, shape))

    adapters = split_adapters(trainable)[1]
    sizes["base"] = sizes["trainable"] - device_gib(adapters)
    if sft:
        programs = sft_programs(graphdef, stage_config, optimizer)
    else:  # the accelerators' decode path ("auto" would pick the CPU one on virtual devices)
        programs = grpo_programs(graphdef, stage_config, optimizer, decode_path="layout", device_memory=device_memory)
    values = {"trainable": trainable, "frozen": frozen, "opt_state": opt_state, "reference": reference}
    values["adapters"] = adapters
    values["pixels"] = spec((b, model_config.num_frames, image, image, 3), jnp.float32)
    with jax.set_mesh(mesh):
        vision = jax.eval_shape(programs["encode"].fn, trainable, frozen, values["pixels"])
    values["vision_input"] = spec(vision.shape, vision.dtype)
    values["prompt_ids"] = values["prompt_mask"] = spec((b, text), jnp.int32)
    values["key"] = jax.ShapeDtypeStruct((), jax.eval_shape(lambda: jax.random.key(0)).dtype, sharding=replicated)
    completion = spec((rows, new_tokens), jnp.float32)
    common = {
        "prompt_ids": spec((rows, text), jnp.int32),
        "prompt_mask": spec((rows, text), jnp.int32),
        "vision_input": values["vision_input"],
        "tokens": spec((rows, new_tokens), jnp.int32),
        "completion_mask": spec((rows, new_tokens), jnp.int32),
    }
    dropout_keys = spec((rows, 2), jnp.uint32) if model_config.llm.lora_dropout else None
    if sft:
        batch = sft_objective.Batch(**common, dropout_keys=dropout_keys)
    else:
        batch = grpo_update.Batch(
            **common,
            advantages=spec((rows,), jnp.float32),
            old_logps=completion if programs["old_logps"].runs else None,
            ref_logps=completion if programs["reference"].runs else None,
            dropout_keys=dropout_keys,
        )
    values["batch"] = batch
    batch_shard = type(batch)(*(None if x is None else x.sharding for x in batch))

    plans = []
    with jax.set_mesh(mesh):
        for program in programs.values():
            if not program.runs:
                continue
            sharded = {}
            if program.update:  # as the trainer jits it: shardings in and out, parameters and state donated
                sharded = {
                    "in_shardings": (shard["trainable"], shard["frozen"], shard["opt_state"], batch_shard),
                    "out_shardings": (shard["trainable"], shard["opt_state"], replicated),
                    "donate": (0, 2),
                }
            plans.append(
                _compile(
                    program.name,
                    program.fn,
                    tuple(values[name] for name in program.args),
                    runs=program.runs,
                    resident=sum(sizes[name] for name in program.resident),
                    while_trips=program.loop_trips,
                    **sharded,
                )
            )
    return plans


def format_plan(
    config: TrainConfig, plans: list[ProgramPlan], where: str, notes: list[str] = (), tail: list[str] = ()
) -> str:
    """The header (`notes` below it), one row per program, `tail` (the projection); the last
    line is `per_device_peak_gib=X`."""
    m, spec = config.mesh, config.model
    remat = spec.effective_remat_policy if spec.remat else "off"
    lines = [
        f"plan: mesh data={m.data} fsdp={m.fsdp} tensor={m.tensor} on {where}; "
        f"compute {spec.dtype}, master weights {spec.param_dtype}, remat {remat}, "
        f"AdamW moments {config.optimizer.state_dtype}"
        + (
            f"; LoRA rank {config.lora.rank} on {'/'.join(config.lora.targets)}, connector {config.lora.connector}"
            if config.lora.enabled
            else ""
        ),
        *notes,
        f"{'program':<46}{'runs':>5}{'args':>8}{'temp':>8}{'out':>8}{'resident':>10}{'peak GiB':>10}"
        f"{'GFLOP/dev':>11}{'TFLOP/dev':>11}{'compile s':>11}",
    ]
    for p in plans:
        lines.append(
            f"{p.name:<46}{p.runs_per_step:>5}{p.arguments_gib:>8.2f}{p.temporaries_gib:>8.2f}{p.outputs_gib:>8.2f}"
            f"{p.resident_gib:>10.2f}{p.peak_gib:>10.2f}{p.gflops:>11.1f}{p.matmul_tflops:>11.4g}{p.compile_s:>11.1f}"
        )
    step_gflops = sum(p.gflops * p.runs_per_step for p in plans)
    step_tflops = sum(p.matmul_tflops * p.runs_per_step for p in plans)
    lines.append(f"step_gflops_per_device={step_gflops:.1f} (GFLOP/dev: XLA's count, loop bodies once)")
    lines.append(
        f"step_matmul_tflops_per_device={step_tflops:.4g} (TFLOP/dev: matmuls of the traced program, every loop "
        "iteration, recomputation included, the decode loop at max_new_tokens)"
    )
    for p in plans:
        ops = ", ".join(f"{name} {count}" for name, count in p.collectives.items()) or "none"
        lines.append(f"collectives of {p.name}: {ops}")
    lines.extend(tail)
    lines.append(f"per_device_peak_gib={max(p.peak_gib for p in plans):.3f}")
    return "\n".join(lines)


def decode_line(config: TrainConfig, llm, devices: int, device_memory: int | None) -> str:
    """How the rollout lays out the language model (`llm`, abstract) for its token loop
    (generate/decode_layout.py)."""
    copy = decode_layout.copy_bytes(llm)
    setting = config.sampling.decode_weights
    placement = decode_layout.choose_placement(setting, copy, devices, device_memory)
    share = "" if not device_memory else f", {100 * copy / device_memory:.1f} % of a device"
    what = f"sampling.decode_weights={setting}; a copy of {copy / GIB:.2f} GiB{share}"
    return f"rollout decode weights: {placement} ({what})"


def mem_fraction() -> float:
    """The share of each GPU JAX preallocates for a run started from this environment."""
    raw = os.environ.get(platform.MEM_FRACTION_ENV)
    if raw is None:
        return JAX_DEFAULT_MEM_FRACTION
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{platform.MEM_FRACTION_ENV}={raw!r}: not a number") from None
    if not 0 < value <= 1:
        raise ConfigError(f"{platform.MEM_FRACTION_ENV}={raw!r}: must be in (0, 1]")
    return value


def model_line(config: TrainConfig, model, source: str | None = None) -> str:
    """What is planned: the model's source and its parameters by part (`model` abstract: no
    weights read)."""
    state = nnx.to_pure_dict(nnx.state(model))
    counts = {part: sum(math.prod(x.shape) for x in jax.tree.leaves(sub)) for part, sub in state.items()}
    order = sorted(counts, key=lambda part: -counts[part])  # the language model first
    parts = ", ".join(f"{part} {_count(counts[part])}" for part in order)
    where = source or config.model.settings()["source"]
    return f"model: {where}: {_count(sum(counts.values()))} parameters ({parts})"


def _count(n: int) -> str:
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= size:
            return f"{n / size:.3f}{unit}" if unit == "B" else f"{n / size:.1f}{unit}"
    return str(n)


def run_plan(
    config: TrainConfig,
    *,
    stage: str,
    device_memory_gib: float | None,
    target: str | None = None,
    source: str | None = None,
) -> int:
    """Print the plan; exit code 3 when the largest program exceeds the budget: what the
    target card gives (with `target`), else `device_memory_gib` when given. `source` names the
    model where config.model.checkpoint is a converted copy of what the user gave."""
    platform.apply_memory_fraction(config.run.memory_fraction)
    platform.start_backend()
    model = abstract_model(config.model.resolve(config.lora))
    print(model_line(config, model, source), flush=True)
    if target is None:
        devices = plan_devices(config.mesh.size)
        memory = None if device_memory_gib is None else int(device_memory_gib * GIB)
        plans = plan_run(config, stage=stage, devices=devices, processes=jax.process_count(), device_memory=memory)
        where = f"{len(devices)} {devices[0].platform} devices"
        notes = [f"GFLOP/dev: XLA's cost analysis of each compiled program ({devices[0].platform})"]
        limit, source = device_memory_gib, f"--device-memory-gib {device_memory_gib}"
    else:
        gpu = resolve_target(target, config.mesh.size)
        devices = compile_only_devices(gpu)
        memory = int(gpu.memory_gib * GIB)
        plans = plan_run(config, stage=stage, devices=devices, processes=gpu.processes, device_memory=memory)
        limit, how = gpu.budget_gib(mem_fraction())
        where = (
            f"{len(devices)} x {gpu.card} (XLA:GPU, compile-only; {gpu.processes} process(es) x "
            f"{gpu.devices_per_process} GPU(s))"
        )
        notes = [
            f"xla_flags: {os.environ.get('XLA_FLAGS', '').strip() or '(none)'}",
            f"budget: {limit:.2f} GiB per GPU = {how}",
            "GFLOP/dev: XLA:CPU's count on each program's HLO before optimisation, whole mesh / devices",
        ]
        source = f"what one {gpu.card} gives ({limit:.2f} GiB)"
    if stage == "grpo":
        notes.append(decode_line(config, model.llm, len(devices), memory))
    tail = [] if target is None else projection_lines(config, plans, gpu, stage)
    print(format_plan(config, plans, where, notes, tail), flush=True)
    worst = max(plans, key=lambda p: p.peak_gib)
    if limit is not None and worst.peak_gib > limit:
        print(f"error: {worst.name} needs {worst.peak_gib:.2f} GiB per device, more than {source}", file=sys.stderr)
        return EXIT_OVER_BUDGET
    return 0
