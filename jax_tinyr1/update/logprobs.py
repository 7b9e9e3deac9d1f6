"""Per-token log-probs of given tokens, computed chunk by chunk over the sequence so that the
[batch, seq, vocab] float32 logits never exist (151,936 x 512 x 4 bytes = 311 MB per row
for Qwen2.5). Each chunk is rematerialised in the backward pass, so only the hidden states
are kept between the forward and the backward."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec as P

from jax_tinyr1.generate.sampler import left_align
from jax_tinyr1.model.layers import dense
from jax_tinyr1.model.sharding import constrain_batch
from jax_tinyr1.model.tinyllava import TinyLlavaVideo
from jax_tinyr1.update.params import merge_params, visual_tokens


def whole_head(w_dv: jax.Array, dtype) -> jax.Array:
    """The LM head in the compute dtype, gathered over the data-parallel devices once, before
    the chunk loop: left sharded, XLA gathers it inside the loop, once per chunk (8 times per
    update at the paper's shape, 622 MB each), and reduce-scatters its gradient as often. Its
    vocabulary stays split over `tensor`."""
    w_dv = w_dv.astype(dtype)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or "tensor" not in mesh.axis_names:
        return w_dv
    vocab = "tensor" if w_dv.shape[1] % mesh.shape["tensor"] == 0 else None
    return jax.lax.with_sharding_constraint(w_dv, P(None, vocab))


def chunked_token_logps(
    h_btd: jax.Array, w_dv: jax.Array, tokens_bt: jax.Array, *, temperature: float = 1.0, chunk: int = 128
) -> tuple[jax.Array, jax.Array]:
    """(log-probs [B, T] of `tokens` under softmax(h @ w / temperature), entropy [B, T]).

    `h` are the final hidden states at the positions that predict `tokens`; `w` the output
    embedding [D, V]. T is padded up to a multiple of `chunk` internally (C chunks of J).
    """
    b, n, d = h_btd.shape
    chunk = min(chunk, n)
    pad = -n % chunk
    h = jnp.pad(h_btd, ((0, 0), (0, pad), (0, 0)))
    tokens = jnp.pad(tokens_bt, ((0, 0), (0, pad)))
    steps = (n + pad) // chunk
    h_cbjd = h.reshape(b, steps, chunk, d).transpose(1, 0, 2, 3)
    tokens_cbj = tokens.reshape(b, steps, chunk).transpose(1, 0, 2)
    w_dv = whole_head(w_dv, h_btd.dtype)

    @jax.checkpoint
    def one(args):
        h_bjd, tokens_bj = args
        h_bjd = constrain_batch(h_bjd)
        logits = dense(h_bjd, w_dv).astype(jnp.float32) / temperature
        logp_all = jax.nn.log_softmax(logits, axis=-1)
        logp = jnp.take_along_axis(logp_all, tokens_bj[..., None], axis=-1)[..., 0]
        entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
        return logp, entropy

    logp_cbj, entropy_cbj = jax.lax.map(one, (h_cbjd, tokens_cbj))

    def unchunk(x_cbj):
        return x_cbj.transpose(1, 0, 2).reshape(b, steps * chunk)[:, :n]

    return unchunk(logp_cbj), unchunk(entropy_cbj)


def completion_logps(
    model: TinyLlavaVideo,
    prompt_ids_rt,
    prompt_mask_rt,
    visual_rmd,
    tokens_rt,
    completion_mask_rt,
    *,
    temperature: float,
    chunk: int,
    dropout_keys=None,
):
    """Log-probs [R, T] (and entropies) of the completion tokens under `model`: the prompt
    (visual tokens spliced in) left-aligned as the sampler has it, then the completion.
    `dropout_keys` [R, 2]: the adapters' dropout (model/lora.py), for the update only."""
    embeds, mask = model.embed_inputs(prompt_ids_rt, prompt_mask_rt, visual_rmd)
    embeds, mask, positions = left_align(embeds, mask)
    p, n = embeds.shape[1], tokens_rt.shape[1]
    lengths = jnp.sum(mask, axis=1)
    full = jnp.concatenate([embeds, model.llm.embed_tokens(tokens_rt)], axis=1)
    full_mask = jnp.concatenate([mask, completion_mask_rt.astype(mask.dtype)], axis=1)
    full_positions = jnp.concatenate([positions, lengths[:, None] + jnp.arange(n)[None, :]], axis=1)
    h, _ = model.llm.hidden_states(
        inputs_embeds=full, attention_mask=full_mask, positions=full_positions, dropout_keys=dropout_keys
    )
    # The hidden state at slot p - 1 + j predicts completion token j.
    return chunked_token_logps(
        h[:, p - 1 : p - 1 + n], model.llm.output_embedding(), tokens_rt, temperature=temperature, chunk=chunk
    )


def policy_logps(
    graphdef, trainable, frozen, batch, trainable_parts, *, temperature: float, chunk: int, dropout_keys=None
):
    """`completion_logps` of a batch (fields prompt_ids, prompt_mask, vision_input, tokens,
    completion_mask) under the model the parameters make."""
    model = nnx.merge(graphdef, merge_params(frozen, trainable))
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
        dropout_keys=dropout_keys,
    )
