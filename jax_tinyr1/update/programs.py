"""The programs of a training step, described once: the trainer jits them, `--plan` compiles
them ahead of time for a mesh and a card (train/plan.py), from the same list. Each stage owns
its list (`grpo.programs`, `sft.programs`); a change to a step's programs changes what is
planned with it (MaxText's `train_compile.py` reuses `train.py`'s functions the same way).

A program names its arguments from a step's state, so that the plan can hand it abstract
values of the same names:

    trainable, frozen, opt_state   the parameters and the optimizer state (their shardings)
    reference                      the GRPO reference's own copy (None without a KL term)
    adapters                       the trainable tree's adapter dicts (LoRA; empty without)
    pixels, vision_input           a batch's frames; their encoding (what `encode` returns)
    prompt_ids, prompt_mask, key   the rollout's prompts (one row per prompt) and its key
    batch                          the update's batch (the stage's `Batch`)

and names what else stays on the device while it runs (`resident`, the same names, and `base`:
the trainable weights but the adapters), which the plan adds to its peak.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable


@dataclasses.dataclass(frozen=True)
class StepProgram:
    name: str  # as a plan prints it
    fn: Callable  # the pure function (the trainer jits it)
    args: tuple[str, ...]  # its arguments, by the names above
    runs: int = 1  # executions per step
    resident: tuple[str, ...] = ()  # state on the device meanwhile, not among its arguments
    loop_trips: int = 1  # the trips of its open-ended loop at their longest (the rollout's tokens)
    update: bool = False  # the optimizer step: parameters and optimizer state in and out, donated
