"""The configuration layer: every key of every section takes effect, model settings apply to a
converted checkpoint as to a preset, the stage refuses keys it would not read, and `--plan`
compiles a run's programs from its config alone."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
import yaml
from run_data import synthetic_run_root

from jax_tinyr1.model import build_model, get_preset, save_pretrained
from jax_tinyr1.model.config_io import save_model_config
from jax_tinyr1.train.config import ConfigError, TrainConfig, apply_overrides, load_config, settable_fields, to_dict

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def _run(args, **kw):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=ROOT, **kw)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny converted checkpoint, a synthetic data set (GRPO and cold-start files), a tokenizer."""
    root = synthetic_run_root(tmp_path_factory.mktemp("config"), 4, cold_start=4)
    save_pretrained(root / "ckpt", build_model(get_preset("tinyllava-video-tiny"), seed=0))
    return root


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads(path):
    stage = "sft" if path.name.startswith("coldstart") else "grpo"
    config = load_config(path, stage=stage)
    assert isinstance(config, TrainConfig)


def test_paper_config_on_a_converted_checkpoint_computes_in_bf16_with_remat(tiny):
    config = load_config(ROOT / "configs" / "paper_8xa100.yaml", [f"model.checkpoint={tiny / 'ckpt'}"])
    model, model_config = config.model.build()
    llm = model_config.llm
    assert (llm.dtype, llm.param_dtype, llm.remat) == ("bfloat16", "float32", True)
    assert model_config.vision.dtype == model_config.connector.dtype == "bfloat16"
    assert model.llm.embed[...].dtype == jnp.float32  # master weights
    ids = jnp.ones((1, 5), jnp.int32)
    h, _ = model.llm.hidden_states(ids)
    assert h.dtype == jnp.bfloat16
    from flax import nnx

    graphdef, params = nnx.split(model.llm)

    def loss(p):
        return jnp.sum(nnx.merge(graphdef, p).hidden_states(ids)[0].astype(jnp.float32))

    assert "remat" in str(jax.make_jaxpr(jax.grad(loss))(params))
    # The same checkpoint without the settings: float32, no remat (the checkpoint's own config
    # does not decide the run's numerics).
    plain = load_config(None, [f"model.checkpoint={tiny / 'ckpt'}"]).model.resolve()
    assert (plain.llm.dtype, plain.llm.remat) == ("float32", False)
    bf16_master = load_config(None, [f"model.checkpoint={tiny / 'ckpt'}", "model.param_dtype=bfloat16"]).model
    assert bf16_master.build()[0].llm.embed[...].dtype == jnp.bfloat16


def test_keys_a_run_would_not_read_are_refused():
    with pytest.raises(ConfigError, match=r"optimizer\.total_steps is set by the run"):
        load_config(None, ["optimizer.total_steps=5"])
    with pytest.raises(ConfigError, match=r"sampling\.eos_id is set by the run from the tokenizer"):
        load_config(None, ["sampling.eos_id=5"])
    with pytest.raises(ConfigError, match=r"data\.num_frames is set by the run"):
        load_config(None, ["data.num_frames=8"])
    with pytest.raises(ConfigError, match=r"unknown key.*run\.log_every"):
        load_config(None, ["run.log_every=1"])
    with pytest.raises(ConfigError, match=r"\['objective'\] configure another stage; sft does not read"):
        load_config(None, ["objective.beta=0.1"], stage="sft")
    with pytest.raises(ConfigError, match=r"data\.response_tokens.*SFT"):
        load_config(None, ["data.response_tokens=64"], stage="grpo")
    with pytest.raises(ConfigError, match=r"grpo\.reference_dtype: objective\.beta is 0"):
        load_config(None, ["objective.beta=0", "grpo.reference_dtype=bfloat16"])
    with pytest.raises(ConfigError, match=r"model\.dtype"):
        load_config(None, ["model.dtype=float8"])
    with pytest.raises(ConfigError, match=r"model\.preset and model\.checkpoint exclude each other"):
        load_config(ROOT / "configs" / "paper_8xa100.yaml", ["model.preset=tinyllava-video-3b", "model.checkpoint=x"])
    # One of the two on the command line replaces the other from the file: the recipe's shapes
    # from a preset (a plan with no checkpoint at hand), or its checkpoint from another source.
    from_preset = load_config(ROOT / "configs" / "paper_8xa100.yaml", ["model.preset=tinyllava-video-3b"])
    assert (from_preset.model.preset, from_preset.model.checkpoint) == ("tinyllava-video-3b", None)
    from_checkpoint = load_config(None, ["model.preset=tinyllava-video-3b"])
    assert from_checkpoint.model.preset == "tinyllava-video-3b"
    assert apply_overrides({"model": {"preset": "tinyllava-video-3b"}}, ["model.checkpoint=x"]) == {
        "model": {"checkpoint": "x"}
    }


class _Reads:
    """Records which fields of the config sections the code reads (validation, copying and
    printing do not count: they read every field)."""

    NOT_USES = frozenset({"__post_init__", "__repr__", "__eq__", "__hash__", "settings", "effective_settings"})

    def __init__(self):
        self.seen: set[str] = set()

    def wrap(self, config: TrainConfig) -> TrainConfig:
        sections = {}
        for f in dataclasses.fields(config):
            value = getattr(config, f.name)
            sections[f.name] = self._recording_class(type(value), f.name)(
                **{g.name: getattr(value, g.name) for g in dataclasses.fields(value)}
            )
        return TrainConfig(**sections)

    def _recording_class(self, cls, section):
        names, seen, not_uses = {f.name for f in dataclasses.fields(cls)}, self.seen, self.NOT_USES

        def __getattribute__(obj, name):
            if name in names:
                caller = sys._getframe(1).f_code
                if caller.co_name not in not_uses and not caller.co_filename.endswith("dataclasses.py"):
                    seen.add(f"{section}.{name}")
            return object.__getattribute__(obj, name)

        return type(cls.__name__, (cls,), {"__getattribute__": __getattribute__})


def _settable_keys(config: TrainConfig, sections=None) -> set[str]:
    return {
        f"{f.name}.{name}"
        for f in dataclasses.fields(config)
        if sections is None or f.name in sections
        for name in settable_fields(type(getattr(config, f.name)))
    }


def test_every_key_of_every_section_is_read_by_a_run(tiny, tmp_path):
    """A GRPO run and an SFT run (in process, 1 step each) read every key their stage accepts."""
    from jax_tinyr1.train.config import STAGE_SECTIONS
    from jax_tinyr1.train.run import train

    common = [
        f"data.root={tiny / 'data'}",
        f"run.tokenizer={tiny / 'tok'}",
        "run.max_steps=1",
        "data.batch_size=2",
    ]
    reads = _Reads()
    grpo = load_config(
        None,
        [
            *common,
            f"model.checkpoint={tiny / 'ckpt'}",
            f"run.output_dir={tmp_path / 'grpo'}",
            "sampling.max_new_tokens=4",
            "grpo.group_size=2",
        ],
    )
    train(reads.wrap(grpo), stage="grpo")
    # model.preset is the other source (read in the SFT run below); response_tokens is SFT's;
    # the lora section's keys but its rank are refused without a rank (read in the SFT run, with one).
    keys = _settable_keys(grpo, STAGE_SECTIONS["grpo"])
    lora_keys = {k for k in keys if k.startswith("lora.") and k != "lora.rank"}
    assert (
        "grpo.trainable" in keys and keys - {"model.preset", "data.response_tokens"} - lora_keys - reads.seen == set()
    )

    reads = _Reads()
    lora = ["lora.rank=2", "lora.alpha=4", "lora.dropout=0.1", "lora.targets=[q, down]", "lora.connector=lora"]
    sft = load_config(
        None, [*common, f"run.output_dir={tmp_path / 'sft'}", "data.train=cold_start.json", *lora], stage="sft"
    )
    train(reads.wrap(sft), stage="sft")
    keys = _settable_keys(sft, STAGE_SECTIONS["sft"])
    # With a LoRA rank the lora section says what trains (sft.trainable is refused).
    assert "sft.micro_batches" in keys and keys - {"model.checkpoint", "sft.trainable"} - reads.seen == set()
    stored = json.loads((tmp_path / "sft" / "run_config.json").read_text())
    assert stored["stage"] == "sft" and stored["effective"]["compute_dtype"] == "float32"
    assert stored["effective"]["lora"]["targets"] == ["q", "down"]
    # data.prompt_tokens / response_tokens 0: the run's one width, measured from its records
    assert stored["effective"]["prompt_tokens"] % 32 == 0 < stored["effective"]["prompt_tokens"]
    assert stored["effective"]["response_tokens"] % 32 == 0 < stored["effective"]["response_tokens"]


TINY_PLAN = ["data.prompt_tokens=48", "sampling.max_new_tokens=8", "mesh.fsdp=2"]


def test_plan_of_the_paper_config_from_a_config_json_only_checkpoint(tmp_path):
    """No weights, no data: the programs of a step, compiled for 2 virtual devices; over a
    budget, exit 3 naming the largest program (options may follow the overrides)."""
    save_model_config(tmp_path, get_preset("tinyllava-video-tiny"))
    out = _run(
        [
            "jax_tinyr1.train.grpo",
            "--config",
            "configs/paper_8xa100.yaml",
            f"model.checkpoint={tmp_path}",
            *TINY_PLAN,
            "--plan",
            "--device-memory-gib",
            "0.0001",
        ]
    )
    assert out.returncode == 3, out.stderr[-2000:]
    assert "update" in out.stderr and "--device-memory-gib 0.0001" in out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith(f"model: {tmp_path}: ") and " parameters (llm " in lines[0]
    assert lines[1].startswith("plan: mesh data=1 fsdp=2 tensor=1 on 2 cpu devices; compute bfloat16")
    assert "remat nothing_saveable" in lines[1]
    start = next(i for i, line in enumerate(lines) if line.startswith("program"))
    end = next(i for i, line in enumerate(lines) if line.startswith("step_gflops_per_device="))
    names = [line.split("  ")[0] for line in lines[start + 1 : end]]
    assert names == [
        "vision encode",
        "rollout (G=8, 8 new tokens)",
        "reference log-probs (float32 weights)",
        "update (micro-batches 1, log-prob chunk 128)",
    ]
    peak = float(lines[-1].split("=")[1])
    assert lines[-1].startswith("per_device_peak_gib=") and 0 < peak < 0.1
    assert float(lines[end].split("=")[1].split()[0]) > 0  # step FLOPs (XLA's count)
    assert lines[end + 1].startswith("step_matmul_tflops_per_device=")
    assert float(lines[end + 1].split("=")[1].split()[0]) > 0
    assert not (tmp_path / "params").exists()  # nothing but config.json was there, nothing was written


def test_bad_run_settings_exit_2_naming_the_key_or_path(tiny, tmp_path, capsys):
    """Through the entry point's main (in this process: 8 CPU devices); one real process too."""
    from jax_tinyr1.train.run import main

    def run(*args):
        code = main(list(args), stage="grpo", description="")
        return code, capsys.readouterr().err

    (tmp_path / "no_config").mkdir()
    out = _run(
        ["jax_tinyr1.train.grpo", "--plan", f"model.checkpoint={tmp_path / 'no_config'}", "data.prompt_tokens=48"]
    )
    assert out.returncode == 2 and "config.json" in out.stderr and "no_config" in out.stderr
    code, err = run("--plan", "model.flash=true")
    assert code == 2 and "model.flash" in err
    code, err = run("--plan", "data.prompt_tokens=0")
    assert code == 2 and "data.prompt_tokens" in err
    code, err = run("model.preset=tinyllava-video-tiny", "--device-memory-gib", "8")
    assert code == 2 and "--device-memory-gib and --target apply to --plan only" in err
    # A real run whose mesh does not divide the job's devices (3 of 8).
    code, err = run(
        f"model.checkpoint={tiny / 'ckpt'}",
        f"data.root={tiny / 'data'}",
        f"run.tokenizer={tiny / 'tok'}",
        f"run.output_dir={tmp_path / 'run'}",
        "mesh.fsdp=3",
    )
    assert code == 2 and "mesh:" in err and "does not divide the 8 devices" in err
    # A data.prompt_tokens too short for some prompt stops the run before step 1 under either
    # bad-input policy, naming the longest record and the width that holds them all.
    data = [f"model.checkpoint={tiny / 'ckpt'}", f"data.root={tiny / 'data'}", f"run.tokenizer={tiny / 'tok'}"]
    for policy in ("error", "skip"):
        code, err = run(
            *data, f"run.output_dir={tmp_path / policy}", "data.prompt_tokens=24", f"data.bad_input={policy}"
        )
        assert code == 2 and "data.prompt_tokens=24 is shorter than" in err and "train.jsonl:" in err, err
        assert not (tmp_path / policy / "checkpoints").exists()


def test_a_config_with_a_base_is_the_base_merged_under_it(tmp_path):
    """`base:` (relative to the file, chains allowed): exactly the dataclasses of the merged
    sections; cycles, a missing base and unknown keys are refused naming the file."""
    (tmp_path / "a.yaml").write_text("objective:\n  beta: 0.0\n  epsilon_high: 0.28\nrun:\n  epochs: 2\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yaml").write_text("base: ../a.yaml\nobjective:\n  beta: 0.04\nsampling:\n  top_k: 5\n")
    (tmp_path / "c.yaml").write_text("base: sub/b.yaml\nrun:\n  seed: 3\n")
    merged = load_config(tmp_path / "c.yaml")
    assert merged.objective == dataclasses.replace(load_config(None).objective, beta=0.04, epsilon_high=0.28)
    assert (merged.sampling.top_k, merged.run.epochs, merged.run.seed) == (5, 2, 3)
    assert merged == load_config(
        None, ["objective.beta=0.04", "objective.epsilon_high=0.28", "run.epochs=2", "sampling.top_k=5", "run.seed=3"]
    )
    (tmp_path / "loop1.yaml").write_text("base: loop2.yaml\n")
    (tmp_path / "loop2.yaml").write_text("base: loop1.yaml\n")
    with pytest.raises(
        ConfigError, match=r"loop1.yaml: the base chain is a cycle \(loop1.yaml -> loop2.yaml -> loop1.yaml\)"
    ):
        load_config(tmp_path / "loop1.yaml")
    (tmp_path / "typo.yaml").write_text("base: a.yaml\nobjective:\n  betta: 0.1\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: unknown key\(s\) \['objective.betta'\]"):
        load_config(tmp_path / "typo.yaml")
    (tmp_path / "orphan.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"orphan.yaml: base .nowhere.yaml.: no such file"):
        load_config(tmp_path / "orphan.yaml")


ABLATIONS = {  # file: what differs from the paper run (sections 4.3.1-4.3.3)
    "ablation_no_coldstart.yaml": {"model.checkpoint": "checkpoints/tinyllava-video"},
    "ablation_reward_no_length.yaml": {"reward.rule": "format_plus_accuracy"},
    "ablation_reward_no_penalty.yaml": {"reward.rule": "format_with_length_plus_accuracy"},
    "ablation_no_kl.yaml": {"objective.beta": 0.0},
    "ablation_dr_grpo.yaml": {
        "objective.beta": 0.0,
        "objective.aggregation": "dr_grpo",
        "objective.advantage_scale": "none",
    },
}


def test_every_ablation_is_the_paper_run_but_for_what_it_ablates(tmp_path, capsys):
    """Each ablation file differs from the paper run in what it ablates only. The objective
    ablations change the step's programs and are planned here (tiny shapes, 2 CPU devices);
    the reward and cold-start ones change the host-side reward or where the weights come
    from, not a program: their plan is the paper's (test_plan_of_the_paper_config_...)."""
    from jax_tinyr1.train.run import main

    paper = to_dict(load_config("configs/paper_8xa100.yaml"))
    save_model_config(tmp_path, get_preset("tinyllava-video-tiny"))
    for name, differs in ABLATIONS.items():
        ablation = to_dict(load_config(f"configs/{name}"))
        changed = {
            f"{section}.{key}": value
            for section, values in ablation.items()
            for key, value in values.items()
            if paper[section][key] != value and (section, key) != ("run", "output_dir")
        }
        assert changed == differs, name
        assert ablation["run"]["output_dir"] == f"runs/{name.removesuffix('.yaml')}"
        if not any(key.startswith("objective.") for key in differs):
            continue
        args = ["--config", f"configs/{name}", "--plan", f"model.checkpoint={tmp_path}", *TINY_PLAN]
        code = main(args, stage="grpo", description="")
        out = capsys.readouterr().out
        assert code == 0 and out.strip().splitlines()[-1].startswith("per_device_peak_gib="), (name, out)
        assert "reference log-probs" not in out, name  # beta = 0: no reference program


def test_the_ablation_bench_applies_what_each_shipped_config_ablates():
    """bench/demo_ablations.py reads each variant from its config file: the same differences,
    applied to the demo's config unchanged (the cold-start one as where the run starts)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import demo_ablations

    for name, config_file in demo_ablations.VARIANTS.items():
        overrides, from_sft = demo_ablations.variant_changes(config_file)
        differs = ABLATIONS.get(config_file, {})
        applied = {o.split("=", 1)[0]: yaml.safe_load(o.split("=", 1)[1]) for o in overrides}
        assert applied == {k: v for k, v in differs.items() if k != "model.checkpoint"}, name
        assert from_sft == ("model.checkpoint" in differs), name
        load_config("configs/demo_cpu.yaml", overrides)  # every override is a key the demo run takes
