"""The group resampler against a PyTorch reference written from the reference text."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.torch
import torch
from flax import nnx
from hf_reference import relative_error
from torch_reference import Resampler, positional_table, randomize_

from checkpoints_convert.mapping import flatten, import_params, unflatten
from checkpoints_convert.safetensors_io import SafetensorsReader
from checkpoints_convert.tinyllava import CONNECTOR_RULES
from jax_tinyr1.model import ConnectorConfig, GroupResampler
from jax_tinyr1.model.connector import group_slices, sinusoidal_table


def _pair(directory, groups=4, seed=0):
    config = ConnectorConfig(
        vision_hidden_size=24, hidden_size=32, num_queries=4 * groups, groups=groups, num_layers=2, heads=2, dim_head=8
    )
    torch.manual_seed(seed)
    reference = Resampler(24, 32, num_queries=4 * groups, groups=groups, depth=2, dim_head=8, heads=2).eval()
    randomize_(reference, seed, spread=0.2)
    ours = nnx.eval_shape(lambda: GroupResampler(config, rngs=nnx.Rngs(0)))
    abstract = flatten(nnx.to_pure_dict(nnx.state(ours, nnx.Param)))
    safetensors.torch.save_file(reference.state_dict(), str(directory / "model.safetensors"))
    params = import_params(SafetensorsReader(directory), CONNECTOR_RULES, abstract)
    state = nnx.state(ours, nnx.Param)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, unflatten(params)))
    nnx.update(ours, state)
    return reference, ours


@pytest.mark.parametrize("tokens", [4 * 15, 62, 17], ids=["even_groups", "uneven_groups", "one_spare"])
def test_resampler_matches_torch_reference(tmp_path, tokens):
    reference, ours = _pair(tmp_path)
    x = np.random.RandomState(tokens).randn(2, tokens, 24).astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.tensor(x)).numpy()
    got = np.asarray(ours(jnp.asarray(x)))
    assert got.shape == expected.shape == (2, 16, 32)
    assert relative_error(got, expected) <= 1e-5


def test_group_slices_put_the_spare_tokens_first():
    assert group_slices(62, 4) == [(0, 16), (16, 32), (32, 47), (47, 62)]
    assert group_slices(16 * 728, 16)[1] == (728, 1456)  # 16 frames: one frame per group
    with pytest.raises(ValueError, match="groups"):
        group_slices(3, 4)


def test_sinusoidal_table_is_the_float16_one():
    np.testing.assert_array_equal(sinusoidal_table(16, 32), positional_table(16, 32).numpy())
    assert sinusoidal_table(512, 2048).dtype == np.float16
    # At the paper's size the platform's float32 sin decides a float16 rounding on a few
    # entries; ours and torch's CPU table differ there by at most one float16 ulp.
    ours, torch_cpu = sinusoidal_table(512, 2048).astype(np.float32), positional_table(512, 2048).numpy()
    differ = ours != torch_cpu.astype(np.float32)
    assert differ.mean() < 1e-3 and np.abs(ours - torch_cpu).max() <= 2.0**-11
