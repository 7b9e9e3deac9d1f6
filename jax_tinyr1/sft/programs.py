"""The programs of an SFT step (see update/programs.py): vision encode -> update."""

from __future__ import annotations

import optax

from jax_tinyr1.sft.objective import SFTConfig, make_sft_update
from jax_tinyr1.update.params import encode_program
from jax_tinyr1.update.programs import StepProgram


def sft_programs(graphdef, config: SFTConfig, optimizer: optax.GradientTransformation) -> dict[str, StepProgram]:
    return {
        "encode": StepProgram(
            "vision encode",
            encode_program(graphdef, config.trainable),
            ("trainable", "frozen", "pixels"),
            resident=("opt_state",),
        ),
        "update": StepProgram(
            f"update (micro-batches {config.micro_batches}, log-prob chunk {config.logprob_chunk})",
            make_sft_update(graphdef, config, optimizer),
            ("trainable", "frozen", "opt_state", "batch"),
            update=True,
        ),
    }
