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
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jax_tinyr1.grpo import update as grpo_update
from jax_tinyr1.grpo.trainer import rollout_program
from jax_tinyr1.model import abstract_model
from jax_tinyr1.model.layers import DTYPES
from jax_tinyr1.model.sharding import batch_sharding, make_mesh
from jax_tinyr1.sft import objective as sft_objective
from jax_tinyr1.train.config import ConfigError, TrainConfig
from jax_tinyr1.train.run import grpo_config, sft_config
from jax_tinyr1.update.optimizer import make_optimizer, opt_state_shardings
from jax_tinyr1.update.params import encode_program, param_shardings

GIB = 1024**3
PLAN_DEVICES_FLAG = "--xla_force_host_platform_device_count"
EXIT_OVER_BUDGET = 3


@dataclasses.dataclass
class ProgramPlan:
    name: str
    runs_per_step: int
    arguments_gib: float
    temporaries_gib: float
    outputs_gib: float
    resident_gib: float  # on the device meanwhile, not an argument of this program
    gflops: float  # per device and execution (XLA cost analysis)
    compile_s: float

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


def _compile(name, fn, args, *, runs, resident, in_shardings=None, out_shardings=None, donate=()):
    kwargs = {} if in_shardings is None else {"in_shardings": in_shardings, "out_shardings": out_shardings}
    start = time.perf_counter()
    compiled = jax.jit(fn, donate_argnums=donate, **kwargs).lower(*args).compile()
    seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return ProgramPlan(
        name=name,
        runs_per_step=runs,
        arguments_gib=memory.argument_size_in_bytes / GIB,
        temporaries_gib=memory.temp_size_in_bytes / GIB,
        outputs_gib=(memory.output_size_in_bytes - memory.alias_size_in_bytes) / GIB,
        resident_gib=resident,
        gflops=float((cost or {}).get("flops", 0.0)) / 1e9,
        compile_s=seconds,
    )


def plan_run(config: TrainConfig, *, stage: str, devices) -> list[ProgramPlan]:
    """Compile every program of one step of `config` ahead of time; nothing is allocated."""
    sft = stage == "sft"
    model_config = config.model.resolve()
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
    frozen_parts = tuple(k for k in pure if k not in trainable_parts)
    shard = {
        "trainable": param_shardings(state, mesh, trainable_parts),
        "frozen": param_shardings(state, mesh, frozen_parts),
    }
    trainable = _abstract({k: pure[k] for k in trainable_parts}, shard["trainable"])
    frozen = _abstract({k: pure[k] for k in frozen_parts}, shard["frozen"])
    optimizer = make_optimizer(stage_config.optimizer)
    opt_abstract = jax.eval_shape(optimizer.init, trainable)
    shard["opt_state"] = opt_state_shardings(optimizer, opt_abstract, shard["trainable"], mesh)
    opt_state = _abstract(opt_abstract, shard["opt_state"])
    with_reference = not sft and stage_config.objective.beta != 0
    reference = (
        jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, DTYPES[stage_config.reference_dtype], sharding=x.sharding),
            trainable,
        )
        if with_reference
        else None
    )
    sizes = {
        "trainable": device_gib(trainable),
        "frozen": device_gib(frozen),
        "opt_state": device_gib(opt_state),
        "reference": device_gib(reference) if with_reference else 0.0,
    }

    b = d.batch_size * jax.process_count()
    rows = b * (1 if sft else stage_config.group_size)
    text = d.prompt_tokens - visual + 1
    new_tokens = d.response_tokens if sft else stage_config.sampling.max_new_tokens
    image = model_config.vision.image_size
    replicated = NamedSharding(mesh, P())

    def spec(shape, dtype):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding(mesh, shape))

    plans = []
    with jax.set_mesh(mesh):
        encode = encode_program(graphdef, trainable_parts)
        pixels = spec((b, model_config.num_frames, image, image, 3), jnp.float32)
        vision_shape = jax.eval_shape(encode, trainable, frozen, pixels)
        vision_input = spec(vision_shape.shape, vision_shape.dtype)
        plans.append(
            _compile(
                "vision encode",
                encode,
                (trainable, frozen, pixels),
                runs=1,
                resident=sizes["opt_state"] + sizes["reference"],
            )
        )
        completion = spec((rows, new_tokens), jnp.float32)
        common = {
            "prompt_ids": spec((rows, text), jnp.int32),
            "prompt_mask": spec((rows, text), jnp.int32),
            "vision_input": vision_input,
            "tokens": spec((rows, new_tokens), jnp.int32),
            "completion_mask": spec((rows, new_tokens), jnp.int32),
        }
        if sft:
            batch = sft_objective.Batch(**common)
            update = sft_objective.make_sft_update(graphdef, stage_config, optimizer)
        else:
            grpo = stage_config
            key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=replicated)
            # The accelerator decode path ("auto" would pick the CPU one on virtual devices).
            rollout = rollout_program(graphdef, grpo, decode_path="scan")
            ids = spec((b, text), jnp.int32)
            plans.append(
                _compile(
                    f"rollout (G={grpo.group_size}, {new_tokens} new tokens)",
                    rollout,
                    (trainable, frozen, ids, ids, vision_input, key),
                    runs=1,
                    resident=sizes["opt_state"] + sizes["reference"],
                )
            )
            batch = grpo_update.Batch(
                **common,
                advantages=spec((rows,), jnp.float32),
                old_logps=completion if grpo.updates_per_rollout > 1 else None,
                ref_logps=completion if with_reference else None,
            )
            logps = grpo_update.make_logps(graphdef, grpo)
            # (name, the weights scored, what else stays on the device meanwhile)
            scorings = []
            if with_reference:
                name = f"reference log-probs ({grpo.reference_dtype} weights)"
                scorings.append((name, reference, sizes["trainable"] + sizes["opt_state"]))
            if grpo.updates_per_rollout > 1:
                scorings.append(("old-policy log-probs", trainable, sizes["opt_state"] + sizes["reference"]))
            for name, weights, resident in scorings:
                plans.append(_compile(name, logps, (weights, frozen, batch), runs=1, resident=resident))
            update = grpo_update.make_grpo_update(graphdef, grpo, optimizer)
        batch_shard = type(batch)(*(None if x is None else x.sharding for x in batch))
        plans.append(
            _compile(
                f"update (micro-batches {stage_config.micro_batches}, log-prob chunk {stage_config.logprob_chunk})",
                update,
                (trainable, frozen, opt_state, batch),
                runs=1 if sft else stage_config.updates_per_rollout,
                resident=sizes["reference"],
                in_shardings=(shard["trainable"], shard["frozen"], shard["opt_state"], batch_shard),
                out_shardings=(shard["trainable"], shard["opt_state"], replicated),
                donate=(0, 2),
            )
        )
    return plans


def format_plan(config: TrainConfig, plans: list[ProgramPlan], devices) -> str:
    m, spec = config.mesh, config.model
    kind = devices[0].platform if devices else "?"
    lines = [
        f"plan: mesh data={m.data} fsdp={m.fsdp} tensor={m.tensor} on {len(devices)} {kind} devices; "
        f"compute {spec.dtype}, master weights {spec.param_dtype}, remat {'on' if spec.remat else 'off'}, "
        f"AdamW moments {config.optimizer.state_dtype}",
        f"{'program':<46}{'runs':>5}{'args':>8}{'temp':>8}{'out':>8}{'resident':>10}{'peak GiB':>10}"
        f"{'GFLOP/dev':>11}{'compile s':>11}",
    ]
    for p in plans:
        lines.append(
            f"{p.name:<46}{p.runs_per_step:>5}{p.arguments_gib:>8.2f}{p.temporaries_gib:>8.2f}{p.outputs_gib:>8.2f}"
            f"{p.resident_gib:>10.2f}{p.peak_gib:>10.2f}{p.gflops:>11.1f}{p.compile_s:>11.1f}"
        )
    step_gflops = sum(p.gflops * p.runs_per_step for p in plans)
    lines.append(f"step_gflops_per_device={step_gflops:.1f} (XLA cost analysis; loop bodies counted once)")
    lines.append(f"per_device_peak_gib={max(p.peak_gib for p in plans):.3f}")
    return "\n".join(lines)


def run_plan(config: TrainConfig, *, stage: str, device_memory_gib: float | None) -> int:
    """Print the plan; exit code 3 when the largest program exceeds `device_memory_gib`."""
    devices = plan_devices(config.mesh.size)
    plans = plan_run(config, stage=stage, devices=devices)
    print(format_plan(config, plans, devices), flush=True)
    worst = max(plans, key=lambda p: p.peak_gib)
    if device_memory_gib is not None and worst.peak_gib > device_memory_gib:
        print(
            f"error: {worst.name} needs {worst.peak_gib:.2f} GiB per device, more than --device-memory-gib "
            f"{device_memory_gib:g}",
            file=sys.stderr,
        )
        return EXIT_OVER_BUDGET
    return 0
