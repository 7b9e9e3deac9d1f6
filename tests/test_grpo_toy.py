"""A tiny end-to-end GRPO loop on a toy task: the update must go the right way.

Cold start first (as the paper does): a few supervised steps teach the format with a random
answer letter. Then GRPO with the paper's reward rule, where "B" is always right, must raise
the mean reward clearly."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_tinyr1.data.template import grpo_question, prompt_ids
from jax_tinyr1.data.tokenizer import build_tokenizer
from jax_tinyr1.generate.sampling import SamplingConfig
from jax_tinyr1.grpo.config import GRPOConfig
from jax_tinyr1.grpo.loss import ObjectiveConfig
from jax_tinyr1.grpo.trainer import GRPOTrainer
from jax_tinyr1.grpo.update import Batch
from jax_tinyr1.model import build_model, get_preset
from jax_tinyr1.update.optimizer import OptimizerConfig

QUESTION = "Which letter?\nA. first\nB. second\nC. third\nD. fourth"


def _completion(letter):
    return f"<think>I think so.</think><answer>{letter}</answer>"


def test_grpo_raises_the_reward_on_a_toy_task(tmp_path):
    corpus = [grpo_question(QUESTION)] * 5 + [_completion(x) for x in "ABCD"] * 20
    tokenizer = build_tokenizer(corpus, tmp_path / "tok", vocab_size=300)
    ids = prompt_ids(tokenizer, grpo_question(QUESTION))
    eos = tokenizer.eos_token_id
    config = GRPOConfig(
        objective=dataclasses.replace(ObjectiveConfig(), beta=0.0),
        sampling=SamplingConfig(max_new_tokens=20, temperature=1.0, top_k=0, eos_id=eos, pad_id=eos),
        optimizer=OptimizerConfig(learning_rate=1e-3, warmup_ratio=0.0, total_steps=1000),
        group_size=8,
    )
    model = build_model(get_preset("tinyllava-video-tiny"), seed=0)
    cold_start = dataclasses.replace(config, optimizer=dataclasses.replace(config.optimizer, learning_rate=1e-2))
    trainer = GRPOTrainer(model, cold_start, tokenizer=tokenizer)
    prompts = np.asarray([ids, ids])
    mask = np.ones_like(prompts)
    pixels = np.random.RandomState(0).uniform(-1, 1, (2, 4, 16, 16, 3)).astype(np.float32)

    # Cold start: advantage +1 on fixed targets is plain maximum likelihood.
    targets = [tokenizer(_completion(x), add_special_tokens=False)["input_ids"] + [eos] for x in "ABCDABCDABCDABCD"]
    tokens = np.full((16, 20), eos)
    cmask = np.zeros((16, 20), np.int32)
    for row, t in enumerate(targets):
        tokens[row, : len(t)], cmask[row, : len(t)] = t, 1
    features = trainer.encode(jnp.asarray(pixels))
    sft = Batch(
        jnp.asarray(np.repeat(prompts, 8, 0)),
        jnp.asarray(np.repeat(mask, 8, 0)),
        features,
        jnp.asarray(tokens),
        jnp.asarray(cmask),
        jnp.ones(16),
        None,
        None,
    )
    for _ in range(70):
        trainer.update(sft)
    model = nnx.merge(trainer.graphdef, {**trainer.frozen, **trainer.trainable})
    trainer = GRPOTrainer(model, config, tokenizer=tokenizer)

    # lr 1e-3 and means over the last 8 of 32 steps: with 2e-3, or the last step alone, the
    # outcome hung on the sampler's random draws (a single step's collapse decided it).
    rewards, formats = [], []
    key = jax.random.key(0)
    for _ in range(32):
        key, sub = jax.random.split(key)
        metrics = trainer.step(prompts, mask, pixels, ["B", "B"], sub)
        rewards.append(metrics["reward"])
        formats.append(metrics["rewards/format/mean"])
    early, late = np.mean(rewards[:4]), np.mean(rewards[-8:])
    assert np.mean(formats[-8:]) > 0.4  # the format (FR >= 0.5 when kept) survives
    assert late > early + 0.5, rewards
    assert late > 0.8, rewards  # mostly right answers (1 + FR each; a wrong one is -FR)


def test_mu_two_uses_real_old_policy_log_probs(tmp_path):
    tokenizer = build_tokenizer([_completion(x) for x in "ABCD"] * 5 + [QUESTION], tmp_path / "tok", vocab_size=300)
    ids = prompt_ids(tokenizer, grpo_question(QUESTION))
    eos = tokenizer.eos_token_id
    config = GRPOConfig(
        objective=ObjectiveConfig(),
        sampling=SamplingConfig(max_new_tokens=8, temperature=1.0, top_k=0, eos_id=eos, pad_id=eos),
        optimizer=OptimizerConfig(learning_rate=1e-2, warmup_ratio=0.0, total_steps=10),
        group_size=4,
        updates_per_rollout=2,
    )
    trainer = GRPOTrainer(build_model(get_preset("tinyllava-video-tiny"), seed=1), config, tokenizer=tokenizer)
    pixels = np.random.RandomState(0).uniform(-1, 1, (2, 4, 16, 16, 3)).astype(np.float32)
    prompts = np.asarray([ids, ids])
    metrics = trainer.step(prompts, np.ones_like(prompts), pixels, ["A", "C"], jax.random.key(3))
    # The sampler's log-probs and the trainer's agree before any update (same float32 model)...
    assert metrics["sampler_logp_abs_diff"] < 1e-4
    # ...and the second update sees a ratio != 1 because the first one moved the policy.
    assert metrics["ratio/max"] > 1.0 + 1e-4 or metrics["ratio/min"] < 1.0 - 1e-4
    assert {
        "reward",
        "reward_std",
        "rewards/format/mean",
        "rewards/accuracy/mean",
        "completions/mean_length",
        "completions/min_length",
        "completions/max_length",
        "completions/clipped_ratio",
        "completions/shortcut_rate",
        "completions/reflection_rate",
        "frac_reward_zero_std",
        "kl",
        "entropy",
        "clip_ratio/low_mean",
        "clip_ratio/high_mean",
        "clip_ratio/region_mean",
        "step_time",
        "tokens_per_second",
    } <= set(metrics)
