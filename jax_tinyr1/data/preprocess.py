"""Frame preprocessing equal to HF `SiglipImageProcessor` (the PIL path the original used):
resize to a square with PIL's bicubic filter on uint8 (aspect ratio squashed, no crop),
rescale by 1/255, normalize with mean = std = 0.5.

The resize reimplements PIL's fixed-point separable resampling (Pillow `Resample.c`:
bicubic a = -0.5, support widened by the scale when shrinking, 22-bit integer weights,
horizontal pass then vertical, each rounded to uint8), so it is bit-identical to PIL
without calling it, and vectorised over frames and channels.
"""

from __future__ import annotations

import functools

import numpy as np

PRECISION_BITS = 32 - 8 - 2
MEAN = STD = 0.5


def _bicubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@functools.lru_cache(maxsize=64)
def resample_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(first input index [out], fixed-point weights [out, taps]) of one resize axis."""
    scale = in_size / out_size
    filter_scale = max(scale, 1.0)
    support = 2.0 * filter_scale
    taps = int(np.ceil(support)) * 2 + 1
    first = np.zeros(out_size, np.int64)
    weights = np.zeros((out_size, taps), np.float64)
    for i in range(out_size):
        center = (i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)  # C's (int) truncates toward zero
        hi = min(int(center + support + 0.5), in_size)
        w = _bicubic((np.arange(lo, hi) - center + 0.5) * (1.0 / filter_scale))  # as PIL: times the reciprocal
        total = 0.0
        for value in w:  # summed left to right, as PIL does (pairwise sums round differently)
            total += value
        weights[i, : hi - lo] = w / total if total != 0.0 else w
        first[i] = lo
    fixed = np.where(weights < 0, -0.5, 0.5) + weights * (1 << PRECISION_BITS)
    return first, np.trunc(fixed).astype(np.int64)


def _resize_axis(x: np.ndarray, out_size: int, axis: int) -> np.ndarray:
    """One separable pass on uint8 data along `axis`, rounded and clipped to uint8."""
    in_size = x.shape[axis]
    first, weights = resample_weights(in_size, out_size)
    taps = weights.shape[1]
    index = np.clip(first[:, None] + np.arange(taps)[None, :], 0, in_size - 1)  # zero weights past the end
    moved = np.moveaxis(x, axis, -1).astype(np.int64)
    acc = np.einsum("...ot,ot->...o", moved[..., index], weights) + (1 << (PRECISION_BITS - 1))
    out = np.clip(acc >> PRECISION_BITS, 0, 255).astype(np.uint8)
    return np.moveaxis(out, -1, axis)


def resize_bicubic(frames: np.ndarray, size: int) -> np.ndarray:
    """uint8 [..., H, W, C] -> uint8 [..., size, size, C], bit-identical to PIL's BICUBIC."""
    if frames.dtype != np.uint8:
        raise TypeError(f"frames must be uint8, got {frames.dtype}")
    h, w = frames.shape[-3], frames.shape[-2]
    out = frames
    if w != size:
        out = _resize_axis(out, size, axis=out.ndim - 2)
    if h != size:
        out = _resize_axis(out, size, axis=out.ndim - 3)
    return out


def preprocess_frames(frames: np.ndarray, image_size: int) -> np.ndarray:
    """uint8 RGB frames [..., H, W, 3] -> float32 pixels [..., image_size, image_size, 3]."""
    resized = resize_bicubic(frames, image_size)
    rescaled = (resized.astype(np.float64) * (1 / 255)).astype(np.float32)
    return (rescaled - np.float32(MEAN)) / np.float32(STD)
