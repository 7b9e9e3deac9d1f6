"""Matmul FLOPs of a traced program with every loop iteration counted: what a step computes,
recomputation included (a rematerialised layer's second forward is in the traced backward).

XLA's cost analysis counts a loop's body once (the layer scan, the log-prob chunks, the decode
loop), so its figures compare programs of one shape only. Here a `scan` body counts `length`
times and a `while` body (the decode loop, whose trip count depends on when EOS comes) counts
`while_trips` times, its upper bound. Only `dot_general` is counted: the matmuls are nearly
all of a transformer's arithmetic.
"""

from __future__ import annotations

import math

import jax
from jax.extend import core


def _dot_flops(eqn) -> float:
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    return 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lhs_contract)


def _subjaxprs(value):
    if isinstance(value, core.ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, core.Jaxpr):
        yield value
    elif isinstance(value, tuple | list):
        for item in value:
            yield from _subjaxprs(item)


def jaxpr_matmul_flops(jaxpr: core.Jaxpr, while_trips: int = 1) -> float:
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total += _dot_flops(eqn)
        elif name == "scan":
            total += eqn.params["length"] * jaxpr_matmul_flops(eqn.params["jaxpr"].jaxpr, while_trips)
        elif name == "while":
            body = jaxpr_matmul_flops(eqn.params["body_jaxpr"].jaxpr, while_trips)
            total += while_trips * body + jaxpr_matmul_flops(eqn.params["cond_jaxpr"].jaxpr, while_trips)
        elif name == "cond":
            total += max(jaxpr_matmul_flops(b.jaxpr, while_trips) for b in eqn.params["branches"])
        else:  # pjit, remat, custom_vjp/jvp calls, shard_map ...: their inner jaxprs once
            for value in eqn.params.values():
                for inner in _subjaxprs(value):
                    total += jaxpr_matmul_flops(inner, while_trips)
    return total


def program_matmul_flops(fn, args, while_trips: int = 1) -> float:
    """Matmul FLOPs of `fn(*args)` (abstract arguments), whole program (all devices)."""
    return jaxpr_matmul_flops(jax.make_jaxpr(fn)(*args).jaxpr, while_trips)
