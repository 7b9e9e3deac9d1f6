"""The sharded GRPO update: mesh-independent results, declared shardings, mu > 1."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jax_tinyr1.data.template import IMAGE_TOKEN_INDEX
from jax_tinyr1.generate.sampling import SamplingConfig
from jax_tinyr1.grpo.config import GRPOConfig
from jax_tinyr1.grpo.loss import ObjectiveConfig
from jax_tinyr1.grpo.trainer import GRPOTrainer
from jax_tinyr1.grpo.update import Batch
from jax_tinyr1.model import build_model, get_preset
from jax_tinyr1.model.sharding import make_mesh
from jax_tinyr1.update.optimizer import OptimizerConfig

CONFIG = GRPOConfig(
    objective=ObjectiveConfig(),
    sampling=SamplingConfig(max_new_tokens=5, eos_id=1, pad_id=1),
    optimizer=OptimizerConfig(learning_rate=1e-3, warmup_ratio=0.0, total_steps=10),
    group_size=4,
)


def _model():
    return build_model(get_preset("tinyllava-video-tiny"), seed=0)


def _batch(trainer):
    rng = np.random.RandomState(0)
    ids = np.array([[5, 6, IMAGE_TOKEN_INDEX, 7, 8, 9], [4, IMAGE_TOKEN_INDEX, 10, 11, 0, 0]])
    mask = np.array([[1] * 6, [1] * 4 + [0] * 2])
    pixels = rng.uniform(-1, 1, (2, 4, 16, 16, 3)).astype(np.float32)
    tokens = rng.randint(2, 512, (8, 5))
    tokens[1, 3:] = 1  # an early EOS, then pad
    cmask = np.ones((8, 5), np.int32)
    cmask[1, 4:] = 0
    features = trainer.encode(jnp.asarray(pixels))
    batch = Batch(
        jnp.asarray(np.repeat(ids, 4, 0)),
        jnp.asarray(np.repeat(mask, 4, 0)),
        features,
        jnp.asarray(tokens),
        jnp.asarray(cmask),
        jnp.asarray(rng.randn(8).astype(np.float32)),
        None,
        None,
    )
    return batch._replace(ref_logps=trainer.logps(trainer.reference, batch) - 0.05)


def _flat(tree):
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)}


# The paper's learning rate. (Adam's first step is g / (|g| + eps): for gradients near eps
# any float reassociation shows, so the gradients are compared through their norms too.)
PAPER_LR = dataclasses.replace(CONFIG, optimizer=dataclasses.replace(CONFIG.optimizer, learning_rate=1e-6))


def _run_update(config, mesh=None):
    trainer = GRPOTrainer(_model(), config, mesh=mesh)
    before = _flat(trainer.trainable)
    metrics = {k: float(v) for k, v in trainer.update(_batch(trainer)).items()}
    return before, _flat(trainer.trainable), metrics, trainer


def _assert_same_update(a, b, where):
    before, params_a, metrics_a, _ = a
    _, params_b, metrics_b, _ = b
    assert any(not np.array_equal(before[k], params_a[k]) for k in params_a)  # it did update
    for key in ("loss", "grad_norm", "grad_norm/llm", "grad_norm/connector", "kl", "entropy"):
        assert metrics_b[key] == pytest.approx(metrics_a[key], rel=1e-5), (where, key)
    for key in params_a:
        if "k_bias" in key:
            # Its gradient is analytically zero (q . b_k is the same for every key of a query,
            # and softmax ignores it), so Adam's g / (|g| + eps) just normalises rounding noise.
            continue
        scale = np.abs(params_a[key]).max() or 1.0
        assert np.abs(params_b[key] - params_a[key]).max() / scale <= 1e-5, (where, key)


def test_update_is_the_same_on_every_mesh():
    single = _run_update(PAPER_LR, make_mesh(devices=jax.devices()[:1]))
    for name, mesh in {"fsdp8": make_mesh(fsdp=8), "data2_fsdp4": make_mesh(data=2, fsdp=4)}.items():
        result = _run_update(PAPER_LR, mesh)
        _assert_same_update(single, result, name)
        trainer = result[3]
        # Shardings as declared: parameters per the rules, Adam moments like their parameters.
        q = trainer.trainable["llm"]["layers"]["q_kernel"]
        assert q.sharding.spec == P(None, "fsdp", "tensor")
        assert {s.data.shape for s in q.addressable_shards} == {(2, 64 // trainer.mesh.shape["fsdp"], 64)}
        adam = trainer.opt_state[1][0]
        assert adam.mu["llm"]["layers"]["q_kernel"].sharding.spec == P(None, "fsdp", "tensor")
        assert adam.nu["connector"]["layers"]["ff_in"].sharding == (
            trainer.trainable["connector"]["layers"]["ff_in"].sharding
        )
        assert "vision" not in trainer.trainable and "vision" in trainer.frozen


def test_gradient_accumulation_equals_one_big_batch():
    _assert_same_update(
        _run_update(PAPER_LR), _run_update(dataclasses.replace(PAPER_LR, micro_batches=2)), "micro_batches=2"
    )


def test_vision_tower_is_frozen_and_reference_skipped_without_kl():
    trainer = GRPOTrainer(_model(), dataclasses.replace(CONFIG, objective=ObjectiveConfig(beta=0.0)))
    assert trainer.reference is None
    vision_before = _flat(trainer.frozen)
    batch = _batch_without_ref(trainer)
    trainer.update(batch)
    after = _flat(trainer.frozen)
    assert all(np.array_equal(vision_before[k], after[k]) for k in after)


def _batch_without_ref(trainer):
    trainer.reference = trainer.trainable
    batch = _batch(trainer)._replace(ref_logps=None)
    trainer.reference = None
    return batch


def test_memory_levers_micro_batched_logps_bf16_reference_and_moments():
    """The plan's levers change where memory goes, not what is computed (beyond rounding)."""
    one = GRPOTrainer(_model(), PAPER_LR)
    levers = dataclasses.replace(
        PAPER_LR,
        micro_batches=2,
        reference_dtype="bfloat16",
        optimizer=dataclasses.replace(PAPER_LR.optimizer, state_dtype="bfloat16"),
    )
    low = GRPOTrainer(_model(), levers)
    batch = _batch(one)
    np.testing.assert_allclose(
        np.asarray(low.logps(low.trainable, batch)), np.asarray(one.logps(one.trainable, batch)), rtol=1e-5, atol=1e-5
    )
    assert {x.dtype for x in jax.tree.leaves(low.reference)} == {jnp.dtype(jnp.bfloat16)}
    adam = low.opt_state[1][0]
    assert {x.dtype for x in jax.tree.leaves((adam.mu, adam.nu))} == {jnp.dtype(jnp.bfloat16)}
    before = _flat(low.trainable)
    metrics = low.update(batch)
    after = _flat(low.trainable)
    assert np.isfinite(float(metrics["loss"])) and any(not np.array_equal(before[k], after[k]) for k in after)
    assert {x.dtype for x in jax.tree.leaves(low.trainable)} == {jnp.dtype(jnp.float32)}  # master weights
