"""Decoding speed: 16-frame sampling (the original's rule) of a 30 s 480p H.264 clip, decord
against PyAV.

    python bench/decode.py [--repeats 5]

The clip is generated locally (854x480, 30 fps, 900 frames). decord seeks to the 16 frames;
PyAV decodes the stream in order and converts only the 16 chosen frames to RGB (the usual
PyAV way to read frames by index). Median of repeats, after one warm-up run.
Last lines: decord_frames_per_s=<x>, pyav_frames_per_s=<x>.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import av
import numpy as np
from timing import median_time  # bench/timing.py (bench/ is on sys.path when run as a script)

from jax_tinyr1.data.synthetic import write_video
from jax_tinyr1.data.video import frame_indices, read_frames


def make_clip(path: Path, seconds: int = 30, fps: int = 30) -> None:
    n = seconds * fps
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (480, 854, 3), dtype=np.uint8)
    frames = np.stack([np.roll(base, 4 * i, axis=1) for i in range(n)])  # moving texture: real motion
    write_video(path, frames, fps=fps)


def pyav_sample(path: Path, num_frames: int) -> np.ndarray:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        total = stream.frames
        wanted = frame_indices(total, num_frames)
        out = {}
        for position, frame in enumerate(container.decode(stream)):
            if position in wanted:
                out[position] = frame.to_ndarray(format="rgb24")
            if position >= wanted[-1]:
                break
    return np.stack([out[i] for i in wanted])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--frames", type=int, default=16)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip480p.mp4"
        make_clip(path)
        np.testing.assert_array_equal(read_frames(path, args.frames), pyav_sample(path, args.frames))
        decord_s = median_time(lambda: read_frames(path, args.frames), args.repeats, warmup=1)
        pyav_s = median_time(lambda: pyav_sample(path, args.frames), args.repeats, warmup=1)
    print(f"{'decoder':<10}{'seconds':>10}{'frames/s':>12}")
    print(f"{'decord':<10}{decord_s:>10.3f}{args.frames / decord_s:>12.1f}")
    print(f"{'pyav':<10}{pyav_s:>10.3f}{args.frames / pyav_s:>12.1f}")
    print(f"decord_frames_per_s={args.frames / decord_s:.1f}")
    print(f"pyav_frames_per_s={args.frames / pyav_s:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
