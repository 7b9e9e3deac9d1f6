"""The programs of a GRPO step (see update/programs.py), for the trainer and the plan alike:
vision encode -> rollout -> reference log-probs (beta > 0) -> old-policy log-probs (mu > 1)
-> mu updates."""

from __future__ import annotations

import optax
from flax import nnx

from jax_tinyr1.generate.sampler import Rollout, generate
from jax_tinyr1.grpo.config import GRPOConfig
from jax_tinyr1.grpo.update import make_grpo_update, make_logps, make_reference_logps
from jax_tinyr1.update.params import encode_program, merge_params, visual_tokens
from jax_tinyr1.update.programs import StepProgram


def rollout_program(graphdef, config: GRPOConfig, decode_path: str = "auto", device_memory: int | None = None):
    """(trainable, frozen, prompt ids, mask, vision input, key) -> G sampled completions per
    prompt. `device_memory` (bytes of one device) decides `sampling.decode_weights: auto`."""

    def rollout(trainable, frozen, prompt_ids, prompt_mask, vision_input, key) -> Rollout:
        model = nnx.merge(graphdef, merge_params(frozen, trainable))
        visual = visual_tokens(model, vision_input, config.trainable, prompt_ids.shape[0])
        embeds, mask = model.embed_inputs(prompt_ids, prompt_mask, visual)
        return generate(
            model.llm,
            embeds,
            mask,
            key,
            config.sampling,
            config.group_size,
            decode_path=decode_path,
            device_memory=device_memory,
        )

    return rollout


def grpo_programs(
    graphdef,
    config: GRPOConfig,
    optimizer: optax.GradientTransformation,
    *,
    decode_path: str = "auto",
    device_memory: int | None = None,
) -> dict[str, StepProgram]:
    """A step's programs by role; `runs` 0 for the reference without a KL term and for the
    old-policy log-probs with one update per rollout (the trainer still has them to call)."""
    lora = "llm/lora" in config.trainable
    s = config.sampling
    return {
        "encode": StepProgram(
            "vision encode",
            encode_program(graphdef, config.trainable),
            ("trainable", "frozen", "pixels"),
            resident=("opt_state", "reference"),
        ),
        "rollout": StepProgram(
            f"rollout (G={config.group_size}, {s.max_new_tokens} new tokens)",
            rollout_program(graphdef, config, decode_path, device_memory),
            ("trainable", "frozen", "prompt_ids", "prompt_mask", "vision_input", "key"),
            resident=("opt_state", "reference"),
            loop_trips=s.max_new_tokens,
        ),
        # With LoRA the reference is the base (adapters off) and a copy of a full-trained connector.
        "reference": StepProgram(
            f"reference log-probs ({'adapters off' if lora else f'{config.reference_dtype} weights'})",
            make_reference_logps(graphdef, config),
            ("reference", "adapters", "frozen", "batch"),
            runs=int(config.objective.beta != 0),
            # The trainable weights it does not read (all of them without LoRA) stay resident.
            resident=("base", "opt_state"),
        ),
        "old_logps": StepProgram(
            "old-policy log-probs",
            make_logps(graphdef, config),
            ("trainable", "frozen", "batch"),
            runs=int(config.updates_per_rollout > 1),
            resident=("opt_state", "reference"),
        ),
        "update": StepProgram(
            f"update (micro-batches {config.micro_batches}, log-prob chunk {config.logprob_chunk})",
            make_grpo_update(graphdef, config, optimizer),
            ("trainable", "frozen", "opt_state", "batch"),
            runs=config.updates_per_rollout,
            resident=("reference",),
            update=True,
        ),
    }
