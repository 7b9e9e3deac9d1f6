"""Batched sampling with a KV cache: G completions for each of B prompts in one program.

Prompts arrive as embeddings (the video model splices its visual block in first), right
padded. They are left-aligned so that every row's last prompt token sits in the same slot;
positions stay each row's own 0..len-1 and padding stays masked, so nothing changes
mathematically. Each prompt is prefilled once and its cache copied to its G rows; then
one `lax.while_loop` decodes one token per step for all B x G rows over the preallocated
cache, stopping early once every row has produced EOS. Shapes are static, the parameters
are arguments and the cache lives inside the loop, so one compilation serves every step.
Before the loop the weights are laid out for decoding once (`decode_path`): on an
accelerator `decode_layout` (the compute dtype, adapters merged, replicated or split by heads,
per `sampling.decode_weights`); on CPU `cpu_decode` (per-layer transposed copies) while those
copies are small; else, or with `decode_weights: training`, the model's own scanned layers.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_tinyr1.generate import decode_layout
from jax_tinyr1.generate.cpu_decode import decode_step, decode_weights
from jax_tinyr1.generate.sampling import SamplingConfig, sample_tokens, sorting_top_k_threshold, top_k_threshold
from jax_tinyr1.model.qwen2 import KVCache, Qwen2ForCausalLM

DECODE_PATHS = ("auto", "scan", "cpu", "layout")
# "auto" on CPU takes `cpu_decode` (faster) while its weight copies stay below this; the 3.6B
# model's would be 6.2 GB of bf16 beside the 6.2 GB model, so it decodes with the scanned layers.
CPU_DECODE_MAX_COPY_BYTES = 4 << 30


class Rollout(NamedTuple):
    # R = prompts x G completion rows, T = max_new_tokens (the package's shape legend)
    tokens: jax.Array  # [R, T] int32, pad after EOS
    completion_mask: jax.Array  # [R, T] int32: 1 up to and including the first EOS
    logps: jax.Array  # [R, T] float32: log-probs of the sampled tokens (0 where masked)
    lengths: jax.Array  # [R] completion lengths
    truncated: jax.Array  # [R] bool: no EOS within max_new_tokens


def left_align(x_bt, mask_bt):
    """Shift every row right so that its real tokens end at the last slot. Returns the shifted
    array, mask and per-token positions (each row's own 0..len-1)."""
    t = mask_bt.shape[1]
    lengths = jnp.sum(mask_bt, axis=1).astype(jnp.int32)
    source = jnp.arange(t)[None, :] - (t - lengths)[:, None]  # slot j holds token j - pad
    valid = source >= 0
    index = jnp.clip(source, 0, t - 1)
    gather = index if x_bt.ndim == 2 else index[..., None]
    shifted = jnp.take_along_axis(x_bt, gather, axis=1)
    return shifted, valid.astype(jnp.int32), jnp.where(valid, source, 0).astype(jnp.int32)


def generate(
    llm: Qwen2ForCausalLM,
    prompt_embeds_btd,
    prompt_mask_bt,
    key,
    config: SamplingConfig,
    group_size: int = 1,
    decode_path: str = "auto",
    on_token=None,
    device_memory: int | None = None,
) -> Rollout:
    """Sample `group_size` completions per prompt. Call under jit (see `make_sampler`).
    `decode_path`: "layout" (`decode_layout`, the accelerators'), "cpu" (`cpu_decode`),
    "scan" (the model's scanned layers, no copy), or "auto": "layout" on an accelerator,
    "cpu" on the CPU backend while its copies are small; all compute the same thing.
    `config.decode_weights` places the layout's copy (`training`: no copy, the scan);
    `device_memory` (bytes of one device, when known) decides `auto`. `on_token(tokens
    [rows], done [rows])`, when given, is called on the host as each step's tokens are
    sampled (a streamed answer), in order."""
    decode_path, placement = resolve_decode_path(llm, config, decode_path, device_memory)
    b, t, _ = prompt_embeds_btd.shape
    n = config.max_new_tokens
    rows = b * group_size
    embeds, mask, positions = left_align(prompt_embeds_btd, prompt_mask_bt)
    lengths = jnp.sum(mask, axis=1)

    cache = KVCache.init(llm.config, b, t + n)
    h, cache = llm.hidden_states(inputs_embeds=embeds, attention_mask=mask, positions=positions, cache=cache)
    first_logits = llm.logits_from_hidden(h[:, -1])

    # Copy each prompt's cache, logits and length to its G completion rows.
    def repeat(x):
        return jnp.repeat(x, group_size, axis=0)

    cache = KVCache(
        jnp.repeat(cache.k_lbksh, group_size, axis=1),
        jnp.repeat(cache.v_lbksh, group_size, axis=1),
        repeat(cache.valid_bs),
        cache.index,
    )
    logits, lengths = repeat(first_logits), repeat(lengths)

    kth = top_k_threshold
    if decode_path == "cpu":
        weights = decode_weights(llm)

        def decode(token, positions, cache):
            return decode_step(llm, weights, token, positions, cache)
    elif decode_path == "layout":
        params = decode_layout.decode_params(llm, placement)
        cache = decode_layout.layer_cache(cache)
        kth = sorting_top_k_threshold  # one kernel per token on an accelerator

        def decode(token, positions, cache):
            return decode_layout.decode_step(llm, params, token, positions, cache)
    else:

        def decode(token, positions, cache):
            h, cache = llm.hidden_states(token[:, None], positions=positions[:, None], cache=cache)
            return llm.logits_from_hidden(h[:, 0]), cache

    tokens0 = jnp.full((rows, n), config.pad_id, jnp.int32)
    logps0 = jnp.zeros((rows, n), jnp.float32)
    done0 = jnp.zeros((rows,), bool)

    def cond(carry):
        step, _, _, _, _, done, _ = carry
        return (step < n) & ~jnp.all(done)

    def body(carry):
        step, cache, logits, tokens, logps, done, key = carry
        key, sub = jax.random.split(key)
        token, logp = sample_tokens(sub, logits, config, kth)
        token = jnp.where(done, config.pad_id, token)
        logp = jnp.where(done, 0.0, logp)
        tokens = jax.lax.dynamic_update_slice(tokens, token[:, None], (0, step))
        logps = jax.lax.dynamic_update_slice(logps, logp[:, None], (0, step))
        if on_token is not None:
            jax.debug.callback(on_token, token, done, ordered=True)
        done = done | (token == config.eos_id)
        logits, cache = decode(token, lengths + step, cache)
        return step + 1, cache, logits, tokens, logps, done, key

    carry = (jnp.zeros((), jnp.int32), cache, logits, tokens0, logps0, done0, key)
    _, _, _, tokens, logps, done, _ = jax.lax.while_loop(cond, body, carry)
    completion_mask = completion_mask_from_tokens(tokens, config.eos_id)
    return Rollout(tokens, completion_mask, logps * completion_mask, completion_mask.sum(axis=1), ~done)


def _mesh_size() -> int:
    mesh = jax.sharding.get_abstract_mesh()
    return 1 if mesh.empty else mesh.size


def resolve_decode_path(
    llm: Qwen2ForCausalLM, config: SamplingConfig, decode_path: str, device_memory=None
) -> tuple[str, str | None]:
    """(the decode path a rollout takes: "layout", "cpu" or "scan"; the layout's placement,
    None on the other paths); see `generate`."""
    if decode_path not in DECODE_PATHS:
        raise ValueError(f"decode_path must be one of {DECODE_PATHS}, got {decode_path!r}")
    if decode_path == "auto":
        if jax.default_backend() != "cpu":
            decode_path = "layout"
        elif config.decode_weights in ("auto", "replicated"):  # the CPU path is its replicated layout
            decode_path = "cpu" if decode_layout.copy_bytes(llm) <= CPU_DECODE_MAX_COPY_BYTES else "scan"
        else:
            decode_path = "layout"
    if decode_path == "layout":
        placement = decode_layout.choose_placement(
            config.decode_weights, decode_layout.copy_bytes(llm), _mesh_size(), device_memory
        )
        return ("scan", None) if placement == "training" else ("layout", placement)
    return decode_path, None


def inference_split(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State]:
    """`nnx.split` of a model that only answers, for the programs that run `generate`.

    On XLA:CPU the language model's stacked 16-bit layer weights are handed over as uint16
    views of the same buffers (no copy), turned back into floats one layer at a time inside
    the layer scan (`layers.from_bit_patterns`). XLA:CPU computes bf16 matmuls in float32,
    and its float normalization casts the operand of the scan's per-layer slice, i.e. the
    whole stacked array, hoisted out of every loop: a float32 copy of the language model,
    twice its bf16 size (measured at 3.6B: 14.9 GB of temporaries beside 6.2 GB of weights,
    and ask killed at 24 GB). Integers are not normalized."""
    graphdef, state = nnx.split(model)
    if jax.default_backend() != "cpu":
        return graphdef, state
    state = jax.tree.map(lambda x: x, state)  # new Variables: the model keeps its own
    llm = state.get("llm", state)
    for var in llm["layers"].values():
        value = var[...]
        if jnp.issubdtype(value.dtype, jnp.floating) and jnp.dtype(value.dtype).itemsize == 2:
            var.set_value(jax.device_put(np.asarray(value).view(np.uint16)))
    return graphdef, state


def completion_mask_from_tokens(tokens_bt, eos_id: int) -> jax.Array:
    """1 up to and including the first EOS (all ones when there is none)."""
    is_eos = tokens_bt == eos_id
    eos_before = jnp.cumsum(is_eos, axis=1) - is_eos  # EOS strictly before this token
    return (eos_before == 0).astype(jnp.int32)


def make_sampler(graphdef: nnx.GraphDef, config: SamplingConfig, group_size: int, decode_path: str = "auto"):
    """A jitted `sample(llm_state, prompt_embeds, prompt_mask, key) -> Rollout`; parameters
    are arguments, so new weights never recompile it."""

    @jax.jit
    def sample(llm_state, prompt_embeds_btd, prompt_mask_bt, key):
        llm = nnx.merge(graphdef, llm_state)
        return generate(llm, prompt_embeds_btd, prompt_mask_bt, key, config, group_size, decode_path)

    return sample
