"""The training loop of every stage (SFT, GRPO): config -> tokenizer, model, data, mesh ->
resume from the latest complete checkpoint -> the stage's steps with logging and periodic
asynchronous checkpoints -> the final model (ours, and optionally the original HF layout)
and plots. What differs between the stages is one `Stage` entry."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

from checkpoints_convert.cache import converted_checkpoint
from checkpoints_convert.hub import hub_id
from jax_tinyr1 import platform
from jax_tinyr1.cli import exits_on_bad_input
from jax_tinyr1.data.formats import read_cold_start_json, read_grpo_jsonl, unread_fields
from jax_tinyr1.data.loader import VideoQALoader, fit_widths
from jax_tinyr1.data.policy import BadInputPolicy, DataError
from jax_tinyr1.data.template import eos_id, pad_id
from jax_tinyr1.data.tokenizer import checkpoint_tokenizer, load_tokenizer
from jax_tinyr1.grpo.trainer import GRPOTrainer
from jax_tinyr1.model import save_pretrained
from jax_tinyr1.model.config_io import load_model_config
from jax_tinyr1.model.sharding import make_mesh
from jax_tinyr1.sft.trainer import SFTTrainer
from jax_tinyr1.train.checkpointing import TrainCheckpointer
from jax_tinyr1.train.config import ConfigError, TrainConfig, grpo_config, load_config, sft_config, to_dict
from jax_tinyr1.train.gpu_target import install_command, targets_help
from jax_tinyr1.train.logging import MetricsLogger
from jax_tinyr1.update import multihost
from jax_tinyr1.update.trainer import Trainer


def maybe_initialize_distributed() -> None:
    """Multi-host through JAX's own cluster detection: the explicit JAX_COORDINATOR_ADDRESS /
    JAX_NUM_PROCESSES / JAX_PROCESS_ID, else SLURM or Open MPI when their environment says
    the job has two or more processes."""
    if os.environ.get("JAX_COORDINATOR_ADDRESS") and os.environ.get("JAX_NUM_PROCESSES"):
        jax.distributed.initialize(
            coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ.get("JAX_PROCESS_ID", "0")),
        )
    elif cluster_processes() >= 2:
        jax.distributed.initialize()  # JAX reads the scheduler's variables itself


OMPI_URI = "OMPI_MCA_orte_hnp_uri"


def cluster_processes() -> int:
    """The process count a SLURM step or an Open MPI launch announces (1 when neither)."""
    if os.environ.get("SLURM_JOB_ID") and os.environ.get("SLURM_NTASKS"):
        return int(os.environ["SLURM_NTASKS"])
    if OMPI_URI in os.environ:  # what JAX's Open MPI detection looks for
        return int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1"))
    return 1


def run_mesh(config: TrainConfig):
    """The configured mesh over this job's devices; its size must divide the device count."""
    m, count = config.mesh, jax.device_count()
    if count % m.size:
        raise ConfigError(
            f"mesh: data={m.data} fsdp={m.fsdp} tensor={m.tensor} ({m.size} devices) does not divide "
            f"the {count} devices of this job"
        )
    return make_mesh(m.data, m.fsdp, m.tensor)


def effective_settings(config: TrainConfig, mesh) -> dict[str, Any]:
    """What the run computes with, as printed at start and stored in run_config.json."""
    m = config.mesh
    return {
        **config.model.settings(),
        "optimizer_state_dtype": config.optimizer.state_dtype,
        "reference_dtype": config.grpo.reference_dtype,
        "lora": dataclasses.asdict(config.lora) if config.lora.enabled else False,
        "mesh": {"data": m.data, "fsdp": m.fsdp, "tensor": m.tensor},
        "devices": f"{mesh.devices.size} of {jax.device_count()} {jax.default_backend()}",
        "processes": jax.process_count(),
    }


@dataclasses.dataclass(frozen=True)
class Stage:
    """What a training stage brings to the shared loop."""

    read_records: Callable  # (annotations path, policy) -> records
    reasoning_prompt: bool  # whether the loader appends the format instruction to questions
    make_trainer: Callable  # (config, model, mesh, tokenizer, total steps) -> Trainer
    step: Callable  # (trainer, loader batch, key) -> metrics


def _sft_trainer(config: TrainConfig, model, mesh, tokenizer, total: int) -> Trainer:
    return SFTTrainer(model, sft_config(config, total), pad_id=pad_id(tokenizer), mesh=mesh)


def _grpo_trainer(config: TrainConfig, model, mesh, tokenizer, total: int) -> Trainer:
    grpo = grpo_config(config, total, eos=eos_id(tokenizer), pad=pad_id(tokenizer))
    return GRPOTrainer(model, grpo, mesh=mesh, tokenizer=tokenizer, reward_config=config.reward)


STAGES = {
    "sft": Stage(
        read_records=read_cold_start_json,
        reasoning_prompt=False,
        make_trainer=_sft_trainer,
        step=lambda trainer, b, key: trainer.step(
            b["prompt_ids"], b["prompt_mask"], b["pixels"], b["response_ids"], b["response_mask"], key
        ),
    ),
    "grpo": Stage(
        read_records=read_grpo_jsonl,
        reasoning_prompt=True,
        make_trainer=_grpo_trainer,
        step=lambda trainer, b, key: trainer.step(b["prompt_ids"], b["prompt_mask"], b["pixels"], b["answers"], key),
    ),
}


class Preempted(Exception):
    """SIGTERM or SIGINT: the step in flight finished and was checkpointed (exit 0)."""


class Diverged(Exception):
    """Too many consecutive non-finite steps; the last finite state was checkpointed."""


EXIT_DIVERGED = 5


class StopSignals:
    """Within the block, SIGTERM and SIGINT only set `received` (the loop checkpoints at the
    end of the step in flight and stops); the previous handlers come back afterwards."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: str | None = None
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        self.received = signal.Signals(signum).name

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # Python's rule for handlers
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def resume(checkpointer: TrainCheckpointer, trainer: Trainer, loader: VideoQALoader) -> tuple[int, int]:
    """(step, non-finite steps so far) of the newest checkpoint that restores; (0, 0) when there
    is none. A damaged one is reported and moved aside (nothing is deleted); when checkpoints
    exist and none restores, the run stops rather than start from scratch."""
    steps = sorted(checkpointer.all_steps(), reverse=True)
    for step in steps:
        try:
            restored = checkpointer.restore(step, trainer.trainable, trainer.opt_state)
        except Exception as e:  # orbax raises many kinds for a truncated or missing file
            moved = checkpointer.set_aside(step)
            print(
                f"warning: the checkpoint at step {step} cannot be restored ({type(e).__name__}: {e}); "
                f"moved to {moved}, trying the previous one",
                file=sys.stderr,
            )
            continue
        trainer.trainable, trainer.opt_state, meta = restored
        if len(meta["loaders"]) != jax.process_count():
            raise ConfigError(
                f"run.output_dir: the checkpoint at step {step} was written by {len(meta['loaders'])} processes, "
                f"this run has {jax.process_count()}"
            )
        loader.set_state(json.loads(meta["loaders"][jax.process_index()]))
        return meta["step"], meta.get("nonfinite_steps", 0)
    if steps:
        raise ConfigError(
            f"run.output_dir: no checkpoint of steps {steps} restores (set aside in {checkpointer.directory}); "
            "move them away to start from scratch"
        )
    return 0, 0


def run_tokenizer(config: TrainConfig) -> Path | None:
    """run.tokenizer, else the tokenizer that travels with model.checkpoint."""
    if config.run.tokenizer:
        return Path(config.run.tokenizer)
    return checkpoint_tokenizer(config.model.checkpoint) if config.model.checkpoint else None


def with_hub_checkpoint(config: TrainConfig, *, weights: bool) -> TrainConfig:
    """model.checkpoint given as a hub id: converted once into our cache, then used from there;
    for a plan (`weights=False`) a downloaded directory's own config.json is read too."""
    if not config.model.checkpoint:
        return config
    if hub_id(config.model.checkpoint) is None and weights:
        return config
    local = converted_checkpoint(config.model.checkpoint, weights=weights)
    return dataclasses.replace(config, model=dataclasses.replace(config.model, checkpoint=str(local)))


# Where the paper's training data comes from (the original's README): the published data set.
DOWNLOAD_DATA = "hf download --repo-type dataset Zhang199/TinyLLaVA-Video-R1-training-data"


def train(config: TrainConfig, *, stage: str) -> Path:
    """Run (or resume) training of `stage` ("sft" or "grpo"); returns the final model's directory."""
    spec = STAGES[stage]
    out = Path(config.run.output_dir)
    root = Path(config.data.root)
    if not root.is_dir():
        raise ConfigError(
            f"data.root: {config.data.root!r} is not a directory; the paper's data: {DOWNLOAD_DATA} --local-dir "
            f"{config.data.root} (or data.root=DIR where it is); a synthetic set: python -m jax_tinyr1.data.synthetic"
        )
    annotations = root / config.data.train
    if not annotations.is_file():
        raise ConfigError(
            f"data.train: {annotations} not found (the published files are nextqa_0-30s.jsonl for GRPO and "
            "nextqa-coldstart-16.json for the cold start)"
        )
    tokenizer_dir = run_tokenizer(config)
    if tokenizer_dir is None or not tokenizer_dir.is_dir():
        raise ConfigError(
            f"run.tokenizer: {str(tokenizer_dir or '')!r} is not a tokenizer directory (default: model.checkpoint/"
            "tokenizer, which hf_to_flax writes)"
        )
    tokenizer = load_tokenizer(tokenizer_dir)
    model_config = config.model.resolve(config.lora)
    policy = BadInputPolicy(config.data.bad_input)
    records = spec.read_records(annotations, policy)
    unread = unread_fields(records)
    d = config.data
    # Every record's prompt is measured before anything heavy is built: a width that cannot
    # hold them all stops the run now, and the run's one width is in its stored settings.
    loader_config = fit_widths(
        records,
        tokenizer,
        dataclasses.replace(
            d,
            num_frames=model_config.num_frames,
            image_size=model_config.vision.image_size,
            visual_tokens=model_config.num_visual_tokens,
            num_epochs=config.run.epochs,
            reasoning_prompt=spec.reasoning_prompt,
        ),
    )
    platform.apply_memory_fraction(config.run.memory_fraction)  # before the backends start
    maybe_initialize_distributed()  # before anything starts JAX's backends
    platform.start_backend()
    if unread and jax.process_index() == 0:
        listed = ", ".join(f"{name} ({n} records)" for name, n in sorted(unread.items()))
        print(f"{annotations}: fields not read: {listed}", file=sys.stderr, flush=True)
    mesh = run_mesh(config)
    settings = effective_settings(config, mesh)
    settings["prompt_tokens"] = loader_config.prompt_tokens
    if stage == "sft":
        settings["response_tokens"] = loader_config.response_tokens
    if jax.process_index() == 0:
        print(f"effective settings: {json.dumps(settings)}", file=sys.stderr, flush=True)
        out.mkdir(parents=True, exist_ok=True)
        (out / "run_config.json").write_text(
            json.dumps({"stage": stage, "config": to_dict(config), "effective": settings}, indent=2)
        )
    model, _ = config.model.build(seed=config.run.seed, lora=config.lora)
    loader = VideoQALoader(
        records, root, tokenizer, loader_config, process_index=jax.process_index(), process_count=jax.process_count()
    )
    steps_per_epoch = len(records) // (d.batch_size * jax.process_count())
    total = config.run.epochs * steps_per_epoch
    if config.run.max_steps:
        total = min(total, config.run.max_steps)
    if total <= 0:
        raise ConfigError(f"data: {len(records)} records give no step of batch_size {d.batch_size}")
    trainer = spec.make_trainer(config, model, mesh, tokenizer, total)
    checkpointer = TrainCheckpointer(out / "checkpoints", keep_last=config.run.keep_last)
    start, nonfinite_steps = resume(checkpointer, trainer, loader)
    base_key = jax.random.key(config.run.seed)
    logger = MetricsLogger(out, total, start, enabled=jax.process_index() == 0)

    def save(step: int) -> None:
        checkpointer.save(
            step,
            trainer.trainable,
            trainer.opt_state,
            {
                "step": step,
                # every process's own data position (the JSON item is written by one)
                "loaders": multihost.allgather_strings([json.dumps(loader.get_state())]),
                "rng_key": jax.random.key_data(jax.random.fold_in(base_key, step - 1)).tolist(),
                "seed": config.run.seed,
                "nonfinite_steps": nonfinite_steps,
                "config": to_dict(config),
            },
        )

    consecutive_nonfinite = 0
    with StopSignals() as signals:
        for step in range(start, total):
            try:
                batch = next(loader)
            except StopIteration:  # cannot happen with replacements; kept as a clear message
                raise DataError(f"the data ran out at step {step + 1} of {total}; {loader.policy.summary()}") from None
            key = jax.random.fold_in(base_key, step)  # a pure function of the step: resumes exactly
            first = step == start
            if first and jax.process_index() == 0:
                print(
                    f"step {step + 1}: compiling the step's programs first (XLA, once per run: minutes for a "
                    "large model)...",
                    file=sys.stderr,
                    flush=True,
                )
            began = time.perf_counter()
            metrics = spec.step(trainer, batch, key)
            if first and jax.process_index() == 0:
                print(
                    f"step {step + 1}: done in {time.perf_counter() - began:.1f} s, compilation included",
                    file=sys.stderr,
                    flush=True,
                )
            nonfinite = metrics.get("nonfinite", 0.0) > 0
            nonfinite_steps += nonfinite
            consecutive_nonfinite = consecutive_nonfinite + 1 if nonfinite else 0
            logger.log(step + 1, {**metrics, "nonfinite_steps": nonfinite_steps})
            # Every process takes the same decision at the same step (no one waits alone).
            too_many_bad = loader.too_many_bad()
            stop_bad, stop_signal = multihost.any_process(too_many_bad is not None, signals.received is not None)
            diverged = consecutive_nonfinite >= config.run.max_nonfinite_steps
            if (step + 1) % config.run.save_every == 0 or step + 1 == total or stop_bad or stop_signal or diverged:
                save(step + 1)
            if stop_bad or stop_signal or diverged:
                checkpointer.close()
                logger.close()
                loader.close()
                where = f"checkpoint at step {step + 1} in {out / 'checkpoints'}"
                if diverged:
                    raise Diverged(
                        f"{consecutive_nonfinite} consecutive steps with a non-finite loss or gradient (up to step "
                        f"{step + 1}; run.max_nonfinite_steps={config.run.max_nonfinite_steps}); parameters are those "
                        f"of the last finite step, {where}"
                    )
                if stop_bad:
                    raise DataError(f"{too_many_bad or 'another process saw too many bad samples'}; {where}")
                raise Preempted(
                    f"stopped by {signals.received or 'a signal to another process'}; {where}; "
                    "run the same command to resume"
                )
    checkpointer.close()
    logger.close()
    loader.close()
    print(f"annotations: {policy.summary()}; samples: {loader.policy.summary()}", file=sys.stderr)
    return save_final(trainer, out, config, tokenizer)


def save_final(trainer: Trainer, out: Path, config: TrainConfig, tokenizer) -> Path:
    final = out / "final"
    if jax.process_index() == 0 and final.exists():
        shutil.rmtree(final)
    multihost.barrier("final-cleared")
    # Every process takes part in the (orbax) parameter save; the first writes the rest. What
    # the source checkpoint's config.json kept of its HF origin (the file dtype, the fields an
    # export restores) stays with the trained model.
    source = {} if not config.model.checkpoint else load_model_config(config.model.checkpoint)[1]
    save_pretrained(final, trainer.model(), **source)
    if jax.process_index() != 0:
        return final
    tokenizer.save_pretrained(checkpoint_tokenizer(final))
    from jax_tinyr1.train.plot import plot_run

    plot_run(out)
    if config.run.export_hf:
        from checkpoints_convert import flax_to_hf

        flax_to_hf.convert("tinyllava", final, out / "final_hf")
    return final


@exits_on_bad_input
def main(argv: list[str] | None, *, stage: str, description: str) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument(
        "--plan",
        action="store_true",
        help="compile every program of a step ahead of time for the configured mesh and print its memory and "
        "FLOPs (abstract shapes: no weights, no data); exit 3 when over --device-memory-gib",
    )
    parser.add_argument("--device-memory-gib", type=float, default=None, help="with --plan: the budget per device")
    parser.add_argument(
        "--target",
        default=None,
        metavar="NAME|FILE[:PxD]",
        help="with --plan: compile every program with XLA:GPU for this card, on any machine (no GPU needed; the "
        f"PJRT CUDA plugin: {install_command()}): {targets_help()}, or a GpuTargetConfigProto text file; "
        ":PxD = P processes of D GPUs each (default 1 x the mesh; SLURM's one task per GPU is Nx1). "
        "Exit 3 when a program's peak exceeds what the card gives: its memory x JAX's preallocation fraction "
        "(XLA_PYTHON_CLIENT_MEM_FRACTION, default 0.75), less the CUDA context and NCCL buffers",
    )
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. objective.beta=0")
    args = parser.parse_intermixed_args(argv)
    try:
        given = load_config(args.config, args.overrides, stage=stage)
        config = with_hub_checkpoint(given, weights=not args.plan)
        if args.plan:
            from jax_tinyr1.train import plan

            if args.target is not None and args.device_memory_gib is not None:
                raise ConfigError("--device-memory-gib and --target: the target card's memory is the budget")
            if args.target is None:
                plan.request_plan_devices(config.mesh.size)
            else:  # compile-only GPU devices live beside JAX's CPU platform; no GPU is touched
                jax.config.update("jax_platforms", "cpu")
            source = given.model.checkpoint if given.model.checkpoint != config.model.checkpoint else None
            return plan.run_plan(
                config,
                stage=stage,
                device_memory_gib=args.device_memory_gib,
                target=args.target,
                source=source and f"{source} (its config.json, converted as hf_to_flax converts it)",
            )
        if args.device_memory_gib is not None or args.target is not None:
            raise ConfigError("--device-memory-gib and --target apply to --plan only")
        final = train(config, stage=stage)
    except Preempted as e:
        print(e, file=sys.stderr)
        return 0
    except Diverged as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    print(f"final model: {final}")
    return 0
