"""The one timing loop of the benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable


def time_calls(call: Callable[[], object], runs: int, warmup: int = 0) -> list[float]:
    """Milliseconds of each of `runs` calls of `call`, after `warmup` untimed calls."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return times
