"""Video decoding with decord: N frames at the original's indices, uint8 RGB out.

Frame rules (the original's):
- `linspace` (training, and most benchmarks): `np.linspace(0, total - 1, N).astype(int)` over
  all decoded frames, so a clip shorter than N repeats frames and a 1-frame clip gives N
  copies of it. Indices are frame numbers, not timestamps: a variable frame rate changes
  nothing.
- `segments` (MVBench's avi, webm and frame-folder tasks): the midpoints of N equal segments
  of [start, end] seconds (the whole clip without bounds), `segment_indices`.
Frames larger than `max_side` are scaled down by the decoder itself (bounded memory for
huge videos); at or below it they are exactly the decoded pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jax_tinyr1.data.policy import DataError

DEFAULT_MAX_SIDE = 2048  # larger frames are scaled at decode time; the model sees 384 px


class VideoDecodeError(DataError):
    """The one error type for a video that cannot be read; its message names the file."""


def frame_indices(total_frames: int, num_frames: int) -> np.ndarray:
    if total_frames <= 0:
        raise VideoDecodeError(f"a video needs at least one frame, got {total_frames}")
    return np.linspace(0, total_frames - 1, num_frames, dtype=int)


def segment_indices(bound, fps: float, max_frame: int, first_idx: int, num_frames: int) -> np.ndarray:
    """MVBench's `get_index`: start/end frames from the bound in seconds (else +-100000),
    clipped to [first_idx, max_frame], cut into N segments, each taken at its midpoint."""
    start, end = bound if bound else (-100000, 100000)
    start_idx = max(first_idx, round(start * fps))
    end_idx = min(round(end * fps), max_frame)
    seg_size = float(end_idx - start_idx) / num_frames
    return np.array([int(start_idx + seg_size / 2 + np.round(seg_size * i)) for i in range(num_frames)])


def _scaled_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(width, height) after shrinking the longer side to `max_side` (even sizes for the scaler)."""
    if max_side is None or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def read_frames(
    path: str | Path,
    num_frames: int = 16,
    *,
    max_side: int | None = DEFAULT_MAX_SIDE,
    bound: tuple[float, float] | None = None,
    rule: str = "linspace",
) -> np.ndarray:
    """uint8 frames [num_frames, Y, X, 3] of a video file, at the `rule`'s indices
    ("linspace", or "segments" of `bound` seconds)."""
    if rule not in ("linspace", "segments"):
        raise ValueError(f"frame rule must be 'linspace' or 'segments', got {rule!r}")
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
        if rule == "linspace":
            indices = frame_indices(total, num_frames)
        else:
            indices = segment_indices(bound, float(reader.get_avg_fps()), total - 1, 0, num_frames)
        frames = reader.get_batch(indices.tolist()).asnumpy()
    except VideoDecodeError:
        raise
    except Exception as e:  # decord raises its own DECORDError, RuntimeError or worse
        raise VideoDecodeError(f"{path}: cannot decode video ({type(e).__name__}: {e})") from None
    if frames.ndim != 4 or frames.shape[0] != num_frames or frames.shape[-1] != 3:
        raise VideoDecodeError(f"{path}: decoder returned frames of shape {frames.shape}")
    return np.ascontiguousarray(frames, dtype=np.uint8)


FRAME_FOLDER_FPS = 3  # MVBench's Episodic Reasoning frames (tvqa frames_fps3_hq)


def read_frame_folder(folder: str | Path, num_frames: int = 16, *, bound=None, fps: float = FRAME_FOLDER_FPS):
    """uint8 frames [num_frames, Y, X, 3] of a folder of `00001.jpg`, `00002.jpg`, ... at
    MVBench's indices (`segment_indices` with the first frame numbered 1)."""
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise VideoDecodeError(f"{folder}: no such frame folder")
    count = len(list(folder.iterdir()))
    if count == 0:
        raise VideoDecodeError(f"{folder}: the frame folder is empty")
    frames = []
    for index in segment_indices(bound, fps, count, 1, num_frames):
        path = folder / f"{index:05d}.jpg"
        try:
            with Image.open(path) as image:
                frames.append(np.asarray(image.convert("RGB"), dtype=np.uint8))
        except (OSError, ValueError) as e:
            raise VideoDecodeError(f"{path}: cannot read frame ({e})") from None
    if len({f.shape for f in frames}) != 1:
        raise VideoDecodeError(f"{folder}: frames of different sizes")
    return np.stack(frames)
