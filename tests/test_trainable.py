"""`trainable` is the one switch for what trains: the vision tower trains when named and stays
bitwise frozen otherwise, in both stages' updates."""

import jax
import numpy as np
import pytest

from jax_tinyr1.data.template import IMAGE_TOKEN_INDEX
from jax_tinyr1.model import build_model, get_preset
from jax_tinyr1.sft.objective import SFTConfig
from jax_tinyr1.sft.trainer import SFTTrainer
from jax_tinyr1.train.config import ConfigError, load_config
from jax_tinyr1.update.optimizer import OptimizerConfig


def _step(trainable):
    config = SFTConfig(
        optimizer=OptimizerConfig(learning_rate=1e-3, warmup_ratio=0.0, total_steps=4), trainable=trainable
    )
    trainer = SFTTrainer(build_model(get_preset("tinyllava-video-tiny"), seed=0), config, pad_id=1)
    vision_before = jax.tree.map(np.asarray, trainer.model_params()["vision"])
    rng = np.random.RandomState(0)
    ids = np.array([[5, 6, IMAGE_TOKEN_INDEX, 7], [4, IMAGE_TOKEN_INDEX, 10, 11]])
    pixels = rng.uniform(-1, 1, (2, 4, 16, 16, 3)).astype(np.float32)
    response = rng.randint(2, 512, (2, 6))
    metrics = trainer.step(ids, np.ones_like(ids), pixels, response, np.ones_like(response))
    vision_after = jax.tree.map(np.asarray, trainer.model_params()["vision"])
    changed = {
        jax.tree_util.keystr(path): not np.array_equal(before, after)
        for (path, before), after in zip(
            jax.tree_util.tree_leaves_with_path(vision_before), jax.tree.leaves(vision_after), strict=True
        )
    }
    return trainer, metrics, changed


def test_vision_tower_trains_when_named_and_is_bitwise_frozen_otherwise():
    trainer, _, changed = _step(("connector", "llm"))
    assert "vision" in trainer.frozen and not any(changed.values())
    trainer, metrics, changed = _step(("vision", "connector", "llm"))
    assert "vision" in trainer.trainable
    # Every parameter the features come from moves. The features are a hidden state before
    # the last layer (the original's select layer -2), so the post-norm and the pooling head
    # take no part and get no gradient.
    unused = {k for k in changed if k.startswith("['head']") or k.startswith("['post_norm")}
    assert unused and not any(changed[k] for k in unused)
    assert all(changed[k] for k in changed.keys() - unused), changed
    assert metrics["nll"] > 0


def test_trainable_is_a_config_key_of_each_stage():
    config = load_config(None, ["sft.trainable=[vision, connector, llm]"], stage="sft")
    assert config.sft.trainable == ("vision", "connector", "llm")
    assert load_config(None, ["grpo.trainable=[llm]"]).grpo.trainable == ("llm",)
    with pytest.raises(ConfigError, match=r"grpo\.trainable must name some of"):
        load_config(None, ["grpo.trainable=[vision_tower]"])
    with pytest.raises(ConfigError, match="configure another stage"):
        load_config(None, ["grpo.group_size=4"], stage="sft")
