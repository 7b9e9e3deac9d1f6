"""Rollout speed: our sampler against Hugging Face `generate`, on the same converted weights.

    python bench/rollout_vs_hf.py [--preset qwen2.5-0.5b] [--prompts 4] [--group 8] [--new-tokens 128]

Three ways to sample G completions of `new_tokens` tokens for each of P prompts, float32 on
CPU, same thread count, after a warm-up, median of repeats:
  (a) ours: one jitted program, each prompt prefilled once, all P x G rows decoded together
      in a lax.while_loop over a preallocated KV cache (on CPU through
      `generate/cpu_decode.py`: per-layer transposed weights, feature-major hidden state);
  (b) HF generate as the original calls it: G sequential calls at batch 1 per prompt;
  (c) HF generate batched: one call per prompt with num_return_sequences=G.
Sampling: temperature 1, top-k 50, top-p 1 (the original's), EOS disabled so that every
method produces exactly the same number of tokens. (b) is slow, so its tokens/s is measured
on `--sequential-calls` calls (tokens/s does not depend on how many calls are timed).
Also runs the tiny TinyLLaVA-Video (video encoded once per prompt) against the PyTorch
composition's `generate(inputs_embeds=...)`.
Last lines: speedup_vs_hf_sequential=<x>, speedup_vs_hf_batched=<x>.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from flax import nnx
from timing import median_time  # bench/timing.py (bench/ is on sys.path when run as a script)

from checkpoints_convert import hf_to_flax, qwen2
from jax_tinyr1.generate.sampler import make_sampler
from jax_tinyr1.generate.sampling import SamplingConfig
from jax_tinyr1.model import get_preset, load_pretrained
from jax_tinyr1.model.presets import PRESETS

NO_EOS = -1


def hf_config(preset: str) -> transformers.Qwen2Config:
    """The preset as an HF config, through the converter's own config mapping."""
    return transformers.Qwen2Config(**qwen2.config_to_hf(get_preset(preset), "float32", {}))


def bench_language_model(args, work: Path) -> dict[str, float]:
    torch.manual_seed(0)
    reference = transformers.Qwen2ForCausalLM(hf_config(args.preset)).eval()
    reference.save_pretrained(work / "hf")
    hf_to_flax.convert("qwen2", work / "hf", work / "fx")
    model, _ = load_pretrained(work / "fx")
    rng = np.random.RandomState(0)
    prompts = rng.randint(10, min(1000, get_preset(args.preset).vocab_size), (args.prompts, args.prompt_tokens))
    config = SamplingConfig(
        max_new_tokens=args.new_tokens, temperature=1.0, top_k=50, top_p=1.0, eos_id=NO_EOS, pad_id=0
    )
    graphdef, state = nnx.split(model)
    sample = make_sampler(graphdef, config, group_size=args.group)
    embeds = model.embed_tokens(jnp.asarray(prompts))
    mask = jnp.ones(prompts.shape, jnp.int32)
    keys = iter(jax.random.split(jax.random.key(0), 100))

    def ours():
        jax.block_until_ready(sample(state, embeds, mask, next(keys)).tokens)

    start = time.perf_counter()
    ours()  # compile
    compile_s = time.perf_counter() - start
    ours_s = median_time(ours, args.repeats)
    print(f"ours: {ours_s:.2f} s per rollout (compile {compile_s:.1f} s)", flush=True)
    total_tokens = args.prompts * args.group * args.new_tokens

    common = dict(
        do_sample=True,
        temperature=1.0,
        top_k=50,
        top_p=1.0,
        max_new_tokens=args.new_tokens,
        min_new_tokens=args.new_tokens,
        pad_token_id=0,
    )

    def hf_sequential():
        with torch.no_grad():
            for _ in range(args.sequential_calls):
                ids = torch.tensor(prompts[:1])
                reference.generate(ids, attention_mask=torch.ones_like(ids), **common)

    def hf_batched():
        with torch.no_grad():
            for p in range(args.prompts):
                ids = torch.tensor(prompts[p : p + 1])
                reference.generate(ids, attention_mask=torch.ones_like(ids), num_return_sequences=args.group, **common)

    with torch.no_grad():  # a short warm-up (HF has nothing to compile)
        reference.generate(torch.tensor(prompts[:1]), **{**common, "max_new_tokens": 4, "min_new_tokens": 4})
    batched_s = median_time(hf_batched, args.repeats)
    print(f"hf batched: {batched_s:.2f} s", flush=True)
    sequential_s = median_time(hf_sequential, max(1, args.repeats - 1))
    return {
        "ours_tokens_per_s": total_tokens / ours_s,
        "hf_batched_tokens_per_s": total_tokens / batched_s,
        "hf_sequential_tokens_per_s": args.sequential_calls * args.new_tokens / sequential_s,
        "ours_compile_s": compile_s,
        "ours_s": ours_s,
        "hf_batched_s": batched_s,
    }


def bench_video_model(args, work: Path) -> dict[str, float]:
    """Tiny TinyLLaVA-Video: our rollout (video encoded once) vs the PyTorch composition."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from torch_reference import TorchTinyLlava, nchw

    from jax_tinyr1.grpo.config import GRPOConfig
    from jax_tinyr1.grpo.trainer import GRPOTrainer

    config = PRESETS["tinyllava-video-tiny"]
    text = dict(
        vocab_size=config.llm.vocab_size,
        hidden_size=config.llm.hidden_size,
        intermediate_size=config.llm.intermediate_size,
        num_hidden_layers=config.llm.num_layers,
        num_attention_heads=config.llm.num_heads,
        num_key_value_heads=config.llm.num_kv_heads,
        rope_theta=config.llm.rope_theta,
        tie_word_embeddings=True,
    )
    vision = dict(
        hidden_size=config.vision.hidden_size,
        intermediate_size=config.vision.intermediate_size,
        num_hidden_layers=config.vision.num_layers,
        num_attention_heads=config.vision.num_heads,
        image_size=config.vision.image_size,
        patch_size=config.vision.patch_size,
    )
    connector = dict(
        num_queries=config.connector.num_queries,
        groups=config.connector.groups,
        depth=config.connector.num_layers,
        dim_head=config.connector.dim_head,
        heads=config.connector.heads,
    )
    reference = TorchTinyLlava(text, vision, connector)
    reference.save_original_layout(work / "video_hf")
    hf_to_flax.convert("tinyllava", work / "video_hf", work / "video_fx")
    model, _ = load_pretrained(work / "video_fx")
    sampling = SamplingConfig(max_new_tokens=args.new_tokens, temperature=1.0, top_k=50, eos_id=NO_EOS, pad_id=0)
    trainer = GRPOTrainer(model, GRPOConfig(sampling=sampling, group_size=args.group))
    rng = np.random.RandomState(0)
    rows = [[5, 6, -200, *rng.randint(10, 500, 20).tolist()] for _ in range(args.prompts)]
    ids = np.asarray(rows)
    pixels = rng.uniform(-1, 1, (args.prompts, 4, 16, 16, 3)).astype(np.float32)

    def ours():
        features = trainer.encode(jnp.asarray(pixels))
        out = trainer.rollout(jnp.asarray(ids), jnp.ones(ids.shape, jnp.int32), features, jax.random.key(1))
        jax.block_until_ready(out.tokens)

    ours()
    ours_s = median_time(ours, args.repeats)

    def hf_sequential():  # the original: G generate calls per prompt, the video re-encoded each time
        with torch.no_grad():
            for p in range(args.prompts):
                for _ in range(args.group):
                    visual = reference.visual(nchw(pixels[p : p + 1]))
                    embed = reference.language_model.get_input_embeddings()
                    row = rows[p]
                    k = row.index(-200)
                    inputs = torch.cat([embed(torch.tensor(row[:k])), visual[0], embed(torch.tensor(row[k + 1 :]))])
                    reference.language_model.generate(
                        inputs_embeds=inputs[None],
                        do_sample=True,
                        top_k=50,
                        max_new_tokens=args.new_tokens,
                        min_new_tokens=args.new_tokens,
                        pad_token_id=0,
                    )

    sequential_s = median_time(hf_sequential, max(1, args.repeats - 1))
    tokens = args.prompts * args.group * args.new_tokens
    return {"video_ours_tokens_per_s": tokens / ours_s, "video_hf_sequential_tokens_per_s": tokens / sequential_s}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="qwen2.5-0.5b")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sequential-calls", type=int, default=2, help="HF batch-1 generate calls timed for (b)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-video", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        results = bench_language_model(args, Path(tmp))
        if not args.skip_video:
            results.update(bench_video_model(args, Path(tmp)))
    print(
        f"model {args.preset}, {args.prompts} prompts x G={args.group} x {args.new_tokens} new tokens, "
        f"float32, {jax.devices()[0].platform}, torch threads {args.threads}"
    )
    print(f"{'figure':<36}{'value':>12}")
    for key, value in results.items():
        print(f"{key:<36}{value:>12.2f}")
    seq = results["ours_tokens_per_s"] / results["hf_sequential_tokens_per_s"]
    bat = results["ours_tokens_per_s"] / results["hf_batched_tokens_per_s"]
    if "video_ours_tokens_per_s" in results:
        video = results["video_ours_tokens_per_s"] / results["video_hf_sequential_tokens_per_s"]
        print(f"video_speedup_vs_hf_sequential={video:.2f}")
    print(f"speedup_vs_hf_sequential={seq:.2f}")
    print(f"speedup_vs_hf_batched={bat:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
