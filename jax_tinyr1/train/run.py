"""The training loop shared by SFT and GRPO: config -> tokenizer, model, data, mesh ->
resume from the latest complete checkpoint -> steps with logging and periodic asynchronous
checkpoints -> the final model (ours, and optionally the original HF layout) and plots."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from jax_tinyr1.data.formats import read_cold_start_json, read_grpo_jsonl
from jax_tinyr1.data.loader import LoaderConfig, VideoQALoader
from jax_tinyr1.data.policy import BadInputPolicy, DataError
from jax_tinyr1.data.tokenizer import load_tokenizer
from jax_tinyr1.grpo import multihost
from jax_tinyr1.grpo.loss import OBJECTIVE_PRESETS, ObjectiveConfig
from jax_tinyr1.grpo.sampling import SamplingConfig
from jax_tinyr1.grpo.step import Batch, GRPOConfig, OptimizerConfig
from jax_tinyr1.grpo.trainer import GRPOTrainer
from jax_tinyr1.model import build_model, get_preset, load_pretrained, preset_model_type, save_pretrained
from jax_tinyr1.model.sharding import make_mesh
from jax_tinyr1.rewards import RewardConfig
from jax_tinyr1.train.checkpointing import TrainCheckpointer
from jax_tinyr1.train.config import ConfigError, TrainConfig, load_config, to_dict
from jax_tinyr1.train.logging import MetricsLogger


def maybe_initialize_distributed() -> None:
    """Multi-host: jax.distributed.initialize when the usual variables say so."""
    if os.environ.get("JAX_COORDINATOR_ADDRESS") and os.environ.get("JAX_NUM_PROCESSES"):
        jax.distributed.initialize(
            coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ.get("JAX_PROCESS_ID", "0")),
        )


def build(config: TrainConfig):
    """(model, model config) from a converted checkpoint or a preset, with the run's dtypes."""
    m = config.model
    if m.checkpoint:
        if not Path(m.checkpoint).is_dir():
            raise ConfigError(f"model.checkpoint: {m.checkpoint} is not a directory")
        model, model_config = load_pretrained(m.checkpoint)
        return model, model_config
    try:
        if preset_model_type(m.preset) != "tinyllava":
            raise ConfigError(f"model.preset: {m.preset!r} is not a TinyLLaVA-Video preset")
        base = get_preset(m.preset)
    except KeyError as e:
        raise ConfigError(f"model.preset: {e.args[0]}") from None
    model_config = dataclasses.replace(
        base,
        llm=dataclasses.replace(base.llm, dtype=m.dtype, remat=m.remat),
        vision=dataclasses.replace(base.vision, dtype=m.dtype),
        connector=dataclasses.replace(base.connector, dtype=m.dtype),
    )
    return build_model("tinyllava", model_config, seed=config.run.seed), model_config


def grpo_config(config: TrainConfig, total_steps: int, *, sft: bool, eos_id: int) -> GRPOConfig:
    g = config.grpo
    if sft:  # maximum likelihood = the GRPO update with advantage 1, ratio 1, no KL, token mean
        objective = ObjectiveConfig(beta=0.0, aggregation="token_mean", noise_std=0.0)
    else:
        if g.objective not in OBJECTIVE_PRESETS:
            raise ConfigError(f"grpo.objective: {g.objective!r} is not one of {sorted(OBJECTIVE_PRESETS)}")
        fields = {
            k: getattr(g, k)
            for k in ("beta", "epsilon_low", "epsilon_high", "aggregation", "advantage_scale", "noise_std")
            if getattr(g, k) is not None
        }
        objective = dataclasses.replace(OBJECTIVE_PRESETS[g.objective], **fields)
    o = config.optimizer
    if o.schedule not in ("cosine", "constant"):
        raise ConfigError(f"optimizer.schedule: {o.schedule!r} is not one of ['constant', 'cosine']")
    return GRPOConfig(
        objective=objective,
        sampling=SamplingConfig(
            max_new_tokens=g.max_new_tokens,
            temperature=g.temperature,
            top_k=g.top_k,
            top_p=g.top_p,
            eos_id=eos_id,
            pad_id=eos_id,
        ),
        optimizer=OptimizerConfig(
            learning_rate=o.learning_rate,
            warmup_ratio=o.warmup_ratio,
            total_steps=total_steps,
            schedule=o.schedule,
            weight_decay=o.weight_decay,
            max_grad_norm=o.max_grad_norm,
            b1=o.b1,
            b2=o.b2,
            eps=o.eps,
        ),
        group_size=1 if sft else g.group_size,
        updates_per_rollout=1 if sft else g.updates_per_rollout,
        micro_batches=g.micro_batches,
    )


def sft_step(trainer: GRPOTrainer, batch: dict[str, Any], key) -> dict[str, float]:
    mesh, pad = trainer.mesh, trainer.config.sampling.pad_id
    prompt_ids, response_ids = trainer.global_rows(batch["prompt_ids"], batch["response_ids"], pad_value=pad)
    prompt_mask, response_mask = trainer.global_rows(batch["prompt_mask"], batch["response_mask"])
    features = trainer.encode(multihost.global_batch(mesh, batch["pixels"]))
    metrics = trainer.update(
        Batch(
            *(multihost.replicated_to_global(mesh, x) for x in (prompt_ids, prompt_mask)),
            features,
            *(multihost.replicated_to_global(mesh, x) for x in (response_ids, response_mask)),
            multihost.replicated_to_global(mesh, np.ones(len(prompt_ids), np.float32)),
            None,
            None,
        )
    )
    return {"nll": -float(metrics["logp_mean"]), "grad_norm": float(metrics["grad_norm"])}


def grpo_step(trainer: GRPOTrainer, batch: dict[str, Any], key) -> dict[str, float]:
    return trainer.step(batch["prompt_ids"], batch["prompt_mask"], batch["pixels"], batch["answers"], key)


def train(config: TrainConfig, *, sft: bool) -> Path:
    """Run (or resume) training; returns the directory of the final model."""
    out = Path(config.run.output_dir)
    root = Path(config.data.root)
    if not root.is_dir():
        raise ConfigError(f"data.root: {config.data.root!r} is not a directory")
    annotations = root / config.data.train
    if not annotations.is_file():
        raise ConfigError(f"data.train: {annotations} not found")
    if not config.run.tokenizer or not Path(config.run.tokenizer).is_dir():
        raise ConfigError(f"run.tokenizer: {config.run.tokenizer!r} is not a tokenizer directory")
    maybe_initialize_distributed()
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(config.run.tokenizer)
    model, model_config = build(config)
    policy = BadInputPolicy(config.data.bad_input)
    records = (read_cold_start_json if sft else read_grpo_jsonl)(annotations, policy)
    d = config.data
    loader_config = LoaderConfig(
        batch_size=d.batch_size,
        num_frames=model_config.num_frames,
        image_size=model_config.vision.image_size,
        seed=d.seed,
        num_epochs=config.run.epochs,
        num_workers=d.num_workers,
        bad_input=d.bad_input,
        reasoning_prompt=not sft,
    )
    loader = VideoQALoader(
        records, root, tokenizer, loader_config, process_index=jax.process_index(), process_count=jax.process_count()
    )
    steps_per_epoch = len(records) // (d.batch_size * jax.process_count())
    total = config.run.epochs * steps_per_epoch
    if config.run.max_steps:
        total = min(total, config.run.max_steps)
    if total <= 0:
        raise ConfigError(f"data: {len(records)} records give no step of batch_size {d.batch_size}")
    mesh = make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    trainer = GRPOTrainer(
        model,
        grpo_config(config, total, sft=sft, eos_id=tokenizer.eos_token_id),
        mesh=mesh,
        tokenizer=tokenizer,
        reward_config=RewardConfig(rule=config.reward.rule, max_len=config.reward.max_len),
    )
    checkpointer = TrainCheckpointer(out / "checkpoints", keep_last=config.run.keep_last)
    start = 0
    latest = checkpointer.latest_step()
    if latest is not None:
        trainer.trainable, trainer.opt_state, meta = checkpointer.restore(latest, trainer.trainable, trainer.opt_state)
        if len(meta["loaders"]) != jax.process_count():
            raise ConfigError(
                f"run.output_dir: the checkpoint at step {latest} was written by {len(meta['loaders'])} processes, "
                f"this run has {jax.process_count()}"
            )
        loader.set_state(json.loads(meta["loaders"][jax.process_index()]))
        start = meta["step"]
    base_key = jax.random.key(config.run.seed)
    step_fn: Callable = sft_step if sft else grpo_step
    logger = MetricsLogger(out, total, start, enabled=jax.process_index() == 0)
    for step in range(start, total):
        batch = next(loader)
        key = jax.random.fold_in(base_key, step)  # a pure function of the step: resumes exactly
        metrics = step_fn(trainer, batch, key)
        logger.log(step + 1, metrics)
        if (step + 1) % config.run.save_every == 0 or step + 1 == total:
            checkpointer.save(
                step + 1,
                trainer.trainable,
                trainer.opt_state,
                {
                    "step": step + 1,
                    # every process's own data position (the JSON item is written by one)
                    "loaders": multihost.allgather_strings([json.dumps(loader.get_state())]),
                    "rng_key": jax.random.key_data(key).tolist(),
                    "seed": config.run.seed,
                    "config": to_dict(config),
                },
            )
    checkpointer.close()
    logger.close()
    loader.close()
    print(f"annotations: {policy.summary()}; samples: {loader.policy.summary()}", file=sys.stderr)
    return save_final(trainer, out, config, tokenizer)


def save_final(trainer: GRPOTrainer, out: Path, config: TrainConfig, tokenizer) -> Path:
    final = out / "final"
    if jax.process_index() == 0 and final.exists():
        shutil.rmtree(final)
    multihost.barrier("final-cleared")
    # Every process takes part in the (orbax) parameter save; the first writes the rest.
    model = nnx.merge(trainer.graphdef, {**trainer.frozen, **trainer.trainable})
    save_pretrained(final, model, "tinyllava")
    if jax.process_index() != 0:
        return final
    tokenizer.save_pretrained(final / "tokenizer")
    from jax_tinyr1.plot import plot_run

    plot_run(out)
    if config.run.export_hf:
        from checkpoints_convert import flax_to_hf

        flax_to_hf.convert("tinyllava", final, out / "final_hf")
    return final


def main(argv: list[str] | None, *, sft: bool, description: str) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. grpo.beta=0")
    args = parser.parse_args(argv)
    try:
        final = train(load_config(args.config, args.overrides), sft=sft)
    except (ConfigError, DataError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"final model: {final}")
    return 0
