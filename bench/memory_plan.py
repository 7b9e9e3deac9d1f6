"""Memory plan of the paper's GRPO setting, compiled ahead of time with abstract shapes.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python bench/memory_plan.py

Nothing is allocated: parameters, optimizer state and batch are ShapeDtypeStructs with
shardings, and XLA's memory analysis of the compiled programs gives the per-device bytes.
The setting (paper / original code): 8 devices, mesh fsdp=8, 1 prompt per device, G = 8,
16 frames at 384 px, 512 new tokens, prompts of about 600 tokens (512 of them visual),
bf16 compute with float32 master weights and AdamW state, gradient checkpointing, the
frozen reference policy for the KL term, and the frozen vision tower.
Last line: per_device_peak_gib=<number> (the largest of the compiled programs).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jax_tinyr1.grpo import OBJECTIVE_PRESETS
from jax_tinyr1.grpo.rollout import generate
from jax_tinyr1.grpo.sampling import SamplingConfig
from jax_tinyr1.grpo.step import (
    Batch,
    GRPOConfig,
    OptimizerConfig,
    batch_sharding,
    make_logps,
    make_optimizer,
    make_update,
    opt_state_shardings,
    param_shardings,
)
from jax_tinyr1.model import abstract_model, get_preset
from jax_tinyr1.model.sharding import make_mesh

GIB = 1024**3


def abstract_with(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def peak_bytes(compiled) -> int:
    m = compiled.memory_analysis()
    return m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes


def plan(
    preset: str,
    fsdp: int,
    prompts_per_device: int,
    group: int,
    frames: int,
    new_tokens: int,
    prompt_tokens: int,
    remat: bool,
) -> dict[str, float]:
    base = get_preset(preset)
    config = dataclasses.replace(
        base,
        llm=dataclasses.replace(base.llm, dtype="bfloat16", remat=remat),
        vision=dataclasses.replace(base.vision, dtype="bfloat16"),
        connector=dataclasses.replace(base.connector, dtype="bfloat16"),
        num_frames=frames,
    )
    grpo = GRPOConfig(
        objective=OBJECTIVE_PRESETS["paper"],
        sampling=SamplingConfig(max_new_tokens=new_tokens),
        optimizer=OptimizerConfig(),
        group_size=group,
    )
    mesh = make_mesh(fsdp=fsdp)
    model = abstract_model("tinyllava", config)
    state = nnx.state(model)
    graphdef = nnx.graphdef(model)
    pure = nnx.to_pure_dict(state)
    trainable_parts, frozen_parts = grpo.trainable, tuple(k for k in pure if k not in grpo.trainable)
    tr_shard = param_shardings(state, mesh, trainable_parts)
    fr_shard = param_shardings(state, mesh, frozen_parts)
    trainable = abstract_with({k: pure[k] for k in trainable_parts}, tr_shard)
    frozen = abstract_with({k: pure[k] for k in frozen_parts}, fr_shard)
    optimizer = make_optimizer(grpo.optimizer)
    opt_abstract = jax.eval_shape(optimizer.init, trainable)
    opt_shard = opt_state_shardings(optimizer, opt_abstract, tr_shard, mesh)
    opt_state = abstract_with(opt_abstract, opt_shard)

    b = prompts_per_device * fsdp
    rows = b * group
    text = prompt_tokens - config.num_visual_tokens + 1  # the placeholder stands for the visual block
    feature_len = frames * config.vision.tokens_per_frame

    def spec(shape, dtype):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding(mesh, shape))

    batch = Batch(
        prompt_ids=spec((rows, text), jnp.int32),
        prompt_mask=spec((rows, text), jnp.int32),
        features=spec((b, feature_len, config.vision.hidden_size), jnp.bfloat16),
        tokens=spec((rows, new_tokens), jnp.int32),
        completion_mask=spec((rows, new_tokens), jnp.int32),
        advantages=spec((rows,), jnp.float32),
        old_logps=None,
        ref_logps=spec((rows, new_tokens), jnp.float32),
    )
    replicated = NamedSharding(mesh, P())
    results: dict[str, float] = {}

    update = make_update(graphdef, grpo, optimizer)
    batch_shard = Batch(*(None if x is None else x.sharding for x in batch))
    start = time.perf_counter()
    compiled = (
        jax.jit(
            update,
            in_shardings=(tr_shard, fr_shard, opt_shard, batch_shard),
            out_shardings=(tr_shard, opt_shard, replicated),
            donate_argnums=(0, 2),
        )
        .lower(trainable, frozen, opt_state, batch)
        .compile()
    )
    results["update_compile_s"] = time.perf_counter() - start
    results["update_peak_gib"] = peak_bytes(compiled) / GIB
    m = compiled.memory_analysis()
    results["update_arguments_gib"] = m.argument_size_in_bytes / GIB
    results["update_temp_gib"] = m.temp_size_in_bytes / GIB

    reference = make_logps(graphdef, grpo)  # the frozen reference policy's log-probs
    start = time.perf_counter()
    compiled = (
        jax.jit(reference, in_shardings=(tr_shard, fr_shard, batch_shard)).lower(trainable, frozen, batch).compile()
    )
    results["reference_compile_s"] = time.perf_counter() - start
    # The reference copy of the trainable weights lives beside the policy during the step.
    results["reference_peak_gib"] = (
        peak_bytes(compiled) / GIB + sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(trainable)) / fsdp / GIB
    )

    def rollout(trainable, frozen, prompt_ids, prompt_mask, pixels, key):
        model = nnx.merge(graphdef, {**frozen, **trainable})
        visual = model.encode_video(pixels)
        embeds, mask = model.embed_inputs(prompt_ids, prompt_mask, visual)
        # The accelerator decode path (this plan is for GPUs; "cpu" copies weights per rollout).
        return generate(model.llm, embeds, mask, key, grpo.sampling, group, decode_path="scan")

    image = config.vision.image_size
    pixels = spec((b, frames, image, image, 3), jnp.bfloat16)
    start = time.perf_counter()
    compiled = (
        jax.jit(rollout)
        .lower(
            trainable,
            frozen,
            spec((b, text), jnp.int32),
            spec((b, text), jnp.int32),
            pixels,
            jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=replicated),
        )
        .compile()
    )
    results["rollout_compile_s"] = time.perf_counter() - start
    results["rollout_peak_gib"] = peak_bytes(compiled) / GIB
    kv_bytes = (
        2
        * config.llm.num_layers
        * rows
        * (prompt_tokens + new_tokens)
        * config.llm.num_kv_heads
        * (config.llm.head_dim)
        * 2
    )
    results["kv_cache_total_gib"] = kv_bytes / GIB
    results["kv_cache_per_device_gib"] = kv_bytes / fsdp / GIB
    results["per_device_peak_gib"] = max(
        results["update_peak_gib"], results["reference_peak_gib"], results["rollout_peak_gib"]
    )
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tinyllava-video-3b")
    parser.add_argument("--fsdp", type=int, default=8)
    parser.add_argument("--prompts-per-device", type=int, default=1)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=512)
    parser.add_argument("--prompt-tokens", type=int, default=600)
    parser.add_argument("--no-remat", action="store_true")
    args = parser.parse_args(argv)
    with jax.set_mesh(make_mesh(fsdp=args.fsdp)):
        results = plan(
            args.preset,
            args.fsdp,
            args.prompts_per_device,
            args.group,
            args.frames,
            args.new_tokens,
            args.prompt_tokens,
            remat=not args.no_remat,
        )
    print(f"devices: {jax.device_count()} x {jax.devices()[0].platform}; preset {args.preset}; mesh fsdp={args.fsdp}")
    print(f"{'figure':<28}{'value':>12}")
    for key, value in results.items():
        if key != "per_device_peak_gib":
            print(f"{key:<28}{value:>12.3f}")
    print(f"per_device_peak_gib={results['per_device_peak_gib']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
