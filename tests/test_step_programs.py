"""One owner of a step's programs: `--plan` compiles exactly the functions the trainer jits,
in the trainer's order, with the trainer's names (grpo/programs.py, sft/programs.py)."""

import jax

from jax_tinyr1.grpo.trainer import GRPOTrainer
from jax_tinyr1.model import build_model
from jax_tinyr1.sft.trainer import SFTTrainer
from jax_tinyr1.train import plan
from jax_tinyr1.train.config import grpo_config, load_config, sft_config

TINY = ["model.preset=tinyllava-video-tiny", "data.prompt_tokens=48", "mesh.fsdp=1", "data.batch_size=1"]


def _planned(config, stage, monkeypatch):
    compiled = []

    def record(name, fn, args, **kwargs):
        compiled.append((name, fn.__qualname__, kwargs.get("runs")))
        return None

    monkeypatch.setattr(plan, "_compile_one", record)
    plan.plan_run(config, stage=stage, devices=jax.devices()[:1])
    return compiled


def test_the_plan_compiles_the_grpo_trainers_programs(monkeypatch):
    config = load_config(None, [*TINY, "sampling.max_new_tokens=4", "grpo.updates_per_rollout=2"])
    trainer = GRPOTrainer(build_model(config.model.resolve(), seed=0), grpo_config(config, 10, eos=1, pad=1))
    want = [(p.name, p.fn.__qualname__, p.runs) for p in trainer.programs.values() if p.runs]
    assert [name for name, *_ in want] == [
        "vision encode",
        "rollout (G=8, 4 new tokens)",
        "reference log-probs (float32 weights)",
        "old-policy log-probs",
        "update (micro-batches 1, log-prob chunk 128)",
    ]
    assert want[-1][2] == 2  # mu updates per step
    assert _planned(config, "grpo", monkeypatch) == want
    # Without a KL term there is no reference program to plan, and no reference kept.
    no_kl = load_config(None, [*TINY, "objective.beta=0"])
    assert "reference log-probs (float32 weights)" not in [name for name, *_ in _planned(no_kl, "grpo", monkeypatch)]


def test_the_plan_compiles_the_sft_trainers_programs(monkeypatch):
    config = load_config(None, [*TINY, "data.response_tokens=32"], stage="sft")
    trainer = SFTTrainer(build_model(config.model.resolve(), seed=0), sft_config(config, 10), pad_id=1)
    want = [(p.name, p.fn.__qualname__, p.runs) for p in trainer.programs.values() if p.runs]
    assert [name for name, *_ in want] == ["vision encode", "update (micro-batches 1, log-prob chunk 128)"]
    assert _planned(config, "sft", monkeypatch) == want
