"""The whole TinyLLaVA-Video model against the PyTorch composition (HF SigLIP + resampler
reference + HF Qwen2, spliced as the original), and the combined checkpoint both ways."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.torch
import torch
import transformers
from flax import nnx
from hf_reference import relative_error, torch_logits
from torch_reference import TorchTinyLlava, nchw

from checkpoints_convert import flax_to_hf, hf_to_flax
from jax_tinyr1.data.template import IMAGE_TOKEN_INDEX
from jax_tinyr1.model import abstract_model, get_preset, load_pretrained
from jax_tinyr1.model.tinyllava import splice_tokens

TEXT = dict(
    vocab_size=200,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    rope_theta=10000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)
VISION = dict(
    hidden_size=24, intermediate_size=40, num_hidden_layers=3, num_attention_heads=2, image_size=16, patch_size=4
)
CONNECTOR = dict(num_queries=12, groups=4, depth=2, dim_head=8, heads=2)
FRAMES = 4


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("tinyllava")
    reference = TorchTinyLlava(TEXT, VISION, CONNECTOR, seed=0)
    original = reference.save_original_layout(root / "original")
    hf_to_flax.main(["--model-type", "tinyllava", "--hf-dir", str(root / "original"), "--out", str(root / "fx")])
    model, config = load_pretrained(root / "fx")
    return root, reference, original, model, config


def _inputs():
    rng = np.random.RandomState(0)
    rows = [[5, 6, 7, IMAGE_TOKEN_INDEX, 8, 9, 10, 11, 12], [3, IMAGE_TOKEN_INDEX, 4, 5]]  # different positions
    width = max(map(len, rows))
    ids = np.array([r + [0] * (width - len(r)) for r in rows])
    mask = np.array([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    pixels = rng.uniform(-1, 1, (2, FRAMES, 16, 16, 3)).astype(np.float32)
    return rows, ids, mask, pixels


def test_logits_match_the_pytorch_composition(converted):
    _, reference, _, model, config = converted
    assert config.vision.tokens_per_frame == 15 and config.num_visual_tokens == 12
    rows, ids, mask, pixels = _inputs()
    expected, expected_mask = reference(rows, nchw(pixels))
    ours = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask), pixels=jnp.asarray(pixels)))
    assert ours.shape == expected.shape == (2, 9 - 1 + 12, 200)
    _, our_mask = model.embed_inputs(jnp.asarray(ids), jnp.asarray(mask), jnp.zeros((2, 12, 32)))
    np.testing.assert_array_equal(np.asarray(our_mask), expected_mask)
    valid = expected_mask.astype(bool)
    assert relative_error(ours[valid], expected[valid]) <= 1e-5


def test_visual_embeddings_computed_once_can_be_reused(converted):
    _, _, _, model, _ = converted
    _, ids, mask, pixels = _inputs()
    visual = model.encode_video(jnp.asarray(pixels))
    assert visual.shape == (2, 12, 32)
    direct = model(jnp.asarray(ids), jnp.asarray(mask), pixels=jnp.asarray(pixels))
    # G = 3 completions per prompt share the prompt's visual block.
    reused = model(
        jnp.repeat(jnp.asarray(ids), 3, 0), jnp.repeat(jnp.asarray(mask), 3, 0), visual_embeds=jnp.repeat(visual, 3, 0)
    )
    # Equal up to float reassociation between batch sizes (XLA tiles a batch of 6 differently).
    assert relative_error(np.asarray(reused[::3]), np.asarray(direct)) <= 1e-6
    assert relative_error(np.asarray(reused[1::3]), np.asarray(direct)) <= 1e-6


def test_splice_tokens_lays_labels_out_like_the_sequence():
    ids = jnp.asarray([[7, IMAGE_TOKEN_INDEX, 8, 9], [IMAGE_TOKEN_INDEX, 1, 2, 3]])
    labels = jnp.asarray([[-100, -100, 8, 9], [-100, 1, 2, 3]])
    out = np.asarray(splice_tokens(labels, ids, 2, fill=-100))
    np.testing.assert_array_equal(out, [[-100, -100, -100, 8, 9], [-100, -100, 1, 2, 3]])


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from jax_tinyr1.data.tokenizer import build_tokenizer

    out = tmp_path_factory.mktemp("tok")
    build_tokenizer(["<think>a red dog</think><answer>A</answer>"] * 20, out, vocab_size=280)
    return out


def test_combined_checkpoint_round_trip_is_bit_exact(converted, tokenizer_dir, tmp_path, capsys):
    root, _, original, _, _ = converted
    flax_to_hf.main(
        [
            "--model-type",
            "tinyllava",
            "--checkpoint",
            str(root / "fx"),
            "--out",
            str(tmp_path / "out"),
            "--tokenizer",
            str(tokenizer_dir),
        ]
    )
    # 2 heads of 8 (a test size): the original, with its hard-coded 8 of 64, could not load it.
    assert "the original code hard-codes 8 of 64" in capsys.readouterr().err
    exported = safetensors.torch.load_file(str(tmp_path / "out" / "model.safetensors"))
    assert sorted(exported) == sorted(original)
    for key, value in original.items():
        assert torch.equal(exported[key], value), key

    config = json.loads((tmp_path / "out" / "config.json").read_text())
    for field, value in {
        "model_type": "tinyllava",
        "connector_type": "groupresampler",
        "group": 4,
        "num_queries": 12,
        "num_resampler_layers": 2,
        "image_token_index": -200,
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "patch",
        "vision_hidden_size": 24,
        "tokenizer_model_max_length": 3072,
        "tokenizer_padding_side": "right",
        "ignore_index": -100,
    }.items():
        assert config[field] == value, field
    assert config["architectures"] == ["TinyLlavaForConditionalGeneration"]
    # Self-contained for the original code: it builds its text and vision configs, image
    # processor and tokenizer from these names, and picks classes by "qwen2" / "siglip" in them.
    out = (tmp_path / "out").absolute()
    assert config["llm_model_name_or_path"] == str(out / "qwen2-llm")
    assert config["vision_model_name_or_path"] == str(out / "siglip-vision")
    assert config["tokenizer_name_or_path"] == str(out / "tokenizer")
    assert transformers.AutoConfig.from_pretrained(out / "qwen2-llm").model_type == "qwen2"
    vision_config = transformers.AutoConfig.from_pretrained(out / "siglip-vision")
    assert (vision_config.model_type, vision_config.hidden_size, vision_config.image_size) == (
        "siglip_vision_model",
        24,
        16,
    )
    processor = json.loads((out / "siglip-vision" / "preprocessor_config.json").read_text())
    assert processor["size"] == {"height": 16, "width": 16} and processor["image_mean"] == [0.5, 0.5, 0.5]
    assert transformers.SiglipImageProcessorPil.from_pretrained(out / "siglip-vision").size.height == 16
    tok_config = json.loads((out / "tokenizer" / "tokenizer_config.json").read_text())
    assert tok_config["tokenizer_class"] == "PreTrainedTokenizerFast" and "backend" not in tok_config  # 4.x reads it
    tokenizer = transformers.AutoTokenizer.from_pretrained(out / "tokenizer", use_fast=False)
    assert tokenizer.decode(tokenizer("a red dog")["input_ids"]) == "a red dog"


def test_bfloat16_combined_round_trip(tokenizer_dir, tmp_path):
    reference = TorchTinyLlava(TEXT, VISION, CONNECTOR, seed=1)
    original = reference.save_original_layout(tmp_path / "original", dtype=torch.bfloat16)
    hf_to_flax.convert("tinyllava", tmp_path / "original", tmp_path / "fx")
    with pytest.raises(FileNotFoundError, match="tokenizer"):  # the original could not load it
        flax_to_hf.convert("tinyllava", tmp_path / "fx", tmp_path / "no_tokenizer")
    # default dtype: the file's own
    flax_to_hf.convert("tinyllava", tmp_path / "fx", tmp_path / "out", tokenizer=tokenizer_dir)
    exported = safetensors.torch.load_file(str(tmp_path / "out" / "model.safetensors"))
    for key, value in original.items():
        assert exported[key].dtype == torch.bfloat16 and torch.equal(exported[key], value), key


def test_component_exports_load_in_transformers(converted, tmp_path):
    root, _reference, _, model, _ = converted
    flax_to_hf.main(
        [
            "--model-type",
            "tinyllava",
            "--checkpoint",
            str(root / "fx"),
            "--out",
            str(tmp_path / "llm"),
            "--component",
            "llm",
        ]
    )
    flax_to_hf.main(
        [
            "--model-type",
            "tinyllava",
            "--checkpoint",
            str(root / "fx"),
            "--out",
            str(tmp_path / "vis"),
            "--component",
            "vision",
        ]
    )
    llm, info = transformers.Qwen2ForCausalLM.from_pretrained(tmp_path / "llm", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ids = np.random.RandomState(1).randint(0, 200, (2, 7))
    assert relative_error(np.asarray(model.llm(jnp.asarray(ids))), torch_logits(llm.eval(), ids)) <= 1e-5
    assert transformers.SiglipImageProcessorPil.from_pretrained(tmp_path / "vis").size.width == 16
    vision, info = transformers.SiglipVisionModel.from_pretrained(tmp_path / "vis", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    pixels = np.random.RandomState(2).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    with torch.no_grad():
        expected = vision.eval()(nchw(pixels), output_hidden_states=True).hidden_states[-2][:, 1:].numpy()
    assert relative_error(np.asarray(model.vision(jnp.asarray(pixels))), expected) <= 1e-5
    with pytest.raises(ValueError, match=r"holds a 'tinyllava' model, not --model-type 'qwen2'"):
        flax_to_hf.convert("qwen2", root / "fx", tmp_path / "x", component="llm")
    with pytest.raises(ValueError, match=r"--component 'connector': a tinyllava checkpoint has \['llm', 'vision'\]"):
        flax_to_hf.convert(None, root / "fx", tmp_path / "x", component="connector")


def test_missing_connector_tensor_is_named(converted, tmp_path):
    _, reference, _, _, _ = converted
    original = reference.save_original_layout(tmp_path / "original")
    del original["connector._connector.layers.1.0.to_kv.weight"]
    safetensors.torch.save_file(original, str(tmp_path / "original" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"connector\._connector\.layers\.1\.0\.to_kv\.weight"):
        hf_to_flax.convert("tinyllava", tmp_path / "original", tmp_path / "fx")


def test_3b_preset_parameter_counts():
    model = abstract_model(get_preset("tinyllava-video-3b"))

    def count(module):
        return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.to_pure_dict(nnx.state(module, nnx.Param))))

    assert count(model.llm) == 3_085_938_688
    assert count(model.vision) == 428_225_600
    # linear 1152*2048 + 2048, latents 32*2048, 3 x (4 norms 2048 each + to_q 2048*512 + to_kv 2048*1024
    # + to_out 512*2048 + FF norm 2*2048 + 2 x 2048*8192), final norm 2*2048
    assert count(model.connector) == 115_714_048
    assert count(model) == 3_629_878_336
