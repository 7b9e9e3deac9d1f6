"""Timing for the benchmarks: warm-up calls, then the median of repeats."""

from __future__ import annotations

import statistics
import time


def median_time(fn, repeats: int, warmup: int = 0) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
