"""Interleaved timing: candidates alternate within every repeat, so drift hits both alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Ratio:
    """Per-repeat time ratios candidate / baseline, and the median seconds of each."""

    ratios: list[float]
    candidate_s: float
    baseline_s: float

    @property
    def summary(self) -> str:
        r = self.ratios
        return f"{min(r):.2f} / {statistics.median(r):.2f} / {max(r):.2f}"


def time_call(fn: Callable[[], object], iters: int) -> float:
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - start) / iters


def interleaved_ratio(
    candidate: Callable[[], object],
    baseline: Callable[[], object],
    *,
    repeats: int = 7,
    iters: int = 20,
    warmup: int = 3,
) -> Ratio:
    """Time ``candidate`` and ``baseline`` alternately (order flipped every repeat)."""
    for _ in range(warmup):
        candidate()
        baseline()
    ratios, cand, base = [], [], []
    for r in range(repeats):
        if r % 2:
            b = time_call(baseline, iters)
            c = time_call(candidate, iters)
        else:
            c = time_call(candidate, iters)
            b = time_call(baseline, iters)
        ratios.append(c / b)
        cand.append(c)
        base.append(b)
    return Ratio(ratios, statistics.median(cand), statistics.median(base))
