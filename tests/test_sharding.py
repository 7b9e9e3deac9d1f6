"""Parameters placed per the rules table on an 8-device mesh; sharded forward == unsharded."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from jax_tinyr1.model import build_model, get_preset
from jax_tinyr1.model.sharding import LOGICAL_RULES, logical_to_spec, make_mesh, shard_model


def test_eight_host_devices_are_configured():
    assert jax.device_count() == 8


def test_parameters_follow_the_rules_table_on_fsdp8():
    mesh = make_mesh(fsdp=8)
    config = get_preset("qwen2-tiny-untied")
    reference = build_model(config, seed=7)
    ids = jnp.asarray(np.random.RandomState(0).randint(0, 512, (8, 10)))
    expected = np.asarray(reference(ids))

    model = shard_model(build_model(config, seed=7), mesh)
    state = nnx.state(model, nnx.Param)
    for path, var in nnx.to_flat_state(state):
        axes = var.get_metadata()["axes"]
        array = var[...]
        want = P(
            *[
                LOGICAL_RULES[a]
                if a and LOGICAL_RULES[a] and array.shape[i] % mesh.shape[LOGICAL_RULES[a]] == 0
                else None
                for i, a in enumerate(axes)
            ]
        )
        assert array.sharding.spec == want, path
    q = model.layers["q_kernel"][...]
    assert q.sharding.spec == P(None, "fsdp", "tensor")
    # Really split: each device holds 1/8 of the model dimension.
    assert {s.data.shape for s in q.addressable_shards} == {(3, 64 // 8, 64)}
    assert len({s.device for s in q.addressable_shards}) == 8

    graphdef, params = nnx.split(model)

    @jax.jit
    def forward(params, ids):
        return nnx.merge(graphdef, params)(ids)

    ids_sharded = jax.device_put(ids, jax.NamedSharding(mesh, P(("data", "fsdp"))))
    sharded = np.asarray(forward(params, ids_sharded))
    np.testing.assert_allclose(sharded, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_indivisible_dimension_is_replicated_not_padded():
    mesh = make_mesh(fsdp=8)
    assert logical_to_spec(("vocab", "embed"), (100, 60), mesh) == P("tensor", None)
    assert logical_to_spec(("vocab", "embed"), (100, 64), mesh) == P("tensor", "fsdp")
    with pytest.raises(KeyError, match="no rule"):
        logical_to_spec(("nonsense",), (8,), mesh)
    with pytest.raises(ValueError, match="needs 16 devices"):
        make_mesh(fsdp=16)
