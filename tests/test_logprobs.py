"""Chunked log-probs equal the naive full-vocabulary computation; remat changes nothing."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_tinyr1.model import build_model, get_preset
from jax_tinyr1.update.logprobs import chunked_token_logps


@pytest.mark.parametrize("chunk", [1, 4, 7, 64])
def test_chunked_logps_and_entropy_equal_the_naive_computation(chunk):
    rng = np.random.RandomState(0)
    h = jnp.asarray(rng.randn(3, 10, 16), jnp.float32)
    w = jnp.asarray(rng.randn(16, 50), jnp.float32)
    tokens = jnp.asarray(rng.randint(0, 50, (3, 10)))
    logps, entropy = chunked_token_logps(h, w, tokens, temperature=0.7, chunk=chunk)
    full = jax.nn.log_softmax((h @ w) / 0.7, axis=-1)
    naive = np.take_along_axis(np.asarray(full), np.asarray(tokens)[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(np.asarray(logps), naive, rtol=1e-6, atol=1e-6)  # |logp| up to ~30 here
    np.testing.assert_allclose(np.asarray(entropy), -np.sum(np.exp(full) * full, axis=-1), rtol=1e-6, atol=1e-6)
    grad = jax.grad(lambda h: chunked_token_logps(h, w, tokens, chunk=chunk)[0].sum())(h)
    grad_naive = jax.grad(lambda h: jnp.take_along_axis(jax.nn.log_softmax(h @ w, -1), tokens[..., None], -1).sum())(h)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(grad_naive), rtol=1e-5, atol=1e-6)


def test_rematerialised_layers_give_the_same_gradients():
    ids = jnp.asarray(np.random.RandomState(1).randint(0, 512, (2, 9)))
    grads = []
    for remat in (False, True):
        model = build_model(dataclasses.replace(get_preset("qwen2-tiny"), remat=remat), seed=2)
        graphdef, state = nnx.split(model)
        params = nnx.to_pure_dict(state)

        def loss(params, graphdef=graphdef):
            return jnp.sum(jax.nn.log_softmax(nnx.merge(graphdef, params)(ids))[..., 3])

        grads.append(jax.tree.leaves(jax.grad(loss)(params)))
    for a, b in zip(*grads, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
