"""Checks shared by the model config dataclasses; messages name the class and the field."""

from __future__ import annotations

from jax_tinyr1.model.layers import DTYPES


def require_positive_ints(config, names) -> None:
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{type(config).__name__}.{name} must be a positive int, got {value!r}")


def require_dtype(key: str, value, allowed=tuple(DTYPES)) -> None:
    """`value` must name a dtype of `allowed` (names of the DTYPES table)."""
    if value not in allowed:
        raise ValueError(f"{key} must be one of {sorted(allowed)}, got {value!r}")


def require_dtypes(config, names=("param_dtype", "dtype")) -> None:
    for name in names:
        require_dtype(f"{type(config).__name__}.{name}", getattr(config, name))
