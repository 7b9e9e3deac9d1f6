"""One GRPO update (forward, backward, AdamW step), ours against a PyTorch equivalent built
from the HF model, on the same weights and data.

    python bench/update_step.py [--preset qwen2.5-0.5b] [--rows 8] [--prompt-tokens 32] [--new-tokens 32]

Both sides: policy forward over prompt + completion, per-token log-probs of the completion,
the GRPO loss (ratio against detached log-probs, k3 KL against given reference log-probs,
beta 0.01, per-sequence mean then mean), backward, global-norm clipping at 1.0, AdamW.
Ours computes log-probs in chunks (no full-vocabulary float32 logits); PyTorch takes the
log-softmax of the full logits, as TRL does. Float32 on CPU, same thread count, median of
repeats after a warm-up. The default shapes are what a 2-core CPU can time in minutes.
Last line: speedup_vs_torch=<x>.
"""

from __future__ import annotations

import argparse
import functools
import gc
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from flax import nnx
from timing import median_time  # bench/timing.py (bench/ is on sys.path when run as a script)

from checkpoints_convert import hf_to_flax
from jax_tinyr1.grpo.loss import grpo_loss
from jax_tinyr1.model import load_pretrained
from jax_tinyr1.update.logprobs import chunked_token_logps

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rollout_vs_hf import hf_config

BETA, LR = 0.01, 1e-6


def data(args, vocab):
    rng = np.random.RandomState(0)
    ids = rng.randint(10, min(vocab, 1000), (args.rows, args.prompt_tokens + args.new_tokens))
    advantages = rng.randn(args.rows).astype(np.float32)
    ref = -rng.uniform(4, 8, (args.rows, args.new_tokens)).astype(np.float32)
    return ids, advantages, ref


def ours(args, hf_dir: Path, work: Path) -> float:
    hf_to_flax.convert("qwen2", hf_dir, work / "fx")
    model, config = load_pretrained(work / "fx")
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    del model, state
    ids, advantages, ref = (jnp.asarray(x) for x in data(args, config.vocab_size))
    p, n = args.prompt_tokens, args.new_tokens
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(LR, weight_decay=0.0))
    opt_state = jax.jit(optimizer.init)(params)  # traced init: the same leaf types the step returns
    mask = jnp.ones((args.rows, n), jnp.float32)

    def loss_fn(params):
        m = nnx.merge(graphdef, params)
        h, _ = m.hidden_states(ids)
        logps, _ = chunked_token_logps(h[:, p - 1 : p - 1 + n], m.output_embedding(), ids[:, p:])
        return grpo_loss(logps, jax.lax.stop_gradient(logps), ref, advantages, mask, beta=BETA)[0]

    @functools.partial(jax.jit, donate_argnums=(0, 1))  # updated in place: one copy of the state
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    carry = {"params": params, "opt": opt_state}

    def run():
        carry["params"], carry["opt"], loss = step(carry["params"], carry["opt"])
        jax.block_until_ready(loss)

    run()
    run()  # the first call's inputs come from outside jit; warm the steady-state path too
    return median_time(run, args.repeats)


def pytorch(args, hf_dir: Path) -> float:
    import transformers

    model = transformers.Qwen2ForCausalLM.from_pretrained(hf_dir).train()
    ids, advantages, ref = (torch.tensor(x) for x in data(args, model.config.vocab_size))
    p, n = args.prompt_tokens, args.new_tokens
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)

    def run():
        optimizer.zero_grad(set_to_none=True)
        logits = model(ids).logits[:, p - 1 : p - 1 + n]
        logps = torch.log_softmax(logits.float(), dim=-1).gather(-1, ids[:, p:, None])[..., 0]
        ratio = torch.exp(logps - logps.detach())
        d = ref - logps
        kl = torch.clamp(torch.exp(d) - d - 1, -100, 100)
        per_token = -(ratio * advantages[:, None] - BETA * kl)
        loss = per_token.mean(dim=1).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    run()
    return median_time(run, args.repeats)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="qwen2.5-0.5b")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import transformers

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        reference = transformers.Qwen2ForCausalLM(hf_config(args.preset))
        reference.save_pretrained(Path(tmp) / "hf")
        del reference
        gc.collect()
        ours_s = ours(args, Path(tmp) / "hf", Path(tmp))
        jax.clear_caches()
        gc.collect()
        torch_s = pytorch(args, Path(tmp) / "hf")
    tokens = args.rows * (args.prompt_tokens + args.new_tokens)
    print(
        f"model {args.preset}, {args.rows} rows x ({args.prompt_tokens} prompt + {args.new_tokens} completion) "
        f"tokens, float32, torch threads {args.threads}"
    )
    print(f"{'implementation':<16}{'s/update':>10}{'tokens/s':>12}")
    print(f"{'jax_tinyr1':<16}{ours_s:>10.3f}{tokens / ours_s:>12.1f}")
    print(f"{'pytorch':<16}{torch_s:>10.3f}{tokens / torch_s:>12.1f}")
    print(f"speedup_vs_torch={torch_s / ours_s:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
