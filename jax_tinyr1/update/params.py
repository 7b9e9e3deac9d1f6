"""Which parameters train: parts of the model named by path (`vision`, `connector`, `llm`,
or an adapter dict such as `llm/lora`) split into a `trainable` tree the optimizer sees and
a `frozen` tree it does not (both nested like the model), and what a batch carries for the
video accordingly.

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

from jax_tinyr1.model.lora import ADAPTERS, merge_trees
from jax_tinyr1.model.sharding import state_shardings
from jax_tinyr1.model.tinyllava import TinyLlavaVideo

TRAINABLE_DEFAULT = ("connector", "llm")
VISION = "vision"
MODEL_PARTS = (VISION, "connector", "llm")
ADAPTER_PARTS = (f"llm/{ADAPTERS}", f"connector/{ADAPTERS}")  # what the `lora` section trains


def check_trainable(trainable: tuple[str, ...], key: str) -> None:
    """A stage config's `trainable` names parts of the video model, at least one."""
    parts = (*MODEL_PARTS, *ADAPTER_PARTS)
    unknown = sorted(set(trainable) - set(parts))
    if unknown or not trainable:
        raise ValueError(f"{key} must name some of {list(MODEL_PARTS)}, got {list(trainable)}")


def take(tree: dict, parts) -> dict:
    """The subtrees of `tree` at the "/"-paths `parts`, nested as in `tree`."""
    out: dict = {}
    for part in parts:
        *parents, leaf = part.split("/")
        node, source = out, tree
        for key in parents:
            source = source[key]
            node = node.setdefault(key, {})
        node[leaf] = source[leaf]
    return out


def drop(tree: dict, parts) -> dict:
    """`tree` without the subtrees at `parts`."""
    heads = {}
    for part in parts:
        head, _, rest = part.partition("/")
        heads.setdefault(head, []).append(rest)
    out = {}
    for key, value in tree.items():
        rests = heads.get(key)
        if rests is None:
            out[key] = value
        elif "" not in rests:
            out[key] = drop(value, rests)
    return out


def merge_params(frozen: dict, trainable: dict) -> dict:
    """The whole model's parameter tree from its two halves."""
    return merge_trees(frozen, trainable)


def split_params(model: nnx.Module, trainable: tuple[str, ...] = TRAINABLE_DEFAULT):
    """(graphdef, trainable tree, frozen tree) of a model's parameters."""
    graphdef, state = nnx.split(model)
    pure = nnx.to_pure_dict(state)
    try:
        chosen = take(pure, trainable)
    except KeyError:
        raise ValueError(f"trainable parts {sorted(trainable)} are not all parts of the model") from None
    return graphdef, chosen, drop(pure, trainable)


def param_shardings(model_state_abstract: nnx.State, mesh: Mesh, parts, *, frozen: bool = False) -> dict:
    """The shardings of the parameters at `parts` (of all the others, with `frozen`)."""
    shardings = state_shardings(model_state_abstract, mesh)
    return drop(shardings, parts) if frozen else take(shardings, parts)


def encode_program(graphdef, trainable_parts: tuple[str, ...]):
    """(trainable, frozen, frames [B, F, Y, X, 3]) -> what the batch carries for the video:
    the frozen tower's features [B, P, E] (no gradient), or the frames themselves
    when the tower trains."""

    def encode(trainable, frozen, pixels_bfyx3):
        if VISION in trainable_parts:
            return pixels_bfyx3
        model = nnx.merge(graphdef, merge_params(frozen, trainable))
        return jax.lax.stop_gradient(model.vision_features(pixels_bfyx3))

    return encode


def visual_tokens(model: TinyLlavaVideo, vision_input, trainable_parts: tuple[str, ...], rows: int) -> jax.Array:
    """Visual tokens [R, M, D] from the batch's vision input (one per prompt), each
    prompt's repeated for its rows (its G completions)."""
    tokens = model.encode_video(vision_input) if VISION in trainable_parts else model.visual_tokens(vision_input)
    return jnp.repeat(tokens, rows // tokens.shape[0], axis=0)
