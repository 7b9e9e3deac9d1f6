"""SigLIP vision tower against transformers.SiglipVisionModel; frame preprocessing against
HF's PIL image processor."""

import jax
import numpy as np
import pytest
import safetensors.torch
import torch
import transformers
from flax import nnx
from hf_reference import relative_error
from torch_reference import nchw, randomize_
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from checkpoints_convert import flax_to_hf, hf_to_flax
from jax_tinyr1.data.preprocess import preprocess_frames
from jax_tinyr1.model import abstract_model, get_preset, load_pretrained

CONFIGS = {
    "divisible": dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=16, patch_size=4
    ),
    "ragged_edge": dict(
        hidden_size=48, intermediate_size=40, num_hidden_layers=2, num_attention_heads=2, image_size=30, patch_size=7
    ),  # 4 x 4 patches, 2 pixels never seen (like 384/14)
}


def _hf_siglip(directory, config, hub_prefix: bool, seed=0):
    model = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**config))
    randomize_(model, seed)
    model.eval().save_pretrained(directory)
    if hub_prefix:  # the hub's files: every key under "vision_model."
        path = str(directory / "model.safetensors")
        tensors = safetensors.torch.load_file(path)
        safetensors.torch.save_file(
            {"vision_model." + k: v for k, v in tensors.items()}, path, metadata={"format": "pt"}
        )
    return model


@pytest.mark.parametrize("hub_prefix", [False, True], ids=["transformers5_keys", "hub_keys"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_selected_hidden_state_matches_transformers(tmp_path, name, hub_prefix):
    config = CONFIGS[name]
    reference = _hf_siglip(tmp_path / "hf", config, hub_prefix)
    hf_to_flax.main(["--model-type", "siglip", "--hf-dir", str(tmp_path / "hf"), "--out", str(tmp_path / "fx")])
    model, _ours_config = load_pretrained(tmp_path / "fx")
    pixels = np.random.RandomState(0).uniform(-1, 1, (3, config["image_size"], config["image_size"], 3))
    pixels = pixels.astype(np.float32)
    with torch.no_grad():
        hidden = reference(nchw(pixels), output_hidden_states=True).hidden_states
    ours = np.asarray(model(pixels))
    expected = hidden[-2][:, 1:].numpy()
    assert (
        ours.shape
        == expected.shape
        == (3, (config["image_size"] // config["patch_size"]) ** 2 - 1, config["hidden_size"])
    )
    assert relative_error(ours, expected) <= 1e-5
    for layer in range(len(hidden)):  # any layer can be selected; only the needed ones run
        assert relative_error(np.asarray(model.hidden_state(pixels, layer)), hidden[layer].numpy()) <= 1e-5


def test_export_loads_in_transformers_with_every_weight(tmp_path):
    reference = _hf_siglip(tmp_path / "hf", CONFIGS["divisible"], hub_prefix=False)
    hf_to_flax.main(["--model-type", "siglip", "--hf-dir", str(tmp_path / "hf"), "--out", str(tmp_path / "fx")])
    flax_to_hf.main(["--model-type", "siglip", "--checkpoint", str(tmp_path / "fx"), "--out", str(tmp_path / "hf2")])
    reloaded, info = transformers.SiglipVisionModel.from_pretrained(tmp_path / "hf2", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    for key, value in reference.state_dict().items():
        assert torch.equal(value, reloaded.state_dict()[key]), key


def test_so400m_parameter_count_includes_head_and_post_layernorm():
    state = nnx.state(abstract_model(get_preset("siglip-so400m-384")), nnx.Param)
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.to_pure_dict(state))) == 428_225_600
    config = get_preset("siglip-so400m-384")
    assert config.num_patches == 729 and config.tokens_per_frame == 728 and config.layers_to_run == 26


@pytest.mark.parametrize("shape", [(37, 53), (13, 11), (480, 640), (101, 29), (7, 200), (1, 1), (24, 24)])
def test_preprocessing_equals_hf_pil_processor(shape):
    rng = np.random.RandomState(sum(shape))
    frames = rng.randint(0, 256, (2, *shape, 3)).astype(np.uint8)
    processor = SiglipImageProcessorPil(size={"height": 24, "width": 24})
    expected = processor(images=list(frames), return_tensors="np", input_data_format="channels_last")[
        "pixel_values"
    ].transpose(0, 2, 3, 1)
    ours = preprocess_frames(frames, 24)
    assert ours.dtype == np.float32 and ours.shape == (2, 24, 24, 3)
    np.testing.assert_array_equal(ours, expected)  # bit-identical, not just close


def test_preprocessing_at_384_on_video_shaped_input():
    frames = np.random.RandomState(0).randint(0, 256, (4, 240, 320, 3)).astype(np.uint8)
    processor = SiglipImageProcessorPil(size={"height": 384, "width": 384})
    expected = processor(images=list(frames), return_tensors="np", input_data_format="channels_last")[
        "pixel_values"
    ].transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(preprocess_frames(frames, 384), expected)
    with pytest.raises(TypeError, match="uint8"):
        preprocess_frames(frames.astype(np.float32), 384)
