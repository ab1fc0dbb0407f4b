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
        return spread(self.ratios)


def spread(values: list[float]) -> str:
    """``min / median / max``, two decimals."""
    return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"


def time_call(fn: Callable[[], object], iters: int) -> float:
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - start) / iters


def interleaved(
    candidate: Callable[[], float], baseline: Callable[[], float], repeats: int
) -> Ratio:
    """Ratios of the seconds that ``candidate`` and ``baseline`` measure and return, called
    alternately, the order flipped every repeat."""
    ratios, cand, base = [], [], []
    for r in range(repeats):
        if r % 2:
            b = baseline()
            c = candidate()
        else:
            c = candidate()
            b = baseline()
        ratios.append(c / b)
        cand.append(c)
        base.append(b)
    return Ratio(ratios, statistics.median(cand), statistics.median(base))


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
    return interleaved(lambda: time_call(candidate, iters), lambda: time_call(baseline, iters),
                       repeats)
