"""The embedded default job, runnable anywhere on CPU with no downloads.

    python -m jax_tinyr1.demo [--out DIR]

What it does today (the most complete end-to-end path so far): builds the tiny Qwen2
preset with random weights, exports it to a Hugging Face directory, converts that back
with the checkpoint converter, checks that the reloaded model gives identical logits, and
greedily decodes a few tokens through the KV cache, checking them against full forwards.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from checkpoints_convert import flax_to_hf, hf_to_flax
from jax_tinyr1.model import KVCache, build_model, get_preset, load_pretrained, save_pretrained


def greedy_decode(model, prompt_bt: jax.Array, new_tokens: int) -> jax.Array:
    """Prefill then one token per step through the KV cache (a plain reference decoder)."""
    b, t = prompt_bt.shape
    cache = KVCache.init(model.config, b, t + new_tokens)
    logits, cache = model(prompt_bt, cache=cache)
    out = [jnp.argmax(logits[:, -1], axis=-1)]
    for _ in range(new_tokens - 1):
        logits, cache = model(out[-1][:, None], cache=cache)
        out.append(jnp.argmax(logits[:, -1], axis=-1))
    return jnp.stack(out, axis=1)


def run(out: Path) -> dict[str, float]:
    config = get_preset("qwen2-tiny")
    model = build_model("qwen2", config, seed=0)
    save_pretrained(out / "flax", model, "qwen2")
    flax_to_hf.convert("qwen2", out / "flax", out / "hf")
    hf_to_flax.convert("qwen2", out / "hf", out / "flax_again", overwrite=True)
    reloaded, _ = load_pretrained(out / "flax_again")

    prompt = jnp.asarray(np.random.RandomState(0).randint(0, config.vocab_size, (2, 8)))
    same = float(jnp.abs(model(prompt) - reloaded(prompt)).max())
    tokens = greedy_decode(reloaded, prompt, 8)
    full = reloaded(jnp.concatenate([prompt, tokens[:, :-1]], axis=1))
    agree = float(jnp.mean(jnp.argmax(full[:, 7:], axis=-1) == tokens))
    print(f"round trip HF export -> import: max |logit difference| = {same:.3g}")
    print(f"greedy tokens (KV cache): {np.asarray(tokens).tolist()}")
    print(f"KV-cache decode agrees with full forwards on {agree:.0%} of tokens")
    return {"round_trip_max_abs_diff": same, "cache_agreement": agree}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="working directory (default: a temporary one)")
    args = parser.parse_args(argv)
    if args.out is None:
        with tempfile.TemporaryDirectory() as tmp:
            result = run(Path(tmp))
    else:
        result = run(args.out)
    ok = result["round_trip_max_abs_diff"] == 0.0 and result["cache_agreement"] == 1.0
    print("demo: OK" if ok else "demo: MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
