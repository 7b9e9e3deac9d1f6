"""Low-rank adapters (LoRA) on a frozen base: the run's `lora` section and the maths.

An adapted projection computes `x @ W + ((dropout(x) @ A) @ B) * alpha / rank` (PEFT's
order), A [in, rank] drawn as PEFT draws it, B [rank, out] zeros, so the model's output is
the base model's at step 0 (bitwise: the added term is exactly 0). The adapters are
parameters of their own beside the frozen weights (`llm/lora/`, `connector/lora/`); only
they (and a fully trained connector) are trainable. With every adapter at zero the model is
the base model again: GRPO's reference policy at no cost (`without_adapters`).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

# The language model's projections an adapter may sit on (PEFT's target module names with
# the `_proj` dropped), in the order the layer runs them.
LLM_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
# The connector: trained in full (the paper), by adapters on every linear map, or not at all.
CONNECTOR_MODES = ("full", "lora", "frozen")
CONNECTOR_TARGETS = ("linear", "to_q", "to_kv", "to_out", "ff_in", "ff_out")
ADAPTERS = "lora"  # the name of the adapter dict in a model part: `llm/lora`, `connector/lora`


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    rank: int = 0  # 0: no adapters (what trains is the stage's `trainable`)
    alpha: float = 16.0  # the adapters' output is scaled by alpha / rank
    # Dropout on the language-model adapters' inputs, in the update's forward pass only (the
    # rollout and the reference and old-policy scoring see no dropout).
    dropout: float = 0.0
    targets: tuple[str, ...] = LLM_TARGETS  # adapted projections of every language-model layer
    connector: str = "full"  # one of CONNECTOR_MODES

    def __post_init__(self):
        if self.rank < 0:
            raise ValueError(f"lora.rank must be >= 0, got {self.rank}")
        if not self.alpha > 0:
            raise ValueError(f"lora.alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        unknown = sorted(set(self.targets) - set(LLM_TARGETS))
        if unknown or not self.targets or len(set(self.targets)) != len(self.targets):
            raise ValueError(f"lora.targets must name distinct ones of {list(LLM_TARGETS)}, got {list(self.targets)}")
        if self.connector not in CONNECTOR_MODES:
            raise ValueError(f"lora.connector must be one of {list(CONNECTOR_MODES)}, got {self.connector!r}")

    @property
    def enabled(self) -> bool:
        return self.rank > 0

    def trainable_parts(self) -> tuple[str, ...]:
        """What the update trains: the adapters, and the connector as `connector` says."""
        connector = {"full": ("connector",), "lora": (f"connector/{ADAPTERS}",), "frozen": ()}[self.connector]
        return (f"llm/{ADAPTERS}", *connector)


def adapter_settings(config) -> tuple:
    """What shapes and scales the adapters of a TinyLLaVA-Video config (rank, alpha, targets
    of the language model; rank, alpha of the connector)."""
    llm, connector = config.llm, config.connector
    return (llm.lora_rank, llm.lora_alpha, tuple(llm.lora_targets), connector.lora_rank, connector.lora_alpha)


def has_adapters(config) -> bool:
    """Whether a model config (a TinyLLaVA-Video's, or one part's) has adapters."""
    parts = [getattr(config, name) for name in ("llm", "connector") if hasattr(config, name)] or [config]
    return any(getattr(part, "lora_rank", 0) for part in parts)


def same_adapters(a, b) -> bool:
    return adapter_settings(a) == adapter_settings(b)


def scale(alpha: float, rank: int) -> float:
    return alpha / rank


def adapter_params(rngs: nnx.Rngs, kernels: dict[str, tuple[tuple, tuple]], rank: int, dtype, stacked: bool):
    """{NAME_lora_a, NAME_lora_b} Params for each kernel NAME of `kernels` (its [.., in, out]
    shape and logical axes). A ~ U(-1/sqrt(in), 1/sqrt(in)) (PEFT's kaiming-uniform with
    a = sqrt(5)), B = 0."""
    out = {}
    for name, (shape, axes) in kernels.items():
        *lead, fan_in, fan_out = shape
        lead_axes = ("layers",) if stacked else ()
        bound = 1.0 / math.sqrt(fan_in)
        a = jax.random.uniform(rngs.params(), (*lead, fan_in, rank), dtype, -bound, bound)
        out[f"{name}_lora_a"] = nnx.Param(a, axes=(*lead_axes, axes[-2], "lora_rank"))
        b = jnp.zeros((*lead, rank, fan_out), dtype)
        out[f"{name}_lora_b"] = nnx.Param(b, axes=(*lead_axes, "lora_rank", axes[-1]))
    return out


def adapted(project, x, kernel, bias, p: dict, name: str, lora_scale: float, dropout=None):
    """`project(x, kernel, bias)` plus the adapter NAME's term when `p` holds one.
    `project` is the layout's matmul (it serves A and B as it serves kernels); `dropout(x)`,
    when given, is applied to the adapter's input only."""
    y = project(x, kernel, bias)
    a = p.get(f"{name}_lora_a")
    if a is None:
        return y
    x_in = x if dropout is None else dropout(x)
    delta = project(project(x_in, a), p[f"{name}_lora_b"])
    return y + delta * jnp.asarray(lora_scale, delta.dtype)


def row_dropout(keys_r: jax.Array, rate: float, stream: int):
    """dropout(x [R, ...]) with an independent mask per row from its key (key data [R, 2]),
    folded with `stream` (one per layer and projection), inverted scaling. Per-row keys make
    the masks the same however the rows are split into micro-batches."""
    keep = 1.0 - rate

    def drop(x):
        def one(key_data, x_row):
            key = jax.random.fold_in(jax.random.wrap_key_data(key_data), stream)
            mask = jax.random.bernoulli(key, keep, x_row.shape)
            return jnp.where(mask, x_row / jnp.asarray(keep, x_row.dtype), jnp.zeros((), x_row.dtype))

        return jax.vmap(one)(keys_r, x)

    return drop


def without_adapters(tree):
    """The parameter tree with every adapter B at zero: the base model's computation exactly
    (call it under jit: the zeros are constants of the program, not buffers)."""
    if not isinstance(tree, dict):
        return tree
    out = {}
    for key, value in tree.items():
        if key == ADAPTERS:
            out[key] = {n: jnp.zeros_like(v) if n.endswith("_lora_b") else v for n, v in value.items()}
        else:
            out[key] = without_adapters(value)
    return out


def split_adapters(tree: dict) -> tuple[dict, dict]:
    """(the tree without its adapter dicts, the adapter dicts alone), both nested like it."""
    base, adapters = {}, {}
    for key, value in tree.items():
        if key == ADAPTERS:
            adapters[key] = value
        elif isinstance(value, dict):
            b, a = split_adapters(value)
            base[key] = b
            if a:
                adapters[key] = a
        else:
            base[key] = value
    return base, adapters


def merge_trees(a: dict, b: dict) -> dict:
    """Nested dicts `a` and `b` together (disjoint leaves; b's win where both have one)."""
    out = dict(a)
    for key, value in b.items():
        out[key] = merge_trees(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
