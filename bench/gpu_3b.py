"""The 3B model on one GPU (H100/H200 class): rollout and update throughput, MFU, decode
bandwidth, and a projection of the paper's step time on 8 x A100-40G.

    python bench/gpu_3b.py                 # on a GPU: tinyllava-video-3b shapes, random bf16 weights
    python bench/gpu_3b.py --tiny          # anywhere: the tiny preset, short lengths (a smoke run)

Measured on one device (the per-GPU share of the paper's step, 1 prompt x G = 8 per GPU is
the update; the rollout runs 8 prompts x G 8):
  prefill tokens/s    prompts x prompt_len / prefill time
  decode tokens/s     rows x new_tokens / (rollout time - prefill time)
  decode bandwidth    per decode step, the bf16 weights plus the mean KV cache are read once:
                      bytes = 2 N_llm + 2 * 2 L rows kv_heads head_dim (P + n/2); GB/s = bytes / step time
  update TFLOP/s      FLOPs = (6 + 2 r) N_llm T + (6 + 2 r) L H d T_seq^2 / 2 * rows, where T = rows x T_seq
                      tokens, r = 1 with rematerialisation (one extra forward), H d = attention width,
                      the T^2 term halved for causal masking; the vision tower is not in the update
  MFU                 update TFLOP/s / the card's dense bf16 peak
Projection for 8 x A100-40G (1 prompt per GPU, fsdp=8): rollout per GPU = 512 decode steps of
8 rows at the measured bandwidth utilisation of A100 HBM (1.555 TB/s) plus prefill at the
measured MFU of 312 TFLOP/s; update = its FLOPs at the measured MFU of 312 TFLOP/s; set
against the original's ~157 s per step.
Last lines: name=value for each headline figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from timing import median_time  # bench/timing.py (bench/ is on sys.path when run as a script)

from jax_tinyr1.generate.sampler import make_sampler
from jax_tinyr1.generate.sampling import SamplingConfig
from jax_tinyr1.grpo.config import GRPOConfig
from jax_tinyr1.grpo.loss import ObjectiveConfig
from jax_tinyr1.grpo.update import Batch, make_grpo_update
from jax_tinyr1.model import KVCache, build_model, get_preset
from jax_tinyr1.update.optimizer import OptimizerConfig, make_optimizer
from jax_tinyr1.update.params import split_params

# Dense bf16 peak FLOP/s and HBM bytes/s by device kind (vendor figures, SXM parts).
CARDS = {"H100": (989e12, 3.35e12), "H200": (989e12, 4.8e12), "A100": (312e12, 1.555e12)}
A100_40G = CARDS["A100"]
ORIGINAL_STEP_S = 157.0


def card_peaks(device) -> tuple[float, float] | None:
    kind = getattr(device, "device_kind", "")
    for name, peaks in CARDS.items():
        if name in kind:
            return peaks
    return None


def llm_params(config) -> int:
    c = config.llm
    per_layer = (
        c.hidden_size * (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
        + (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
        + c.num_heads * c.head_dim * c.hidden_size
        + 3 * c.hidden_size * c.intermediate_size
        + 2 * c.hidden_size
    )
    return c.num_layers * per_layer + c.hidden_size + c.vocab_size * c.hidden_size


def update_flops(config, rows: int, seq: int, remat: bool) -> float:
    c = config.llm
    factor = 6 + 2 * int(remat)
    dense = factor * llm_params(config) * rows * seq
    attention = factor * c.num_layers * c.num_heads * c.head_dim * seq * seq / 2 * rows
    return dense + attention


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny preset and short lengths (CPU smoke run)")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    preset, prompt_len, new_tokens, frames = (
        ("tinyllava-video-tiny", 32, 16, 4) if args.tiny else ("tinyllava-video-3b", 600, 512, 16)
    )
    base = get_preset(preset)
    dtype = "bfloat16"
    config = dataclasses.replace(
        base,
        num_frames=frames,
        llm=dataclasses.replace(base.llm, dtype=dtype, remat=True),
        vision=dataclasses.replace(base.vision, dtype=dtype),
        connector=dataclasses.replace(base.connector, dtype=dtype),
    )
    device = jax.devices()[0]
    rng = np.random.RandomState(0)
    results: dict[str, float] = {}

    # -- rollout: bf16 weights (a sampling copy), 8 prompts x G -------------------------------
    llm_config = dataclasses.replace(config.llm, param_dtype=dtype)
    llm = build_model(llm_config, seed=0)
    graphdef, state = nnx.split(llm)
    sampling = SamplingConfig(max_new_tokens=new_tokens, temperature=1.0, top_k=50, eos_id=-1, pad_id=0)
    sample = make_sampler(graphdef, sampling, args.group)
    embeds = jnp.asarray(rng.randn(args.prompts, prompt_len, llm_config.hidden_size) * 0.02, jnp.bfloat16)
    mask = jnp.ones((args.prompts, prompt_len), jnp.int32)

    @jax.jit
    def prefill(state, embeds, mask):
        model = nnx.merge(graphdef, state)
        cache = KVCache.init(model.config, embeds.shape[0], prompt_len + new_tokens)
        h, cache = model.hidden_states(inputs_embeds=embeds, attention_mask=mask, cache=cache)
        return model.logits_from_hidden(h[:, -1]), cache

    prefill_s = median_time(lambda: jax.block_until_ready(prefill(state, embeds, mask)), args.repeats, warmup=1)
    keys = iter(jax.random.split(jax.random.key(0), 64))
    rollout_s = median_time(
        lambda: jax.block_until_ready(sample(state, embeds, mask, next(keys)).tokens), args.repeats, warmup=1
    )
    rows = args.prompts * args.group
    decode_s = max(rollout_s - prefill_s, 1e-9)
    results["prefill_tokens_per_s"] = args.prompts * prompt_len / prefill_s
    results["decode_tokens_per_s"] = rows * new_tokens / decode_s
    c = llm_config
    kv_bytes = 2 * 2 * c.num_layers * rows * c.num_kv_heads * c.head_dim * (prompt_len + new_tokens / 2)
    step_bytes = 2 * llm_params(config) + kv_bytes
    results["decode_bandwidth_gb_per_s"] = step_bytes / (decode_s / new_tokens) / 1e9

    # -- one GRPO update: 1 prompt x G rows, f32 master weights + AdamW, remat ----------------------
    model = build_model(config, seed=0)
    grpo = GRPOConfig(
        objective=ObjectiveConfig(), sampling=sampling, optimizer=OptimizerConfig(), group_size=args.group
    )
    graphdef, trainable, frozen = split_params(model, grpo.trainable)
    del model
    optimizer = make_optimizer(grpo.optimizer)
    opt_state = jax.jit(optimizer.init)(trainable)
    update = jax.jit(make_grpo_update(graphdef, grpo, optimizer), donate_argnums=(0, 2))
    text = prompt_len - config.num_visual_tokens + 1
    ids = rng.randint(10, 1000, (args.group, text))
    ids[:, 2] = config.image_token_index
    batch = Batch(
        prompt_ids=jnp.asarray(ids),
        prompt_mask=jnp.ones((args.group, text), jnp.int32),
        vision_input=jnp.asarray(
            rng.randn(1, frames * config.vision.tokens_per_frame, config.vision.hidden_size), jnp.bfloat16
        ),
        tokens=jnp.asarray(rng.randint(10, 1000, (args.group, new_tokens))),
        completion_mask=jnp.ones((args.group, new_tokens), jnp.int32),
        advantages=jnp.asarray(rng.randn(args.group), jnp.float32),
        old_logps=None,
        ref_logps=jnp.asarray(-rng.uniform(4, 8, (args.group, new_tokens)), jnp.float32),
    )
    carry = {"trainable": trainable, "opt": opt_state}

    def one_update():
        carry["trainable"], carry["opt"], metrics = update(carry["trainable"], frozen, carry["opt"], batch)
        jax.block_until_ready(metrics["loss"])

    one_update()
    update_s = median_time(one_update, args.repeats, warmup=1)
    flops = update_flops(config, args.group, prompt_len + new_tokens, remat=True)
    results["update_s"] = update_s
    results["update_tflops"] = flops / update_s / 1e12
    peaks = card_peaks(device)
    if peaks is not None:
        peak_flops, peak_bw = peaks
        mfu = flops / update_s / peak_flops
        bw_util = results["decode_bandwidth_gb_per_s"] * 1e9 / peak_bw
        results["update_mfu"] = mfu
        results["decode_bandwidth_utilisation"] = bw_util
        # Projection on 8 x A100-40G, per GPU: 1 prompt x G rows; the rollout decodes 8 rows.
        a100_flops, a100_bw = A100_40G
        per_gpu_rows = args.group
        decode_bytes = 2 * llm_params(config) + 2 * 2 * c.num_layers * per_gpu_rows * c.num_kv_heads * c.head_dim * (
            prompt_len + new_tokens / 2
        )
        rollout_a100 = new_tokens * decode_bytes / (a100_bw * bw_util) + (2 * llm_params(config) * prompt_len) / (
            a100_flops * mfu
        )
        update_a100 = flops / (a100_flops * mfu)
        ref_a100 = update_a100 / 4  # one forward of the four (remat) passes
        results["projected_8xa100_step_s"] = rollout_a100 + update_a100 + ref_a100
        results["projected_speedup_vs_original"] = ORIGINAL_STEP_S / results["projected_8xa100_step_s"]

    print(
        f"device: {device.device_kind if hasattr(device, 'device_kind') else device}; preset {preset}; "
        f"{args.prompts} prompts x G={args.group}, prompt {prompt_len}, {new_tokens} new tokens, bf16"
    )
    if peaks is None:
        print("no known GPU peak for this device: MFU, bandwidth utilisation and the projection are not computed")
    for key, value in results.items():
        print(f"{key}={value:.4g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
