"""Prefill + one-token decode steps through the KV cache == one full forward; the CPU decode
step (per-layer transposed weights, feature-major) == the scanned layers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_tinyr1.generate.cpu_decode import decode_step, decode_weights
from jax_tinyr1.model import KVCache, build_model, get_preset


def _model():
    return build_model(get_preset("qwen2-tiny-untied"), seed=3)


def rel(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


def test_prefill_then_decode_equals_full_forward():
    model = _model()
    ids = jnp.asarray(np.random.RandomState(0).randint(0, 512, (2, 11)))
    full = model(ids)
    cache = KVCache.init(model.config, batch=2, max_len=16)
    logits, cache = model(ids[:, :6], cache=cache)
    steps = [logits]
    for t in range(6, 11):
        logits, cache = model(ids[:, t : t + 1], cache=cache)
        steps.append(logits)
    assert int(cache.index) == 11
    assert rel(jnp.concatenate(steps, axis=1), full) <= 1e-5


def test_decode_after_right_padded_prefill():
    """Rows of different prompt lengths share one cache: padding slots stay invalid and each
    row continues from its own position."""
    model = _model()
    rng = np.random.RandomState(1)
    lengths = np.array([7, 3])
    prompt = rng.randint(1, 512, (2, 7))
    mask = np.arange(7)[None] < lengths[:, None]
    new_tokens = rng.randint(1, 512, (2, 4))
    cache = KVCache.init(model.config, batch=2, max_len=12)
    _, cache = model(jnp.asarray(prompt * mask), jnp.asarray(mask), cache=cache)
    decoded = []
    for step in range(4):
        positions = jnp.asarray(lengths[:, None] + step)
        logits, cache = model(jnp.asarray(new_tokens[:, step : step + 1]), cache=cache, positions=positions)
        decoded.append(np.asarray(logits[:, 0]))
    decoded = np.stack(decoded, axis=1)
    for row, n in enumerate(lengths):
        alone = np.concatenate([prompt[row, :n], new_tokens[row]])[None]
        expected = np.asarray(model(jnp.asarray(alone)))[0, n:]
        assert rel(decoded[row], expected) <= 1e-5


def test_decode_step_traces_once():
    """The cache index is data, not a constant: every decode step reuses one compilation."""
    model = _model()
    graphdef, state = nnx.split(model)
    traces = []

    @jax.jit
    def step(state, token, cache):
        traces.append(1)
        return nnx.merge(graphdef, state)(token, cache=cache)

    cache = KVCache.init(model.config, batch=1, max_len=8)
    for t in range(5):
        _, cache = step(state, jnp.full((1, 1), t, jnp.int32), cache)
    assert int(cache.index) == 5
    assert len(traces) == 1


@pytest.mark.parametrize("preset", ["qwen2-tiny", "qwen2-tiny-untied"])
def test_cpu_decode_step_equals_scanned_layers(preset):
    """After a right-padded prefill, `decode_step` gives the scanned layers' logits and cache."""
    model = build_model(get_preset(preset), seed=4)
    rng = np.random.RandomState(2)
    lengths = np.array([7, 3, 5])
    prompt = rng.randint(1, 512, (3, 7))
    mask = np.arange(7)[None] < lengths[:, None]
    new_tokens = rng.randint(1, 512, (3, 4))
    cache = KVCache.init(model.config, batch=3, max_len=12)
    _, cache = model(jnp.asarray(prompt * mask), jnp.asarray(mask), cache=cache)
    scanned, fast = cache, cache
    step = jax.jit(lambda tokens, positions, cache: decode_step(model, decode_weights(model), tokens, positions, cache))
    for t in range(4):
        positions = jnp.asarray(lengths + t)
        want, scanned = model(jnp.asarray(new_tokens[:, t : t + 1]), cache=scanned, positions=positions[:, None])
        got, fast = step(jnp.asarray(new_tokens[:, t]), positions, fast)
        assert rel(got, want[:, 0]) <= 1e-5
    assert rel(fast.k_lbksh, scanned.k_lbksh) <= 1e-5 and rel(fast.v_lbksh, scanned.v_lbksh) <= 1e-5
    np.testing.assert_array_equal(np.asarray(fast.valid_bs), np.asarray(scanned.valid_bs))
    assert int(fast.index) == int(scanned.index) == 11
