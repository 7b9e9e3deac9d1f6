"""HF <-> Flax conversion: bit-exact round trips, loud failures naming the key, CLI."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest
import safetensors.torch
import torch
import transformers
from flax import nnx
from hf_reference import convert_and_load, random_qwen2, relative_error, torch_logits

from checkpoints_convert import flax_to_hf, hf_to_flax
from checkpoints_convert.safetensors_io import CheckpointError
from jax_tinyr1.model import abstract_model, get_preset, load_pretrained


def _tensors(directory):
    return safetensors.torch.load_file(str(directory / "model.safetensors"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tied", [True, False])
def test_round_trip_is_bit_exact(tmp_path, dtype, tied, capsys):
    random_qwen2(tmp_path / "hf", dtype=dtype, tie_word_embeddings=tied)
    # The model type comes from config.json; --model-type is a check.
    assert (
        hf_to_flax.main(["--model-type", "siglip", "--hf-dir", str(tmp_path / "hf"), "--out", str(tmp_path / "x")]) == 2
    )
    assert "holds a 'qwen2' model, not --model-type 'siglip'" in capsys.readouterr().err
    hf_to_flax.main(["--hf-dir", str(tmp_path / "hf"), "--out", str(tmp_path / "fx")])
    name = "bfloat16" if dtype == torch.bfloat16 else "float32"
    flax_to_hf.main(["--checkpoint", str(tmp_path / "fx"), "--out", str(tmp_path / "hf2"), "--dtype", name])
    before, after = _tensors(tmp_path / "hf"), _tensors(tmp_path / "hf2")
    assert sorted(before) == sorted(after)
    assert ("lm_head.weight" in after) != tied
    for key in before:
        assert after[key].dtype == dtype, key
        assert torch.equal(
            before[key].view(torch.int16 if dtype == torch.bfloat16 else torch.int32),
            after[key].view(torch.int16 if dtype == torch.bfloat16 else torch.int32),
        ), key


def test_export_loads_in_transformers_with_same_logits(tmp_path):
    reference = random_qwen2(tmp_path / "hf", tie_word_embeddings=False, num_key_value_heads=1)
    model, _ = convert_and_load(tmp_path / "hf", tmp_path / "fx")
    flax_to_hf.main(["--model-type", "qwen2", "--checkpoint", str(tmp_path / "fx"), "--out", str(tmp_path / "hf2")])
    reloaded = transformers.Qwen2ForCausalLM.from_pretrained(tmp_path / "hf2").eval()
    ids = np.random.RandomState(0).randint(0, 256, (1, 9))
    np.testing.assert_array_equal(torch_logits(reloaded, ids), torch_logits(reference, ids))
    assert relative_error(np.asarray(model(ids)), torch_logits(reloaded, ids)) <= 1e-5


def test_tied_lm_head_absent_is_taken_from_embedding(tmp_path):
    reference = random_qwen2(tmp_path / "hf", tie_word_embeddings=True)
    assert "lm_head.weight" not in _tensors(tmp_path / "hf")
    model, _ = convert_and_load(tmp_path / "hf", tmp_path / "fx")
    ids = np.arange(10)[None]
    assert relative_error(np.asarray(model(ids)), torch_logits(reference, ids)) <= 1e-5


def _rewrite(directory, tensors):
    safetensors.torch.save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.pop("model.layers.1.mlp.up_proj.weight"), "missing.*model.layers.1.mlp.up_proj.weight"),
        (
            lambda t: t.__setitem__("model.layers.0.extra.weight", torch.zeros(3)),
            "unexpected.*model.layers.0.extra.weight",
        ),
        (
            lambda t: t.__setitem__("model.layers.0.self_attn.k_proj.bias", torch.zeros(31)),
            r"model.layers.0.self_attn.k_proj.bias.*\(31,\).*\(32,\)",
        ),
        (lambda t: t.__setitem__("model.norm.weight", torch.zeros(64, 1)), r"model.norm.weight.*shape"),
    ],
    ids=["missing", "extra", "wrong_shape", "wrong_rank"],
)
def test_bad_checkpoint_names_the_key(tmp_path, edit, message):
    random_qwen2(tmp_path / "hf")
    tensors = _tensors(tmp_path / "hf")
    edit(tensors)
    _rewrite(tmp_path / "hf", tensors)
    with pytest.raises(CheckpointError, match=message):
        hf_to_flax.convert("qwen2", tmp_path / "hf", tmp_path / "fx")
    assert not (tmp_path / "fx").exists()  # nothing half-written


def test_bad_config_values_are_named(tmp_path):
    random_qwen2(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "num_key_value_heads": 3}))
    with pytest.raises(ValueError, match="num_kv_heads"):
        hf_to_flax.convert("qwen2", tmp_path / "hf", tmp_path / "fx")
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "hidden_size": 0}))
    with pytest.raises(CheckpointError, match="hidden_size"):
        hf_to_flax.convert("qwen2", tmp_path / "hf", tmp_path / "fx")
    # A key left out is transformers' default (the published configs keep only what differs).
    del config["hidden_act"], config["rms_norm_eps"]
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    assert hf_to_flax.convert("qwen2", tmp_path / "hf", tmp_path / "fx").rms_norm_eps == 1e-6


def test_model_type_mismatch_and_unknown_type(tmp_path):
    random_qwen2(tmp_path / "hf")
    with pytest.raises(ValueError, match="model-type"):
        hf_to_flax.convert("llama", tmp_path / "hf", tmp_path / "fx")


def test_sharded_hf_checkpoint_is_read(tmp_path):
    reference = random_qwen2(tmp_path / "src")
    reference.save_pretrained(tmp_path / "hf", max_shard_size="20KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    model, _ = convert_and_load(tmp_path / "hf", tmp_path / "fx")
    ids = np.arange(12)[None]
    assert relative_error(np.asarray(model(ids)), torch_logits(reference, ids)) <= 1e-5


def test_command_line_entry_points(tmp_path):
    random_qwen2(tmp_path / "hf")
    env_python = sys.executable
    subprocess.run(
        [
            env_python,
            "-m",
            "checkpoints_convert.hf_to_flax",
            "--model-type",
            "qwen2",
            "--hf-dir",
            tmp_path / "hf",
            "--out",
            tmp_path / "fx",
        ],
        check=True,
    )
    subprocess.run(
        [
            env_python,
            "-m",
            "checkpoints_convert.flax_to_hf",
            "--model-type",
            "qwen2",
            "--checkpoint",
            tmp_path / "fx",
            "--out",
            tmp_path / "hf2",
            "--dtype",
            "bfloat16",
        ],
        check=True,
    )
    assert all(t.dtype == torch.bfloat16 for t in _tensors(tmp_path / "hf2").values())
    bad = subprocess.run(
        [
            env_python,
            "-m",
            "checkpoints_convert.hf_to_flax",
            "--model-type",
            "qwen2",
            "--hf-dir",
            tmp_path / "nowhere",
            "--out",
            tmp_path / "fx2",
        ],
        capture_output=True,
    )
    assert bad.returncode != 0 and b"nowhere" in bad.stderr


def test_load_pretrained_api(tmp_path):
    random_qwen2(tmp_path / "hf")
    hf_to_flax.convert("qwen2", tmp_path / "hf", tmp_path / "fx")
    model, config = load_pretrained(tmp_path / "fx")
    assert config.num_layers == 2 and config.vocab_size == 256
    assert model(np.zeros((3, 5), np.int32)).shape == (3, 5, 256)
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load_pretrained(tmp_path)


@pytest.mark.parametrize("preset, count", [("qwen2.5-3b", 3_085_938_688), ("qwen2.5-0.5b", 494_032_768)])
def test_preset_parameter_counts_without_allocation(preset, count):
    state = nnx.state(abstract_model(get_preset(preset)), nnx.Param)
    leaves = jax.tree.leaves(nnx.to_pure_dict(state))
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
    assert sum(int(np.prod(x.shape)) for x in leaves) == count


def test_conversion_streams_one_parameter_at_a_time(tmp_path, monkeypatch):
    """hf_to_flax hands each parameter to orbax before reading the next one's tensors, and
    flax_to_hf reads each parameter once, just before writing its tensors."""
    from checkpoints_convert.safetensors_io import SafetensorsReader
    from jax_tinyr1.model import checkpoint

    random_qwen2(tmp_path / "hf", tie_word_embeddings=False)
    events = []
    get, save, load = SafetensorsReader.get, checkpoint.ocp_v1.partial.save, checkpoint.load_leaf
    monkeypatch.setattr(SafetensorsReader, "get", lambda self, key: events.append(("read", key)) or get(self, key))

    def saving(path, tree):
        events.append(("save", "/".join(str(k.key) for k in jax.tree_util.tree_leaves_with_path(tree)[0][0])))
        return save(path, tree)

    monkeypatch.setattr(checkpoint.ocp_v1.partial, "save", saving)
    hf_to_flax.convert("qwen2", tmp_path / "hf", tmp_path / "fx")
    saves = [i for i, e in enumerate(events) if e[0] == "save"]
    saved = [events[i][1] for i in saves]
    assert len(saved) == len(set(saved)) == 15 and "lm_head" in saved  # one save per parameter (untied)
    layer_q = [e[1] for e in events[saves[0] :] if e[0] == "read" and e[1].endswith("q_proj.weight")]
    # the q_proj tensors of every layer are read together, right before their leaf is saved
    q_save = events.index(("save", "layers/q_kernel"))
    assert events[q_save - len(layer_q) : q_save] == [("read", k) for k in layer_q] and len(layer_q) == 2

    loads = []
    monkeypatch.setattr("checkpoints_convert.reading.load_leaf", lambda *a: loads.append(a[2]) or load(*a))
    flax_to_hf.convert("qwen2", tmp_path / "fx", tmp_path / "hf2")
    assert len(loads) == len(set(loads))  # each parameter read once
    assert sorted(_tensors(tmp_path / "hf")) == sorted(_tensors(tmp_path / "hf2"))
