"""The sampler: greedy == HF generate, log-probs == a full forward, determinism, sampled
frequencies == the (filtered) softmax, one compilation, EOS handling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from hf_reference import convert_and_load, random_qwen2

from jax_tinyr1.generate.sampler import completion_mask_from_tokens, left_align, make_sampler
from jax_tinyr1.generate.sampling import SamplingConfig, filter_logits, sample_tokens

EOS = 3


def _prompts():
    rng = np.random.RandomState(0)
    lengths = np.array([6, 3, 5])
    ids = rng.randint(4, 256, (3, 6))
    mask = (np.arange(6)[None] < lengths[:, None]).astype(np.int32)
    return ids * mask, mask, lengths


@pytest.mark.parametrize("decode_path", ["scan", "cpu"])
def test_greedy_matches_hf_generate_and_logps_match_full_forward(tmp_path, decode_path):
    reference = random_qwen2(tmp_path / "hf", seed=4)
    model, _ = convert_and_load(tmp_path / "hf", tmp_path / "fx")
    ids, mask, lengths = _prompts()
    config = SamplingConfig(max_new_tokens=10, temperature=0.0, top_k=0, eos_id=EOS, pad_id=0)
    graphdef, state = nnx.split(model)
    sample = make_sampler(graphdef, config, group_size=2, decode_path=decode_path)
    out = sample(state, model.embed_tokens(jnp.asarray(ids)), jnp.asarray(mask), jax.random.key(0))
    tokens, cmask, logps = (np.asarray(x) for x in (out.tokens, out.completion_mask, out.logps))
    assert tokens.shape == (6, 10)
    np.testing.assert_array_equal(tokens[0::2], tokens[1::2])  # greedy: both group members agree
    for row, n in enumerate(lengths):
        prompt = torch.tensor(ids[row : row + 1, :n])
        with torch.no_grad():
            hf = reference.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                do_sample=False,
                max_new_tokens=10,
                eos_token_id=EOS,
                pad_token_id=0,
            )[0, n:].numpy()
        ours = tokens[2 * row][: cmask[2 * row].sum()]
        np.testing.assert_array_equal(ours, hf[: len(ours)])
        # Log-probs of the sampled tokens equal a full forward over prompt + completion.
        full = np.concatenate([ids[row, :n], ours])
        logits = np.asarray(model(jnp.asarray(full[None])))[0]
        want = jax.nn.log_softmax(logits[n - 1 : n - 1 + len(ours)], axis=-1)
        want = np.take_along_axis(np.asarray(want), ours[:, None], axis=1)[:, 0]
        np.testing.assert_allclose(logps[2 * row][: len(ours)], want, rtol=1e-5, atol=1e-5)
    # Same shapes again: no new compilation.
    sample(state, model.embed_tokens(jnp.asarray(ids)), jnp.asarray(mask), jax.random.key(1))
    assert sample._cache_size() == 1


def test_both_decode_paths_sample_the_same_tokens(tmp_path):
    random_qwen2(tmp_path / "hf", seed=6)
    model, _ = convert_and_load(tmp_path / "hf", tmp_path / "fx")
    ids, mask, _ = _prompts()
    config = SamplingConfig(max_new_tokens=12, temperature=1.0, top_k=20, eos_id=EOS, pad_id=0)
    graphdef, state = nnx.split(model)
    embeds = model.embed_tokens(jnp.asarray(ids))
    scan, cpu = (
        make_sampler(graphdef, config, 4, path)(state, embeds, jnp.asarray(mask), jax.random.key(2))
        for path in ("scan", "cpu")
    )
    np.testing.assert_array_equal(np.asarray(cpu.tokens), np.asarray(scan.tokens))
    np.testing.assert_allclose(np.asarray(cpu.logps), np.asarray(scan.logps), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="decode_path"):
        make_sampler(graphdef, config, 4, "gpu")(state, embeds, jnp.asarray(mask), jax.random.key(2))


def test_sampling_is_deterministic_per_key_and_stops_at_eos(tmp_path):
    random_qwen2(tmp_path / "hf", seed=5)
    model, _ = convert_and_load(tmp_path / "hf", tmp_path / "fx")
    ids, mask, _ = _prompts()
    config = SamplingConfig(max_new_tokens=12, temperature=1.0, top_k=20, top_p=0.9, eos_id=EOS, pad_id=0)
    graphdef, state = nnx.split(model)
    sample = make_sampler(graphdef, config, group_size=4)
    embeds = model.embed_tokens(jnp.asarray(ids))
    a = sample(state, embeds, jnp.asarray(mask), jax.random.key(7))
    b = sample(state, embeds, jnp.asarray(mask), jax.random.key(7))
    c = sample(state, embeds, jnp.asarray(mask), jax.random.key(8))
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    assert not np.array_equal(np.asarray(a.tokens), np.asarray(c.tokens))
    tokens, cmask = np.asarray(a.tokens), np.asarray(a.completion_mask)
    for row in range(tokens.shape[0]):
        eos = np.flatnonzero(tokens[row] == EOS)
        if eos.size:  # mask covers up to and including the first EOS; the rest is pad
            assert cmask[row].sum() == eos[0] + 1 and np.all(tokens[row, eos[0] + 1 :] == 0)
        else:
            assert cmask[row].sum() == 12 and bool(a.truncated[row])
    assert np.all(np.asarray(a.logps)[cmask == 0] == 0)


def test_sampled_frequencies_match_the_softmax():
    logits = jnp.asarray([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
    n = 40_000
    keys = jax.random.split(jax.random.key(0), n)

    def draw(config):
        tokens, _ = jax.vmap(lambda k: sample_tokens(k, logits, config))(keys)
        return np.bincount(np.asarray(tokens[:, 0]), minlength=6) / n

    for config in (
        SamplingConfig(temperature=1.0, top_k=0),
        SamplingConfig(temperature=0.7, top_k=3),
        SamplingConfig(temperature=1.0, top_k=0, top_p=0.8),
    ):
        expected = np.asarray(jax.nn.softmax(filter_logits(logits / config.temperature, config.top_k, config.top_p)))[0]
        observed = draw(config)
        # 5 standard errors of a binomial proportion.
        tolerance = 5 * np.sqrt(expected * (1 - expected) / n) + 1e-9
        assert np.all(np.abs(observed - expected) <= tolerance), (config, observed, expected)
    filtered = np.asarray(filter_logits(logits, 3, 1.0))[0]
    assert np.isinf(filtered[3:]).all() and np.isfinite(filtered[:3]).all()
    p = np.asarray(jax.nn.softmax(logits))[0]  # [0.56, 0.21, 0.13, 0.08, ...]
    kept = np.isfinite(np.asarray(filter_logits(logits, 0, 0.8))[0])
    # The smallest top set holding at least 0.8: the first two hold 0.77, the first three 0.89.
    assert p[0] + p[1] < 0.8 <= p[0] + p[1] + p[2]
    assert kept.tolist() == [True, True, True, False, False, False]


def test_left_align_and_completion_mask():
    x = jnp.asarray([[1, 2, 3, 0], [4, 5, 0, 0]])
    m = jnp.asarray([[1, 1, 1, 0], [1, 1, 0, 0]])
    shifted, mask, positions = left_align(x, m)
    np.testing.assert_array_equal(np.asarray(shifted)[np.asarray(mask) == 1], [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(np.asarray(mask), [[0, 1, 1, 1], [0, 0, 1, 1]])
    np.testing.assert_array_equal(np.asarray(positions), [[0, 0, 1, 2], [0, 0, 0, 1]])
    tokens = jnp.asarray([[5, 3, 3, 9], [5, 6, 7, 8], [3, 0, 0, 0]])
    np.testing.assert_array_equal(
        np.asarray(completion_mask_from_tokens(tokens, 3)), [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    )


def test_top_k_threshold_equals_lax_top_k():
    from jax_tinyr1.generate.sampling import BLOCK, top_k_threshold

    rng = np.random.RandomState(0)
    v = 40 * BLOCK + 17  # 41 blocks, the last one padded
    x = (rng.randn(7, v) * 5).astype(np.float32)
    x[0, :10] = 3.0  # ties at the threshold
    x[1] = -np.abs(x[1])  # all negative
    x[2, 0] = np.inf
    # Block maxima tied at 20 in the first 30 blocks, 40 larger values in one later block:
    # the tied blocks must not crowd it out.
    x[3] = rng.uniform(-1, 0, v)
    x[3, : 30 * BLOCK : BLOCK] = 20.0
    x[3, 38 * BLOCK : 38 * BLOCK + 40] = 30.0
    x[4] = 0.0  # one value everywhere
    x[5, ::2] = -0.0
    x[6, -3:] = 100.0  # the largest values in the padded block
    for k in (1, 5, 6, 29, 35, 40, 41, 50, 999):
        threshold = np.asarray(top_k_threshold(jnp.asarray(x), k))
        expected = np.asarray(jax.lax.top_k(jnp.asarray(x), k)[0][:, -1:])
        np.testing.assert_array_equal(threshold, expected, err_msg=f"k={k}")


def test_sampling_never_draws_a_filtered_token_and_matches_block_weights():
    from jax_tinyr1.generate.sampling import BLOCK, sample_from_weights

    v = 3 * BLOCK + 5
    weights = np.zeros((1, v), np.float32)
    chosen = {0: 1.0, BLOCK - 1: 2.0, BLOCK + 7: 0.5, 3 * BLOCK + 4: 4.0, 2 * BLOCK: 1e-30}
    for index, w in chosen.items():
        weights[0, index] = w
    n = 40_000
    keys = jax.random.split(jax.random.key(3), n)
    tokens = np.asarray(jax.vmap(lambda k: sample_from_weights(k, jnp.asarray(weights)))(keys))[:, 0]
    assert set(np.unique(tokens)) <= set(chosen)
    p = weights[0] / weights.sum()
    observed = np.bincount(tokens, minlength=v) / n
    tolerance = 5 * np.sqrt(p * (1 - p) / n) + 1e-9
    assert np.all(np.abs(observed - p) <= tolerance)


def test_answering_with_bf16_weights_on_cpu_holds_no_float32_copy_of_the_layers():
    """inference_split hands XLA:CPU the stacked 16-bit layer weights as uint16 views of the
    same buffers: the answers are the same tokens, bit for bit, on both decode paths, the
    model keeps its own bf16 weights, and the compiled program's temporaries stay below one
    float32 copy of the layers (which XLA's float normalization makes of bf16 ones)."""
    from jax_tinyr1.generate.sampler import generate, inference_split
    from jax_tinyr1.model import build_model, get_preset

    config = get_preset(
        "qwen2-tiny", hidden_size=128, intermediate_size=512, num_layers=6, dtype="bfloat16", param_dtype="bfloat16"
    )
    model = build_model(config, seed=2)
    plain, views = nnx.split(model), inference_split(model)
    q = model.layers["q_kernel"][...]
    assert q.dtype == jnp.bfloat16 and views[1]["layers"]["q_kernel"][...].dtype == jnp.uint16
    assert views[1]["layers"]["q_kernel"][...].unsafe_buffer_pointer() == q.unsafe_buffer_pointer()  # no copy
    ids, mask, _ = _prompts()
    sampling = SamplingConfig(max_new_tokens=6, temperature=0.0, top_k=0, eos_id=EOS, pad_id=0)

    def answer(graphdef, path):
        def run(state, ids, mask):
            llm = nnx.merge(graphdef, state)
            return generate(llm, llm.embed_tokens(ids), mask, jax.random.key(0), sampling, 1, decode_path=path).tokens

        return jax.jit(run)

    for path in ("scan", "cpu"):
        want = answer(plain[0], path)(plain[1], jnp.asarray(ids), jnp.asarray(mask))
        got = answer(views[0], path)(views[1], jnp.asarray(ids), jnp.asarray(mask))
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=path)
    layers_f32 = sum(v[...].size for v in model.layers.values()) * 4
    temps = {
        name: answer(graphdef, "scan").lower(state, ids, mask).compile().memory_analysis().temp_size_in_bytes
        for name, (graphdef, state) in (("plain", plain), ("views", views))
    }
    assert temps["plain"] >= layers_f32 > 2 * temps["views"], (temps, layers_f32)
