"""LoRA (model/lora.py): the base model's output at step 0, only adapters (and a fully trained
connector) train, the reference is the base with the adapters off, resumption is exact, and
the adapters leave merged or as a PEFT adapter and come back."""

import ast
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from run_data import synthetic_run_root

from jax_tinyr1.data.template import IMAGE_TOKEN_INDEX
from jax_tinyr1.data.tokenizer import build_tokenizer, checkpoint_tokenizer
from jax_tinyr1.generate.sampler import generate
from jax_tinyr1.generate.sampling import SamplingConfig
from jax_tinyr1.grpo.config import GRPOConfig
from jax_tinyr1.grpo.loss import ObjectiveConfig
from jax_tinyr1.grpo.trainer import GRPOTrainer
from jax_tinyr1.grpo.update import Batch
from jax_tinyr1.model import build_model, load_pretrained, save_pretrained
from jax_tinyr1.model.lora import LoraConfig, merge_trees, split_adapters
from jax_tinyr1.model.spec import ModelSpec
from jax_tinyr1.sft.objective import SFTConfig
from jax_tinyr1.sft.trainer import SFTTrainer
from jax_tinyr1.train.config import ConfigError, load_config, sft_config
from jax_tinyr1.update.optimizer import OptimizerConfig

ROOT = Path(__file__).resolve().parents[1]


def _params(model) -> dict:
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def _flat(tree) -> dict:
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def _with_params(model, params):
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(model, state)
    return model


def base_and_lora(lora: LoraConfig, *, random_adapters: bool = False):
    """The tiny model, and the same weights with adapters (B = 0 as LoRA starts them, or
    random A and B for the export checks)."""
    base = build_model(ModelSpec().resolve(), seed=0)
    lora_model = build_model(ModelSpec().resolve(lora), seed=0)
    _, adapters = split_adapters(_params(lora_model))
    if random_adapters:
        keys = iter(jax.random.split(jax.random.key(7), 64))
        adapters = jax.tree.map(lambda x: 0.05 * jax.random.normal(next(keys), x.shape, x.dtype), adapters)
    return base, _with_params(lora_model, merge_trees(_params(base), adapters))


def _video_inputs(config):
    ids = jnp.array([[5, 6, IMAGE_TOKEN_INDEX, 7, 8, 9], [4, IMAGE_TOKEN_INDEX, 10, 11, 0, 0]])
    mask = jnp.array([[1] * 6, [1] * 4 + [0] * 2])
    size = config.vision.image_size
    pixels = jax.random.uniform(jax.random.key(1), (2, config.num_frames, size, size, 3), minval=-1, maxval=1)
    return ids, mask, pixels


def test_config_of_the_adapters_and_what_trains():
    lora = LoraConfig(rank=4, alpha=8, targets=("q", "v", "down"), connector="lora")
    assert lora.trainable_parts() == ("llm/lora", "connector/lora")
    assert LoraConfig(rank=4).trainable_parts() == ("llm/lora", "connector")
    assert LoraConfig(rank=4, connector="frozen").trainable_parts() == ("llm/lora",)
    config = ModelSpec(dtype="bfloat16", param_dtype="float32").resolve(lora)
    # The frozen base in the compute dtype, the adapters in the master dtype.
    assert (config.llm.param_dtype, config.vision.param_dtype, config.connector.param_dtype) == ("bfloat16",) * 3
    assert (config.llm.lora_param_dtype, config.connector.lora_param_dtype) == ("float32", "float32")
    assert config.llm.lora_targets == ("q", "v", "down")
    model = nnx.eval_shape(lambda: build_model(config))
    adapters = _params(model)["llm"]["lora"]
    assert sorted(adapters) == sorted(f"{t}_lora_{ab}" for t in ("q", "v", "down") for ab in "ab")
    assert adapters["down_lora_a"].shape == (2, 128, 4) and adapters["down_lora_b"].shape == (2, 4, 64)
    full = ModelSpec(dtype="bfloat16", param_dtype="float32").resolve(LoraConfig(rank=4))
    assert full.connector.param_dtype == "float32" and full.connector.lora_rank == 0


@pytest.mark.parametrize("connector", ["full", "lora"])
def test_at_step_0_the_lora_model_is_the_base_model_bitwise(connector):
    base, lora_model = base_and_lora(LoraConfig(rank=4, connector=connector))
    ids, mask, pixels = _video_inputs(base.config)
    np.testing.assert_array_equal(
        np.asarray(lora_model(ids, mask, pixels=pixels)), np.asarray(base(ids, mask, pixels=pixels))
    )
    # The sampler on both decode paths: the same tokens and log-probs.
    embeds, emask = base.embed_inputs(ids, mask, base.encode_video(pixels))
    sampling = SamplingConfig(max_new_tokens=6, temperature=1.0, top_k=0, eos_id=1, pad_id=1)
    for path in ("scan", "cpu"):
        runs = [
            jax.jit(lambda llm, e, m, path=path: generate(llm, e, m, jax.random.key(3), sampling, 2, decode_path=path))(
                model.llm, embeds, emask
            )
            for model in (base, lora_model)
        ]
        np.testing.assert_array_equal(np.asarray(runs[0].tokens), np.asarray(runs[1].tokens))
        np.testing.assert_array_equal(np.asarray(runs[0].logps), np.asarray(runs[1].logps))


def _grpo_config(lora: LoraConfig) -> GRPOConfig:
    return GRPOConfig(
        objective=ObjectiveConfig(beta=0.04),
        sampling=SamplingConfig(max_new_tokens=5, eos_id=1, pad_id=1),
        optimizer=OptimizerConfig(learning_rate=1e-2, warmup_ratio=0.0, total_steps=10),
        group_size=4,
        trainable=lora.trainable_parts(),
    )


def _batch(trainer) -> Batch:
    rng = np.random.RandomState(0)
    ids, mask, pixels = _video_inputs(trainer.model().config)
    tokens = rng.randint(2, 512, (8, 5))
    return Batch(
        jnp.repeat(ids, 4, 0),
        jnp.repeat(mask, 4, 0),
        trainer.encode(pixels),
        jnp.asarray(tokens),
        jnp.ones((8, 5), jnp.int32),
        jnp.asarray(rng.randn(8).astype(np.float32)),
        None,
        None,
    )


@pytest.mark.parametrize("connector", ["full", "frozen"])
def test_the_reference_is_the_base_model_after_steps_and_keeps_only_the_connector(connector):
    lora = LoraConfig(rank=4, connector=connector)
    base, lora_model = base_and_lora(lora)
    trainer = GRPOTrainer(lora_model, _grpo_config(lora))
    # The reference keeps a copy of the connector when it trains in full, of nothing else.
    assert set(_flat(trainer.reference)) == ({k for k in _flat(trainer.trainable) if "connector" in k} or set())
    assert not any("lora" in k for k in _flat(trainer.reference))
    batch = _batch(trainer)
    reference_0 = trainer.reference_logps(batch)
    base_trainer = GRPOTrainer(base, dataclasses.replace(_grpo_config(lora), trainable=("connector", "llm")))
    np.testing.assert_array_equal(
        np.asarray(reference_0), np.asarray(base_trainer.logps(base_trainer.trainable, batch))
    )
    batch = batch._replace(ref_logps=reference_0)
    before = _flat(trainer.trainable)
    for _ in range(3):
        metrics = trainer.update(batch)
    assert float(metrics["nonfinite"]) == 0
    after = _flat(trainer.trainable)
    assert all(not np.array_equal(before[k], after[k]) for k in after if "lora_b" in k)
    policy = trainer.logps(trainer.trainable, batch)
    assert not np.allclose(np.asarray(policy), np.asarray(reference_0))  # the policy moved ...
    np.testing.assert_array_equal(
        np.asarray(trainer.reference_logps(batch)), np.asarray(reference_0)
    )  # ... not the reference


def test_dropout_changes_the_update_not_the_scoring():
    lora = LoraConfig(rank=4, dropout=0.5)
    _, lora_model = base_and_lora(lora, random_adapters=True)
    trainer = GRPOTrainer(lora_model, _grpo_config(lora))
    batch = _batch(trainer)
    keys = trainer.dropout_keys(jax.random.key(0), 8)
    assert keys.shape == (8, 2)
    model = trainer.model()
    inputs = jnp.ones((8, 3, 64))
    plain, _ = model.llm.hidden_states(inputs_embeds=inputs)
    dropped, _ = model.llm.hidden_states(inputs_embeds=inputs, dropout_keys=keys)
    again, _ = model.llm.hidden_states(inputs_embeds=inputs, dropout_keys=keys)
    assert not np.allclose(np.asarray(plain), np.asarray(dropped))
    np.testing.assert_array_equal(np.asarray(dropped), np.asarray(again))  # a function of the keys
    # Row r's mask does not depend on the other rows (micro-batches draw the same masks).
    half, _ = model.llm.hidden_states(inputs_embeds=inputs[:4], dropout_keys=keys[:4])
    np.testing.assert_array_equal(np.asarray(half), np.asarray(dropped[:4]))
    # The log-probs the trainer scores with (reference, old policy) see no dropout.
    scored = trainer.logps(trainer.trainable, batch._replace(dropout_keys=keys))
    np.testing.assert_array_equal(np.asarray(scored), np.asarray(trainer.logps(trainer.trainable, batch)))


def test_config_errors_name_the_key():
    def error(*overrides, stage="grpo"):
        with pytest.raises(ConfigError) as e:
            load_config(None, list(overrides), stage=stage)
        return str(e.value)

    assert "lora.alpha: lora.rank is 0" in error("lora.alpha=8")
    assert "lora.dropout must be in [0, 1)" in error("lora.rank=4", "lora.dropout=1.0")
    assert "lora.targets" in error("lora.rank=4", "lora.targets=[q, attn]")
    assert "lora.connector" in error("lora.rank=4", "lora.connector=half")
    assert "grpo.trainable: with lora.rank > 0" in error("lora.rank=4", "grpo.trainable=[llm]")
    assert "grpo.reference_dtype: with lora.connector=frozen" in error(
        "lora.rank=4", "lora.connector=frozen", "grpo.reference_dtype=bfloat16"
    )
    assert "sft.trainable: with lora.rank > 0" in error("lora.rank=4", "sft.trainable=[llm]", stage="sft")
    assert "set by the lora section" in error("grpo.trainable=[llm/lora]")
    sft = sft_config(load_config(None, ["lora.rank=4", "lora.connector=frozen"], stage="sft"), 10)
    assert sft.trainable == ("llm/lora",)


def test_an_sft_step_with_lora_trains_only_the_adapters():
    lora = LoraConfig(rank=4, dropout=0.2, connector="lora")
    _, lora_model = base_and_lora(lora)
    config = SFTConfig(
        optimizer=OptimizerConfig(learning_rate=1e-2, warmup_ratio=0.0, total_steps=10),
        trainable=lora.trainable_parts(),
    )
    trainer = SFTTrainer(lora_model, config, pad_id=1)
    frozen, before = _flat(trainer.frozen), _flat(trainer.trainable)
    assert all("lora" in k for k in before) and not any("lora" in k for k in frozen)
    ids, mask, pixels = _video_inputs(lora_model.config)
    response = np.array([[7, 8, 9, 1], [10, 11, 1, 1]])
    metrics = trainer.step(
        np.asarray(ids), np.asarray(mask), np.asarray(pixels), response, np.ones_like(response), jax.random.key(0)
    )
    assert metrics["nonfinite"] == 0 and np.isfinite(metrics["nll"])
    after = _flat(trainer.trainable)
    assert all(not np.array_equal(before[k], after[k]) for k in after if "lora_b" in k)
    for key, value in _flat(trainer.frozen).items():
        np.testing.assert_array_equal(value, frozen[key], err_msg=key)


def _run(args, **kw):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=ROOT, **kw)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """The tiny base model as a checkpoint, the run data, and a 3-step LoRA GRPO run of it with
    dropout through the entry point."""
    root = synthetic_run_root(tmp_path_factory.mktemp("lora"), 8)
    base = build_model(ModelSpec().resolve(), seed=0)
    save_pretrained(root / "base", base)
    return root


def _lora_args(root, out, *extra):
    return [
        "jax_tinyr1.train.grpo",
        f"data.root={root / 'data'}",
        f"run.tokenizer={root / 'tok'}",
        f"run.output_dir={out}",
        f"model.checkpoint={root / 'base'}",
        "grpo.group_size=2",
        "sampling.max_new_tokens=6",
        "sampling.top_k=0",
        "data.batch_size=1",
        "run.save_every=1",
        "optimizer.learning_rate=1e-2",
        "optimizer.schedule=constant",
        "optimizer.warmup_ratio=0",
        "objective.beta=0.04",
        "lora.rank=4",
        "lora.dropout=0.1",
        *extra,
    ]


@pytest.mark.parametrize(
    ("connector", "trained"),
    [("full", {"llm/lora", "connector"}), ("lora", {"llm/lora", "connector/lora"})],
)
def test_a_lora_run_trains_only_the_adapters_and_resumes_exactly(lora_run, tmp_path, connector, trained):
    root = lora_run
    args = (f"lora.connector={connector}",)
    straight = _run([*_lora_args(root, tmp_path / "straight", "run.max_steps=3", *args)])
    assert straight.returncode == 0, straight.stderr[-3000:]
    settings = json.loads((tmp_path / "straight" / "run_config.json").read_text())["effective"]
    assert settings["lora"]["rank"] == 4 and settings["lora"]["connector"] == connector
    start = _flat(_params(load_pretrained(root / "base")[0]))
    final_model, final_config = load_pretrained(tmp_path / "straight" / "final")
    assert final_config.llm.lora_rank == 4 and final_config.llm.param_dtype == "float32"
    final = _flat(_params(final_model))
    changed = {k for k in start if not np.array_equal(start[k], final[k])}
    if connector == "full":  # the connector trains; the vision tower and the language model stay
        assert changed and all(k.startswith("['connector']") for k in changed), sorted(changed)
    else:  # only adapters moved
        assert not changed, sorted(changed)
    adapters_b = [k for k in final if "lora_b" in k]
    assert adapters_b and all(not np.array_equal(final[k], 0) for k in adapters_b)
    # The checkpoints hold the trainable parts only.
    step = tmp_path / "straight" / "checkpoints" / "3" / "trainable"
    stored = json.loads((step / "_METADATA").read_text())["tree_metadata"]
    paths = ["/".join(ast.literal_eval(name)) for name in stored]
    assert {p for p in trained if any(path.startswith(p + "/") for path in paths)} == trained
    assert all(any(path.startswith(p + "/") for p in trained) for path in paths)
    if connector == "full":
        return  # the resumption is checked once, on the run with every kind of adapter
    # Resumed: 2 steps, then the same command with 3 steps, equals the straight run bitwise.
    first = _run([*_lora_args(root, tmp_path / "resumed", "run.max_steps=2", *args)])
    assert first.returncode == 0, first.stderr[-3000:]
    second = _run([*_lora_args(root, tmp_path / "resumed", "run.max_steps=3", *args)])
    assert second.returncode == 0, second.stderr[-3000:]
    resumed = _flat(_params(load_pretrained(tmp_path / "resumed" / "final")[0]))
    for key in final:
        np.testing.assert_array_equal(final[key], resumed[key], err_msg=key)


@pytest.fixture(scope="module")
def lora_checkpoints(tmp_path_factory):
    """A LoRA checkpoint with random adapters on the language model and the connector, and
    its base (the same weights without adapters), as users have them on disk."""
    tmp = tmp_path_factory.mktemp("lora_export")
    base, lora_model = base_and_lora(LoraConfig(rank=4, alpha=8, connector="lora"), random_adapters=True)
    save_pretrained(tmp / "base", base)
    save_pretrained(tmp / "lora", lora_model)
    # The combined layout carries the tokenizer the original code loads.
    build_tokenizer(["<think>a b c</think><answer>A</answer>"] * 5, checkpoint_tokenizer(tmp / "lora"), vocab_size=300)
    return tmp, base, lora_model


def _export(*args):
    out = _run(["checkpoints_convert.flax_to_hf", *map(str, args)])
    assert out.returncode == 0, out.stderr[-3000:]


TEXT_IDS = np.array([[3, 7, 11, 19, 23, 5, 2, 9], [4, 8, 15, 16, 23, 42, 1, 0]])


def _relative_error(ours, theirs) -> float:
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


def test_merged_export_loads_in_transformers_with_our_logits(lora_checkpoints):
    import torch
    from transformers import Qwen2ForCausalLM

    tmp, _, lora_model = lora_checkpoints
    _export("--checkpoint", tmp / "lora", "--out", tmp / "llm_merged", "--component", "llm", "--merge-lora")
    hf = Qwen2ForCausalLM.from_pretrained(tmp / "llm_merged", dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = hf(torch.tensor(TEXT_IDS)).logits.numpy()
    ours = np.asarray(lora_model.llm(jnp.asarray(TEXT_IDS)))
    assert _relative_error(ours, theirs) <= 1e-5
    # The combined (original) layout, merged, read back by our importer: the LoRA model's logits.
    from checkpoints_convert import hf_to_flax

    _export("--checkpoint", tmp / "lora", "--out", tmp / "merged", "--merge-lora")
    hf_to_flax.convert(None, tmp / "merged", tmp / "merged_back")
    back, config = load_pretrained(tmp / "merged_back")
    assert config.llm.lora_rank == 0 and config.connector.lora_rank == 0
    ids, mask, pixels = _video_inputs(lora_model.config)
    expected = np.asarray(lora_model(ids, mask, pixels=pixels))
    assert _relative_error(np.asarray(back(ids, mask, pixels=pixels)), expected) <= 1e-5


def test_peft_loads_the_adapter_export_and_it_imports_back(lora_checkpoints):
    import torch
    from peft import PeftModel
    from transformers import Qwen2ForCausalLM

    tmp, _, lora_model = lora_checkpoints
    _export("--checkpoint", tmp / "lora", "--adapter", tmp / "adapter")
    _export("--checkpoint", tmp / "base", "--out", tmp / "llm_base", "--component", "llm")
    config = json.loads((tmp / "adapter" / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", 4, 8.0)
    assert config["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    hf = Qwen2ForCausalLM.from_pretrained(tmp / "llm_base", dtype=torch.float32)
    adapted = PeftModel.from_pretrained(hf, str(tmp / "adapter")).eval()
    with torch.no_grad():
        theirs = adapted(torch.tensor(TEXT_IDS)).logits.numpy()
    assert _relative_error(np.asarray(lora_model.llm(jnp.asarray(TEXT_IDS))), theirs) <= 1e-5
    # Back: the adapters bitwise; the connector (merged in connector.safetensors) to float32 rounding.
    out = _run(
        [
            "checkpoints_convert.hf_to_flax",
            "--adapter",
            str(tmp / "adapter"),
            "--base",
            str(tmp / "base"),
            "--out",
            str(tmp / "back"),
        ]
    )
    assert out.returncode == 0, out.stderr[-3000:]
    back, back_config = load_pretrained(tmp / "back")
    assert back_config.llm.lora_rank == 4 and back_config.llm.lora_alpha == 8.0
    ours, theirs = _params(lora_model)["llm"]["lora"], _params(back)["llm"]["lora"]
    for name in ours:
        np.testing.assert_array_equal(np.asarray(ours[name]), np.asarray(theirs[name]), err_msg=name)
    ids, mask, pixels = _video_inputs(lora_model.config)
    expected = np.asarray(lora_model(ids, mask, pixels=pixels))
    assert _relative_error(np.asarray(back(ids, mask, pixels=pixels)), expected) <= 1e-5


def test_export_and_import_errors_name_the_problem(lora_checkpoints, tmp_path):
    tmp, _, _ = lora_checkpoints
    plain = _run(["checkpoints_convert.flax_to_hf", "--checkpoint", str(tmp / "lora"), "--out", str(tmp_path / "x")])
    assert plain.returncode == 2 and "holds LoRA adapters; --merge-lora" in plain.stderr
    merge = _run(
        [
            "checkpoints_convert.flax_to_hf",
            "--checkpoint",
            str(tmp / "base"),
            "--out",
            str(tmp_path / "y"),
            "--merge-lora",
        ]
    )
    assert merge.returncode == 2 and "holds no LoRA adapters" in merge.stderr
    from checkpoints_convert.adapters import import_peft_adapter
    from jax_tinyr1.cli import CheckpointError

    _export("--checkpoint", tmp / "lora", "--adapter", tmp_path / "adapter")
    config_file = tmp_path / "adapter" / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(CheckpointError, match="use_dora=True is not supported"):
        import_peft_adapter(tmp_path / "adapter", tmp / "base", tmp_path / "back")
    config_file.write_text(json.dumps({**config, "target_modules": ["q_proj", "lm_head"]}))
    with pytest.raises(CheckpointError, match=r"target_modules \['lm_head'\]"):
        import_peft_adapter(tmp_path / "adapter", tmp / "base", tmp_path / "back")
    # One tensor fewer than the config promises: named, nothing written.
    config_file.write_text(json.dumps(config))
    from checkpoints_convert.safetensors_io import SafetensorsReader, TensorToWrite, write_safetensors

    reader = SafetensorsReader(tmp_path / "adapter", "adapter_model.safetensors")
    kept = {k: reader.get(k) for k in reader if "layers.1.mlp.down_proj.lora_B" not in k}  # read before rewriting
    write_safetensors(
        tmp_path / "adapter" / "adapter_model.safetensors",
        [TensorToWrite(k, v.shape, v.dtype, lambda v=v: v) for k, v in kept.items()],
    )
    with pytest.raises(CheckpointError, match=r"missing tensor\(s\): \['base_model.model.model.layers.1.mlp.down_proj"):
        import_peft_adapter(tmp_path / "adapter", tmp / "base", tmp_path / "back")
    assert not (tmp_path / "back").exists()
    with pytest.raises(CheckpointError, match="holds adapters already"):
        import_peft_adapter(tmp_path / "adapter", tmp / "lora", tmp_path / "back")


def test_a_run_from_a_checkpoint_with_adapters_continues_them_or_says_why_not(lora_checkpoints):
    tmp, _, lora_model = lora_checkpoints
    spec = ModelSpec(checkpoint=str(tmp / "lora"))
    model, _ = spec.build(lora=LoraConfig(rank=4, alpha=8, connector="lora"))
    stored, loaded = _flat(_params(lora_model)), _flat(_params(model))
    for key in stored:
        np.testing.assert_array_equal(stored[key], loaded[key], err_msg=key)
    for other in (LoraConfig(), LoraConfig(rank=8, alpha=8, connector="lora"), LoraConfig(rank=4, alpha=8)):
        with pytest.raises(ConfigError, match="holds LoRA adapters"):
            spec.resolve(other)
