"""Video decoding with decord: N frames at the original's indices, uint8 RGB out.

Frame rule (the original's): `np.linspace(0, total - 1, N).astype(int)` over all decoded
frames, so a clip shorter than N repeats frames and a 1-frame clip gives N copies of it.
Indices are frame numbers, not timestamps, so a variable frame rate changes nothing.
Frames larger than `max_side` are scaled down by the decoder itself (bounded memory for
huge videos); at or below it they are exactly the decoded pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DEFAULT_MAX_SIDE = 2048  # larger frames are scaled at decode time; the model sees 384 px


class VideoDecodeError(RuntimeError):
    """The one error type for a video that cannot be read; its message names the file."""


def frame_indices(total_frames: int, num_frames: int) -> np.ndarray:
    if total_frames <= 0:
        raise ValueError(f"a video needs at least one frame, got {total_frames}")
    return np.linspace(0, total_frames - 1, num_frames, dtype=int)


def _scaled_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(width, height) after shrinking the longer side to `max_side` (even sizes for the scaler)."""
    if max_side is None or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def read_frames(path: str | Path, num_frames: int = 16, *, max_side: int | None = DEFAULT_MAX_SIDE) -> np.ndarray:
    """uint8 frames [num_frames, H, W, 3] of a video file."""
    import decord  # imported here: an optional dependency (the `video` extra)

    path = Path(path)
    if not path.is_file():
        raise VideoDecodeError(f"{path}: no such video file")
    if path.stat().st_size == 0:
        raise VideoDecodeError(f"{path}: empty file (0 bytes)")
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=0)
        height, width = reader[0].shape[:2] if len(reader) else (0, 0)
        total = len(reader)
        if total == 0:
            raise VideoDecodeError(f"{path}: the video has no decodable frames")
        target = _scaled_size(width, height, max_side)
        if target != (width, height):  # reopen with the decoder's own scaler: never holds full frames
            reader = decord.VideoReader(str(path), ctx=decord.cpu(0), width=target[0], height=target[1], num_threads=0)
        frames = reader.get_batch(frame_indices(total, num_frames).tolist()).asnumpy()
    except VideoDecodeError:
        raise
    except Exception as e:  # decord raises its own DECORDError, RuntimeError or worse
        raise VideoDecodeError(f"{path}: cannot decode video ({type(e).__name__}: {e})") from None
    if frames.ndim != 4 or frames.shape[0] != num_frames or frames.shape[-1] != 3:
        raise VideoDecodeError(f"{path}: decoder returned frames of shape {frames.shape}")
    return np.ascontiguousarray(frames, dtype=np.uint8)
