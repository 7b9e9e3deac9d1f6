"""Which parameters train: the model's top-level parts (`vision`, `connector`, `llm`) split
into a `trainable` dict the optimizer sees and a `frozen` dict it does not, and what a batch
carries for the video accordingly.

The vision tower is frozen in every stage of the paper. Frozen, its features are computed
once per step outside the gradient (`encode_program`) and the batch carries them; in
`trainable`, the batch carries the frames and the loss runs the tower inside the gradient
(`visual_tokens`). Either way `trainable` is the one switch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from jax_tinyr1.model.sharding import state_shardings
from jax_tinyr1.model.tinyllava import TinyLlavaVideo

TRAINABLE_DEFAULT = ("connector", "llm")
VISION = "vision"


def check_trainable(trainable: tuple[str, ...], key: str) -> None:
    """A stage config's `trainable` names parts of the video model, at least one."""
    parts = (VISION, "connector", "llm")
    unknown = sorted(set(trainable) - set(parts))
    if unknown or not trainable:
        raise ValueError(f"{key} must name some of {list(parts)}, got {list(trainable)}")


def split_params(model: nnx.Module, trainable: tuple[str, ...] = TRAINABLE_DEFAULT):
    """(graphdef, trainable dict, frozen dict) of a model's parameters."""
    graphdef, state = nnx.split(model)
    pure = nnx.to_pure_dict(state)
    unknown = set(trainable) - set(pure)
    if unknown:
        raise ValueError(f"trainable parts {sorted(unknown)} are not parts of the model {sorted(pure)}")
    return (
        graphdef,
        {k: v for k, v in pure.items() if k in trainable},
        {k: v for k, v in pure.items() if k not in trainable},
    )


def param_shardings(model_state_abstract: nnx.State, mesh: Mesh, parts) -> dict:
    return {k: v for k, v in state_shardings(model_state_abstract, mesh).items() if k in parts}


def encode_program(graphdef, trainable_parts: tuple[str, ...]):
    """(trainable, frozen, frames [B, F, Y, X, 3]) -> what the batch carries for the video:
    the frozen tower's features [B, P, E] (no gradient), or the frames themselves
    when the tower trains."""

    def encode(trainable, frozen, pixels_bfyx3):
        if VISION in trainable_parts:
            return pixels_bfyx3
        model = nnx.merge(graphdef, {**frozen, **trainable})
        return jax.lax.stop_gradient(model.vision_features(pixels_bfyx3))

    return encode


def visual_tokens(model: TinyLlavaVideo, vision_input, trainable_parts: tuple[str, ...], rows: int) -> jax.Array:
    """Visual tokens [R, M, D] from the batch's vision input (one per prompt), each
    prompt's repeated for its rows (its G completions)."""
    tokens = model.encode_video(vision_input) if VISION in trainable_parts else model.visual_tokens(vision_input)
    return jnp.repeat(tokens, rows // tokens.shape[0], axis=0)
