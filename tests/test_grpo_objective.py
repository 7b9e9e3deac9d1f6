"""The GRPO objective and advantages against hand-derived gradients and numpy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_tinyr1.grpo.advantages import group_advantages
from jax_tinyr1.grpo.loss import ObjectiveConfig, grpo_loss, k3_kl
from jax_tinyr1.train.config import load_config


def _batch(seed=0, b=4, t=6):
    rng = np.random.RandomState(seed)
    logps = -rng.uniform(0.1, 3.0, (b, t)).astype(np.float32)
    lengths = np.array([6, 3, 1, 5][:b])
    mask = (np.arange(t)[None] < lengths[:, None]).astype(np.float32)
    adv = rng.randn(b).astype(np.float32)
    return logps, mask, adv, lengths


def test_gradient_on_policy_is_minus_advantage_over_length():
    logps, mask, adv, lengths = _batch()

    def loss(lp):
        return grpo_loss(
            lp, jax.lax.stop_gradient(lp), None, jnp.asarray(adv), jnp.asarray(mask), beta=0.0, aggregation="grpo"
        )[0]

    grad = np.asarray(jax.grad(loss)(jnp.asarray(logps)))
    b = logps.shape[0]
    expected = -adv[:, None] / lengths[:, None] / b * mask  # 1/G sum_i 1/|o_i| sum_t
    np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-8)
    assert np.all(grad[mask == 0] == 0)


@pytest.mark.parametrize(
    "advantage, ratio, acts",
    [
        (1.0, 1.2 - 1e-3, False),
        (1.0, 1.2 + 1e-3, True),  # positive A: upper bound
        (-1.0, 0.8 + 1e-3, False),
        (-1.0, 0.8 - 1e-3, True),  # negative A: lower bound
        (1.0, 0.8 - 1e-3, False),
        (-1.0, 1.2 + 1e-3, False),  # the pessimistic min keeps these
    ],
)
def test_clip_acts_exactly_at_its_boundaries(advantage, ratio, acts):
    old = jnp.full((1, 1), -1.0)
    mask = jnp.ones((1, 1))
    adv = jnp.asarray([advantage])

    def loss(lp):
        return grpo_loss(lp, old, None, adv, mask, beta=0.0, epsilon_low=0.2, epsilon_high=0.2)

    logp = old + jnp.log(ratio)
    (value, metrics), grad = jax.value_and_grad(loss, has_aux=True)(logp)
    clipped = 1.2 if ratio > 1 else 0.8
    if acts:
        assert float(grad[0, 0]) == 0.0
        assert float(value) == pytest.approx(-clipped * advantage, rel=1e-6)
        assert float(metrics["clip_ratio/region_mean"]) == 1.0
    else:
        assert float(grad[0, 0]) == pytest.approx(-advantage * ratio, rel=1e-5)
        assert float(value) == pytest.approx(-ratio * advantage, rel=1e-5)
        assert float(metrics["clip_ratio/region_mean"]) == 0.0
    key = "clip_ratio/high_mean" if advantage > 0 else "clip_ratio/low_mean"
    assert float(metrics[key]) == float(acts)


def test_asymmetric_clip_bounds():
    old = jnp.zeros((1, 2))
    logp = jnp.log(jnp.asarray([[1.25, 1.25]]))
    loss, m = grpo_loss(
        logp, old, None, jnp.asarray([1.0]), jnp.ones((1, 2)), beta=0.0, epsilon_low=0.2, epsilon_high=0.28
    )
    assert float(m["clip_ratio/high_mean"]) == 0.0 and float(loss) == pytest.approx(-1.25, rel=1e-6)


def test_k3_matches_float64_reference_near_zero_and_large():
    d = np.array([0.0, 1e-7, -1e-6, 3e-4, -2e-3, 0.05, -0.099, 0.1, 0.5, -1.0, 3.0, 4.5, -60.0, 4.8, 25.0, -150.0])
    ref = np.clip(np.expm1(d.astype(np.float64)) - d, -100, 100)
    logps = np.full_like(d, -2.0, dtype=np.float32)
    ours = np.asarray(k3_kl(jnp.asarray(logps), jnp.asarray(logps + d.astype(np.float32))), np.float64)
    d32 = (logps + d.astype(np.float32)).astype(np.float64) - logps  # the d float32 can represent
    ref32 = np.clip(np.expm1(d32) - d32, -100, 100)
    nonzero = ref32 > 0
    np.testing.assert_allclose(ours[nonzero], ref32[nonzero], rtol=2e-6)
    assert ours[0] == 0.0 and ref[-2] == 100.0 and ours[-2] == 100.0 and ours[-1] == 100.0
    # The naive float32 form loses everything near zero; ours does not.
    naive = np.exp(np.float32(3e-4)) - np.float32(3e-4) - np.float32(1)
    assert abs(naive - ref[3]) / ref[3] > 1e-2
    grads = jax.grad(lambda lp: k3_kl(lp, jnp.asarray(logps + d.astype(np.float32))).sum())(jnp.asarray(logps))
    assert np.all(np.isfinite(np.asarray(grads)))


def _numpy_loss(logps, old, ref, adv, mask, beta, aggregation, max_len, eps=0.2):
    ratio = np.exp(logps - old)
    obj = np.minimum(ratio * adv[:, None], np.clip(ratio, 1 - eps, 1 + eps) * adv[:, None])
    d = ref - logps
    per_token = -(obj - beta * np.clip(np.expm1(d) - d, -100, 100))
    if aggregation == "grpo":
        return np.mean((per_token * mask).sum(1) / mask.sum(1))
    if aggregation == "dr_grpo":
        return (per_token * mask).sum() / (logps.shape[0] * max_len)
    return (per_token * mask).sum() / mask.sum()


@pytest.mark.parametrize("aggregation", ["grpo", "dr_grpo", "token_mean"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_aggregations_match_numpy(aggregation, beta):
    logps, mask, adv, _ = _batch(seed=1)
    rng = np.random.RandomState(2)
    old = (logps + 0.3 * rng.randn(*logps.shape)).astype(np.float32)
    ref = (logps + 0.5 * rng.randn(*logps.shape)).astype(np.float32)
    loss, metrics = grpo_loss(
        jnp.asarray(logps),
        jnp.asarray(old),
        jnp.asarray(ref),
        jnp.asarray(adv),
        jnp.asarray(mask),
        beta=beta,
        aggregation=aggregation,
        max_completion_length=10,
    )
    want = _numpy_loss(logps.astype(np.float64), old, ref, adv, mask, beta, aggregation, 10)
    assert float(loss) == pytest.approx(want, rel=1e-5)
    ratio = np.exp(logps - old)[mask > 0]
    assert float(metrics["ratio/max"]) == pytest.approx(ratio.max(), rel=1e-5)
    assert float(metrics["ratio/min"]) == pytest.approx(ratio.min(), rel=1e-5)
    assert ("kl" in metrics) == (beta != 0)


def test_masked_tokens_contribute_nothing():
    logps, mask, adv, _ = _batch(seed=3)
    ref = logps + 0.2
    f = jax.jit(lambda lp, old, ref: grpo_loss(lp, old, ref, jnp.asarray(adv), jnp.asarray(mask), beta=0.1)[0])
    base = f(jnp.asarray(logps), jnp.asarray(logps - 0.1), jnp.asarray(ref))
    noise = np.where(mask == 0, 50.0, 0.0).astype(np.float32)
    moved = f(jnp.asarray(logps + noise), jnp.asarray(logps - 0.1 - noise), jnp.asarray(ref + noise))
    assert float(base) == float(moved)
    grad = jax.grad(f)(jnp.asarray(logps + noise), jnp.asarray(logps - 0.1 - noise), jnp.asarray(ref + noise))
    assert np.all(np.asarray(grad)[mask == 0] == 0) and np.all(np.isfinite(np.asarray(grad)))


def test_beta_zero_needs_no_reference_and_presets():
    logps, mask, adv, _ = _batch()
    loss, metrics = grpo_loss(
        jnp.asarray(logps), jnp.asarray(logps), None, jnp.asarray(adv), jnp.asarray(mask), beta=0.0
    )
    assert "kl" not in metrics and np.isfinite(float(loss))
    with pytest.raises(ValueError, match="ref_logps"):
        grpo_loss(jnp.asarray(logps), jnp.asarray(logps), None, jnp.asarray(adv), jnp.asarray(mask), beta=0.01)
    # The paper's objective and its Fig. 6 ablations, as the shipped configs hold them.
    paper = load_config("configs/paper_8xa100.yaml").objective
    assert paper == ObjectiveConfig() and (paper.beta, paper.noise_std) == (0.01, 0.02)
    no_kl = load_config("configs/ablation_no_kl.yaml").objective
    assert no_kl == ObjectiveConfig(beta=0.0)
    dr = load_config("configs/ablation_dr_grpo.yaml").objective
    assert dr == ObjectiveConfig(beta=0.0, aggregation="dr_grpo", advantage_scale="none")


def test_advantages_without_noise_are_standardised_per_group():
    rewards = jnp.asarray(np.random.RandomState(0).randn(5 * 8) * 3 + 1, jnp.float32)
    adv, metrics = group_advantages(rewards, 8, noise_std=0.0)
    a = np.asarray(adv).reshape(5, 8)
    r = np.asarray(rewards, np.float64).reshape(5, 8)
    expected = (r - r.mean(1, keepdims=True)) / (r.std(1, ddof=1, keepdims=True) + 1e-4)
    np.testing.assert_allclose(a, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.mean(1), 0, atol=1e-6)
    np.testing.assert_allclose(a.std(1, ddof=1), 1, atol=1e-3)
    assert float(metrics["frac_reward_zero_std"]) == 0.0
    none, _ = group_advantages(rewards, 8, scale="none", noise_std=0.0)
    np.testing.assert_allclose(np.asarray(none).reshape(5, 8), r - r.mean(1, keepdims=True), rtol=1e-5, atol=1e-5)


def test_advantage_noise_statistics_and_determinism():
    rewards = jnp.concatenate([jnp.ones(4000 * 8), jnp.asarray([0.0, 1.0] * 4)])  # 4000 flat groups + 1
    adv, metrics = group_advantages(rewards, 8, noise_std=0.02, key=jax.random.key(0))
    noise = np.asarray(adv)[: 4000 * 8]  # flat groups: the advantage is the noise alone
    n = noise.size
    # Sample std of n normals: standard error about std / sqrt(2n); allow 5 of them.
    assert abs(noise.std() - 0.02) < 5 * 0.02 / np.sqrt(2 * n)
    assert abs(noise.mean()) < 5 * 0.02 / np.sqrt(n)
    assert float(metrics["frac_reward_zero_std"]) == pytest.approx(4000 / 4001)
    again, _ = group_advantages(rewards, 8, noise_std=0.02, key=jax.random.key(0))
    other, _ = group_advantages(rewards, 8, noise_std=0.02, key=jax.random.key(1))
    np.testing.assert_array_equal(np.asarray(adv), np.asarray(again))
    assert not np.allclose(np.asarray(adv), np.asarray(other))
    with pytest.raises(ValueError, match="key"):
        group_advantages(rewards, 8, noise_std=0.02)
    with pytest.raises(ValueError, match="groups"):
        group_advantages(rewards[:-1], 8, noise_std=0.0)


def test_optimizer_schedules():
    from jax_tinyr1.update.optimizer import OptimizerConfig, make_optimizer

    params = {"w": jnp.zeros(3)}
    grads = {"w": jnp.ones(3)}

    def first_updates(config, steps):
        opt = make_optimizer(config)
        state = opt.init(params)
        out = []
        for _ in range(steps):
            updates, state = opt.update(grads, state, params)
            out.append(float(updates["w"][0]))
        return out

    # Cosine with warmup: ceil(10 * 0.3) = 3 warmup steps from 0, then decaying.
    cosine = first_updates(OptimizerConfig(learning_rate=1e-2, warmup_ratio=0.3, total_steps=10), 6)
    assert cosine[0] == 0.0 and abs(cosine[3]) > abs(cosine[5]) > 0
    constant = first_updates(
        OptimizerConfig(learning_rate=1e-2, warmup_ratio=0, total_steps=10, schedule="constant"), 20
    )
    assert constant[0] == pytest.approx(constant[19]) and constant[0] < 0  # Adam: -lr * sign
    # Constant after a warmup: ceil(10 * 0.2) = 2 steps from 0, then the full rate.
    warm = first_updates(OptimizerConfig(learning_rate=1e-2, warmup_ratio=0.2, total_steps=10, schedule="constant"), 6)
    assert (
        warm[0] == 0.0
        and abs(warm[1]) == pytest.approx(0.5e-2, rel=1e-4)
        and warm[2] == pytest.approx(warm[5], rel=1e-5)
    )
    with pytest.raises(ValueError, match="schedule"):
        OptimizerConfig(schedule="linear")
