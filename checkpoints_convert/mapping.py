"""The conversion engine: one table of rules per model drives both directions.

A rule pairs an HF tensor name with a path in our parameter tree and a transform. For a
stacked (scanned) parameter the HF name holds `{i}` and HF layer i is index i of the
stack. Import checks, before copying anything, that the file has exactly the expected
tensors with exactly the expected shapes, and names the offending key otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from checkpoints_convert.safetensors_io import CheckpointError, SafetensorsReader, TensorToWrite


@dataclass(frozen=True)
class Transform:
    """`to_hf` must invert `to_flax` exactly (they are permutations of axes)."""

    to_flax_axes: tuple[int, ...] | None  # np.transpose axes applied to the HF tensor

    def to_flax(self, a: np.ndarray) -> np.ndarray:
        return a if self.to_flax_axes is None else np.transpose(a, self.to_flax_axes)

    def to_hf(self, a: np.ndarray) -> np.ndarray:
        return a if self.to_flax_axes is None else np.transpose(a, np.argsort(self.to_flax_axes))

    def hf_shape(self, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
        if self.to_flax_axes is None:
            return tuple(flax_shape)
        return tuple(flax_shape[j] for j in np.argsort(self.to_flax_axes))


IDENTITY = Transform(None)
LINEAR = Transform((1, 0))  # torch Linear [out, in] -> kernel [in, out]
CONV2D = Transform((2, 3, 1, 0))  # torch conv OIHW -> HWIO


@dataclass(frozen=True)
class Rule:
    hf: str  # HF tensor name; "{i}" = layer index of a stacked parameter
    flax: str  # "/"-joined path in the parameter tree
    transform: Transform = IDENTITY

    @property
    def stacked(self) -> bool:
        return "{i}" in self.hf


def prefixed(rules: Iterable[Rule], hf_prefix: str, flax_prefix: str) -> list[Rule]:
    """The same rules under a parent model (e.g. `language_model.` / `llm/`)."""
    return [Rule(hf_prefix + r.hf, flax_prefix + r.flax, r.transform) for r in rules]


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, path + "/"))
        else:
            out[path] = value
    return out


def unflatten(flat: dict[str, object]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def expected_hf_tensors(rules: list[Rule], shapes: dict[str, tuple[int, ...]]):
    """hf key -> (rule, layer index or None, expected HF shape)."""
    expected = {}
    covered = set()
    for rule in rules:
        if rule.flax not in shapes:
            raise KeyError(f"mapping rule for {rule.hf!r} points at unknown parameter {rule.flax!r}")
        covered.add(rule.flax)
        shape = shapes[rule.flax]
        if rule.stacked:
            for i in range(shape[0]):
                expected[rule.hf.format(i=i)] = (rule, i, rule.transform.hf_shape(shape[1:]))
        else:
            expected[rule.hf] = (rule, None, rule.transform.hf_shape(shape))
    uncovered = sorted(set(shapes) - covered)
    if uncovered:
        raise KeyError(f"no mapping rule for parameter(s) {uncovered}")
    return expected


def import_leaves(
    reader: SafetensorsReader,
    rules: list[Rule],
    abstract: dict[str, object],
    *,
    ignored_hf_keys: Iterable[str] = (),
) -> Iterator[tuple[str, np.ndarray]]:
    """HF tensors -> (flax path, numpy array) leaves with the abstract tree's shapes/dtypes,
    one leaf at a time (a stacked leaf is filled from its layers' tensors).

    `abstract` maps flax paths to objects with `.shape` and `.dtype`. `ignored_hf_keys`
    may be present in the file and are skipped (e.g. a tied lm_head). The whole file is
    checked (names and shapes) here, before the returned iterator makes the first leaf.
    """
    shapes = {path: tuple(a.shape) for path, a in abstract.items()}
    expected = expected_hf_tensors(rules, shapes)
    ignored = set(ignored_hf_keys)
    missing = sorted(k for k in expected if k not in reader)
    if missing:
        raise CheckpointError(
            f"checkpoint is missing tensor(s): {missing[:10]}"
            + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        )
    unexpected = sorted(k for k in reader if k not in expected and k not in ignored)
    if unexpected:
        raise CheckpointError(
            f"checkpoint has unexpected tensor(s): {unexpected[:10]}"
            + (f" and {len(unexpected) - 10} more" if len(unexpected) > 10 else "")
        )
    for key, (_, _, hf_shape) in expected.items():
        found = reader.tensors[key].shape
        if tuple(found) != tuple(hf_shape):
            raise CheckpointError(f"tensor {key!r} has shape {tuple(found)}, expected {tuple(hf_shape)}")

    by_leaf: dict[str, list[tuple[str, Rule, int | None]]] = {}
    for key, (rule, layer, _) in expected.items():
        by_leaf.setdefault(rule.flax, []).append((key, rule, layer))
    return _leaves(reader, abstract, by_leaf)


def _leaves(reader: SafetensorsReader, abstract: dict[str, object], by_leaf) -> Iterator[tuple[str, np.ndarray]]:
    for path, a in abstract.items():
        leaf = np.empty(a.shape, a.dtype)
        for key, rule, layer in by_leaf[path]:
            value = rule.transform.to_flax(reader.get(key))
            if layer is None:
                leaf[...] = value
            else:
                leaf[layer] = value
            del value
        yield path, leaf
        del leaf


def import_params(reader: SafetensorsReader, rules: list[Rule], abstract: dict[str, object], **kwargs):
    """All leaves of `import_leaves` at once: flat {flax path: numpy array}."""
    return dict(import_leaves(reader, rules, abstract, **kwargs))


def export_params(
    params: Mapping[str, object], rules: list[Rule], dtype, shapes: dict[str, tuple[int, ...]] | None = None
) -> list[TensorToWrite]:
    """Flat {flax path: array} -> lazily produced HF tensors, grouped by parameter (a stacked
    parameter's layers together), so that a lazy `params` mapping needs one leaf at a time.
    `shapes` spares reading `params` to learn them."""
    shapes = shapes or {path: tuple(np.shape(a)) for path, a in params.items()}
    expected = expected_hf_tensors(rules, shapes)
    dtype = np.dtype(dtype)
    order = {path: i for i, path in enumerate(shapes)}
    grouped = sorted(expected.items(), key=lambda item: order[item[1][0].flax])  # stable: layers stay in order

    def producer(rule: Rule, layer: int | None):
        def produce():
            a = params[rule.flax]
            a = np.asarray(a if layer is None else a[layer])
            return rule.transform.to_hf(a).astype(dtype)

        return produce

    return [TensorToWrite(key, shape, dtype, producer(rule, layer)) for key, (rule, layer, shape) in grouped]
