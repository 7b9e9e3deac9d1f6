"""The decoding layout (generate/decode_layout.py): at float32 on CPU the rollout through it
samples the same tokens as the model's own scanned layers, with log-probs within 1e-5, for a
full model and a LoRA one (adapters merged), replicated or split by heads, on one device and
on a mesh of 8; `auto` picks by memory; the sampler's two top-k searches agree."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_tinyr1.generate import decode_layout
from jax_tinyr1.generate.sampler import generate, resolve_decode_path
from jax_tinyr1.generate.sampling import SamplingConfig, sorting_top_k_threshold, top_k_threshold
from jax_tinyr1.model import build_model
from jax_tinyr1.model.lora import LoraConfig
from jax_tinyr1.model.sharding import make_mesh, shard_model
from jax_tinyr1.model.spec import ModelSpec

SAMPLING = SamplingConfig(max_new_tokens=8, temperature=1.0, top_k=20, eos_id=1, pad_id=1)


def base_and_lora(lora: LoraConfig, *, random_adapters: bool = False):
    """The tiny model, and one with adapters (random A and B when asked, so that merging them
    changes the weights). Built here, not from test_lora: this module runs on a GPU machine
    without the data stack (bench/gpu_check.sh)."""
    base = build_model(ModelSpec().resolve(), seed=0)
    adapted = build_model(ModelSpec().resolve(lora), seed=0)
    if random_adapters:
        keys = iter(jax.random.split(jax.random.key(7), 64))
        for var in adapted.llm.adapters().values():
            var.set_value(0.05 * jax.random.normal(next(keys), var[...].shape, var[...].dtype))
    return base, adapted


def _prompts(model):
    rng = np.random.RandomState(0)
    ids = jnp.asarray(rng.randint(4, model.config.llm.vocab_size, (8, 5)))
    mask = jnp.asarray((np.arange(5)[None] < np.array([5, 3, 4, 5, 2, 5, 4, 3])[:, None]).astype(np.int32))
    return model.llm.embed_tokens(ids), mask


def _rollout(model, path: str, placement: str = "auto", mesh=None):
    sampling = SamplingConfig(**{**SAMPLING.__dict__, "decode_weights": placement})
    embeds, mask = _prompts(model)

    def run(llm, e, m):
        return generate(llm, e, m, jax.random.key(5), sampling, 2, decode_path=path)

    if mesh is None:
        return jax.jit(run)(model.llm, embeds, mask)
    with jax.set_mesh(mesh):
        return jax.jit(run)(shard_model(model, mesh).llm, embeds, mask)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_the_layout_samples_what_the_scan_samples(lora):
    base, adapted = base_and_lora(LoraConfig(rank=4), random_adapters=True)
    model = adapted if lora else base
    want = _rollout(model, "scan")
    assert int(want.completion_mask.sum()) > 8  # something was sampled beyond the first tokens
    for placement in ("replicated", "tensor"):
        got = _rollout(model, "layout", placement)
        np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(want.tokens), err_msg=placement)
        np.testing.assert_allclose(np.asarray(got.logps), np.asarray(want.logps), rtol=1e-5, atol=1e-5)


def test_on_a_mesh_of_8_both_placements_equal_the_scan():
    _, model = base_and_lora(LoraConfig(rank=4), random_adapters=True)
    want = _rollout(model, "scan")
    mesh = make_mesh(fsdp=8)
    for placement in ("replicated", "tensor"):
        got = _rollout(model, "layout", placement, mesh)
        np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(want.tokens), err_msg=placement)
        np.testing.assert_allclose(np.asarray(got.logps), np.asarray(want.logps), rtol=1e-5, atol=1e-5)


def test_auto_replicates_what_fits_and_keeps_the_training_layout_otherwise():
    gib = 1 << 30
    choose = decode_layout.choose_placement
    assert choose("auto", int(6.2 * gib), 8, 40 * gib) == "replicated"  # the paper's A100-40GB
    assert choose("auto", int(6.2 * gib), 4, 24 * gib) == "replicated"  # four L4s: 26 %, it fits
    assert choose("auto", int(6.2 * gib), 4, 16 * gib) == "training"  # four 16 GB cards (tensor: not yet fast)
    assert choose("auto", int(6.2 * gib), 1, 16 * gib) == "training"  # one 16 GB card: no second copy
    assert choose("auto", int(6.2 * gib), 1, None) == "replicated"  # memory unknown
    assert choose("tensor", 1, 1, None) == "tensor"
    with pytest.raises(ValueError, match="decode weights must be one of"):
        choose("sharded", 1, 1, None)
    with pytest.raises(ValueError, match=r"sampling\.decode_weights"):
        SamplingConfig(decode_weights="sharded")
    # Each setting takes effect on CPU too: the CPU path is its replicated layout, `training` the scan.
    base, _ = base_and_lora(LoraConfig(rank=4))
    paths = {
        w: resolve_decode_path(base.llm, SamplingConfig(decode_weights=w), "auto")
        for w in ("auto", "replicated", "tensor", "training")
    }
    assert paths == {
        "auto": ("cpu", None),
        "replicated": ("cpu", None),
        "tensor": ("layout", "tensor"),
        "training": ("scan", None),
    }
    assert resolve_decode_path(base.llm, SamplingConfig(decode_weights="training"), "layout") == ("scan", None)


def test_the_two_top_k_searches_find_the_same_threshold():
    x = jax.random.normal(jax.random.key(0), (6, 1000))
    x = x.at[0, :40].set(3.0)  # ties at the k-th value
    for k in (1, 20, 50, 999):
        np.testing.assert_array_equal(np.asarray(sorting_top_k_threshold(x, k)), np.asarray(top_k_threshold(x, k)))
