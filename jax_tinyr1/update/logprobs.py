"""Per-token log-probs of given tokens, computed chunk by chunk over the sequence so that the
[batch, seq, vocab] float32 logits never exist (151,936 x 512 x 4 bytes = 311 MB per row
for Qwen2.5). Each chunk is rematerialised in the backward pass, so only the hidden states
are kept between the forward and the backward."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jax_tinyr1.generate.sampler import left_align
from jax_tinyr1.model.layers import dense
from jax_tinyr1.model.sharding import constrain_batch
from jax_tinyr1.model.tinyllava import TinyLlavaVideo
from jax_tinyr1.update.params import visual_tokens


def chunked_token_logps(
    h_bnd: jax.Array, w_dv: jax.Array, tokens_bn: jax.Array, *, temperature: float = 1.0, chunk: int = 128
) -> tuple[jax.Array, jax.Array]:
    """(log-probs [B, N] of `tokens` under softmax(h @ w / temperature), entropy [B, N]).

    `h` are the final hidden states at the positions that predict `tokens`; `w` the output
    embedding [D, vocab]. N is padded up to a multiple of `chunk` internally.
    """
    b, n, d = h_bnd.shape
    chunk = min(chunk, n)
    pad = -n % chunk
    h = jnp.pad(h_bnd, ((0, 0), (0, pad), (0, 0)))
    tokens = jnp.pad(tokens_bn, ((0, 0), (0, pad)))
    steps = (n + pad) // chunk
    h_cbkd = h.reshape(b, steps, chunk, d).transpose(1, 0, 2, 3)
    tokens_cbk = tokens.reshape(b, steps, chunk).transpose(1, 0, 2)

    @jax.checkpoint
    def one(args):
        h_bkd, tokens_bk = args
        h_bkd = constrain_batch(h_bkd)
        logits = dense(h_bkd, w_dv).astype(jnp.float32) / temperature
        logp_all = jax.nn.log_softmax(logits, axis=-1)
        logp = jnp.take_along_axis(logp_all, tokens_bk[..., None], axis=-1)[..., 0]
        entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
        return logp, entropy

    logp_cbk, entropy_cbk = jax.lax.map(one, (h_cbkd, tokens_cbk))

    def unchunk(x_cbk):
        return x_cbk.transpose(1, 0, 2).reshape(b, steps * chunk)[:, :n]

    return unchunk(logp_cbk), unchunk(entropy_cbk)


def completion_logps(
    model: TinyLlavaVideo,
    prompt_ids_rt,
    prompt_mask_rt,
    visual_rvd,
    tokens_rn,
    completion_mask_rn,
    *,
    temperature: float,
    chunk: int,
):
    """Log-probs [R, N] (and entropies) of the completion tokens under `model`: the prompt
    (visual tokens spliced in) left-aligned as the sampler has it, then the completion."""
    embeds, mask = model.embed_inputs(prompt_ids_rt, prompt_mask_rt, visual_rvd)
    embeds, mask, positions = left_align(embeds, mask)
    p, n = embeds.shape[1], tokens_rn.shape[1]
    lengths = jnp.sum(mask, axis=1)
    full = jnp.concatenate([embeds, model.llm.embed_tokens(tokens_rn)], axis=1)
    full_mask = jnp.concatenate([mask, completion_mask_rn.astype(mask.dtype)], axis=1)
    full_positions = jnp.concatenate([positions, lengths[:, None] + jnp.arange(n)[None, :]], axis=1)
    h, _ = model.llm.hidden_states(inputs_embeds=full, attention_mask=full_mask, positions=full_positions)
    # The hidden state at slot p - 1 + j predicts completion token j.
    return chunked_token_logps(
        h[:, p - 1 : p - 1 + n], model.llm.output_embedding(), tokens_rn, temperature=temperature, chunk=chunk
    )


def policy_logps(graphdef, trainable, frozen, batch, trainable_parts, *, temperature: float, chunk: int):
    """`completion_logps` of a batch (fields prompt_ids, prompt_mask, vision_input, tokens,
    completion_mask) under the model the parameters make."""
    model = nnx.merge(graphdef, {**frozen, **trainable})
    visual = visual_tokens(model, batch.vision_input, trainable_parts, batch.prompt_ids.shape[0])
    return completion_logps(
        model,
        batch.prompt_ids,
        batch.prompt_mask,
        visual,
        batch.tokens,
        batch.completion_mask,
        temperature=temperature,
        chunk=chunk,
    )
