"""Our Qwen2 against transformers.Qwen2ForCausalLM on the same random weights."""

import jax.numpy as jnp
import numpy as np
import pytest
from hf_reference import convert_and_load, random_qwen2, relative_error, torch_logits

CONFIGS = {
    "tied_1kv_odd": dict(tie_word_embeddings=True, num_key_value_heads=1, seq=7),
    "untied_2kv": dict(tie_word_embeddings=False, num_key_value_heads=2, seq=13, num_hidden_layers=3),
    "tied_mha_headdim": dict(
        tie_word_embeddings=True,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=24,
        seq=11,
        rope_theta=1_000_000.0,
    ),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_logits_match_transformers(tmp_path, name):
    config = dict(CONFIGS[name])
    seq = config.pop("seq")
    reference = random_qwen2(tmp_path / "hf", **config)
    model, our_config = convert_and_load(tmp_path / "hf", tmp_path / "flax")
    assert our_config.tie_word_embeddings == config["tie_word_embeddings"]
    assert hasattr(model, "lm_head") != config["tie_word_embeddings"]

    ids = np.random.RandomState(1).randint(0, 256, (2, seq))
    ours = np.asarray(model(jnp.asarray(ids)))
    assert ours.shape == (2, seq, 256)
    assert relative_error(ours, torch_logits(reference, ids)) <= 1e-5


def test_right_padded_batch_matches_each_row(tmp_path):
    reference = random_qwen2(tmp_path / "hf", num_key_value_heads=2)
    model, _ = convert_and_load(tmp_path / "hf", tmp_path / "flax")
    lengths = [9, 4, 6]
    ids = np.random.RandomState(2).randint(1, 256, (3, 9))
    mask = (np.arange(9)[None] < np.array(lengths)[:, None]).astype(np.int64)
    ids = ids * mask  # pad id 0 after each row's end
    ours = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    theirs = torch_logits(reference, ids, mask)
    for row, n in enumerate(lengths):
        assert relative_error(ours[row, :n], theirs[row, :n]) <= 1e-5
        # And each padded row equals that prompt alone, unpadded.
        alone = torch_logits(reference, ids[row : row + 1, :n])[0]
        assert relative_error(ours[row, :n], alone) <= 1e-5


def test_inputs_embeds_and_explicit_positions(tmp_path):
    random_qwen2(tmp_path / "hf")
    model, _ = convert_and_load(tmp_path / "hf", tmp_path / "flax")
    ids = jnp.asarray(np.random.RandomState(3).randint(0, 256, (2, 8)))
    from_ids = model(ids)
    from_embeds = model(inputs_embeds=model.embed_tokens(ids), positions=jnp.arange(8)[None].repeat(2, 0))
    np.testing.assert_array_equal(np.asarray(from_ids), np.asarray(from_embeds))
    # RoPE sees relative positions only: a constant shift changes nothing, spreading them does.
    base = jnp.arange(8)[None].repeat(2, 0)
    np.testing.assert_allclose(np.asarray(model(ids, positions=base + 5)), np.asarray(from_ids), atol=1e-5)
    assert not np.allclose(np.asarray(model(ids, positions=2 * base)), np.asarray(from_ids), atol=1e-3)
    with pytest.raises(ValueError, match="exactly one"):
        model(ids, inputs_embeds=model.embed_tokens(ids))
